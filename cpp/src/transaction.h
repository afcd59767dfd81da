// transaction.h (internal) — makes a pass atomic.
//
// A Transaction snapshots the graph's structure when it opens and, through protect(), saves a
// small parameter's bytes (bias, BN statistics) right before the pass first writes it. Weights
// are never written while it is open: a pass records per-channel factors with defer_scale(),
// reads the weight as it will be through pending(), and the outermost commit() applies each
// weight's accumulated factors in one pass that cannot fail. So weights need no backup, and a
// pipeline such as equalize_model (fold, then scale) writes each weight once.
// If the transaction is destroyed without commit() (an exception unwinds the pass), the structure
// and every protected parameter are restored bit for bit and no weight was touched. Transactions
// nest: an inner one joins the outermost, so a pipeline is atomic as a whole.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "prequant/graph.h"

namespace prequant {

struct DeferredScale {
  Weight weight;
  std::vector<double> out, in;  // full-length; ones where nothing was deferred
};

class Transaction {
 public:
  explicit Transaction(Graph& graph);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // Save `tensor`'s bytes before the first write to it in this transaction.
  void protect(const TensorView& tensor);
  // W[o, i, ...] *= out_factor[o]·in_factor[i] at commit (empty = ones); composes with earlier calls.
  void defer_scale(const Weight& weight, std::span<const double> out_factor, std::span<const double> in_factor);
  // The factors deferred so far for `weight`, or nullptr: the weight as it will be is
  // W·diag(out)·diag(in).
  const DeferredScale* pending(const Weight& weight) const;
  // True the first time `tensor` is asked about in this transaction: a pipeline validates each
  // parameter once, not once per pass.
  bool first_check(const TensorView& tensor);
  void commit();

 private:
  Graph& graph_;
  TransactionJournal* journal_;
  bool owner_;
  bool committed_ = false;
};

namespace detail {
// Called before each parameter write; throws when fault injection says so.
void note_write();
}  // namespace detail

}  // namespace prequant
