// transaction.cpp — snapshot, protect, rollback; and the fault-injection counter.
#include "transaction.h"

#include <cstring>

#include "prequant/errors.h"
#include "prequant/testing.h"

namespace prequant {

struct TransactionJournal {
  std::vector<Node> nodes;
  std::vector<std::string> graph_inputs, graph_outputs;
  std::unordered_set<const void*> saved;
  std::unordered_set<const void*> checked;
  struct Saved {
    void* data;
    std::vector<unsigned char> bytes;
  };
  std::vector<Saved> tensors;
};

Transaction::Transaction(Graph& graph) : graph_(graph) {
  if (graph.journal_) {
    journal_ = graph.journal_;
    owner_ = false;
    return;
  }
  journal_ = new TransactionJournal{graph.nodes, graph.graph_inputs, graph.graph_outputs, {}, {}, {}};
  graph.journal_ = journal_;
  owner_ = true;
}

Transaction::~Transaction() {
  if (!owner_) return;
  if (!committed_) {
    for (auto& t : journal_->tensors) std::memcpy(t.data, t.bytes.data(), t.bytes.size());
    graph_.nodes = std::move(journal_->nodes);
    graph_.graph_inputs = std::move(journal_->graph_inputs);
    graph_.graph_outputs = std::move(journal_->graph_outputs);
    graph_.reindex();
  }
  graph_.journal_ = nullptr;
  delete journal_;
}

void Transaction::protect(const TensorView& tensor) {
  if (tensor.empty() || !journal_->saved.insert(tensor.data).second) return;
  const auto* p = static_cast<const unsigned char*>(tensor.data);
  journal_->tensors.push_back({tensor.data, std::vector<unsigned char>(p, p + tensor.bytes())});
}

bool Transaction::first_check(const TensorView& tensor) {
  return !tensor.empty() && journal_->checked.insert(tensor.data).second;
}

void Transaction::commit() { committed_ = true; }

namespace {
int fail_after = -1;
int writes = 0;
}  // namespace

namespace detail {
void note_write() {
  ++writes;
  if (fail_after >= 0 && writes > fail_after)
    throw Error("injected failure after " + std::to_string(fail_after) + " parameter writes");
}
}  // namespace detail

namespace testing {
void set_fail_after_writes(int n) {
  fail_after = n;
  writes = 0;
}
int writes_seen() { return writes; }
}  // namespace testing

}  // namespace prequant
