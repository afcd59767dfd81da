// find_cls_sets.cpp — discover the layer sets cross-layer scaling can equalize.
//
// Before: a graph (batch norms folded, or CLS declines across them).
// After:  unchanged; the result lists CLS sets and, for every layer that starts none, a reason.
// Rules:
//   L1 → L2 is a pair when L1's output reaches L2 through nodes that each have a single consumer
//   and are positively homogeneous per channel (f(a·x) = a·f(x), a > 0): ReLU, LeakyReLU,
//   PReLU, identity, zero padding, max/average pooling, and Clip(0, m) (ReLU6) unless the ReLU6
//   policy is 'skip'; with gated_activations also x·g(x) activations (SiLU, HardSwish, GELU),
//   whose gate scale the scaling rewrites. The channel counts must agree and neither weight may be shared; a
//   channels-last Linear (PyTorch) pairs with a conv only on a 2-D tensor.
//   L1 → DW → L3 is a triple when DW is depthwise (one filter per channel) and L3 is not; DW then
//   starts no set of its own. Other sets may overlap (L1→L2, L2→L3): scale_cls_sets iterates them.
#include <cmath>

#include "cls_chain.h"
#include "pass_util.h"

namespace prequant {

namespace {
// Only for the wording of a decline: ops that join, split, average or resample channels linearly
// (a scaling would pass through them exactly), as the three front ends name them. Which nodes
// CLS may cross is decided by node kinds, never by these names.
bool moves_channels_linearly(const std::string& op_type) {
  static const char* const names[] = {
      "Concat", "Split", "Chunk", "Mean", "Interpolate", "Upsample", "Slice", "Resize", "ReduceMean",
      "Concatenate", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Resizing", "Cropping1D", "Cropping2D",
      "Cropping3D", "call_function:cat", "call_function:split", "call_function:chunk",
      "call_function:interpolate", "call_function:mean", "call_method:mean", "call_method:split",
      "call_method:chunk"};
  for (const char* n : names)
    if (op_type == n) return true;
  return false;
}
}  // namespace

std::optional<ClsLink> follow_to_next_layer(const Graph& graph, size_t layer, Relu6Policy relu6,
                                            std::string& why, bool gated_activations) {
  const Node& l1 = graph.nodes[layer];
  ClsLink link;
  std::string t = l1.outputs.at(0);
  std::string from = l1.name;
  for (;;) {  // a loop, not recursion: chains of activations can be long
    if (graph.is_graph_output(t)) {
      why = "the output of '" + from + "' is a graph output";
      return std::nullopt;
    }
    const auto& users = graph.consumers(t);
    if (users.empty()) {
      why = "the output of '" + from + "' is not used";
      return std::nullopt;
    }
    if (users.size() > 1) {
      why = "the output of '" + from + "' feeds " + join_names(graph, users) +
            "; scaling would change all of them";
      return std::nullopt;
    }
    const Node& n = graph.nodes[users[0]];
    if (n.kind == OpKind::Opaque) {
      why = "'" + n.name + "' (" + (n.op_type.empty() ? "opaque" : n.op_type) + ") follows and " +
            (moves_channels_linearly(n.op_type)
                 ? "is linear, but cross-layer scaling does not carry scales through it yet"
                 : "is not known to be positively homogeneous per channel") +
            (n.opaque_reason.empty() ? "" : " (" + n.opaque_reason + ")");
      return std::nullopt;
    }
    if (n.kind == OpKind::Add || n.kind == OpKind::Concat || n.kind == OpKind::Split) {
      why = std::string(op_kind_name(n.kind)) + " '" + n.name + "' follows; a chain cannot scale "
            "across it (equalization regions can: regions=True, --regions)";
      return std::nullopt;
    }
    if (n.inputs.empty() || n.inputs[0] != t) {
      why = "'" + n.name + "' reads the output of '" + from + "' as a parameter, not as its data input";
      return std::nullopt;
    }
    switch (n.kind) {
      case OpKind::Conv:
      case OpKind::Linear:
        if (n.in_channels() != l1.out_channels()) {
          why = "'" + l1.name + "' has " + std::to_string(l1.out_channels()) +
                " output channels but '" + n.name + "' takes " + std::to_string(n.in_channels());
          return std::nullopt;
        }
        if (std::string axes = why_channel_axes_differ(l1, n); !axes.empty()) {
          why = axes;
          return std::nullopt;
        }
        if (const Node* s = weight_sharer(graph, l1); s) {
          why = "'" + l1.name + "' shares its weight with '" + s->name + "'; run unroll_shared_weights first";
          return std::nullopt;
        }
        if (const Node* s = weight_sharer(graph, n); s) {
          why = "'" + n.name + "' shares its weight with '" + s->name + "'; run unroll_shared_weights first";
          return std::nullopt;
        }
        link.next = users[0];
        return link;
      case OpKind::Relu:
      case OpKind::LeakyRelu:
      case OpKind::PRelu:
        link.relu_like = true;
        break;
      case OpKind::Clip:
        if (n.clip_min != 0.0) {
          why = "Clip '" + n.name + "' has min " + std::to_string(n.clip_min) +
                " ≠ 0, so it is not positively homogeneous";
          return std::nullopt;
        }
        if (relu6 == Relu6Policy::Skip && std::isfinite(n.clip_max)) {
          why = "ReLU6/Clip '" + n.name + "' sits between and the ReLU6 policy is 'skip' "
                "(use 'bound' to keep FP32 output exact, or 'replace')";
          return std::nullopt;
        }
        link.relu_like = true;
        break;
      case OpKind::Identity:
      case OpKind::ZeroPad:
      case OpKind::Pool:
      case OpKind::Resize:
        break;
      case OpKind::GatedActivation:
        if (!gated_activations) {
          why = std::string("'") + n.name + "' (" + (n.op_type.empty() ? gate_name(n.gate) : n.op_type) +
                ") follows and is x·g(x), not positively homogeneous; scaling through it is exact with "
                "gated_activations=True (--gated-activations)";
          return std::nullopt;
        }
        if (!n.gate_scale.empty() && static_cast<int64_t>(n.gate_scale.size()) != l1.out_channels()) {
          why = "'" + n.name + "' has " + std::to_string(n.gate_scale.size()) + " gate scales for " +
                std::to_string(l1.out_channels()) + " channels";
          return std::nullopt;
        }
        link.gated = true;
        break;
      case OpKind::Add:
      case OpKind::Concat:
      case OpKind::Split:  // handled above
        return std::nullopt;
      case OpKind::BatchNorm:
        why = "batch norm '" + n.name + "' sits between; fold batch norms first";
        return std::nullopt;
      case OpKind::Opaque:  // handled above
        return std::nullopt;
    }
    if (n.outputs.size() != 1) {
      why = "'" + n.name + "' has " + std::to_string(n.outputs.size()) + " outputs";
      return std::nullopt;
    }
    link.between.push_back(users[0]);
    from = n.name;
    t = n.outputs[0];
  }
}

ClsCandidates find_cls_sets(const Graph& graph, Relu6Policy relu6, bool gated_activations) {
  ClsCandidates result;
  std::vector<bool> middle(graph.nodes.size(), false);
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& l1 = graph.nodes[i];
    if (l1.removed || !l1.is_layer() || middle[i] || l1.outputs.empty()) continue;
    std::string why;
    const auto first = follow_to_next_layer(graph, i, relu6, why, gated_activations);
    if (!first) {
      result.declined.push_back({"scale_cls_sets", {l1.name}, why});
      continue;
    }
    const Node& l2 = graph.nodes[first->next];
    if (l2.is_depthwise() && !l1.is_depthwise()) {
      std::string why2;
      const auto second = follow_to_next_layer(graph, first->next, relu6, why2, gated_activations);
      if (second && !graph.nodes[second->next].is_depthwise()) {
        result.sets.push_back({{l1.name, l2.name, graph.nodes[second->next].name}});
        middle[first->next] = true;
        continue;
      }
    }
    result.sets.push_back({{l1.name, l2.name}});
  }
  return result;
}

}  // namespace prequant
