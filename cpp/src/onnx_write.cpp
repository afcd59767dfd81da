// onnx_write.cpp — build the output ModelProto from the loaded one and the edited IR.
//
// Before: Impl::model as loaded, Impl::graph after passes ran, the buffers they edited.
// After:  a new ModelProto (the loaded one is not modified) where
//   - removed IR nodes (folded batch norms) are gone, with their ONNX nodes;
//   - every IR node's activation inputs/outputs are mirrored onto its ONNX node(s);
//   - edited parameters are written back in the initializer's own data type; a parameter the
//     engine created (a bias added by folding, a copy made by unrolling) becomes a new
//     initializer (a MatMul without Add gets an Add for a new bias); an initializer that
//     something outside the IR also reads keeps its values and the edited copy gets a new name;
//   - a Clip the ReLU6 policy replaced becomes Relu; a per-channel bound becomes
//     Relu → Min(bound of shape (C, 1, ..., 1));
//   - a gated activation scaling passed through (gate_scale set) becomes, with standard ops,
//     SiLU: Mul(x, Sigmoid(Mul(x, s))); HardSwish: Mul(x, HardSigmoid(Mul(x, s))) (alpha 1/6,
//     beta 1/2); GELU (erf): Mul(Mul(x, Add(Erf(Mul(x, s/√2)), 1)), 1/2); GELU (tanh):
//     Mul(Gelu(Mul(x, s), tanh), 1/s) — s of shape (C, 1, ..., 1);
//   - initializers, Constant nodes and value_info that only the removed nodes used are dropped;
//   - everything else (unknown ops, other domains, functions, metadata) is copied untouched.
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "onnx_model_impl.h"
#include "prequant/errors.h"

namespace prequant {

using namespace onnx_detail;

namespace {

void set_input(pb::NodeProto& n, int index, const std::string& name) {
  while (n.input_size() <= index) n.add_input(std::string());
  n.set_input(index, name);
}

// Raw little-endian bytes of `values` in ONNX type `type` (float or double).
std::string raw_bytes(const TensorView& v, int32_t type) {
  const int64_t n = v.numel();
  std::string raw;
  if (type == kFloat) {
    raw.resize(static_cast<size_t>(n) * 4);
    if (v.dtype == DType::Float32) {
      std::memcpy(raw.data(), v.data, raw.size());
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const float f = static_cast<float>(v.get(i));
        std::memcpy(raw.data() + i * 4, &f, 4);
      }
    }
  } else {
    raw.resize(static_cast<size_t>(n) * 8);
    if (v.dtype == DType::Float64) {
      std::memcpy(raw.data(), v.data, raw.size());
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const double d = v.get(i);
        std::memcpy(raw.data() + i * 8, &d, 8);
      }
    }
  }
  return raw;
}

void fill_tensor(pb::TensorProto& t, const TensorView& v, int32_t type) {
  t.clear_float_data();
  t.clear_double_data();
  t.clear_int32_data();
  t.clear_int64_data();
  t.clear_uint64_data();
  t.clear_external_data();
  t.clear_data_location();
  t.set_data_type(type);
  t.set_raw_data(raw_bytes(v, type));
}

pb::TensorProto scalar_tensor(const std::string& name, double value, DType dtype) {
  TensorView v;
  v.dtype = DType::Float64;
  v.data = &value;
  v.shape = {};
  pb::TensorProto t;
  t.set_name(name);
  fill_tensor(t, v, dtype == DType::Float32 ? kFloat : kDouble);
  return t;
}

bool same_values(const TensorView& v, const pb::TensorProto& original) {
  const bool same_type = (original.data_type() == kFloat && v.dtype == DType::Float32) ||
                         (original.data_type() == kDouble && v.dtype == DType::Float64);
  if (same_type && original.has_raw_data())
    return original.raw_data().size() == static_cast<size_t>(v.bytes()) &&
           std::memcmp(original.raw_data().data(), v.data, original.raw_data().size()) == 0;
  const std::vector<double> old = decode_numeric(original, "initializer '" + original.name() + "'");
  if (static_cast<int64_t>(old.size()) != v.numel()) return false;
  for (int64_t i = 0; i < v.numel(); ++i) {
    const double a = v.get(i), b = old[static_cast<size_t>(i)];
    if (!(a == b) && !(std::isnan(a) && std::isnan(b))) return false;
    if (a == 0.0 && std::signbit(a) != std::signbit(b)) return false;
  }
  return true;
}

// Names read by a node: its inputs and what its subgraphs read from outside.
void collect_reads(const pb::NodeProto& n, std::unordered_set<std::string>& out) {
  for (const auto& i : n.input())
    if (!i.empty()) out.insert(i);
  std::vector<const pb::GraphProto*> stack;
  for (const auto& a : n.attribute()) {
    if (a.has_g()) stack.push_back(&a.g());
    for (const auto& g : a.graphs()) stack.push_back(&g);
  }
  while (!stack.empty()) {
    const pb::GraphProto* g = stack.back();
    stack.pop_back();
    for (const auto& sn : g->node()) {
      for (const auto& i : sn.input())
        if (!i.empty()) out.insert(i);
      for (const auto& a : sn.attribute()) {
        if (a.has_g()) stack.push_back(&a.g());
        for (const auto& sg : a.graphs()) stack.push_back(&sg);
      }
    }
    for (const auto& o : g->output()) out.insert(o.name());
  }
}

// Every name used anywhere in the graph (including subgraphs), so new names do not clash.
void collect_all_names(const pb::GraphProto& root, std::unordered_set<std::string>& out) {
  std::vector<const pb::GraphProto*> stack{&root};
  while (!stack.empty()) {
    const pb::GraphProto* g = stack.back();
    stack.pop_back();
    for (const auto& v : g->input()) out.insert(v.name());
    for (const auto& v : g->output()) out.insert(v.name());
    for (const auto& v : g->value_info()) out.insert(v.name());
    for (const auto& t : g->initializer()) out.insert(t.name());
    for (const auto& t : g->sparse_initializer()) out.insert(t.values().name());
    for (const auto& n : g->node()) {
      for (const auto& i : n.input()) out.insert(i);
      for (const auto& o : n.output()) out.insert(o);
      for (const auto& a : n.attribute()) {
        if (a.has_g()) stack.push_back(&a.g());
        for (const auto& sg : a.graphs()) stack.push_back(&sg);
      }
    }
  }
}

class Writer {
 public:
  Writer(const ModelState& impl) : impl_(impl), src_(impl.model.graph()) {}
  pb::ModelProto run();

 private:
  const ModelState& impl_;
  const pb::GraphProto& src_;
  std::vector<pb::NodeProto> nodes_;                 // edited copies, parallel to src_.node
  std::vector<bool> drop_;
  std::vector<std::vector<pb::NodeProto>> before_;   // nodes that replace nodes_[i] (if any)
  std::vector<std::vector<pb::NodeProto>> after_;    // nodes inserted after nodes_[i]
  std::vector<bool> replaced_;
  std::unordered_set<std::string> names_;            // tensor names in use
  std::unordered_set<std::string> node_names_;
  std::unordered_map<std::string, const TensorView*> rewrite_;  // initializer -> new values
  std::unordered_map<std::string, std::string> renamed_;        // original -> edited copy
  std::unordered_map<const void*, std::string> created_;        // view data -> new initializer
  std::vector<pb::TensorProto> new_initializers_;
  std::unordered_map<std::string, int> initializer_index_;

  std::string fresh(const std::string& base) {
    std::string name = base.empty() ? std::string("prequant_tensor") : base;
    for (int k = 1; !names_.insert(name).second; ++k) name = base + "_" + std::to_string(k);
    return name;
  }
  std::string fresh_node_name(const std::string& base) {
    std::string name = base;
    for (int k = 1; !node_names_.insert(name).second; ++k) name = base + "_" + std::to_string(k);
    return name;
  }
  const pb::TensorProto& original(const std::string& name) const {
    return src_.initializer(initializer_index_.at(name));
  }

  std::string param_name(const Node& node, const ParamSlot& slot, const TensorView& v);
  void write_node(size_t ir_index);
  void write_clip(const Node& node, const Binding& b);
  void write_gated(const Node& node, const Binding& b);
};

std::string Writer::param_name(const Node& node, const ParamSlot& slot, const TensorView& v) {
  if (!slot.original.empty() && v.name == slot.original) {
    auto buf = impl_.buffers.find(slot.original);
    if (buf != impl_.buffers.end() && buf->second->data() == v.data) {
      const pb::TensorProto& orig = original(slot.original);
      if (!impl_.initializer_read_elsewhere.count(slot.original)) {
        rewrite_[slot.original] = &v;
        return slot.original;
      }
      // Something outside the IR reads this initializer: keep it, write an edited copy.
      if (same_values(v, orig)) return slot.original;
      auto it = renamed_.find(slot.original);
      if (it != renamed_.end()) return it->second;
      pb::TensorProto t;
      const std::string name = fresh(slot.original + "_prequant");
      t.set_name(name);
      t.mutable_dims()->CopyFrom(orig.dims());
      fill_tensor(t, v, orig.data_type());
      new_initializers_.push_back(std::move(t));
      renamed_[slot.original] = name;
      return name;
    }
  }
  // A tensor the engine created (added bias, unrolled copy).
  auto it = created_.find(v.data);
  if (it != created_.end()) return it->second;
  pb::TensorProto t;
  const std::string name = fresh(v.name.empty() ? node.name + "." + param_role_name(slot.role) : v.name);
  t.set_name(name);
  int64_t dims_numel = 1;
  for (int64_t d : slot.dims) dims_numel *= d;
  const auto& dims = (!slot.dims.empty() && dims_numel == v.numel()) ? slot.dims : v.shape;
  for (int64_t d : dims) t.add_dims(d);
  int32_t type = v.dtype == DType::Float32 ? kFloat : kDouble;
  if (!slot.original.empty() && initializer_index_.count(slot.original))
    type = original(slot.original).data_type();
  fill_tensor(t, v, type);
  new_initializers_.push_back(std::move(t));
  created_[v.data] = name;
  return name;
}

void Writer::write_clip(const Node& node, const Binding& b) {
  pb::NodeProto& n = nodes_[static_cast<size_t>(b.onnx_node)];
  if (node.kind == OpKind::Relu) {
    pb::NodeProto relu;
    relu.set_name(n.name());
    relu.set_op_type("Relu");
    relu.add_input(node.inputs.at(0));
    relu.add_output(node.outputs.at(0));
    if (n.has_doc_string()) relu.set_doc_string(n.doc_string());
    replaced_[static_cast<size_t>(b.onnx_node)] = true;
    before_[static_cast<size_t>(b.onnx_node)].push_back(std::move(relu));
    return;
  }
  if (node.kind != OpKind::Clip)
    throw UnsupportedError("node '" + node.name + "': a pass turned a Clip into a " +
                               op_kind_name(node.kind) + ", which the ONNX writer cannot express",
                           node.name);
  if (!node.clip_max_per_channel.empty()) {
    const int64_t c = static_cast<int64_t>(node.clip_max_per_channel.size());
    std::vector<int64_t> dims{c};
    if (b.input_axis == ChannelAxis::Second || b.input_axis == ChannelAxis::Free) {
      if (b.input_rank < 2)
        throw UnsupportedError("Clip '" + node.name + "': the rank of its input is unknown, so the "
                                   "per-channel bound cannot be shaped; add shape information "
                                   "(onnx.shape_inference.infer_shapes) or use --relu6 replace",
                               node.name);
      for (int k = 2; k < b.input_rank; ++k) dims.push_back(1);
    }
    const std::string base = node.outputs.at(0);
    std::string lower_out = node.inputs.at(0);
    const std::string name = n.name().empty() ? node.name : n.name();
    auto& seq = before_[static_cast<size_t>(b.onnx_node)];
    if (std::isfinite(node.clip_min)) {
      pb::NodeProto lower;
      lower.set_name(name);
      lower_out = fresh(base + "_unbounded");
      if (node.clip_min == 0.0 && std::isfinite(node.clip_max)) {
        // Clip(0, m) before the per-channel Min: the op quantizers fuse into the conv (ReLU6
        // when m = 6), so the first quantized tensor's range is [0, m] (gauge_clip_bounds.cpp).
        lower.set_op_type("Clip");
        lower.add_input(node.inputs.at(0));
        pb::TensorProto lo = scalar_tensor(fresh(name + ".min"), 0.0, b.act_dtype);
        pb::TensorProto hi = scalar_tensor(fresh(name + ".max"), node.clip_max, b.act_dtype);
        lower.add_input(lo.name());
        lower.add_input(hi.name());
        new_initializers_.push_back(std::move(lo));
        new_initializers_.push_back(std::move(hi));
      } else if (node.clip_min == 0.0) {
        lower.set_op_type("Relu");
        lower.add_input(node.inputs.at(0));
      } else {
        lower.set_op_type("Max");
        lower.add_input(node.inputs.at(0));
        pb::TensorProto lo = scalar_tensor(fresh(name + ".min"), node.clip_min, b.act_dtype);
        lower.add_input(lo.name());
        new_initializers_.push_back(std::move(lo));
      }
      lower.add_output(lower_out);
      seq.push_back(std::move(lower));
    }
    std::vector<double> values = node.clip_max_per_channel;
    TensorView v;
    v.dtype = DType::Float64;
    v.data = values.data();
    v.shape = dims;
    pb::TensorProto bound;
    bound.set_name(fresh(name + ".upper_bound"));
    for (int64_t d : dims) bound.add_dims(d);
    fill_tensor(bound, v, b.act_dtype == DType::Float32 ? kFloat : kDouble);
    pb::NodeProto mn;
    mn.set_name(fresh_node_name(name + "_bound"));
    mn.set_op_type("Min");
    mn.add_input(lower_out);
    mn.add_input(bound.name());
    mn.add_output(base);
    new_initializers_.push_back(std::move(bound));
    seq.push_back(std::move(mn));
    replaced_[static_cast<size_t>(b.onnx_node)] = true;
    return;
  }
  // Scalars changed by a pass: new constant inputs.
  const double now[2] = {node.clip_min, node.clip_max};
  const double was[2] = {b.clip_min, b.clip_max};
  for (int k = 0; k < 2; ++k) {
    if (now[k] == was[k] || (std::isnan(now[k]) && std::isnan(was[k]))) continue;
    if (std::isinf(now[k])) {
      set_input(n, k + 1, std::string());
      continue;
    }
    pb::TensorProto t = scalar_tensor(fresh(node.name + (k ? ".max" : ".min")), now[k], b.act_dtype);
    set_input(n, k + 1, t.name());
    new_initializers_.push_back(std::move(t));
  }
  while (n.input_size() > 1 && n.input(n.input_size() - 1).empty()) n.mutable_input()->RemoveLast();
}

void Writer::write_gated(const Node& node, const Binding& b) {
  if (node.gate_scale.empty() && b.gate_parts.empty()) return;  // HardSwish / Gelu as loaded
  const size_t primary = static_cast<size_t>(b.onnx_node);
  const pb::NodeProto& orig = nodes_[primary];
  const std::string name = orig.name().empty() ? node.name : orig.name();
  const std::string x = node.inputs.at(0), y = node.outputs.at(0);
  const int32_t type = b.act_dtype == DType::Float32 ? kFloat : kDouble;
  std::vector<int64_t> dims{static_cast<int64_t>(node.gate_scale.size())};
  if (!node.gate_scale.empty() && (b.input_axis == ChannelAxis::Second || b.input_axis == ChannelAxis::Free)) {
    if (b.input_rank < 2)
      throw UnsupportedError("gated activation '" + node.name + "': the rank of its input is unknown, so the "
                                 "per-channel gate scale cannot be shaped; add shape information "
                                 "(onnx.shape_inference.infer_shapes) or equalize without --gated-activations",
                             node.name);
    for (int k = 2; k < b.input_rank; ++k) dims.push_back(1);
  }
  auto& seq = before_[primary];
  auto constant = [&](const std::string& what, std::vector<double> values, bool per_channel) {
    TensorView v;
    v.dtype = DType::Float64;
    v.data = values.data();
    v.shape = per_channel ? dims : std::vector<int64_t>{};
    pb::TensorProto t;
    t.set_name(fresh(name + "." + what));
    for (int64_t d : v.shape) t.add_dims(d);
    fill_tensor(t, v, type);
    const std::string out = t.name();
    new_initializers_.push_back(std::move(t));
    return out;
  };
  auto emit = [&](const char* op, std::vector<std::string> inputs, const std::string& out) {
    pb::NodeProto n;
    n.set_name(fresh_node_name(name + "_" + op));
    n.set_op_type(op);
    for (auto& i : inputs) n.add_input(i);
    n.add_output(out);
    seq.push_back(std::move(n));
    return &seq.back();
  };
  std::vector<double> s = node.gate_scale;
  const bool scaled = !s.empty();
  if (node.gate == Gate::GeluErf) {
    // x·Φ(s·x) = 0.5·x·(1 + erf(s·x/√2))
    std::string u = fresh(y + "_scaled");
    if (scaled) {
      for (double& v : s) v /= std::sqrt(2.0);
      emit("Mul", {x, constant("gate_scale", s, true)}, u);
    } else {
      emit("Mul", {x, constant("inv_sqrt2", {1.0 / std::sqrt(2.0)}, false)}, u);
    }
    const std::string e = fresh(y + "_erf"), a = fresh(y + "_gate2"), h = fresh(y + "_times_gate2");
    emit("Erf", {u}, e);
    emit("Add", {e, constant("one", {1.0}, false)}, a);
    emit("Mul", {x, a}, h);
    emit("Mul", {h, constant("half", {0.5}, false)}, y);
  } else {
    std::string z = x;
    if (scaled) {
      z = fresh(y + "_scaled");
      emit("Mul", {x, constant("gate_scale", s, true)}, z);
    }
    const std::string g = fresh(y + "_gate");
    if (node.gate == Gate::Sigmoid) {
      emit("Sigmoid", {z}, g);
    } else if (node.gate == Gate::HardSigmoid) {
      pb::NodeProto* h = emit("HardSigmoid", {z}, g);
      pb::AttributeProto* alpha = h->add_attribute();
      alpha->set_name("alpha");
      alpha->set_type(pb::AttributeProto::FLOAT);
      alpha->set_f(1.0f / 6.0f);
      pb::AttributeProto* beta = h->add_attribute();
      beta->set_name("beta");
      beta->set_type(pb::AttributeProto::FLOAT);
      beta->set_f(0.5f);
    } else {  // GeluTanh: Gelu(s·x, tanh)/s
      pb::NodeProto* h = emit("Gelu", {z}, scaled ? g : y);
      pb::AttributeProto* approx = h->add_attribute();
      approx->set_name("approximate");
      approx->set_type(pb::AttributeProto::STRING);
      approx->set_s("tanh");
      if (scaled) {
        for (double& v : s) v = 1.0 / v;
        emit("Mul", {g, constant("inv_gate_scale", s, true)}, y);
      }
    }
    if (node.gate != Gate::GeluTanh) emit("Mul", {x, g}, y);
  }
  replaced_[primary] = true;
  for (int part : b.gate_parts) drop_[static_cast<size_t>(part)] = true;
}

void Writer::write_node(size_t ir_index) {
  const Node& node = impl_.graph.nodes[ir_index];
  const Binding& b = impl_.bindings[ir_index];
  const size_t primary = static_cast<size_t>(b.onnx_node);
  if (node.removed) {
    drop_[primary] = true;
    if (b.onnx_add >= 0) drop_[static_cast<size_t>(b.onnx_add)] = true;
    for (int part : b.gate_parts) drop_[static_cast<size_t>(part)] = true;
    return;
  }
  if (node.kind != b.kind && !(b.kind == OpKind::Clip && node.kind == OpKind::Relu))
    throw UnsupportedError("node '" + node.name + "': a pass changed it from " + op_kind_name(b.kind) +
                               " to " + op_kind_name(node.kind) +
                               ", which the ONNX writer cannot express",
                           node.name);
  // Activation tensors.
  auto mirror = [&](const std::vector<std::string>& now, const std::vector<ActSlot>& slots,
                    bool outputs) {
    if (now.size() != slots.size())
      throw UnsupportedError("node '" + node.name + "': a pass changed its number of " +
                                 (outputs ? "outputs" : "inputs") +
                                 ", which the ONNX writer cannot express",
                             node.name);
    for (size_t k = 0; k < slots.size(); ++k) {
      const ActSlot& s = slots[k];
      pb::NodeProto& n = nodes_[static_cast<size_t>(s.onnx_node)];
      if (s.index < 0) {
        if (s.name != now[k])
          throw UnsupportedError("node '" + node.name + "': a pass rewired a tensor its subgraph "
                                 "reads implicitly", node.name);
        continue;
      }
      if (outputs) n.set_output(s.index, now[k]);
      else n.set_input(s.index, now[k]);
    }
  };
  mirror(node.inputs, b.inputs, false);
  mirror(node.outputs, b.outputs, true);
  for (const auto& t : node.outputs) names_.insert(t);

  // Parameters.
  for (const ParamSlot& slot : b.params) {
    const TensorView& v = param_field(node, slot.role);
    if (v.empty()) {
      if (!slot.original.empty())
        throw UnsupportedError("node '" + node.name + "': a pass removed its " +
                                   param_role_name(slot.role) + ", which the ONNX writer cannot express",
                               node.name);
      continue;
    }
    const std::string name = param_name(node, slot, v);
    if (slot.onnx_node >= 0) {
      set_input(nodes_[static_cast<size_t>(slot.onnx_node)], slot.index, name);
      continue;
    }
    // MatMul without Add gained a bias: MatMul -> tmp, Add(tmp, bias) -> the old output.
    pb::NodeProto& mm = nodes_[primary];
    const std::string out = mm.output(0);
    const std::string tmp = fresh(out + "_matmul");
    mm.set_output(0, tmp);
    pb::NodeProto add;
    add.set_name(fresh_node_name((mm.name().empty() ? node.name : mm.name()) + "_bias"));
    add.set_op_type("Add");
    add.add_input(tmp);
    add.add_input(name);
    add.add_output(out);
    after_[primary].push_back(std::move(add));
  }

  if (b.kind == OpKind::Clip) write_clip(node, b);
  if (b.kind == OpKind::GatedActivation) write_gated(node, b);
  if (b.kind == OpKind::LeakyRelu && node.alpha != b.alpha) {
    pb::NodeProto& n = nodes_[primary];
    pb::AttributeProto* attr = nullptr;
    for (auto& a : *n.mutable_attribute())
      if (a.name() == "alpha") attr = &a;
    if (!attr) {
      attr = n.add_attribute();
      attr->set_name("alpha");
      attr->set_type(pb::AttributeProto::FLOAT);
    }
    attr->set_f(static_cast<float>(node.alpha));
  }
}

pb::ModelProto Writer::run() {
  const int count = src_.node_size();
  nodes_.assign(src_.node().begin(), src_.node().end());
  drop_.assign(static_cast<size_t>(count), false);
  replaced_.assign(static_cast<size_t>(count), false);
  before_.assign(static_cast<size_t>(count), {});
  after_.assign(static_cast<size_t>(count), {});
  collect_all_names(src_, names_);
  for (const auto& n : src_.node())
    if (!n.name().empty()) node_names_.insert(n.name());
  for (int i = 0; i < src_.initializer_size(); ++i) initializer_index_[src_.initializer(i).name()] = i;

  const auto& ir = impl_.graph.nodes;
  for (size_t i = impl_.bindings.size(); i < ir.size(); ++i)
    if (!ir[i].removed)
      throw UnsupportedError("node '" + ir[i].name + "' was added by a pass; the ONNX writer can only "
                             "write nodes that came from the model", ir[i].name);
  for (size_t i = 0; i < impl_.bindings.size(); ++i) write_node(i);

  // Assemble nodes in the original order.
  std::vector<pb::NodeProto> out_nodes;
  out_nodes.reserve(static_cast<size_t>(count) + 8);
  for (int i = 0; i < count; ++i) {
    const size_t k = static_cast<size_t>(i);
    if (drop_[k]) continue;
    for (auto& n : before_[k]) out_nodes.push_back(std::move(n));
    if (!replaced_[k]) out_nodes.push_back(std::move(nodes_[k]));
    for (auto& n : after_[k]) out_nodes.push_back(std::move(n));
  }

  // What is read before and after the edits.
  std::unordered_set<std::string> read_before, read_after, produced, initializer_names;
  for (const auto& t : src_.initializer()) initializer_names.insert(t.name());
  for (const auto& n : src_.node()) collect_reads(n, read_before);
  for (const auto& v : src_.output()) read_before.insert(v.name());
  std::unordered_set<std::string> graph_inputs;
  for (const auto& v : src_.input()) graph_inputs.insert(v.name());
  auto orphaned = [&](const std::string& t) {
    return read_before.count(t) && !read_after.count(t) && !graph_inputs.count(t);
  };
  // Drop constant producers (Constant nodes, Identity nodes of constants) that only the
  // removed or rewritten nodes read; repeat, since an Identity may read another's output.
  std::vector<bool> alive(out_nodes.size(), true);
  std::unordered_set<std::string> constant_values(initializer_names);
  for (bool changed = true; changed;) {
    changed = false;
    read_after.clear();
    for (size_t i = 0; i < out_nodes.size(); ++i)
      if (alive[i]) collect_reads(out_nodes[i], read_after);
    for (const auto& v : src_.output()) read_after.insert(v.name());
    for (size_t i = 0; i < out_nodes.size(); ++i) {
      const pb::NodeProto& n = out_nodes[i];
      if (!alive[i] || !(n.domain().empty() || n.domain() == "ai.onnx") || n.output_size() != 1) continue;
      const bool constant = n.op_type() == "Constant" ||
                            (n.op_type() == "Identity" && n.input_size() == 1 &&
                             constant_values.count(n.input(0)));
      if (!constant) continue;
      constant_values.insert(n.output(0));
      if (orphaned(n.output(0))) {
        alive[i] = false;
        changed = true;
      }
    }
  }
  std::vector<pb::NodeProto> kept;
  kept.reserve(out_nodes.size());
  for (size_t i = 0; i < out_nodes.size(); ++i) {
    if (!alive[i]) continue;
    for (const auto& o : out_nodes[i].output()) produced.insert(o);
    kept.push_back(std::move(out_nodes[i]));
  }

  // Copy the model without its graph, then the graph without nodes, initializers, value_info.
  auto& model = const_cast<pb::ModelProto&>(impl_.model);
  pb::ModelProto out;
  {
    pb::GraphProto* graph = model.release_graph();
    try {
      out.CopyFrom(model);
    } catch (...) {
      model.set_allocated_graph(graph);
      throw;
    }
    model.set_allocated_graph(graph);
  }
  {
    auto& g = *model.mutable_graph();
    google::protobuf::RepeatedPtrField<pb::NodeProto> nodes;
    google::protobuf::RepeatedPtrField<pb::TensorProto> inits;
    google::protobuf::RepeatedPtrField<pb::ValueInfoProto> infos;
    nodes.Swap(g.mutable_node());
    inits.Swap(g.mutable_initializer());
    infos.Swap(g.mutable_value_info());
    out.mutable_graph()->CopyFrom(g);
    nodes.Swap(g.mutable_node());
    inits.Swap(g.mutable_initializer());
    infos.Swap(g.mutable_value_info());
  }
  pb::GraphProto& og = *out.mutable_graph();
  for (auto& n : kept) *og.add_node() = std::move(n);

  for (int i = 0; i < src_.initializer_size(); ++i) {
    const pb::TensorProto& t = src_.initializer(i);
    if (orphaned(t.name())) continue;
    pb::TensorProto* nt = og.add_initializer();
    auto it = rewrite_.find(t.name());
    if (it != rewrite_.end() && !same_values(*it->second, t)) {
      nt->set_name(t.name());
      nt->mutable_dims()->CopyFrom(t.dims());
      if (t.has_doc_string()) nt->set_doc_string(t.doc_string());
      fill_tensor(*nt, *it->second, t.data_type());
    } else {
      *nt = t;
    }
  }
  for (auto& t : new_initializers_) *og.add_initializer() = std::move(t);

  for (const auto& t : og.initializer()) produced.insert(t.name());
  for (const auto& t : og.sparse_initializer()) produced.insert(t.values().name());
  produced.insert(graph_inputs.begin(), graph_inputs.end());
  for (const auto& v : src_.value_info())
    if (produced.count(v.name())) *og.add_value_info() = v;
  for (const auto& v : og.output())
    if (!produced.count(v.name()))
      throw UnsupportedError("after the edits no node produces graph output '" + v.name() +
                             "'; this is a bug in prequant — please report it with the model");
  return out;
}

}  // namespace

pb::ModelProto ModelState::write_proto() const {
  Writer writer(*this);
  return writer.run();
}

}  // namespace prequant
