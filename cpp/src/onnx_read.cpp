// onnx_read.cpp — parse ONNX bytes and map the model onto the engine's Graph.
//
// Before: serialized ONNX bytes (opset 13–20 of the default domain).
// After:  Impl::model holds the parsed proto (external data resolved into raw_data), Impl::graph
//         the IR, Impl::buffers a float/double copy of every initializer the IR views, and
//         Impl::bindings where each IR node's tensors and parameters sit in the ONNX nodes.
// Mapping (default domain only; anything else, and any node whose parameters are not
// initializers, becomes Opaque with the reason in Node::opaque_reason):
//   Conv            weight (O, I/g, k...) out 0 in 1; pads/auto_pad -> has_padding
//   ConvTranspose   weight (I, O/g, k...) out 1 in 0, transposed
//   Gemm            alpha = beta = 1, transA = 0; transB = 1 -> (O, I) out 0 in 1,
//                   transB = 0 -> (I, O) out 1 in 0; C a 1-d initializer of O values
//   MatMul (+ Add)  X · B with B a 2-d initializer (I, O), optionally followed by an Add of a
//                   1-d initializer of O values (nn.Linear on a rank-3 input) -> one Linear
//   BatchNormalization (inference form), Relu, Clip (constant scalar bounds), LeakyRelu,
//   PRelu (slope initializer, scalar or per channel), Identity, Pad (constant mode, value 0,
//   constant pads, none on the batch or channel axis) -> ZeroPad,
//   MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool, ReduceMean over spatial axes -> Pool
//   (has_padding: an AveragePool with count_include_pad = 1 and pads or auto_pad SAME_*),
//   Add / Sum of activations -> Add, Concat on axis 1 -> Concat, Split (constant sizes, or
//   equal parts — num_outputs or none — of the channel count in the model's shapes) and Slice
//   (step 1, constant non-negative starts) on axis 1 -> Split, Resize by constant scales of 1 on
//   axes 0 and 1 -> Resize, Flatten(axis 1) of a rank-2 or globally pooled tensor -> Identity,
//   Mul(x, Sigmoid|HardSigmoid([Mul(x, s)])), HardSwish, Gelu, and GELU written with Erf
//   (0.5·x·(1 + Erf(x/√2)), any grouping; Mul(x, s/√2) inside) -> GatedActivation.
// Channel axes: conv activations keep channels on axis 1, a MatMul on a rank > 2 tensor on the
// last axis. The reader tracks which holds for each tensor and makes a node Opaque when the
// two would meet (a BN after such a MatMul would normalize the wrong axis).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "onnx_model_impl.h"
#include "prequant/errors.h"

namespace prequant {

using namespace onnx_detail;

// ---- Parsing ---------------------------------------------------------------------------

void ModelState::parse(std::string_view bytes) {
  if (bytes.empty())
    throw ModelFormatError("the model is empty (0 bytes); pass an .onnx file written by "
                           "torch.onnx.export or onnx.save_model");
  if (bytes.size() > static_cast<size_t>(INT_MAX))
    throw ModelFormatError("the model file is larger than 2 GB, which protobuf cannot parse; save "
                           "it with external data (onnx.save_model(..., save_as_external_data=True))");
  google::protobuf::io::ArrayInputStream stream(bytes.data(), static_cast<int>(bytes.size()));
  google::protobuf::io::CodedInputStream coded(&stream);
  coded.SetTotalBytesLimit(INT_MAX);
  if (!model.ParseFromCodedStream(&coded) || !coded.ConsumedEntireMessage())
    throw ModelFormatError("cannot parse the model: the bytes are not a valid ONNX protobuf (the "
                           "file is truncated, damaged or not an ONNX model)");
  if (!model.has_graph() || (model.graph().node_size() == 0 && model.graph().output_size() == 0))
    throw ModelFormatError("the file parsed but holds no ONNX graph (it is truncated, damaged or "
                           "not an ONNX model)");
  if (model.ir_version() <= 0)
    throw ModelFormatError("the model has no ir_version; it is damaged or not an ONNX model");
  bool found = false;
  std::string other_domains;
  for (const auto& op : model.opset_import()) {
    if (op.domain().empty() || op.domain() == "ai.onnx") {
      found = true;
      opset = op.version();
    } else {
      other_domains += (other_domains.empty() ? "" : ", ") + op.domain() + " " + std::to_string(op.version());
    }
  }
  if (!found && !other_domains.empty())  // e.g. an ai.onnx.ml or training-only model: well-formed
    throw UnsupportedError("the model imports only the opset(s) " + other_domains +
                           ", none of the default ONNX domain (ai.onnx); prequant folds and scales "
                           "Conv, Gemm, MatMul and BatchNormalization of the default domain, so "
                           "there is nothing it can work on in this model");
  if (!found)
    throw ModelFormatError("the model imports no opset at all (opset_import is empty: a damaged "
                           "or hand-built file); re-export it, or add the default-domain opset");
  if (opset < 13)
    throw UnsupportedError("the model uses opset " + std::to_string(opset) +
                           " of the default ONNX domain; prequant reads opsets 13 to 20 — convert "
                           "it first (onnx.version_converter.convert_version(model, 17)) or "
                           "re-export with opset_version=17");
  // Newer opsets are not accepted as they are: each mapped operator's schema would have to be
  // checked opset by opset. onnx's version converter does exactly that and converts models of
  // opset 21 to 23 built from the operators prequant maps down to 20 (checked with onnx 1.23).
  if (opset > 20)
    throw UnsupportedError("the model uses opset " + std::to_string(opset) +
                           " of the default ONNX domain; prequant reads opsets 13 to 20 — convert "
                           "it first: onnx.save(onnx.version_converter.convert_version("
                           "onnx.load(path), 20), path_20), or re-export with opset_version=20");
  external_files = load_external_data(model, base_dir);
  used_external_data = !external_files.empty();
}

// ---- Mapping to the IR -----------------------------------------------------------------

namespace {

const pb::AttributeProto* find_attr(const pb::NodeProto& n, const char* name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}
int64_t attr_int(const pb::NodeProto& n, const char* name, int64_t def) {
  const auto* a = find_attr(n, name);
  return a ? a->i() : def;
}
double attr_float(const pb::NodeProto& n, const char* name, double def) {
  const auto* a = find_attr(n, name);
  return a ? static_cast<double>(a->f()) : def;
}
std::string attr_string(const pb::NodeProto& n, const char* name, const std::string& def) {
  const auto* a = find_attr(n, name);
  return a ? a->s() : def;
}
std::vector<int64_t> attr_ints(const pb::NodeProto& n, const char* name) {
  const auto* a = find_attr(n, name);
  if (!a) return {};
  return {a->ints().begin(), a->ints().end()};
}

bool default_domain(const pb::NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

std::string describe(const pb::NodeProto& n, const std::string& ir_name) {
  return n.op_type() + " node '" + ir_name + "'";
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

struct TensorInfo {
  int rank = -1;
  ChannelAxis axis = ChannelAxis::Free;
};

// Names a subgraph (If/Loop/Scan body) reads from the enclosing scope.
std::vector<std::string> outer_scope_reads(const pb::NodeProto& node) {
  std::vector<const pb::GraphProto*> stack;
  for (const auto& a : node.attribute()) {
    if (a.has_g()) stack.push_back(&a.g());
    for (const auto& g : a.graphs()) stack.push_back(&g);
  }
  if (stack.empty()) return {};
  std::unordered_set<std::string> defined, read;
  std::vector<std::string> order;
  while (!stack.empty()) {
    const pb::GraphProto* g = stack.back();
    stack.pop_back();
    for (const auto& v : g->input()) defined.insert(v.name());
    for (const auto& t : g->initializer()) defined.insert(t.name());
    for (const auto& t : g->sparse_initializer()) defined.insert(t.values().name());
    for (const auto& n : g->node()) {
      for (const auto& o : n.output()) defined.insert(o);
      for (const auto& i : n.input())
        if (!i.empty() && read.insert(i).second) order.push_back(i);
      for (const auto& a : n.attribute()) {
        if (a.has_g()) stack.push_back(&a.g());
        for (const auto& sg : a.graphs()) stack.push_back(&sg);
      }
    }
    for (const auto& v : g->output())
      if (read.insert(v.name()).second) order.push_back(v.name());
  }
  std::vector<std::string> outer;
  for (const auto& name : order)
    if (!defined.count(name)) outer.push_back(name);
  return outer;
}

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
  // A constant the node reads: an initializer or a Constant node's value.
  std::optional<std::vector<double>> constant_values(const std::string& name, const std::string& what);
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

void Reader::index_graph() {
  for (int i = 0; i < g_.initializer_size(); ++i) {
    const auto& t = g_.initializer(i);
    if (t.name().empty())
      throw ModelFormatError("initializer #" + std::to_string(i) + " has no name; the model is damaged");
    if (!initializer_.emplace(t.name(), i).second)
      throw ModelFormatError("two initializers are named '" + t.name() + "'; the model is damaged");
  }
  for (const auto& s : g_.sparse_initializer()) sparse_.insert(s.values().name());
  auto note_type = [&](const pb::ValueInfoProto& v) {
    if (!v.has_type() || !v.type().has_tensor_type()) return;
    const auto& tt = v.type().tensor_type();
    if (tt.has_elem_type()) elem_type_[v.name()] = tt.elem_type();
    if (tt.has_shape()) info_[v.name()].rank = tt.shape().dim_size();
    if (tt.has_shape() && tt.shape().dim_size() >= 2 && tt.shape().dim(1).has_dim_value())
      channels_[v.name()] = tt.shape().dim(1).dim_value();
  };
  for (const auto& v : g_.input()) note_type(v);
  for (const auto& v : g_.output()) note_type(v);
  for (const auto& v : g_.value_info()) note_type(v);

  std::unordered_set<std::string> defined;
  for (const auto& v : g_.input()) defined.insert(v.name()), graph_input_.insert(v.name());
  for (const auto& [name, i] : initializer_) defined.insert(name);
  defined.insert(sparse_.begin(), sparse_.end());
  const int n = g_.node_size();
  implicit_.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto& node = g_.node(i);
    for (const auto& o : node.output()) {
      if (o.empty()) continue;
      if (producer_.count(o))
        throw ModelFormatError("tensor '" + o + "' is produced by two nodes ('" +
                               g_.node(producer_[o]).name() + "' and '" + node.name() +
                               "'); the model is damaged");
      if (defined.count(o) && !producer_.count(o))
        throw ModelFormatError("node '" + node.name() + "' writes '" + o +
                               "', which is already a graph input or initializer; the model is damaged");
      producer_[o] = i;
    }
    if (default_domain(node) && node.op_type() == "Constant" && node.output_size() == 1)
      constant_node_[node.output(0)] = i;
    if (default_domain(node) && node.op_type() == "Identity" && node.input_size() == 1 &&
        node.output_size() == 1)
      identity_of_[node.output(0)] = node.input(0);
    implicit_[static_cast<size_t>(i)] = outer_scope_reads(node);
  }
  for (int i = 0; i < n; ++i) {
    const auto& node = g_.node(i);
    auto check = [&](const std::string& t) {
      if (!defined.count(t) && !producer_.count(t)) {
        const std::string label = node.name().empty() ? "#" + std::to_string(i) : node.name();
        throw ModelFormatError(node.op_type() + " node '" + label + "' reads '" + t +
                                   "', which no node, graph input or initializer defines: the model "
                                   "is incomplete (a missing initializer?); re-export it, or add "
                                   "the missing tensor",
                               label);
      }
      ++use_count_[t];
    };
    for (const auto& t : node.input())
      if (!t.empty()) check(t);
    for (const auto& t : implicit_[static_cast<size_t>(i)])
      if (defined.count(t) || producer_.count(t)) ++use_count_[t];
  }
  for (const auto& v : g_.output()) {
    if (!defined.count(v.name()) && !producer_.count(v.name()))
      throw ModelFormatError("graph output '" + v.name() +
                             "' is not produced by any node; the model is damaged");
    ++use_count_[v.name()];
  }
}

// ONNX requires topologically sorted nodes; accept unsorted ones too (stable Kahn order).
std::vector<int> Reader::topological_order() const {
  const int n = g_.node_size();
  std::vector<std::vector<int>> users(static_cast<size_t>(n));
  std::vector<int> pending(static_cast<size_t>(n), 0);
  bool sorted = true;
  for (int i = 0; i < n; ++i) {
    std::unordered_set<int> deps;
    auto add = [&](const std::string& t) {
      auto it = producer_.find(t);
      if (it != producer_.end() && it->second != i) deps.insert(it->second);
    };
    for (const auto& t : g_.node(i).input())
      if (!t.empty()) add(t);
    for (const auto& t : implicit_[static_cast<size_t>(i)]) add(t);
    for (int d : deps) {
      if (d > i) sorted = false;
      users[static_cast<size_t>(d)].push_back(i);
    }
    pending[static_cast<size_t>(i)] = static_cast<int>(deps.size());
  }
  std::vector<int> order;
  order.reserve(static_cast<size_t>(n));
  if (sorted) {
    for (int i = 0; i < n; ++i) order.push_back(i);
    return order;
  }
  // Min-heap on the original index keeps the order stable.
  std::vector<int> ready;
  for (int i = 0; i < n; ++i)
    if (pending[static_cast<size_t>(i)] == 0) ready.push_back(i);
  std::make_heap(ready.begin(), ready.end(), std::greater<int>());
  while (!ready.empty()) {
    std::pop_heap(ready.begin(), ready.end(), std::greater<int>());
    const int i = ready.back();
    ready.pop_back();
    order.push_back(i);
    for (int u : users[static_cast<size_t>(i)])
      if (--pending[static_cast<size_t>(u)] == 0) {
        ready.push_back(u);
        std::push_heap(ready.begin(), ready.end(), std::greater<int>());
      }
  }
  if (static_cast<int>(order.size()) != n)
    throw ModelFormatError("the graph has a cycle (a node depends on its own output); the model "
                           "is damaged");
  return order;
}

bool is_float_initializer_2d(const pb::TensorProto* t) {
  return t && t->dims_size() == 2 && (t->data_type() == kFloat || t->data_type() == kDouble);
}

// x·g(x) written as Mul(x, G(x)) or Mul(x, G(Mul(x, s))) with G = Sigmoid (SiLU) or HardSigmoid
// (alpha 1/6, beta 1/2: HardSwish) and s a constant, or GELU written with Erf (match_gelu_erf):
// one GatedActivation, owned by the outer Mul.
void Reader::find_gated_activations() {
  const int n = g_.node_size();
  auto plain = [&](int i, const char* op, int inputs) {
    const auto& m = g_.node(i);
    return default_domain(m) && m.op_type() == op && m.input_size() == inputs && m.output_size() == 1 &&
           implicit_[static_cast<size_t>(i)].empty() && !absorbed_[static_cast<size_t>(i)];
  };
  auto single_use = [&](const std::string& t) {
    const auto it = use_count_.find(t);
    return it != use_count_.end() && it->second == 1;
  };
  for (int i = 0; i < n; ++i) {
    if (!plain(i, "Mul", 2)) continue;
    const auto& m = g_.node(i);
    if (GateForm gelu; match_gelu_erf(i, gelu)) {
      for (int part : gelu.parts) absorbed_[static_cast<size_t>(part)] = true;
      gate_of_[i] = std::move(gelu);
      continue;
    }
    for (int k = 0; k < 2; ++k) {
      const std::string& x = m.input(k);
      const std::string& gt = m.input(1 - k);
      const auto p = producer_.find(gt);
      if (x.empty() || is_initializer(x) || p == producer_.end() || !single_use(gt)) continue;
      const int gi = p->second;
      GateForm form;
      if (plain(gi, "Sigmoid", 1)) {
        form.gate = Gate::Sigmoid;
      } else if (plain(gi, "HardSigmoid", 1) && std::abs(attr_float(g_.node(gi), "alpha", 0.2) - 1.0 / 6) < 1e-6 &&
                 std::abs(attr_float(g_.node(gi), "beta", 0.5) - 0.5) < 1e-6) {
        form.gate = Gate::HardSigmoid;
      } else {
        continue;
      }
      form.x = x;
      form.parts.push_back(gi);
      const std::string& z = g_.node(gi).input(0);
      if (z != x) {  // the scaled form: z = Mul(x, s)
        const auto q = producer_.find(z);
        if (q == producer_.end() || !single_use(z) || !plain(q->second, "Mul", 2)) continue;
        const auto& zm = g_.node(q->second);
        const int xk = zm.input(0) == x ? 0 : zm.input(1) == x ? 1 : -1;
        if (xk < 0) continue;
        const auto s = constant_values(zm.input(1 - xk), "the gate scale of '" + m.name() + "'");
        if (!s || s->empty()) continue;
        form.scale = *s;
        form.parts.push_back(q->second);
      }
      for (int part : form.parts) absorbed_[static_cast<size_t>(part)] = true;
      gate_of_[i] = std::move(form);
      break;
    }
  }
}

// GELU (erf) as torch.onnx (opset < 20) and most exporters write it, 0.5·x·(1 + Erf(x/√2)):
// `mul` is the last of two Muls whose three factors are x, Add(Erf(u), 1) and the constant 0.5,
// in any order and grouping, with u = Div(x, √2) or Mul(x, c). c = k/√2 is x·Φ(k·x): k = 1 is
// plain GELU, a per-channel k (the writer's scaled form) its gate scale. Every tensor between is
// read once, so the nodes become one GatedActivation owned by `mul`.
bool Reader::match_gelu_erf(int mul, GateForm& form) {
  auto op_at = [&](const std::string& t, const char* op, int inputs) -> const pb::NodeProto* {
    const auto p = producer_.find(t);
    const auto u = use_count_.find(t);
    if (p == producer_.end() || u == use_count_.end() || u->second != 1) return nullptr;
    const int i = p->second;
    const auto& m = g_.node(i);
    const bool ok = default_domain(m) && m.op_type() == op && m.input_size() == inputs && m.output_size() == 1 &&
                    implicit_[static_cast<size_t>(i)].empty() && !absorbed_[static_cast<size_t>(i)];
    return ok ? &m : nullptr;
  };
  auto index_of = [&](const std::string& t) { return producer_.at(t); };
  auto scalar = [&](const std::string& t, double want) {
    const auto v = is_initializer(t) || constant_node_.count(t) || identity_of_.count(t)
                       ? constant_values(t, "a constant of GELU '" + g_.node(mul).name() + "'")
                       : std::nullopt;
    return v && v->size() == 1 && std::abs((*v)[0] - want) <= 1e-6 * std::abs(want);
  };
  // The three factors: the outer Mul's two inputs, one of them expanded if it is a Mul read once.
  const auto& outer = g_.node(mul);
  std::vector<std::string> factors;
  int inner = -1;
  for (int k = 0; k < 2 && inner < 0; ++k)
    if (const auto* m = op_at(outer.input(k), "Mul", 2)) {
      inner = index_of(outer.input(k));
      factors = {outer.input(1 - k), m->input(0), m->input(1)};
    }
  if (inner < 0) return false;
  int half = -1, gate = -1;
  for (int k = 0; k < 3; ++k) {
    if (scalar(factors[static_cast<size_t>(k)], 0.5)) half = k;
    else if (op_at(factors[static_cast<size_t>(k)], "Add", 2)) gate = k;
  }
  if (half < 0 || gate < 0) return false;
  const std::string x = factors[static_cast<size_t>(3 - half - gate)];
  if (x.empty() || is_initializer(x)) return false;
  // Add(Erf(u), 1), either order
  const std::string& a = factors[static_cast<size_t>(gate)];
  const auto& add = g_.node(index_of(a));
  const int ek = op_at(add.input(0), "Erf", 1) ? 0 : op_at(add.input(1), "Erf", 1) ? 1 : -1;
  if (ek < 0 || !scalar(add.input(1 - ek), 1.0)) return false;
  const std::string& e = add.input(ek);
  const std::string& u = g_.node(index_of(e)).input(0);
  const auto* div = op_at(u, "Div", 2);
  const auto* scale_mul = div ? nullptr : op_at(u, "Mul", 2);
  std::vector<double> k;
  if (div && div->input(0) == x) {
    const auto d = constant_values(div->input(1), "the divisor of GELU '" + outer.name() + "'");
    if (!d || d->empty()) return false;
    for (double v : *d) k.push_back(std::sqrt(2.0) / v);
  } else if (scale_mul && (scale_mul->input(0) == x || scale_mul->input(1) == x)) {
    const int xk = scale_mul->input(0) == x ? 0 : 1;
    const auto c = constant_values(scale_mul->input(1 - xk), "the gate scale of GELU '" + outer.name() + "'");
    if (!c || c->empty()) return false;
    for (double v : *c) k.push_back(std::sqrt(2.0) * v);
  } else {
    return false;
  }
  if (std::any_of(k.begin(), k.end(), [](double v) { return !(v > 0) || !std::isfinite(v); })) return false;
  const bool unit = std::all_of(k.begin(), k.end(), [](double v) { return std::abs(v - 1.0) <= 1e-6; });
  if (!unit && k.size() == 1) return false;  // x·Φ(k·x) with one k ≠ 1: not a GELU of the model's making
  form.gate = Gate::GeluErf;
  form.x = x;
  form.scale = unit ? std::vector<double>{} : k;
  form.parts = {index_of(e), index_of(a), index_of(u), inner};
  return true;
}

void Reader::find_matmul_add() {
  const int n = g_.node_size();
  fused_add_.assign(static_cast<size_t>(n), -1);
  absorbed_.assign(static_cast<size_t>(n), false);
  std::unordered_map<std::string, int> reader;  // tensor -> the single node reading it
  for (int i = 0; i < n; ++i)
    for (const auto& t : g_.node(i).input()) reader[t] = i;
  for (int i = 0; i < n; ++i) {
    const auto& m = g_.node(i);
    if (!default_domain(m) || m.op_type() != "MatMul" || m.input_size() != 2 || m.output_size() != 1)
      continue;
    const auto* b = initializer(m.input(1));
    if (!is_float_initializer_2d(b) || is_initializer(m.input(0))) continue;
    const std::string& out = m.output(0);
    if (use_count_[out] != 1) continue;
    auto it = reader.find(out);
    if (it == reader.end()) continue;
    const auto& add = g_.node(it->second);
    if (!default_domain(add) || add.op_type() != "Add" || add.input_size() != 2 ||
        add.output_size() != 1 || !implicit_[static_cast<size_t>(it->second)].empty())
      continue;
    const int other = add.input(0) == out ? 1 : 0;
    if (add.input(1 - other) != out) continue;
    const auto* c = initializer(add.input(other));
    if (!c || c->dims_size() != 1 || c->dims(0) != b->dims(1) || c->data_type() != b->data_type())
      continue;
    fused_add_[static_cast<size_t>(i)] = it->second;
    absorbed_[static_cast<size_t>(it->second)] = true;
  }
}

std::optional<std::vector<double>> Reader::constant_values(const std::string& name,
                                                           const std::string& what) {
  if (const auto* t = initializer(name)) return decode_numeric(*t, what);
  auto it = constant_node_.end();
  std::string t = name;
  for (int depth = 0; depth < 64; ++depth) {
    it = constant_node_.find(t);
    if (it != constant_node_.end()) break;
    auto id = identity_of_.find(t);
    if (id == identity_of_.end()) break;
    t = id->second;
  }
  if (it == constant_node_.end()) return std::nullopt;
  const auto& c = g_.node(it->second);
  for (const auto& a : c.attribute()) {
    if (a.name() == "value" && a.has_t()) return decode_numeric(a.t(), what);
    if (a.name() == "value_float") return std::vector<double>{a.f()};
    if (a.name() == "value_int") return std::vector<double>{static_cast<double>(a.i())};
    if (a.name() == "value_floats") return std::vector<double>(a.floats().begin(), a.floats().end());
    if (a.name() == "value_ints") {
      std::vector<double> v;
      for (int64_t x : a.ints()) v.push_back(static_cast<double>(x));
      return v;
    }
  }
  return std::nullopt;
}

std::string Reader::unique_name(const pb::NodeProto& n, int index) {
  std::string base = n.name();
  if (base.empty()) base = n.op_type() + "_" + std::to_string(index);
  std::string name = base;
  for (int k = 1; !ir_names_.insert(name).second; ++k) name = base + "_" + std::to_string(k);
  return name;
}

TensorView Reader::view_of(const std::string& init, const std::string& node, const char* role,
                           bool flatten) {
  const auto* t = initializer(init);
  auto& slot = impl_.buffers[init];
  if (!slot) {
    const int32_t type = t->data_type();
    if (type == kFloat16 || type == kBfloat16)
      throw UnsupportedError("node '" + node + "': " + role + " '" + init + "' is " +
                                 onnx_type_name(type) +
                                 "; prequant folds and scales float32/float64 weights — convert "
                                 "the model to float32 first",
                             node);
    if (type != kFloat && type != kDouble)
      throw UnsupportedError("node '" + node + "': " + role + " '" + init + "' has data type " +
                                 onnx_type_name(type) +
                                 "; prequant needs float32 or float64 weights (a quantized model "
                                 "cannot be equalized — use the float model)",
                             node);
    const std::string what = "initializer '" + init + "' (" + role + " of '" + node + "')";
    const std::vector<double> values = decode_numeric(*t, what);
    auto buffer = std::make_unique<Buffer>();
    buffer->dtype = type == kFloat ? DType::Float32 : DType::Float64;
    buffer->dims.assign(t->dims().begin(), t->dims().end());
    buffer->numel = static_cast<int64_t>(values.size());
    const size_t bytes = values.size() * (type == kFloat ? 4 : 8);
    buffer->storage.assign(std::max<size_t>((bytes + 7) / 8, 1), 0.0);
    if (type == kFloat) {
      auto* p = static_cast<float*>(buffer->data());
      for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<float>(values[i]);
    } else {
      std::memcpy(buffer->data(), values.data(), bytes);
    }
    slot = std::move(buffer);
  }
  TensorView v;
  v.data = slot->data();
  v.dtype = slot->dtype;
  v.shape = flatten ? std::vector<int64_t>{slot->numel} : slot->dims;
  v.name = init;
  return v;
}

void Reader::add_param(Node& node, Binding& b, ParamRole role, int onnx_node, int index) {
  const auto& n = g_.node(onnx_node);
  const std::string init = resolve(n.input(index));
  param_field(node, role) = view_of(init, node.name, param_role_name(role), role == ParamRole::Slope);
  const auto* t = initializer(init);
  b.params.push_back({role, onnx_node, index, init, {t->dims().begin(), t->dims().end()}});
  param_uses_.insert((static_cast<int64_t>(onnx_node) << 20) | index);
}

std::string Reader::require_channels_on_axis1(const pb::NodeProto& n, const std::string& x) const {
  if (info(x).axis == ChannelAxis::Last)
    return "its input '" + x + "' comes from a MatMul on a rank-" +
           (info(x).rank > 0 ? std::to_string(info(x).rank) : std::string("?")) +
           " tensor, whose channels are on the last axis, but " + n.op_type() +
           " works on axis 1; the engine cannot pair them";
  return {};
}

// Why a parameter input is no weight the engine can change: only initializers are, and this
// one is fed at run time or computed by a node (a Constant, a DequantizeLinear, ...).
std::string Reader::not_stored(const std::string& what, const std::string& tensor) const {
  const std::string t = through_identities(tensor);
  const std::string head = "its " + what + " '" + tensor + "' ";
  if (graph_input_.count(t))
    return head + "is a graph input, fed at run time, not an initializer: prequant changes only "
                  "weights stored in the model (export with the weights as initializers, e.g. "
                  "torch.onnx.export(..., export_params=True))";
  auto it = producer_.find(t);
  if (it == producer_.end()) return head + "is not an initializer";
  const pb::NodeProto& p = g_.node(it->second);
  const std::string by = p.op_type() + " node '" + (p.name().empty() ? t : p.name()) + "'";
  if (default_domain(p) && p.op_type() == "Constant")
    return head + "is the output of " + by + ", not an initializer: prequant folds and scales "
                  "only initializers (store the constant as an initializer to have it equalized)";
  if (p.op_type() == "DequantizeLinear")
    return head + "is computed by " + by + ": the model is already quantized; equalize the "
                  "float model before quantizing it";
  return head + "is computed by " + by + ", not stored as an initializer";
}

std::string Reader::through_identities(const std::string& name) const {
  std::string t = name;
  for (int depth = 0; depth < 64; ++depth) {  // bounded, as resolve(): a damaged model may loop
    auto it = identity_of_.find(t);
    if (it == identity_of_.end()) break;
    t = it->second;
  }
  return t;
}

bool Reader::holds_constant_weight(const std::string& tensor) const {
  auto it = producer_.find(through_identities(tensor));
  if (it == producer_.end()) return false;
  const std::string& op = g_.node(it->second).op_type();
  return op == "Constant" || op == "DequantizeLinear";
}

std::string Reader::map_conv(const pb::NodeProto& n, int idx, Node& node, Binding& b, bool transposed) {
  if (n.input_size() < 2 || n.output_size() != 1) return "it does not have the form (X, W[, B]) -> Y";
  const std::string& w = n.input(1);
  if (!initializer(w)) return not_stored("weight", w);
  const auto* wt = initializer(w);
  if (wt->dims_size() < 3 || wt->dims_size() > 5)
    return "its weight has rank " + std::to_string(wt->dims_size()) + "; 1-d to 3-d convs are supported";
  const int64_t groups = attr_int(n, "group", 1);
  // The layout holds the group count as an int; more groups than channels is never valid.
  if (groups < 1 || groups > INT_MAX || groups > std::max<int64_t>(wt->dims(0), 1))
    return "its group attribute is " + std::to_string(groups);
  const bool has_bias = n.input_size() > 2 && !n.input(2).empty();
  if (has_bias) {
    const auto* bt = initializer(n.input(2));
    if (!bt) return not_stored("bias", n.input(2));
    // ConvTranspose: O/g · g output channels; a damaged shape must not overflow the product.
    int64_t outs = wt->dims(0);
    if (transposed && __builtin_mul_overflow(wt->dims(1), groups, &outs))
      return "its weight shape " + shape_text({wt->dims().begin(), wt->dims().end()}) +
             " and group " + std::to_string(groups) + " overflow the channel count";
    if (bt->dims_size() != 1 || bt->dims(0) != outs)
      return "its bias has shape " + shape_text({bt->dims().begin(), bt->dims().end()}) +
             ", not (" + std::to_string(outs) + ",)";
  }
  if (auto why = require_channels_on_axis1(n, n.input(0)); !why.empty()) return why;
  const int spatial = wt->dims_size() - 2;
  const std::string auto_pad = attr_string(n, "auto_pad", "NOTSET");
  const auto pads = attr_ints(n, "pads");
  bool kernel_one = true;
  for (int k = 2; k < wt->dims_size(); ++k) kernel_one = kernel_one && wt->dims(k) == 1;
  bool padding = std::any_of(pads.begin(), pads.end(), [](int64_t p) { return p != 0; });
  if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") padding = padding || !kernel_one;
  if (auto_pad == "VALID") padding = false;
  if (transposed) {
    const auto op = attr_ints(n, "output_padding");
    padding = padding || std::any_of(op.begin(), op.end(), [](int64_t p) { return p != 0; });
  }
  node.kind = OpKind::Conv;
  node.spatial_rank = spatial;
  node.has_padding = padding;
  add_param(node, b, ParamRole::Weight, idx, 1);
  node.weight.layout = transposed ? ChannelLayout{1, 0, static_cast<int>(groups), true}
                                  : ChannelLayout{0, 1, static_cast<int>(groups), false};
  if (has_bias) add_param(node, b, ParamRole::Bias, idx, 2);
  else b.params.push_back({ParamRole::Bias, idx, 2, {}, {}});
  info_[n.output(0)] = {spatial + 2, ChannelAxis::Second};
  return {};
}

std::string Reader::map_gemm(const pb::NodeProto& n, int idx, Node& node, Binding& b) {
  if (n.input_size() < 2 || n.output_size() != 1) return "it does not have the form (A, B[, C]) -> Y";
  if (attr_int(n, "transA", 0) != 0) return "transA = 1 (the input is transposed); only transA = 0 is a linear layer";
  const double alpha = attr_float(n, "alpha", 1.0), beta = attr_float(n, "beta", 1.0);
  const bool has_c = n.input_size() > 2 && !n.input(2).empty();
  if (alpha != 1.0 || (has_c && beta != 1.0))
    return "alpha = " + std::to_string(alpha) + ", beta = " + std::to_string(beta) +
           "; only alpha = beta = 1 is a plain linear layer";
  const auto* bt = initializer(n.input(1));
  if (!bt) return not_stored("weight B", n.input(1));
  if (bt->dims_size() != 2) return "its weight B is not 2-d";
  const bool trans_b = attr_int(n, "transB", 0) != 0;
  const int64_t outs = trans_b ? bt->dims(0) : bt->dims(1);
  if (has_c) {
    const auto* ct = initializer(n.input(2));
    if (!ct) return not_stored("bias C", n.input(2));
    if (ct->dims_size() != 1 || ct->dims(0) != outs)
      return "its bias C has shape " + shape_text({ct->dims().begin(), ct->dims().end()}) +
             "; only a 1-d bias of " + std::to_string(outs) + " values is a per-channel bias";
  }
  node.kind = OpKind::Linear;
  add_param(node, b, ParamRole::Weight, idx, 1);
  node.weight.layout = trans_b ? ChannelLayout{0, 1, 1, false} : ChannelLayout{1, 0, 1, false};
  if (has_c) add_param(node, b, ParamRole::Bias, idx, 2);
  else b.params.push_back({ParamRole::Bias, idx, 2, {}, {}});
  b.linear = LinearForm::Gemm;
  info_[n.output(0)] = {2, ChannelAxis::Both};
  return {};
}

std::string Reader::map_matmul(const pb::NodeProto& n, int idx, Node& node, Binding& b) {
  if (n.input_size() != 2 || n.output_size() != 1) return "it does not have the form (X, B) -> Y";
  const auto* bt = initializer(n.input(1));
  if (!bt) return "its right operand '" + n.input(1) + "' is computed by the graph, not an initializer";
  if (bt->dims_size() != 2) return "its right operand is not a 2-d initializer";
  if (bt->data_type() != kFloat && bt->data_type() != kDouble)
    return std::string("its right operand is ") + onnx_type_name(bt->data_type());
  if (is_initializer(n.input(0))) return "its left operand is a constant";
  const TensorInfo x = info(n.input(0));
  if (x.rank == 1) return "its input is a vector (rank 1)";
  if (x.axis == ChannelAxis::Second)
    return "it contracts the last axis of '" + n.input(0) +
           "', whose channels are on axis 1 (a conv activation); the engine cannot pair them";
  node.kind = OpKind::Linear;
  add_param(node, b, ParamRole::Weight, idx, 1);
  node.weight.layout = ChannelLayout{1, 0, 1, false};
  const int add = fused_add_[static_cast<size_t>(idx)];
  std::string out = n.output(0);
  if (add >= 0) {
    const auto& a = g_.node(add);
    const int bias_index = a.input(0) == n.output(0) ? 1 : 0;
    add_param(node, b, ParamRole::Bias, add, bias_index);
    b.linear = LinearForm::MatMulAdd;
    b.onnx_add = add;
    b.add_bias_index = bias_index;
    out = a.output(0);
    node.op_type = "MatMul+Add";
  } else {
    b.params.push_back({ParamRole::Bias, -1, -1, {}, {}});
    b.linear = LinearForm::MatMulOnly;
  }
  info_[out] = {x.rank, x.rank == 2 ? ChannelAxis::Both : ChannelAxis::Last};
  return {};
}

std::string Reader::map_batch_norm(const pb::NodeProto& n, int idx, Node& node, Binding& b) {
  if (n.input_size() != 5) return "it does not have the form (X, scale, B, mean, var) -> Y";
  for (int k = 1; k < n.output_size(); ++k)
    if (!n.output(k).empty())
      return "it also outputs running statistics (training form); export the model in eval mode";
  if (n.output_size() < 1 || n.output(0).empty()) return "it has no output";
  if (attr_int(n, "training_mode", 0) != 0)
    return "training_mode = 1; export the model in eval mode (model.eval())";
  int64_t channels = -1;
  static const char* names[] = {"scale", "B", "mean", "var"};
  for (int k = 1; k < 5; ++k) {
    const auto* t = initializer(n.input(k));
    if (!t) return not_stored(names[k - 1], n.input(k));
    if (t->dims_size() != 1) return std::string("its ") + names[k - 1] + " is not 1-d";
    if (channels < 0) channels = t->dims(0);
    if (t->dims(0) != channels) return "its scale, B, mean and var have different lengths";
  }
  if (auto why = require_channels_on_axis1(n, n.input(0)); !why.empty()) return why;
  node.kind = OpKind::BatchNorm;
  node.eps = attr_float(n, "epsilon", 1e-5);
  add_param(node, b, ParamRole::Gamma, idx, 1);
  add_param(node, b, ParamRole::Beta, idx, 2);
  add_param(node, b, ParamRole::Mean, idx, 3);
  add_param(node, b, ParamRole::Var, idx, 4);
  const TensorInfo x = info(n.input(0));
  info_[n.output(0)] = {x.rank, x.axis == ChannelAxis::Both || x.rank == 2 ? ChannelAxis::Both
                                                                           : ChannelAxis::Second};
  return {};
}

std::string Reader::map_clip(const pb::NodeProto& n, int idx, Node& node, Binding& b) {
  (void)idx;
  if (n.input_size() < 1 || n.output_size() != 1) return "it does not have the form (X[, min, max]) -> Y";
  double bounds[2] = {-std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
  const char* which[2] = {"min", "max"};
  for (int k = 1; k <= 2 && k < n.input_size(); ++k) {
    const std::string& t = n.input(k);
    if (t.empty()) continue;
    const auto v = constant_values(t, std::string("the ") + which[k - 1] + " of Clip '" + node.name + "'");
    if (!v) return std::string("its ") + which[k - 1] + " '" + t + "' is computed by the graph, not a constant";
    if (v->size() != 1) return std::string("its ") + which[k - 1] + " is not a scalar";
    bounds[k - 1] = (*v)[0];
    if (const auto* it = initializer(t)) b.act_dtype = it->data_type() == kDouble ? DType::Float64 : DType::Float32;
  }
  auto et = elem_type_.find(n.input(0));
  if (et != elem_type_.end()) b.act_dtype = et->second == kDouble ? DType::Float64 : DType::Float32;
  node.kind = OpKind::Clip;
  node.clip_min = b.clip_min = bounds[0];
  node.clip_max = b.clip_max = bounds[1];
  return {};
}

std::string Reader::map_gated(const pb::NodeProto& n, const GateForm* form, Node& node, Binding& b) {
  const std::string x = form ? form->x : n.input(0);
  if (form) {
    node.gate = form->gate;
    node.gate_scale = form->scale;
    b.gate_parts = form->parts;  // its parts were skipped already: this form must not fail
  } else if (n.op_type() == "HardSwish") {
    node.gate = Gate::HardSigmoid;
  } else {
    const std::string approximate = attr_string(n, "approximate", "none");
    if (approximate != "none" && approximate != "tanh") return "its approximate attribute is '" + approximate + "'";
    node.gate = approximate == "tanh" ? Gate::GeluTanh : Gate::GeluErf;
  }
  auto et = elem_type_.find(x);
  if (et != elem_type_.end()) b.act_dtype = et->second == kDouble ? DType::Float64 : DType::Float32;
  node.kind = OpKind::GatedActivation;
  return {};
}

std::string Reader::map_prelu(const pb::NodeProto& n, int idx, Node& node, Binding& b) {
  if (n.input_size() != 2 || n.output_size() != 1) return "it does not have the form (X, slope) -> Y";
  const auto* st = initializer(n.input(1));
  if (!st) return not_stored("slope", n.input(1));
  const std::vector<int64_t> dims(st->dims().begin(), st->dims().end());
  const int64_t numel = dims_numel(st->dims());
  if (numel != 1) {
    // Per channel only if, broadcast against the input, the slope varies along the channel axis
    // alone.
    const TensorInfo x = info(n.input(0));
    int non_one = -1, count = 0;
    for (size_t k = 0; k < dims.size(); ++k)
      if (dims[k] != 1) non_one = static_cast<int>(k), ++count;
    bool per_channel = false;
    if (count == 1) {
      const int from_end = static_cast<int>(dims.size()) - 1 - non_one;  // 0 = last axis
      if (x.axis == ChannelAxis::Last || x.axis == ChannelAxis::Both) per_channel = from_end == 0;
      if ((x.axis == ChannelAxis::Second || x.axis == ChannelAxis::Both || x.axis == ChannelAxis::Free) &&
          x.rank > 0)
        per_channel = per_channel || (x.rank - 1 - from_end == 1);
    }
    if (!per_channel)
      return "its slope of shape " + shape_text(dims) +
             " is neither one value nor one per channel of its input (or the input's rank is unknown)";
  }
  node.kind = OpKind::PRelu;
  add_param(node, b, ParamRole::Slope, idx, 1);
  return {};
}

std::string Reader::map_pad(const pb::NodeProto& n, int idx, Node& node, Binding& b) {
  (void)idx;
  (void)b;
  if (n.input_size() < 2 || n.output_size() != 1) return "it does not have the form (X, pads, ...) -> Y";
  const std::string mode = attr_string(n, "mode", "constant");
  if (mode != "constant") return "mode '" + mode + "' is not constant zero padding";
  const auto pads = constant_values(n.input(1), "the pads of Pad '" + node.name + "'");
  if (!pads) return "its pads '" + n.input(1) + "' are computed by the graph, not constants";
  if (n.input_size() > 2 && !n.input(2).empty()) {
    const auto value = constant_values(n.input(2), "the constant_value of Pad '" + node.name + "'");
    if (!value) return "its constant_value is computed by the graph";
    if (value->size() != 1 || (*value)[0] != 0.0) return "it pads with a non-zero value";
  }
  const TensorInfo x = info(n.input(0));
  if (pads->size() % 2) return "its pads have an odd length";
  const int listed = static_cast<int>(pads->size() / 2);
  std::vector<int64_t> axes;
  if (n.input_size() > 3 && !n.input(3).empty()) {
    const auto a = constant_values(n.input(3), "the axes of Pad '" + node.name + "'");
    if (!a) return "its axes are computed by the graph";
    for (double v : *a) {
      // Converting a double outside int64's range (or NaN) is undefined behaviour.
      if (!(std::abs(v) <= 1024.0) || v != std::trunc(v)) return "its axes are not valid axis numbers";
      axes.push_back(static_cast<int64_t>(v));
    }
    if (static_cast<int>(axes.size()) != listed) return "its axes and pads disagree in length";
  } else {
    for (int k = 0; k < listed; ++k) axes.push_back(k);
  }
  const bool has_axes = n.input_size() > 3 && !n.input(3).empty();
  const int rank = has_axes ? x.rank : listed;
  if (x.axis == ChannelAxis::Last) return require_channels_on_axis1(n, n.input(0));
  for (size_t k = 0; k < axes.size(); ++k) {
    int64_t a = axes[k];
    if (a < 0) {
      if (rank < 0) return "it has negative axes and the input's rank is unknown";
      a += rank;
    }
    if ((a == 0 || a == 1) && ((*pads)[k] != 0 || (*pads)[k + static_cast<size_t>(listed)] != 0))
      return "it pads the batch or channel axis";
  }
  node.kind = OpKind::ZeroPad;
  info_[n.output(0)] = {x.rank, x.axis == ChannelAxis::Free ? ChannelAxis::Free : ChannelAxis::Second};
  return {};
}

// A Split without split sizes cuts the channel count C (from x's shape) into equal parts: with
// num_outputs (opset 18) each of ceil(C/n) channels, the last one smaller if need be; without it
// (opset < 18) C/n each, which must divide.
std::string Reader::equal_split_sizes(const pb::NodeProto& n, const std::string& x,
                                      std::optional<std::vector<double>>& sizes) const {
  const auto c = channels_.find(x);
  if (c == channels_.end() || c->second < 1)
    return "its split sizes are not given and the channel count of its input is not in the model's shapes "
           "(run onnx.shape_inference.infer_shapes)";
  const int64_t outputs = n.output_size();
  const int64_t parts = attr_int(n, "num_outputs", outputs);
  if (parts != outputs || parts < 1) return "its num_outputs differs from its output count";
  const bool has_num_outputs = std::any_of(n.attribute().begin(), n.attribute().end(),
                                           [](const pb::AttributeProto& a) { return a.name() == "num_outputs"; });
  const int64_t channels = c->second;
  if (!has_num_outputs && channels % parts != 0) return "its equal split does not divide the channel count";
  const int64_t chunk = (channels + parts - 1) / parts;
  sizes.emplace();
  for (int64_t k = 0; k < parts; ++k) {
    const int64_t size = std::min(channels, (k + 1) * chunk) - k * chunk;
    if (size < 1) return "its equal split leaves an output without channels";
    sizes->push_back(static_cast<double>(size));
  }
  return {};
}

std::string Reader::map_pool(const pb::NodeProto& n, Node& node) {
  if (n.input_size() != 1 || n.output_size() < 1) return "it does not have the form (X) -> Y";
  for (int k = 1; k < n.output_size(); ++k)
    if (!n.output(k).empty()) return "it also outputs indices";
  if (auto why = require_channels_on_axis1(n, n.input(0)); !why.empty()) return why;
  node.kind = OpKind::Pool;
  node.pool_kind = n.op_type() == "MaxPool" || n.op_type() == "GlobalMaxPool" ? PoolKind::Max : PoolKind::Average;
  // An AveragePool that counts its padding averages in zeros at the borders (high-bias
  // absorption across it would be inexact there); MaxPool pads with −inf, which never wins.
  if (n.op_type() == "AveragePool" && attr_int(n, "count_include_pad", 0) != 0) {
    const auto pads = attr_ints(n, "pads");
    const std::string auto_pad = attr_string(n, "auto_pad", "NOTSET");
    node.has_padding = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER" ||
                       std::any_of(pads.begin(), pads.end(), [](int64_t p) { return p != 0; });
  }
  const TensorInfo x = info(n.input(0));
  info_[n.output(0)] = {x.rank, x.axis == ChannelAxis::Free ? ChannelAxis::Free : ChannelAxis::Second};
  return {};
}

bool Reader::is_channel_axis(int64_t a, const std::string& x) const {
  const TensorInfo xi = info(x);
  if (xi.axis == ChannelAxis::Last) return xi.rank == 2 && (a == 1 || a == -1);
  if (a < 0 && xi.rank > 0) a += xi.rank;
  return a == 1;
}

std::string Reader::map_channel_node(const pb::NodeProto& n, Node& node) {
  const std::string& op = n.op_type();
  for (int k = 0; k < (op == "Add" || op == "Sum" || op == "Concat" ? n.input_size() : 1); ++k)
    if (n.input(k).empty() || is_initializer(n.input(k)))
      return "its input '" + n.input(k) + "' is a constant, not an activation";
  const std::string& x = n.input(0);
  const TensorInfo xi = info(x);
  auto keep_axis = [&](const std::string& out, int rank) {
    info_[out] = {rank, xi.axis == ChannelAxis::Free ? ChannelAxis::Free
                        : rank == 2 ? ChannelAxis::Both : xi.axis};
  };
  if (op == "Add" || op == "Sum") {
    if (n.input_size() < 2 || n.output_size() != 1) return "it does not have two or more inputs and one output";
    for (const auto& t : n.input())
      if (info(t).axis != xi.axis && info(t).axis != ChannelAxis::Free && xi.axis != ChannelAxis::Free)
        return "its inputs have their channels on different axes";
    node.kind = OpKind::Add;
    TensorInfo yi = xi;
    for (const auto& t : n.input())
      if (yi.axis == ChannelAxis::Free) yi = info(t);
    info_[n.output(0)] = yi;
    return {};
  }
  if (op == "Concat") {
    if (n.output_size() != 1) return "it does not have one output";
    if (!is_channel_axis(attr_int(n, "axis", 0), x)) return "it does not concatenate on the channel axis 1";
    node.kind = OpKind::Concat;
    keep_axis(n.output(0), xi.rank);
    return {};
  }
  if (op == "Split" || op == "Slice") {
    if (xi.axis == ChannelAxis::Last) return require_channels_on_axis1(n, x);
    if (op == "Split") {
      if (!is_channel_axis(attr_int(n, "axis", 0), x)) return "it does not split the channel axis 1";
      std::optional<std::vector<double>> sizes;
      if (n.input_size() < 2 || n.input(1).empty()) {
        const auto why = equal_split_sizes(n, x, sizes);
        if (!why.empty()) return why;
      } else {
        sizes = constant_values(n.input(1), "the split of '" + node.name + "'");
      }
      if (!sizes || sizes->size() != static_cast<size_t>(n.output_size())) return "its split sizes are not constants, one per output";
      int64_t begin = 0;
      for (double v : *sizes) {
        if (!(v >= 1 && v <= 1e12)) return "its split sizes are not positive";
        node.slice_begin.push_back(begin);
        begin += static_cast<int64_t>(v);
        node.slice_end.push_back(begin);
      }
    } else {
      if (n.output_size() != 1 || n.input_size() < 3) return "it does not have the form (X, starts, ends[, axes, steps]) -> Y";
      const auto starts = constant_values(n.input(1), "the starts of '" + node.name + "'");
      const auto ends = constant_values(n.input(2), "the ends of '" + node.name + "'");
      std::optional<std::vector<double>> axes = std::vector<double>{0.0};
      if (n.input_size() > 3 && !n.input(3).empty()) axes = constant_values(n.input(3), "the axes of '" + node.name + "'");
      std::optional<std::vector<double>> steps = std::vector<double>{1.0};
      if (n.input_size() > 4 && !n.input(4).empty()) steps = constant_values(n.input(4), "the steps of '" + node.name + "'");
      if (!starts || !ends || !axes || !steps) return "its starts, ends, axes or steps are not constants";
      if (starts->size() != 1 || ends->size() != 1 || axes->size() != 1 || steps->size() != 1)
        return "it slices more than one axis";
      if (!(std::abs((*axes)[0]) <= 64) || !is_channel_axis(static_cast<int64_t>((*axes)[0]), x))
        return "it does not slice the channel axis 1";
      if ((*steps)[0] != 1.0) return "its step is not 1";
      const double b = (*starts)[0], e = (*ends)[0];
      if (!(b >= 0 && b < 1e12) || !(e > b)) return "its start or end is negative or empty (needs the channel count)";
      node.slice_begin.push_back(static_cast<int64_t>(b));
      node.slice_end.push_back(e >= 9e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(e));
    }
    node.kind = OpKind::Split;
    for (const auto& o : n.output()) keep_axis(o, xi.rank);
    return {};
  }
  if (op == "ReduceMean") {
    if (n.output_size() != 1) return "it does not have one output";
    if (xi.axis == ChannelAxis::Last) return require_channels_on_axis1(n, x);
    std::vector<int64_t> axes = attr_ints(n, "axes");
    if (n.input_size() > 1 && !n.input(1).empty()) {
      const auto a = constant_values(n.input(1), "the axes of '" + node.name + "'");
      if (!a) return "its axes are not constants";
      for (double v : *a) {
        if (!(std::abs(v) <= 64)) return "its axes are not valid axis numbers";
        axes.push_back(static_cast<int64_t>(v));
      }
    }
    if (axes.empty()) return "it reduces every axis, the channels too";
    for (int64_t& a : axes) {
      if (a < 0 && xi.rank > 0) a += xi.rank;
      if (a < 2) return "it reduces the batch or channel axis (or a negative axis of unknown rank)";
    }
    node.kind = OpKind::Pool;
    node.pool_kind = PoolKind::Average;  // a mean over spatial axes
    const bool keep = attr_int(n, "keepdims", 1) != 0;
    keep_axis(n.output(0), xi.rank < 0 ? -1 : keep ? xi.rank : xi.rank - static_cast<int>(axes.size()));
    return {};
  }
  if (op == "Resize") {
    if (n.output_size() != 1) return "it does not have one output";
    if (xi.axis == ChannelAxis::Last) return require_channels_on_axis1(n, x);
    if (attr_string(n, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize")
      return "mode tf_crop_and_resize fills with an extrapolation value";
    if (find_attr(n, "axes")) return "it has an axes attribute";
    if (n.input_size() < 3 || n.input(2).empty()) return "it resizes to given sizes; only constant scales are understood";
    const auto scales = constant_values(n.input(2), "the scales of '" + node.name + "'");
    if (!scales || scales->size() < 2) return "its scales are not constants";
    if ((*scales)[0] != 1.0 || (*scales)[1] != 1.0) return "it resizes the batch or channel axis";
    node.kind = OpKind::Resize;
    keep_axis(n.output(0), xi.rank);
    return {};
  }
  if (op == "Flatten") {
    if (n.output_size() != 1 || attr_int(n, "axis", 1) != 1) return "it does not flatten from axis 1";
    const auto p = producer_.find(x);
    const bool pooled = p != producer_.end() && default_domain(g_.node(p->second)) &&
                        (g_.node(p->second).op_type() == "GlobalAveragePool" ||
                         g_.node(p->second).op_type() == "GlobalMaxPool");
    if (!pooled && xi.rank != 2) return "its input may have spatial axes (only a globally pooled input keeps its channels)";
    node.kind = OpKind::Identity;
    info_[n.output(0)] = {2, xi.axis == ChannelAxis::Free ? ChannelAxis::Free : ChannelAxis::Both};
    return {};
  }
  return "not a channel node";
}

void Reader::run() {
  index_graph();
  find_matmul_add();
  find_gated_activations();
  const auto order = topological_order();
  const int count = g_.node_size();
  impl_.owner.assign(static_cast<size_t>(count), -1);
  Graph& graph = impl_.graph;

  for (int idx : order) {
    if (absorbed_[static_cast<size_t>(idx)]) continue;
    const pb::NodeProto& n = g_.node(idx);
    Node node;
    Binding b;
    b.onnx_node = idx;
    node.name = unique_name(n, idx);
    node.op_type = n.op_type();
    std::string why;
    const std::string& op = n.op_type();
    const bool known = default_domain(n) && implicit_[static_cast<size_t>(idx)].empty();
    const std::string x = n.input_size() > 0 ? n.input(0) : std::string();
    static const std::unordered_set<std::string> mapped = {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Identity",
        "LeakyRelu", "Clip", "PRelu", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool"};
    if (!known) {
      // another domain, or a node with subgraphs: never looked into
    } else if (mapped.count(op) && (x.empty() || is_initializer(x))) {
      // an Identity of a constant is how the TorchScript exporter shares equal parameters
      if (op != "Identity") why = "its data input is a constant, not an activation";
    } else if (op == "Conv" || op == "ConvTranspose") {
      why = map_conv(n, idx, node, b, op == "ConvTranspose");
    } else if (op == "Gemm") {
      why = map_gemm(n, idx, node, b);
    } else if (op == "MatMul" && n.input_size() == 2 && initializer(n.input(1))) {
      why = map_matmul(n, idx, node, b);
    } else if (op == "MatMul" && n.input_size() == 2 && holds_constant_weight(n.input(1))) {
      why = not_stored("right operand", n.input(1));  // a linear layer whose weight is no initializer
    } else if (op == "BatchNormalization") {
      why = map_batch_norm(n, idx, node, b);
    } else if (op == "Relu" || op == "Identity" || op == "LeakyRelu") {
      if (n.input_size() == 1 && n.output_size() == 1 && !is_initializer(x)) {
        node.kind = op == "Relu" ? OpKind::Relu : op == "Identity" ? OpKind::Identity : OpKind::LeakyRelu;
        node.alpha = b.alpha = attr_float(n, "alpha", 0.01);
      }
    } else if (const auto gf = gate_of_.find(idx); gf != gate_of_.end() ||
               ((op == "HardSwish" || op == "Gelu") && n.input_size() == 1 && n.output_size() == 1)) {
      why = map_gated(n, gf == gate_of_.end() ? nullptr : &gf->second, node, b);
    } else if (op == "Clip") {
      why = map_clip(n, idx, node, b);
    } else if (op == "PRelu") {
      why = map_prelu(n, idx, node, b);
    } else if (op == "Pad") {
      why = map_pad(n, idx, node, b);
    } else if (op == "MaxPool" || op == "AveragePool" || op == "GlobalAveragePool" ||
               op == "GlobalMaxPool") {
      why = map_pool(n, node);
    } else if (op == "Add" || op == "Sum" || op == "Concat" || op == "Split" || op == "Slice" ||
               op == "ReduceMean" || op == "Resize" || op == "Flatten") {
      why = map_channel_node(n, node);
    }
    if (!why.empty() || node.kind == OpKind::Opaque) {
      // Undo a partial mapping: an opaque node holds no parameters.
      const std::string name = node.name, op_type = node.op_type;
      for (const auto& p : b.params)
        param_uses_.erase((static_cast<int64_t>(p.onnx_node) << 20) | p.index);
      node = Node{};
      node.name = name;
      node.op_type = op_type;
      node.kind = OpKind::Opaque;
      node.opaque_reason = why.empty() ? std::string() : describe(n, name) + " is kept as is: " + why;
      if (!default_domain(n)) node.op_type = n.domain() + "." + n.op_type();
      const int add = fused_add_[static_cast<size_t>(idx)];
      if (add >= 0) {  // the Add stays a node of its own
        absorbed_[static_cast<size_t>(add)] = false;
        fused_add_[static_cast<size_t>(idx)] = -1;
      }
      b = Binding{};
      b.onnx_node = idx;
    }
    b.kind = node.kind;
    // Activation tensors: every non-initializer input (+ outer-scope reads of subgraphs).
    if (node.kind == OpKind::Opaque || node.kind == OpKind::Relu || node.kind == OpKind::Identity ||
        node.kind == OpKind::LeakyRelu || node.kind == OpKind::Add || node.kind == OpKind::Concat ||
        (node.kind == OpKind::Pool && op != "ReduceMean")) {
      for (int k = 0; k < n.input_size(); ++k)
        if (!n.input(k).empty() && !is_initializer(n.input(k))) {
          node.inputs.push_back(n.input(k));
          b.inputs.push_back({idx, k, n.input(k)});
        }
    } else if (const auto gf = gate_of_.find(idx); node.kind == OpKind::GatedActivation && gf != gate_of_.end()) {
      const int k = n.input(0) == gf->second.x ? 0 : 1;
      node.inputs.push_back(gf->second.x);
      b.inputs.push_back({idx, k, gf->second.x});
    } else if (!x.empty() && !is_initializer(x)) {
      node.inputs.push_back(x);
      b.inputs.push_back({idx, 0, x});
    }
    for (const auto& t : implicit_[static_cast<size_t>(idx)])
      if (!is_initializer(t) && (producer_.count(t) || graph_input_.count(t))) {
        node.inputs.push_back(t);
        b.inputs.push_back({idx, -1, t});
      }
    const int out_node = b.linear == LinearForm::MatMulAdd ? b.onnx_add : idx;
    const auto& on = g_.node(out_node);
    for (int k = 0; k < on.output_size(); ++k)
      if (!on.output(k).empty()) {
        node.outputs.push_back(on.output(k));
        b.outputs.push_back({out_node, k, on.output(k)});
      }
    // Channel-axis bookkeeping for activations that pass channels through unchanged.
    if ((node.kind == OpKind::Relu || node.kind == OpKind::Identity || node.kind == OpKind::LeakyRelu ||
         node.kind == OpKind::Clip || node.kind == OpKind::PRelu || node.kind == OpKind::GatedActivation) &&
        op != "Flatten") {
      const TensorInfo xi = info(node.inputs.empty() ? x : node.inputs[0]);
      TensorInfo& yi = info_[n.output(0)];
      if (yi.rank < 0) yi.rank = xi.rank;
      yi.axis = xi.axis;
    }
    if (node.kind == OpKind::Clip || node.kind == OpKind::GatedActivation) {
      b.input_rank = info(node.inputs.empty() ? x : node.inputs[0]).rank;
      b.input_axis = info(node.inputs.empty() ? x : node.inputs[0]).axis;
    }
    const int ir_index = static_cast<int>(graph.nodes.size());
    impl_.owner[static_cast<size_t>(idx)] = ir_index;
    if (b.onnx_add >= 0) impl_.owner[static_cast<size_t>(b.onnx_add)] = ir_index;
    for (int part : b.gate_parts) impl_.owner[static_cast<size_t>(part)] = ir_index;
    impl_.bindings.push_back(std::move(b));
    graph.add(std::move(node));
  }

  // Initializers read other than as an IR parameter must keep their values.
  for (int i = 0; i < count; ++i) {
    const auto& n = g_.node(i);
    for (int k = 0; k < n.input_size(); ++k)
      if (initializer_.count(n.input(k)) && !param_uses_.count((static_cast<int64_t>(i) << 20) | k))
        impl_.initializer_read_elsewhere.insert(n.input(k));
    for (const auto& t : implicit_[static_cast<size_t>(i)])
      if (initializer_.count(t)) impl_.initializer_read_elsewhere.insert(t);
  }
  for (const auto& v : g_.output())
    if (initializer_.count(v.name())) impl_.initializer_read_elsewhere.insert(v.name());

  for (const auto& v : g_.input())
    if (!is_initializer(v.name())) graph.graph_inputs.push_back(v.name());
  for (const auto& v : g_.output())
    if (!is_initializer(v.name())) graph.graph_outputs.push_back(v.name());
  graph.reindex();
  graph.lint();
}

}  // namespace

void ModelState::build_graph() {
  Reader reader(*this);
  reader.run();
}

}  // namespace prequant
