// Graph building from Python with zero-copy views of the caller's arrays.
//
// Every add_* call checks each array (CPU, float32/float64, C-contiguous, writable), takes a
// view of its memory and keeps the array referenced for the graph's life; the passes then edit
// the caller's arrays in place. Anything else is refused with UnsupportedError naming the
// parameter and the fix, never silently copied (a copy would leave the model unchanged).
#include <cstring>
#include <sstream>

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "prequant/errors.h"

namespace prequant::python {

using namespace nb::literals;

namespace {

std::string dtype_text(const nb::dlpack::dtype& dt) {
  using code = nb::dlpack::dtype_code;
  std::string base;
  switch (static_cast<code>(dt.code)) {
    case code::Int: base = "int"; break;
    case code::UInt: base = "uint"; break;
    case code::Float: base = "float"; break;
    case code::Bfloat: base = "bfloat"; break;
    case code::Complex: base = "complex"; break;
    case code::Bool: return "bool";
    default: base = "type" + std::to_string(dt.code) + "_"; break;
  }
  return base + std::to_string(dt.bits);
}

bool c_contiguous(const nb::ndarray<nb::ro>& a) {
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) return false;
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return true;
}

}  // namespace

std::string python_type_name(nb::handle h) { return nb::cast<std::string>(nb::type_name(h.type())); }

std::pair<TensorView, nb::ndarray<>> view_of(nb::handle obj, const std::string& what) {
  if (nb::hasattr(obj, "requires_grad") && nb::hasattr(obj, "detach") &&
      nb::cast<bool>(obj.attr("requires_grad"))) {
    throw UnsupportedError(what + " is a tensor that requires grad; pass `param.detach()` (it shares "
                           "the parameter's memory, so the engine's edits reach the model).");
  }
  nb::ndarray<nb::ro> probe;
  if (!nb::try_cast(obj, probe, /*convert=*/false)) {
    throw UnsupportedError(what + " is a " + python_type_name(obj) +
                           ", not an array; pass a numpy array or a CPU tensor holding the "
                           "parameter itself (the engine edits it in place).");
  }
  if (probe.device_type() != nb::device::cpu::value) {
    throw UnsupportedError(what + " is not in CPU memory (DLPack device type " +
                           std::to_string(probe.device_type()) +
                           "); move the model to the CPU (model.cpu()) before preparing it.");
  }
  const nb::dlpack::dtype dt = probe.dtype();
  DType dtype;
  if (dt == nb::dtype<float>()) {
    dtype = DType::Float32;
  } else if (dt == nb::dtype<double>()) {
    dtype = DType::Float64;
  } else {
    throw UnsupportedError(what + " has dtype " + dtype_text(dt) +
                           "; the engine works on float32 or float64 weights: convert the model "
                           "(e.g. model.float()) before preparing it and quantize afterwards.");
  }
  if (!c_contiguous(probe)) {
    throw UnsupportedError(what + " is not C-contiguous; pass a contiguous array "
                           "(numpy.ascontiguousarray / tensor.contiguous()) and keep that object "
                           "as the parameter, since the engine edits it in place.");
  }
  nb::ndarray<> writable;
  if (!nb::try_cast(obj, writable, /*convert=*/false)) {
    throw UnsupportedError(what + " is read-only; the engine edits weights in place: pass a "
                           "writable array (e.g. numpy.array(x), or set x.flags.writeable = True "
                           "when you own the memory).");
  }
  TensorView view;
  view.data = writable.data();
  view.dtype = dtype;
  view.shape.reserve(writable.ndim());
  for (size_t i = 0; i < writable.ndim(); ++i) view.shape.push_back(static_cast<int64_t>(writable.shape(i)));
  return {std::move(view), std::move(writable)};
}

nb::object numpy_of(std::span<const double> values) {
  double* data = new double[values.size()];
  std::copy(values.begin(), values.end(), data);
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<double*>(p); });
  return nb::ndarray<nb::numpy, double, nb::ndim<1>>(data, {values.size()}, owner).cast();
}

nb::object numpy_of(const TensorView& view) {
  const size_t bytes = static_cast<size_t>(view.bytes());
  auto* data = new unsigned char[bytes > 0 ? bytes : 1];
  if (bytes > 0) std::memcpy(data, view.data, bytes);
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<unsigned char*>(p); });
  std::vector<size_t> shape(view.shape.begin(), view.shape.end());
  const nb::dlpack::dtype dt = view.dtype == DType::Float32 ? nb::dtype<float>() : nb::dtype<double>();
  return nb::ndarray<nb::numpy>(data, shape.size(), shape.data(), owner, nullptr, dt).cast();
}

std::vector<double> doubles_of(nb::handle values, const std::string& what) {
  nb::object np = nb::module_::import_("numpy");
  nb::object flat;
  try {
    flat = np.attr("ascontiguousarray")(values, "dtype"_a = "float64").attr("ravel")();
  } catch (nb::python_error& e) {
    throw InvalidRequestError(what + " must be a sequence of numbers (" + e.what() + ").");
  }
  auto array = nb::cast<nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::ro>>(flat);
  return std::vector<double>(array.data(), array.data() + array.shape(0));
}

namespace {

// A read-only snapshot of one node, for inspection from Python.
struct NodeInfo {
  std::string name;
  std::string kind;
  std::string op_type;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  bool removed = false;
  bool has_bias = false;
  bool is_depthwise = false;
  std::vector<int64_t> weight_shape;
  std::string weight_dtype;
  std::string weight_name;
  std::string bias_name;
  ChannelLayout layout;
  bool has_padding = false;
  int spatial_rank = 0;
  double eps = 0.0;
  double clip_min = 0.0;
  double clip_max = 0.0;
  std::vector<double> clip_max_per_channel;
  double alpha = 0.0;
  bool has_slope = false;
  std::string gate;                 // gated: sigmoid, hard_sigmoid, gelu_erf, gelu_tanh
  std::vector<double> gate_scale;   // gated: y = x·g(gate_scale[c]·x); empty = 1
};

// Python names of node kinds (also accepted by add_activation).
const char* kind_text(OpKind k) {
  switch (k) {
    case OpKind::Conv: return "conv";
    case OpKind::Linear: return "linear";
    case OpKind::BatchNorm: return "batch_norm";
    case OpKind::Relu: return "relu";
    case OpKind::Clip: return "clip";
    case OpKind::LeakyRelu: return "leaky_relu";
    case OpKind::PRelu: return "prelu";
    case OpKind::Identity: return "identity";
    case OpKind::ZeroPad: return "zero_pad";
    case OpKind::Pool: return "pool";
    case OpKind::Add: return "add";
    case OpKind::Concat: return "concat";
    case OpKind::Split: return "split";
    case OpKind::Resize: return "resize";
    case OpKind::Opaque: return "opaque";
    case OpKind::GatedActivation: return "gated";
  }
  return "opaque";
}

NodeInfo info_of(const Node& n) {
  NodeInfo i;
  i.name = n.name;
  i.kind = kind_text(n.kind);
  i.op_type = n.op_type;
  i.inputs = n.inputs;
  i.outputs = n.outputs;
  i.removed = n.removed;
  i.has_bias = !n.bias.empty();
  if (n.is_layer()) {
    i.is_depthwise = n.is_depthwise();
    i.weight_shape = n.weight.tensor.shape;
    i.weight_dtype = n.weight.tensor.empty() ? "" : dtype_name(n.weight.tensor.dtype);
    i.weight_name = n.weight.tensor.name;
    i.bias_name = n.bias.name;
    i.layout = n.weight.layout;
    i.spatial_rank = n.spatial_rank;
  }
  i.has_padding = n.has_padding;  // a conv that pads, or a pool whose padding enters its output
  i.eps = n.eps;
  i.clip_min = n.clip_min;
  i.clip_max = n.clip_max;
  i.clip_max_per_channel = n.clip_max_per_channel;
  i.alpha = n.alpha;
  i.has_slope = !n.slope.empty();
  if (n.kind == OpKind::GatedActivation) {
    i.gate = gate_name(n.gate);
    i.gate_scale = n.gate_scale;
  }
  return i;
}

// Any node with this name, removed or not (a folded BN is still inspectable).
const Node& any_node(const Graph& g, const std::string& name) {
  if (auto idx = g.find(name)) return g.nodes[*idx];
  for (const Node& n : g.nodes)
    if (n.name == name) return n;
  throw GraphError("The graph has no node named '" + name + "'; Graph.node_names() lists them.", name);
}

std::vector<std::string> names_of(nb::handle h, const char* what) {
  if (nb::isinstance<nb::str>(h)) return {nb::cast<std::string>(h)};
  try {
    return nb::cast<std::vector<std::string>>(h);
  } catch (const nb::cast_error&) {
    throw InvalidRequestError(std::string(what) + " must be a tensor name or a list of tensor names, got " +
                              python_type_name(h) + ".");
  }
}

ChannelLayout layout_of(nb::handle h, size_t ndim, const std::string& node) {
  ChannelLayout layout;
  if (h.is_none()) {
    // torch / ONNX convention: (O, I/g, k...)
  } else if (nb::isinstance<ChannelLayout>(h)) {
    layout = nb::cast<ChannelLayout>(h);
  } else {
    std::vector<nb::handle> items;
    try {
      for (nb::handle item : h) items.push_back(item);
    } catch (const nb::python_error&) {
      items.clear();
    }
    if (items.size() < 2 || items.size() > 4)
      throw InvalidRequestError("layout of '" + node + "' must be a ChannelLayout or a tuple "
                                "(out_axis, in_axis[, groups[, transposed]]).", node);
    layout.out_axis = nb::cast<int>(items[0]);
    layout.in_axis = nb::cast<int>(items[1]);
    if (items.size() > 2) layout.groups = nb::cast<int>(items[2]);
    if (items.size() > 3) layout.transposed = nb::cast<bool>(items[3]);
  }
  // Python-style negative axes count from the end (Keras kernels: out = -1, in = -2).
  const int rank = static_cast<int>(ndim);
  if (layout.out_axis < 0) layout.out_axis += rank;
  if (layout.in_axis < 0) layout.in_axis += rank;
  return layout;
}

std::string param_name(const nb::handle names, const std::string& node, const char* role) {
  if (!names.is_none()) {
    nb::dict d = nb::cast<nb::dict>(names);
    if (d.contains(role)) return nb::cast<std::string>(d[role]);
  }
  return node + "." + role;
}

OpKind activation_kind(const std::string& kind, const std::string& node) {
  static const std::pair<const char*, OpKind> kinds[] = {
      {"relu", OpKind::Relu},         {"clip", OpKind::Clip},         {"relu6", OpKind::Clip},
      {"leaky_relu", OpKind::LeakyRelu}, {"prelu", OpKind::PRelu},    {"identity", OpKind::Identity},
      {"zero_pad", OpKind::ZeroPad},  {"pool", OpKind::Pool},         {"opaque", OpKind::Opaque},
      {"add", OpKind::Add},           {"concat", OpKind::Concat},     {"resize", OpKind::Resize}};
  for (const auto& [text, k] : kinds)
    if (kind == text) return k;
  throw InvalidRequestError("Unknown activation kind '" + kind + "' for '" + node +
                            "'; use relu, clip, leaky_relu, prelu, identity, zero_pad, pool, add, concat, resize or opaque.",
                            node);
}

// Adds `node` with its views; the arrays are kept only once the graph accepted the node.
void add_node(PyGraph& self, Node node, std::vector<nb::ndarray<>> arrays) {
  auto lock = self.lock();
  self.graph().add(std::move(node));
  for (auto& a : arrays) self.state->arrays.push_back(std::move(a));
}

// Takes a view of `array` as parameter `role` of `node`.
TensorView take(nb::handle array, const std::string& node, const char* role, nb::handle names,
                std::vector<nb::ndarray<>>& keep) {
  auto [view, nd] = view_of(array, "Parameter '" + std::string(role) + "' of '" + node + "'");
  view.name = param_name(names, node, role);
  keep.push_back(std::move(nd));
  return view;
}

}  // namespace

PyGraph::PyGraph() : state(std::make_shared<GraphState>()) {
  state->owned = std::make_unique<Graph>();
  state->graph = state->owned.get();
}

void bind_graph(nb::module_& m) {
  nb::class_<ChannelLayout>(m, "ChannelLayout",
                            "Where the channels of a weight are: out_axis, in_axis, groups, transposed.")
      .def("__init__",
           [](ChannelLayout* self, int out_axis, int in_axis, int groups, bool transposed) {
             new (self) ChannelLayout{out_axis, in_axis, groups, transposed};
           },
           "out_axis"_a = 0, "in_axis"_a = 1, "groups"_a = 1, "transposed"_a = false)
      .def_rw("out_axis", &ChannelLayout::out_axis)
      .def_rw("in_axis", &ChannelLayout::in_axis)
      .def_rw("groups", &ChannelLayout::groups)
      .def_rw("transposed", &ChannelLayout::transposed)
      .def("__repr__", [](const ChannelLayout& l) {
        std::ostringstream s;
        s << "ChannelLayout(out_axis=" << l.out_axis << ", in_axis=" << l.in_axis
          << ", groups=" << l.groups << ", transposed=" << (l.transposed ? "True" : "False") << ")";
        return s.str();
      });

  nb::class_<NodeInfo>(m, "NodeInfo", "A read-only snapshot of one graph node.")
      .def_ro("name", &NodeInfo::name)
      .def_ro("kind", &NodeInfo::kind, "conv, linear, batch_norm, relu, clip, leaky_relu, prelu, "
                                       "identity, zero_pad, pool, add, concat, split, resize, gated or opaque")
      .def_ro("op_type", &NodeInfo::op_type)
      .def_ro("inputs", &NodeInfo::inputs)
      .def_ro("outputs", &NodeInfo::outputs)
      .def_ro("removed", &NodeInfo::removed)
      .def_ro("has_bias", &NodeInfo::has_bias)
      .def_ro("is_depthwise", &NodeInfo::is_depthwise)
      .def_prop_ro("weight_shape", [](const NodeInfo& i) {
        nb::list l;
        for (int64_t d : i.weight_shape) l.append(d);
        return nb::tuple(l);
      })
      .def_ro("weight_dtype", &NodeInfo::weight_dtype)
      .def_ro("weight_name", &NodeInfo::weight_name)
      .def_ro("bias_name", &NodeInfo::bias_name)
      .def_prop_ro("layout", [](const NodeInfo& i) { return i.layout; })
      .def_ro("has_padding", &NodeInfo::has_padding)
      .def_ro("spatial_rank", &NodeInfo::spatial_rank)
      .def_ro("eps", &NodeInfo::eps)
      .def_ro("clip_min", &NodeInfo::clip_min)
      .def_ro("clip_max", &NodeInfo::clip_max)
      .def_prop_ro("clip_max_per_channel",
                   [](const NodeInfo& i) { return numpy_of(i.clip_max_per_channel); },
                   "per-channel upper bounds set by the 'bound' ReLU6 policy (empty otherwise)")
      .def_ro("alpha", &NodeInfo::alpha)
      .def_ro("has_slope", &NodeInfo::has_slope)
      .def_ro("gate", &NodeInfo::gate, "gated: sigmoid (SiLU), hard_sigmoid (HardSwish), gelu_erf or gelu_tanh")
      .def_prop_ro("gate_scale", [](const NodeInfo& i) { return numpy_of(i.gate_scale); },
                   "gated: y = x·g(gate_scale[c]·x), set by scaling through it (empty: 1)")
      .def("__repr__", [](const NodeInfo& i) {
        return "NodeInfo(name='" + i.name + "', kind='" + i.kind + "'" + (i.removed ? ", removed" : "") + ")";
      });

  nb::class_<PyGraph>(m, "Graph",
                      "The engine's graph. Parameters are zero-copy views of the arrays passed to "
                      "add_*; passes edit those arrays in place. The graph keeps them alive.")
      .def(nb::init<>())
      .def(
          "add_conv",
          [](PyGraph& self, const std::string& name, nb::handle inputs, nb::handle outputs,
             nb::handle weight, nb::handle layout, nb::handle bias, bool has_padding, int spatial_rank,
             const std::string& kind, const std::string& op_type, nb::handle names, bool channels_last,
             int input_rank) {
            Node node;
            node.name = name;
            node.channels_last = channels_last;
            node.input_rank = input_rank;
            if (kind == "conv") {
              node.kind = OpKind::Conv;
            } else if (kind == "linear") {
              node.kind = OpKind::Linear;
            } else {
              throw InvalidRequestError("kind of '" + name + "' must be 'conv' or 'linear', not '" + kind + "'.",
                                        name);
            }
            node.op_type = op_type;
            node.inputs = names_of(inputs, "inputs");
            node.outputs = names_of(outputs, "outputs");
            std::vector<nb::ndarray<>> keep;
            node.weight.tensor = take(weight, name, "weight", names, keep);
            node.weight.layout = layout_of(layout, node.weight.tensor.shape.size(), name);
            if (!bias.is_none()) node.bias = take(bias, name, "bias", names, keep);
            node.has_padding = has_padding;
            if (spatial_rank < 0)
              spatial_rank = node.kind == OpKind::Linear ? 0 : static_cast<int>(node.weight.tensor.shape.size()) - 2;
            node.spatial_rank = spatial_rank;
            add_node(self, std::move(node), std::move(keep));
          },
          "name"_a, "inputs"_a, "outputs"_a, "weight"_a, "layout"_a = nb::none(), "bias"_a = nb::none(),
          "has_padding"_a = false, "spatial_rank"_a = -1, "kind"_a = "conv", "op_type"_a = "",
          "names"_a = nb::none(), "channels_last"_a = false, "input_rank"_a = 0,
          "Adds a conv or linear layer. `layout` is a ChannelLayout or (out_axis, in_axis[, groups[, "
          "transposed]]) (default: torch's (0, 1, 1, False)); negative axes count from the end. "
          "`spatial_rank` defaults to weight.ndim - 2 for conv, 0 for linear. `names` maps "
          "'weight'/'bias' to framework parameter names. `channels_last=True` marks a linear layer "
          "contracting the last axis in a channels-first graph (PyTorch); `input_rank` is the rank "
          "of its input (0: unknown): it pairs with a conv or batch norm only at rank 2.")
      .def(
          "add_batch_norm",
          [](PyGraph& self, const std::string& name, nb::handle inputs, nb::handle outputs, nb::handle gamma,
             nb::handle beta, nb::handle mean, nb::handle var, double eps, const std::string& op_type,
             nb::handle names) {
            Node node;
            node.name = name;
            node.kind = OpKind::BatchNorm;
            node.op_type = op_type;
            node.inputs = names_of(inputs, "inputs");
            node.outputs = names_of(outputs, "outputs");
            std::vector<nb::ndarray<>> keep;
            node.gamma = take(gamma, name, "gamma", names, keep);
            node.beta = take(beta, name, "beta", names, keep);
            node.mean = take(mean, name, "mean", names, keep);
            node.var = take(var, name, "var", names, keep);
            node.eps = eps;
            add_node(self, std::move(node), std::move(keep));
          },
          "name"_a, "inputs"_a, "outputs"_a, "gamma"_a, "beta"_a, "mean"_a, "var"_a, "eps"_a = 1e-5,
          "op_type"_a = "", "names"_a = nb::none(),
          "Adds a batch norm y = gamma·(x − mean)/sqrt(var + eps) + beta (channel axis 1 / last, per the "
          "front end).")
      .def(
          "add_activation",
          [](PyGraph& self, const std::string& name, const std::string& kind, nb::handle inputs,
             nb::handle outputs, double clip_min, double clip_max, nb::handle clip_max_per_channel, double alpha,
             nb::handle slope, const std::string& op_type, nb::handle names, bool has_padding,
             const std::string& pool_kind) {
            Node node;
            node.name = name;
            node.kind = activation_kind(kind, name);
            node.op_type = op_type;
            node.inputs = names_of(inputs, "inputs");
            node.outputs = names_of(outputs, "outputs");
            node.clip_min = clip_min;
            node.clip_max = clip_max;
            if (!clip_max_per_channel.is_none())
              node.clip_max_per_channel = doubles_of(clip_max_per_channel, "clip_max_per_channel of '" + name + "'");
            node.alpha = alpha;
            if (has_padding && node.kind != OpKind::Pool)
              throw InvalidRequestError("has_padding is for a pool whose padded zeros enter its average ('" + name +
                                            "' is a " + kind + "); a zero pad is kind 'zero_pad'.",
                                        name);
            node.has_padding = has_padding;
            if (!pool_kind.empty() && node.kind != OpKind::Pool)
              throw InvalidRequestError("pool_kind is for a pool ('" + name + "' is a " + kind + ").", name);
            if (pool_kind == "max") node.pool_kind = PoolKind::Max;
            else if (pool_kind == "average") node.pool_kind = PoolKind::Average;
            else if (!pool_kind.empty())
              throw InvalidRequestError("pool_kind of '" + name + "' is '" + pool_kind +
                                            "'; use 'max', 'average' (a spatial mean too) or '' (not said).",
                                        name);
            std::vector<nb::ndarray<>> keep;
            if (!slope.is_none()) node.slope = take(slope, name, "slope", names, keep);
            if (node.kind == OpKind::PRelu && node.slope.empty())
              throw InvalidRequestError("PReLU '" + name + "' needs its slope array (slope=...).", name);
            add_node(self, std::move(node), std::move(keep));
          },
          "name"_a, "kind"_a, "inputs"_a, "outputs"_a, "clip_min"_a = 0.0, "clip_max"_a = 6.0,
          "clip_max_per_channel"_a = nb::none(), "alpha"_a = 0.01, "slope"_a = nb::none(), "op_type"_a = "",
          "names"_a = nb::none(), "has_padding"_a = false, "pool_kind"_a = "",
          "Adds an activation-like node: relu, clip (relu6 = clip 0..6), leaky_relu (alpha), prelu "
          "(slope array), identity, zero_pad, pool or opaque. A clip may carry a per-channel upper bound "
          "(clip_max_per_channel), as a ReLU6 bounded by an earlier scaling does. A pool has "
          "`has_padding=True` when padded zeros enter its output (an average pool counting its padding, "
          "or one with a divisor override); max-pool padding (-inf) does not. A pool says `pool_kind='max'` "
          "or 'average' (a spatial mean too); bias correction carries statistics through an average only.")
      .def(
          "add_gated_activation",
          [](PyGraph& self, const std::string& name, const std::string& gate, nb::handle inputs, nb::handle outputs,
             nb::handle gate_scale, const std::string& op_type) {
            Node node;
            node.name = name;
            node.kind = OpKind::GatedActivation;
            node.op_type = op_type;
            node.inputs = names_of(inputs, "inputs");
            node.outputs = names_of(outputs, "outputs");
            static const Gate gates[] = {Gate::Sigmoid, Gate::HardSigmoid, Gate::GeluErf, Gate::GeluTanh};
            bool known = false;
            for (Gate g : gates)
              if (gate == gate_name(g)) node.gate = g, known = true;
            if (!known)
              throw InvalidRequestError("Unknown gate '" + gate + "' for '" + name +
                                            "'; use sigmoid (SiLU), hard_sigmoid (HardSwish), gelu_erf or gelu_tanh (GELU).",
                                        name);
            if (!gate_scale.is_none()) node.gate_scale = doubles_of(gate_scale, "gate_scale of '" + name + "'");
            add_node(self, std::move(node), {});
          },
          "name"_a, "gate"_a, "inputs"_a, "outputs"_a, "gate_scale"_a = nb::none(), "op_type"_a = "",
          "Adds a gated activation y = x·g(gate_scale[c]·x): gate 'sigmoid' (SiLU/Swish), 'hard_sigmoid' "
          "(HardSwish: relu6(z + 3)/6), 'gelu_erf' or 'gelu_tanh' (GELU). Cross-layer scaling passes through "
          "it with gated_activations=True, multiplying gate_scale.")
      .def(
          "add_split",
          [](PyGraph& self, const std::string& name, nb::handle inputs, nb::handle outputs,
             const std::vector<int64_t>& slice_begin, const std::vector<int64_t>& slice_end,
             const std::string& op_type) {
            Node node;
            node.name = name;
            node.kind = OpKind::Split;
            node.op_type = op_type;
            node.inputs = names_of(inputs, "inputs");
            node.outputs = names_of(outputs, "outputs");
            node.slice_begin = slice_begin;
            node.slice_end = slice_end;
            add_node(self, std::move(node), {});
          },
          "name"_a, "inputs"_a, "outputs"_a, "slice_begin"_a, "slice_end"_a, "op_type"_a = "",
          "Adds a channel split: output k is channels [slice_begin[k], min(slice_end[k], C)) of the "
          "input (Split, Slice, chunk on the channel axis; a large end means 'to the end').")
      .def(
          "add_opaque",
          [](PyGraph& self, const std::string& name, const std::string& op_type, nb::handle inputs,
             nb::handle outputs, const std::string& reason) {
            Node node;
            node.name = name;
            node.kind = OpKind::Opaque;
            node.op_type = op_type;
            node.opaque_reason = reason;
            node.inputs = names_of(inputs, "inputs");
            node.outputs = names_of(outputs, "outputs");
            add_node(self, std::move(node), {});
          },
          "name"_a, "op_type"_a, "inputs"_a, "outputs"_a, "reason"_a = "",
          "Adds a node the engine never looks into; it blocks folding and scaling across it. "
          "`reason` says why the front end could not map it (shown in every decline it causes).")
      .def_prop_rw(
          "graph_inputs", [](const PyGraph& self) { auto lock = self.lock(); return self.graph().graph_inputs; },
          [](PyGraph& self, nb::handle names) {
            auto v = names_of(names, "graph_inputs");
            auto lock = self.lock();
            self.graph().graph_inputs = std::move(v);
          })
      .def_prop_rw(
          "graph_outputs", [](const PyGraph& self) { auto lock = self.lock(); return self.graph().graph_outputs; },
          [](PyGraph& self, nb::handle names) {
            auto v = names_of(names, "graph_outputs");
            auto lock = self.lock();
            self.graph().graph_outputs = std::move(v);
          })
      .def(
          "lint",
          [](const PyGraph& self) {
            run_without_gil(self, [](Graph& g) {
              g.reindex();
              g.lint();
            });
          },
          "Checks the invariants the passes rely on; raises GraphError saying how to fix the first "
          "violation.")
      .def(
          "node", [](const PyGraph& self, const std::string& name) {
            auto lock = self.lock();
            return info_of(any_node(self.graph(), name));
          },
          "name"_a, "A snapshot of the node named `name` (removed nodes included).")
      .def(
          "nodes",
          [](const PyGraph& self, bool include_removed) {
            auto lock = self.lock();
            std::vector<NodeInfo> out;
            for (const Node& n : self.graph().nodes)
              if (include_removed || !n.removed) out.push_back(info_of(n));
            return out;
          },
          "include_removed"_a = false, "Snapshots of the nodes in topological order.")
      .def(
          "node_names",
          [](const PyGraph& self, bool include_removed) {
            auto lock = self.lock();
            std::vector<std::string> out;
            for (const Node& n : self.graph().nodes)
              if (include_removed || !n.removed) out.push_back(n.name);
            return out;
          },
          "include_removed"_a = false)
      .def(
          "added_bias",
          [](const PyGraph& self, const std::string& name) {
            auto lock = self.lock();
            const Node& n = any_node(self.graph(), name);
            if (n.bias.empty())
              throw InvalidRequestError("'" + name + "' has no bias; only layers a pass gave a bias (see "
                                        "FoldedPair.bias_added / BiasAbsorption.bias_added) have one to copy.",
                                        name);
            return numpy_of(n.bias);
          },
          "name"_a,
          "A numpy copy of the bias of layer `name`, typically one the engine created in its arena when "
          "folding into a layer that had none.")
      .def(
          "parameter",
          [](const PyGraph& self, const std::string& name, const std::string& role) {
            auto lock = self.lock();
            const Node& n = any_node(self.graph(), name);
            const TensorView* v = nullptr;
            if (role == "weight") v = &n.weight.tensor;
            else if (role == "bias") v = &n.bias;
            else if (role == "gamma") v = &n.gamma;
            else if (role == "beta") v = &n.beta;
            else if (role == "mean") v = &n.mean;
            else if (role == "var") v = &n.var;
            else if (role == "slope") v = &n.slope;
            else
              throw InvalidRequestError("Unknown parameter role '" + role +
                                        "'; use weight, bias, gamma, beta, mean, var or slope.", name);
            if (v->empty())
              throw InvalidRequestError("'" + name + "' has no " + role + ".", name);
            return numpy_of(*v);
          },
          "name"_a, "role"_a,
          "A numpy copy of one parameter of node `name` (weight, bias, gamma, beta, mean, var, slope).")
      .def("__len__",
           [](const PyGraph& self) {
             auto lock = self.lock();
             size_t live = 0;
             for (const Node& n : self.graph().nodes) live += !n.removed;
             return live;
           })
      .def("__contains__",
           [](const PyGraph& self, const std::string& name) {
             auto lock = self.lock();
             return self.graph().find(name).has_value();
           })
      .def("__repr__", [](const PyGraph& self) {
        auto lock = self.lock();
        size_t live = 0;
        for (const Node& n : self.graph().nodes) live += !n.removed;
        return "<prequant Graph: " + std::to_string(live) + " nodes>";
      });
}

}  // namespace prequant::python
