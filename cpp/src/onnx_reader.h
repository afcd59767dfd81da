// onnx_reader.h (internal) — the Reader that maps a parsed ONNX graph onto the engine's IR.
//
// One Reader lives for one ModelState::build_graph() call. Its work is split by concern:
//   onnx_read.cpp           indexing the graph, the topological order, the per-node loop (run)
//   onnx_read_patterns.cpp  multi-node forms read as one IR node (x·g(x) gates, GELU with Erf,
//                           MatMul + Add) and constant-foldable values (initializers, Constant,
//                           Concat of constants)
//   onnx_read_nodes.cpp     one ONNX node -> one IR node (map_conv, map_batch_norm, ...)
// Each map_* returns an empty string on success or the reason the node stays Opaque.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "onnx_model_impl.h"

namespace prequant {
namespace onnx_detail {

inline const pb::AttributeProto* find_attr(const pb::NodeProto& n, const char* name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}
inline int64_t attr_int(const pb::NodeProto& n, const char* name, int64_t def) {
  const auto* a = find_attr(n, name);
  return a ? a->i() : def;
}
inline double attr_float(const pb::NodeProto& n, const char* name, double def) {
  const auto* a = find_attr(n, name);
  return a ? static_cast<double>(a->f()) : def;
}
inline std::string attr_string(const pb::NodeProto& n, const char* name, const std::string& def) {
  const auto* a = find_attr(n, name);
  return a ? a->s() : def;
}
inline std::vector<int64_t> attr_ints(const pb::NodeProto& n, const char* name) {
  const auto* a = find_attr(n, name);
  if (!a) return {};
  return {a->ints().begin(), a->ints().end()};
}

inline bool default_domain(const pb::NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

inline std::string describe(const pb::NodeProto& n, const std::string& ir_name) {
  return n.op_type() + " node '" + ir_name + "'";
}

inline std::string shape_text(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

struct TensorInfo {
  int rank = -1;
  ChannelAxis axis = ChannelAxis::Free;
};

class Reader {
 public:
  explicit Reader(ModelState& impl) : impl_(impl), g_(impl.model.graph()) {}

  void run();

 private:
  ModelState& impl_;
  const pb::GraphProto& g_;
  std::unordered_map<std::string, int> initializer_;       // name -> index in g_.initializer
  std::unordered_set<std::string> sparse_;                 // sparse initializer names
  std::unordered_set<std::string> graph_input_;
  std::unordered_map<std::string, int> constant_node_;     // output name -> Constant node index
  std::unordered_map<std::string, std::string> identity_of_;  // Identity output -> its input
  std::unordered_map<std::string, int> producer_;          // tensor -> ONNX node index
  std::unordered_map<std::string, int> use_count_;         // tensor -> reads (nodes, outputs)
  std::unordered_map<std::string, TensorInfo> info_;
  std::unordered_map<std::string, int64_t> channels_;      // tensor -> dim 1, where its shape says
  std::unordered_map<std::string, int64_t> batch_;         // tensor -> dim 0, where its shape says
  std::unordered_map<std::string, int32_t> elem_type_;
  std::vector<std::vector<std::string>> implicit_;         // per ONNX node: outer-scope reads
  std::vector<int> fused_add_;                             // MatMul index -> Add index or -1
  std::vector<bool> absorbed_;                             // an Add fused into its MatMul, or
                                                           // a gate fused into its Mul
  struct GateForm {
    Gate gate = Gate::Sigmoid;
    std::string x;
    std::vector<int> parts;        // gate node, then the inner Mul(x, s) if any
    std::vector<double> scale;     // s, flattened (empty: 1)
  };
  std::unordered_map<int, GateForm> gate_of_;              // outer Mul index -> its gate
  std::unordered_set<std::string> ir_names_;
  // (node, input index) pairs that are IR parameters: their initializers may be edited.
  std::unordered_set<int64_t> param_uses_;

  bool is_initializer(const std::string& name) const {
    return initializer_.count(name) || sparse_.count(name);
  }
  // Follows Identity nodes back to an initializer (the TorchScript exporter shares equal
  // parameters through Identity nodes); returns `name` itself when it leads elsewhere.
  std::string resolve(const std::string& name) const {
    std::string t = name;
    for (int depth = 0; depth < 64 && !initializer_.count(t); ++depth) {
      auto it = identity_of_.find(t);
      if (it == identity_of_.end()) return name;
      t = it->second;
    }
    return initializer_.count(t) ? t : name;
  }
  // The initializer a parameter input names, directly or through Identity nodes.
  const pb::TensorProto* initializer(const std::string& name) const {
    auto it = initializer_.find(resolve(name));
    return it == initializer_.end() ? nullptr : &g_.initializer(it->second);
  }
  // A constant the node reads, flattened: an initializer or a Constant node's value (through
  // Identity nodes), or a Concat on axis 0 of such constants. nullopt when it is none of these.
  std::optional<std::vector<double>> constant_values(const std::string& name, const std::string& what);
  std::optional<std::vector<double>> single_constant(const std::string& name, const std::string& what);
  TensorInfo info(const std::string& name) const {
    auto it = info_.find(name);
    return it == info_.end() ? TensorInfo{} : it->second;
  }

  void index_graph();
  std::vector<int> topological_order() const;
  void find_matmul_add();
  void find_gated_activations();
  bool match_gelu_erf(int mul, GateForm& form);
  std::string unique_name(const pb::NodeProto& n, int index);
  TensorView view_of(const std::string& init, const std::string& node, const char* role,
                     bool flatten = false);
  void add_param(Node& node, Binding& b, ParamRole role, int onnx_node, int index);

  // Each returns an empty string on success or the reason the node stays opaque.
  std::string map_conv(const pb::NodeProto& n, int idx, Node& node, Binding& b, bool transposed);
  std::string map_gemm(const pb::NodeProto& n, int idx, Node& node, Binding& b);
  std::string map_matmul(const pb::NodeProto& n, int idx, Node& node, Binding& b);
  std::string map_batch_norm(const pb::NodeProto& n, int idx, Node& node, Binding& b);
  std::string map_clip(const pb::NodeProto& n, int idx, Node& node, Binding& b);
  std::string map_gated(const pb::NodeProto& n, const GateForm* form, Node& node, Binding& b);
  std::string map_prelu(const pb::NodeProto& n, int idx, Node& node, Binding& b);
  std::string map_pad(const pb::NodeProto& n, int idx, Node& node, Binding& b);
  std::string map_pool(const pb::NodeProto& n, Node& node);
  // Add/Sum, Concat, Split/Slice, ReduceMean, Resize, Flatten: the channel nodes of regions.
  std::string map_channel_node(const pb::NodeProto& n, Node& node);
  std::string equal_split_sizes(const pb::NodeProto& n, const std::string& x,
                                std::optional<std::vector<double>>& sizes) const;
  // Axis `a` (negative: from the end) of tensor x is its channel axis 1.
  bool is_channel_axis(int64_t a, const std::string& x) const;
  std::string require_channels_on_axis1(const pb::NodeProto& n, const std::string& x) const;
  std::string not_stored(const std::string& what, const std::string& tensor) const;
  // The tensor an Identity chain starting at `name` copies (`name` itself if none).
  std::string through_identities(const std::string& name) const;
  // Produced (through Identity nodes) by a Constant or DequantizeLinear node: a weight, not an
  // activation, although no initializer.
  bool holds_constant_weight(const std::string& tensor) const;
};

}  // namespace onnx_detail
}  // namespace prequant
