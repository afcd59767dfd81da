// transaction.cpp — snapshot, protect, rollback; and the fault-injection counter.
#include "transaction.h"

#include <cstring>
#include <unordered_map>

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
  std::vector<DeferredScale> deferred;
  std::unordered_map<const void*, size_t> deferred_index;  // weight data → deferred[...]
};

Transaction::Transaction(Graph& graph) : graph_(graph) {
  if (graph.journal_) {
    journal_ = graph.journal_;
    owner_ = false;
    return;
  }
  journal_ = new TransactionJournal{graph.nodes, graph.graph_inputs, graph.graph_outputs, {}, {}, {}, {}, {}};
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

void Transaction::defer_scale(const Weight& weight, std::span<const double> out_factor,
                              std::span<const double> in_factor) {
  auto [it, added] = journal_->deferred_index.emplace(weight.tensor.data, journal_->deferred.size());
  if (added)
    journal_->deferred.push_back({weight, std::vector<double>(static_cast<size_t>(weight.out_channels()), 1.0),
                                  std::vector<double>(static_cast<size_t>(weight.in_channels()), 1.0)});
  DeferredScale& d = journal_->deferred[it->second];
  if ((!out_factor.empty() && out_factor.size() != d.out.size()) || (!in_factor.empty() && in_factor.size() != d.in.size()))
    throw GraphError("weight '" + weight.tensor.name + "': scale factors do not match its channel counts",
                     weight.tensor.name);
  for (size_t c = 0; c < out_factor.size(); ++c) d.out[c] *= out_factor[c];
  for (size_t c = 0; c < in_factor.size(); ++c) d.in[c] *= in_factor[c];
}

const DeferredScale* Transaction::pending(const Weight& weight) const {
  const auto it = journal_->deferred_index.find(weight.tensor.data);
  return it == journal_->deferred_index.end() ? nullptr : &journal_->deferred[it->second];
}

void Transaction::commit() {
  if (owner_) {
    // Everything that can fail happens before the first weight write: preparing each scaling
    // (allocation, layout checks) and the fault-injection points. The writes themselves cannot.
    std::vector<ChannelScaling> writes;
    writes.reserve(journal_->deferred.size());
    for (const auto& d : journal_->deferred) {
      detail::note_write();
      writes.emplace_back(d.weight, d.out, d.in);
    }
    for (const auto& w : writes) w.apply();
  }
  committed_ = true;
}

namespace {
// Per thread: passes on different graphs run concurrently without the GIL, and a shared counter
// written by all of them was a data race. A pass runs on the thread that called it, so a test
// arms the thread it calls from, and no other thread's pass ever sees the injection. Unarmed, a
// write costs one thread-local load (the counter is only kept while armed or counting).
thread_local int fail_after = -1;
thread_local int writes = 0;
thread_local bool counting = false;
}  // namespace

namespace detail {
void note_write() {
  if (!counting) return;
  ++writes;
  if (fail_after >= 0 && writes > fail_after)
    throw Error("injected failure after " + std::to_string(fail_after) + " parameter writes");
}
}  // namespace detail

namespace testing {
void set_fail_after_writes(int n) {
  fail_after = n;
  writes = 0;
  counting = true;  // writes_seen() counts from here on, on this thread
}
int writes_seen() { return writes; }
}  // namespace testing

}  // namespace prequant
