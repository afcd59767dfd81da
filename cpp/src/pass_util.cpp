// pass_util.cpp — checks and edits shared by the passes.
#include "pass_util.h"

#include <cmath>

#include "prequant/errors.h"

namespace prequant {

void require_finite(Transaction& tx, const Node& node, const TensorView& t, const char* role) {
  if (t.empty() || !tx.first_check(t)) return;
  const int64_t bad = find_non_finite(t);
  if (bad >= 0)
    throw InvalidParameterError("node '" + node.name + "': " + role + " '" + t.name +
                                    "' holds " + std::to_string(t.get(bad)) + " at element " +
                                    std::to_string(bad) +
                                    "; NaN/Inf weights cannot be folded or scaled — fix or "
                                    "retrain the model first",
                                node.name);
}

void require_finite_layer(Transaction& tx, const Node& layer) {
  require_finite(tx, layer, layer.weight.tensor, "weight");
  require_finite(tx, layer, layer.bias, "bias");
}

void require_valid_batch_norm(Transaction& tx, const Node& bn) {
  require_finite(tx, bn, bn.gamma, "gamma");
  require_finite(tx, bn, bn.beta, "beta");
  require_finite(tx, bn, bn.mean, "running mean");
  require_finite(tx, bn, bn.var, "running variance");
  if (!std::isfinite(bn.eps) || bn.eps < 0)
    throw InvalidParameterError("batch norm '" + bn.name + "': eps is " + std::to_string(bn.eps) +
                                    "; it must be a finite value ≥ 0",
                                bn.name);
  for (int64_t c = 0; c < bn.var.numel(); ++c) {
    const double v = bn.var.get(c);
    if (v < 0 || v + bn.eps <= 0)
      throw InvalidParameterError(
          "batch norm '" + bn.name + "': channel " + std::to_string(c) + " has variance " +
              std::to_string(v) + " with eps " + std::to_string(bn.eps) +
              "; var + eps must be > 0 (a variance ≤ 0 means the running statistics are broken: "
              "recompute them, or set eps > 0)",
          bn.name);
  }
}

bool ensure_bias(Graph& graph, Node& layer) {
  if (!layer.bias.empty()) return false;
  layer.bias = graph.allocate(layer.name + ".bias", layer.weight.tensor.dtype, {layer.out_channels()});
  return true;
}

void protect_node(Transaction& tx, const Node& node) {
  for (const TensorView* t : {&node.bias, &node.gamma, &node.beta, &node.mean, &node.var, &node.slope})
    tx.protect(*t);
}

std::vector<double> contract_in_channels_pending(const Transaction& tx, const Weight& w, std::vector<double> v) {
  const DeferredScale* d = tx.pending(w);
  if (d)
    for (size_t i = 0; i < v.size(); ++i) v[i] *= d->in[i];
  auto out = contract_in_channels(w, v);
  if (d)
    for (size_t o = 0; o < out.size(); ++o) out[o] *= d->out[o];
  return out;
}

std::string join_names(const Graph& graph, const std::vector<size_t>& indices) {
  std::string out;
  for (size_t k = 0; k < indices.size(); ++k) {
    if (k) out += k + 1 == indices.size() ? " and " : ", ";
    out += "'" + graph.nodes[indices[k]].name + "'";
  }
  return out;
}

std::string why_channel_axes_differ(const Node& a, const Node& b) {
  if (a.channels_last == b.channels_last) return {};
  const Node& lin = a.channels_last ? a : b;
  const Node& other = a.channels_last ? b : a;
  if (lin.input_rank == 2) return {};
  const std::string rank = lin.input_rank > 0 ? "a rank-" + std::to_string(lin.input_rank) + " tensor"
                                              : "a tensor of unknown rank";
  return "'" + lin.name + "' (" + (lin.op_type.empty() ? "Linear" : lin.op_type) +
         ") contracts the last axis of " + rank + ", but '" + other.name + "' (" +
         (other.op_type.empty() ? op_kind_name(other.kind) : other.op_type) +
         ") has its channels on axis 1; they pair only on 2-D tensors" +
         (lin.input_rank == 0 ? " (pass input_shapes= or dummy_input= to show the rank)" : "");
}

const Node* weight_sharer(const Graph& graph, const Node& layer) {
  for (const Node& other : graph.nodes)
    if (&other != &layer && !other.removed && other.is_layer() &&
        (other.weight.tensor.data == layer.weight.tensor.data ||
         (!layer.bias.empty() && other.bias.data == layer.bias.data)))
      return &other;
  return nullptr;
}

}  // namespace prequant
