// onnx_read_nodes.cpp — map one ONNX node onto one IR node: its kind, attributes and parameter
// views (the table of forms is in onnx_read.cpp's header).
//
// Before: an ONNX node of the default domain with no subgraph, in topological order.
// After:  `node` filled (kind, attributes, parameter views into Reader::impl_.buffers) and `b`
//         records where each parameter sits in the ONNX node; or a non-empty reason, and the
//         caller (Reader::run) makes the node Opaque and drops whatever was filled.
// Preconditions: a parameter is an initializer (through Identity nodes), float32 or float64;
//         anything else is a reason, never a guess. Channel-axis bookkeeping (info_) is updated
//         for each output so that a later node can tell where its input's channels are.
#include <algorithm>
#include <cmath>
#include <limits>

#include "onnx_reader.h"
#include "prequant/errors.h"

namespace prequant {
namespace onnx_detail {

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
    if (n.input_size() >= 3 && !n.input(2).empty()) {
      const auto scales = constant_values(n.input(2), "the scales of '" + node.name + "'");
      if (!scales || scales->size() < 2)
        return "its scales are not constants (an initializer, a Constant node or a Concat of them)";
      if ((*scales)[0] != 1.0 || (*scales)[1] != 1.0) return "it resizes the batch or channel axis";
    } else if (n.input_size() >= 4 && !n.input(3).empty()) {
      // Sizes keep the channels only if they repeat the input's batch and channel counts.
      const auto sizes = constant_values(n.input(3), "the sizes of '" + node.name + "'");
      if (!sizes || sizes->size() < 2)
        return "its sizes are not constants (an initializer, a Constant node or a Concat of them)";
      const auto c = channels_.find(x), nb = batch_.find(x);
      if (c == channels_.end() || nb == batch_.end())
        return "it resizes to given sizes and the model's shapes do not give its input's batch and "
               "channel counts to check them against (run onnx.shape_inference first)";
      if ((*sizes)[0] != static_cast<double>(nb->second) || (*sizes)[1] != static_cast<double>(c->second))
        return "it resizes the batch or channel axis";
    } else {
      return "it has neither scales nor sizes";
    }
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

}  // namespace onnx_detail
}  // namespace prequant
