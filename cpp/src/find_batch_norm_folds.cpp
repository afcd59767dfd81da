// find_batch_norm_folds.cpp — which batch norms can be folded into which layer, and why the
// others cannot.
//
// Before: a graph with BatchNorm nodes.
// After:  unchanged; the result lists fold candidates and every BN that will stay, with a reason.
// Rules (each makes the fold exact):
//   conv→BN  the layer's output feeds only the BN and is not a graph output; channel counts
//            agree; the layer's weight is not shared with another layer. Any conv kind (grouped,
//            depthwise, transposed, 1-d/2-d/3-d) or linear layer.
//   BN→conv  tried only when conv→BN is not possible: the BN's output feeds only this layer;
//            the layer does not pad (a padded border would see zeros, not normalized zeros) and
//            is not transposed (a transposed conv's outputs see varying numbers of taps).
//   Both     a channels-last Linear (PyTorch) and the BN (axis 1) meet only on a 2-D tensor.
//            Grouped layers are exact: each input channel maps to its own group.
#include "fold_checks.h"
#include "pass_util.h"
#include "prequant/passes.h"

namespace prequant {

std::string why_not_foldable(const Graph& graph, size_t layer_index, size_t bn_index,
                             FoldDirection direction) {
  const Node& layer = graph.nodes[layer_index];
  const Node& bn = graph.nodes[bn_index];
  if (layer.removed || bn.removed) return "the node was already removed by an earlier fold";
  if (!layer.is_layer())
    return "'" + layer.name + "' is a " + op_kind_name(layer.kind) + ", not a conv or linear layer";
  if (bn.kind != OpKind::BatchNorm) return "'" + bn.name + "' is not a batch norm";
  if (bn.inputs.empty() || bn.outputs.empty() || layer.inputs.empty() || layer.outputs.empty())
    return "a node lacks its data input or output";
  const int64_t channels = bn.gamma.numel();
  if (const Node* other = weight_sharer(graph, layer))
    return "'" + layer.name + "' shares its weight with '" + other->name +
           "'; folding would change both — run unroll_shared_weights first";
  if (std::string why = why_channel_axes_differ(layer, bn); !why.empty()) return why;
  if (direction == FoldDirection::ConvThenBn) {
    const std::string& t = layer.outputs[0];
    if (bn.inputs[0] != t) return "'" + bn.name + "' does not read the output of '" + layer.name + "'";
    const auto& users = graph.consumers(t);
    if (users.size() != 1 || graph.is_graph_output(t))
      return "the output of '" + layer.name + "' also feeds " +
             (graph.is_graph_output(t) ? std::string("the graph output")
                                       : join_names(graph, users)) +
             "; folding the BN would change what they see";
    if (layer.out_channels() != channels)
      return "'" + layer.name + "' has " + std::to_string(layer.out_channels()) +
             " output channels but '" + bn.name + "' normalizes " + std::to_string(channels);
    return {};
  }
  const std::string& t = bn.outputs[0];
  if (layer.inputs[0] != t) return "'" + layer.name + "' does not read the output of '" + bn.name + "'";
  const auto& users = graph.consumers(t);
  if (users.size() != 1 || graph.is_graph_output(t))
    return "the output of '" + bn.name + "' also feeds " +
           (graph.is_graph_output(t) ? std::string("the graph output") : join_names(graph, users)) +
           "; it must stay";
  if (layer.is_transposed())
    return "'" + layer.name + "' is a transposed conv: its outputs see varying numbers of kernel "
           "taps, so the BN's shift does not become a per-channel bias";
  if (layer.has_padding)
    return "'" + layer.name + "' pads its input: the padded border would see zeros instead of "
           "normalized zeros, so folding BN→conv would be inexact";
  if (layer.in_channels() != channels)
    return "'" + layer.name + "' has " + std::to_string(layer.in_channels()) +
           " input channels but '" + bn.name + "' normalizes " + std::to_string(channels);
  return {};
}

namespace {
// " (why the front end kept it opaque)" for an opaque node with a reason, else "".
std::string opaque_why(const Node& n) {
  return n.kind == OpKind::Opaque && !n.opaque_reason.empty() ? " (" + n.opaque_reason + ")" : "";
}
}  // namespace

FoldResult find_batch_norm_folds(const Graph& graph) {
  FoldResult result;
  for (size_t j = 0; j < graph.nodes.size(); ++j) {
    const Node& bn = graph.nodes[j];
    if (bn.removed || bn.kind != OpKind::BatchNorm || bn.inputs.empty() || bn.outputs.empty())
      continue;
    std::string before, after;
    const auto producer = graph.producer(bn.inputs[0]);
    if (producer && graph.nodes[*producer].is_layer()) {
      before = why_not_foldable(graph, *producer, j, FoldDirection::ConvThenBn);
      if (before.empty()) {
        result.folded.push_back({{graph.nodes[*producer].name, bn.name, FoldDirection::ConvThenBn}, false, {}});
        continue;
      }
    } else {
      before = producer ? "its input comes from " + std::string(op_kind_name(graph.nodes[*producer].kind)) +
                              " '" + graph.nodes[*producer].name + "', not a conv or linear layer" +
                              opaque_why(graph.nodes[*producer])
                        : "its input is a graph input";
    }
    const auto& users = graph.consumers(bn.outputs[0]);
    if (users.size() == 1 && graph.nodes[users[0]].is_layer()) {
      after = why_not_foldable(graph, users[0], j, FoldDirection::BnThenConv);
      if (after.empty()) {
        result.folded.push_back({{graph.nodes[users[0]].name, bn.name, FoldDirection::BnThenConv}, false, {}});
        continue;
      }
    } else if (users.size() == 1) {
      after = "its output feeds " + std::string(op_kind_name(graph.nodes[users[0]].kind)) + " '" +
              graph.nodes[users[0]].name + "', not a conv or linear layer" + opaque_why(graph.nodes[users[0]]);
    } else {
      after = users.empty() ? "its output is not read by any layer"
                            : "its output feeds " + join_names(graph, users);
    }
    result.declined.push_back(
        {"fold_batch_norms", {bn.name}, "conv→BN: " + before + "; BN→conv: " + after});
  }
  return result;
}

}  // namespace prequant
