// transaction.h (internal) — makes a pass atomic.
//
// A Transaction snapshots the graph's structure when it opens and, through protect(), saves a
// parameter's bytes right before the pass first writes it. If the transaction is destroyed
// without commit() (an exception unwinds the pass), the structure and every protected parameter
// are restored bit for bit. Transactions nest: an inner one joins the outermost, so a pipeline
// such as equalize_model is atomic as a whole and each tensor is copied at most once.
#pragma once

#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "prequant/graph.h"

namespace prequant {

class Transaction {
 public:
  explicit Transaction(Graph& graph);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // Save `tensor`'s bytes before the first write to it in this transaction.
  void protect(const TensorView& tensor);
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
