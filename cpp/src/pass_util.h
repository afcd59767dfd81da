// pass_util.h (internal) — checks and edits shared by the passes.
#pragma once

#include <string>
#include <vector>

#include "prequant/graph.h"
#include "prequant/results.h"
#include "transaction.h"

namespace prequant {

// Throws InvalidParameterError naming the node and parameter if `t` holds NaN or ±Inf.
// Each tensor is checked once per (outermost) transaction.
void require_finite(Transaction& tx, const Node& node, const TensorView& t, const char* role);
// Every parameter of a conv/linear finite.
void require_finite_layer(Transaction& tx, const Node& layer);
// BN parameters finite, var ≥ 0 and var + eps > 0.
void require_valid_batch_norm(Transaction& tx, const Node& bn);

// Gives `layer` a zero bias in the graph's arena if it has none; returns true if it did.
bool ensure_bias(Graph& graph, Node& layer);

// Protects every parameter of `node` in `tx` but the weight, which passes only change through
// tx.defer_scale().
void protect_node(Transaction& tx, const Node& node);

// contract_in_channels (Σ_i Σ_k W[o, i, k]·v[i]) on the weight as it will be once `tx` applies
// its deferred factors: out[o]·Σ_i Σ_k W[o, i, k]·in[i]·v[i].
std::vector<double> contract_in_channels_pending(const Transaction& tx, const Weight& w, std::vector<double> v);

// "a, b and c" for messages.
std::string join_names(const Graph& graph, const std::vector<size_t>& indices);

// Empty if `a` and `b` (layers or batch norms) see their channels on the same axis; else why
// not: a channels-last Linear meets a conv or BN (axis 1) on a tensor not known to be 2-D.
std::string why_channel_axes_differ(const Node& a, const Node& b);

// Another live layer whose weight points at the same memory as `layer`'s, or nullptr.
const Node* weight_sharer(const Graph& graph, const Node& layer);

}  // namespace prequant
