// onnx_read.cpp — parse ONNX bytes and map the model onto the engine's Graph.
//
// Before: serialized ONNX bytes (opset 13–20 of the default domain).
// After:  Impl::model holds the parsed proto (external data resolved into raw_data), Impl::graph
//         the IR, Impl::buffers a float/double copy of every initializer the IR views, and
//         Impl::bindings where each IR node's tensors and parameters sit in the ONNX nodes.
// Mapping (default domain only; anything else, and any node whose parameters are not
// initializers, becomes Opaque with the reason in Node::opaque_reason; a constant attribute input
// such as Resize scales may also be a Constant node or a Concat of constants):
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
//   axes 0 and 1 (or constant sizes equal to the input's batch and channel counts) -> Resize, Flatten(axis 1) of a rank-2 or globally pooled tensor -> Identity,
//   Mul(x, Sigmoid|HardSigmoid([Mul(x, s)])), HardSwish, Gelu, and GELU written with Erf
//   (0.5·x·(1 + Erf(x/√2)), any grouping; Mul(x, s/√2) inside) -> GatedActivation.
// Channel axes: conv activations keep channels on axis 1, a MatMul on a rank > 2 tensor on the
// last axis. The reader tracks which holds for each tensor and makes a node Opaque when the
// two would meet (a BN after such a MatMul would normalize the wrong axis).//
// The reader is split by concern (onnx_reader.h): this file indexes the graph and runs the
// per-node loop; onnx_read_patterns.cpp recognises multi-node forms and constant values;
// onnx_read_nodes.cpp maps single nodes.

#include <algorithm>
#include <climits>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "onnx_reader.h"
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

namespace onnx_detail {
namespace {

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

}  // namespace

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
    if (tt.has_shape() && tt.shape().dim_size() >= 1 && tt.shape().dim(0).has_dim_value())
      batch_[v.name()] = tt.shape().dim(0).dim_value();
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

}  // namespace onnx_detail


void ModelState::build_graph() {
  Reader reader(*this);
  reader.run();
}

}  // namespace prequant
