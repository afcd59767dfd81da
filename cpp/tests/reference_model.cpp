// reference_model.cpp — see reference_model.h: weight layouts (per-framework index formulas),
// reference channel ranges, the RefModel builder, graph snapshots and small test helpers.
// The reference forward pass is in reference_forward.cpp. Written from the layer definitions
// with explicit index loops; deliberately shares no code with the engine's channel routines.
#include "reference_model.h"

#include "prequant/results.h"
#include "prequant/testing.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace pqtest {

using prequant::Node;
using prequant::OpKind;
using prequant::TensorView;

// ------------------------------------------------------------------------------------------
// Layouts

const char* layout_name(FrameworkLayout fl) {
  switch (fl) {
    case FrameworkLayout::TorchConv: return "TorchConv";
    case FrameworkLayout::TorchConvTranspose: return "TorchConvTranspose";
    case FrameworkLayout::TorchLinear: return "TorchLinear";
    case FrameworkLayout::KerasConv: return "KerasConv";
    case FrameworkLayout::KerasConvTranspose: return "KerasConvTranspose";
    case FrameworkLayout::KerasDense: return "KerasDense";
  }
  return "?";
}

bool is_transposed(FrameworkLayout fl) {
  return fl == FrameworkLayout::TorchConvTranspose || fl == FrameworkLayout::KerasConvTranspose;
}

std::vector<int64_t> weight_shape(FrameworkLayout fl, int64_t in, int64_t out, int64_t groups,
                                  const std::vector<int64_t>& kernel) {
  std::vector<int64_t> s;
  switch (fl) {
    case FrameworkLayout::TorchConv:
      s = {out, in / groups};
      s.insert(s.end(), kernel.begin(), kernel.end());
      break;
    case FrameworkLayout::TorchConvTranspose:
      s = {in, out / groups};
      s.insert(s.end(), kernel.begin(), kernel.end());
      break;
    case FrameworkLayout::TorchLinear: s = {out, in}; break;
    case FrameworkLayout::KerasConv:
      s = kernel;
      s.push_back(in / groups);
      s.push_back(out);
      break;
    case FrameworkLayout::KerasConvTranspose:
      s = kernel;
      s.push_back(out / groups);
      s.push_back(in);
      break;
    case FrameworkLayout::KerasDense: s = {in, out}; break;
  }
  return s;
}

prequant::ChannelLayout channel_layout(FrameworkLayout fl, int rank, int groups) {
  prequant::ChannelLayout l;
  l.groups = groups;
  switch (fl) {
    case FrameworkLayout::TorchConv:
    case FrameworkLayout::TorchLinear: l.out_axis = 0; l.in_axis = 1; break;
    case FrameworkLayout::TorchConvTranspose: l.out_axis = 1; l.in_axis = 0; l.transposed = true; break;
    case FrameworkLayout::KerasConv: l.out_axis = rank - 1; l.in_axis = rank - 2; break;
    case FrameworkLayout::KerasConvTranspose:
      l.out_axis = rank - 2; l.in_axis = rank - 1; l.transposed = true; break;
    case FrameworkLayout::KerasDense: l.out_axis = 1; l.in_axis = 0; break;
  }
  return l;
}

int64_t weight_in_channels(FrameworkLayout fl, const std::vector<int64_t>& s, int64_t g) {
  const size_t r = s.size();
  switch (fl) {
    case FrameworkLayout::TorchConv: return s[1] * g;
    case FrameworkLayout::TorchConvTranspose: return s[0];
    case FrameworkLayout::TorchLinear: return s[1];
    case FrameworkLayout::KerasConv: return s[r - 2] * g;
    case FrameworkLayout::KerasConvTranspose: return s[r - 1];
    case FrameworkLayout::KerasDense: return s[0];
  }
  return 0;
}

int64_t weight_out_channels(FrameworkLayout fl, const std::vector<int64_t>& s, int64_t g) {
  const size_t r = s.size();
  switch (fl) {
    case FrameworkLayout::TorchConv: return s[0];
    case FrameworkLayout::TorchConvTranspose: return s[1] * g;
    case FrameworkLayout::TorchLinear: return s[0];
    case FrameworkLayout::KerasConv: return s[r - 1];
    case FrameworkLayout::KerasConvTranspose: return s[r - 2] * g;
    case FrameworkLayout::KerasDense: return s[1];
  }
  return 0;
}

std::vector<int64_t> weight_kernel(FrameworkLayout fl, const std::vector<int64_t>& s) {
  switch (fl) {
    case FrameworkLayout::TorchConv:
    case FrameworkLayout::TorchConvTranspose: return {s.begin() + 2, s.end()};
    case FrameworkLayout::KerasConv:
    case FrameworkLayout::KerasConvTranspose: return {s.begin(), s.end() - 2};
    default: return {};
  }
}

int64_t weight_flat_index(FrameworkLayout fl, const std::vector<int64_t>& shape, int64_t g,
                          int64_t o, int64_t i, const std::vector<int64_t>& k) {
  const int64_t O = weight_out_channels(fl, shape, g), I = weight_in_channels(fl, shape, g);
  const int64_t Opg = O / g, Ipg = I / g;
  std::vector<int64_t> coord;
  if (!is_transposed(fl)) {
    const int64_t grp = o / Opg, il = i - grp * Ipg;
    if (il < 0 || il >= Ipg) return -1;
    switch (fl) {
      case FrameworkLayout::TorchConv:
        coord = {o, il};
        coord.insert(coord.end(), k.begin(), k.end());
        break;
      case FrameworkLayout::TorchLinear: coord = {o, i}; break;
      case FrameworkLayout::KerasConv:
        coord = k;
        coord.push_back(il);
        coord.push_back(o);
        break;
      case FrameworkLayout::KerasDense: coord = {i, o}; break;
      default: break;
    }
  } else {
    const int64_t grp = i / Ipg, ol = o - grp * Opg;
    if (ol < 0 || ol >= Opg) return -1;
    if (fl == FrameworkLayout::TorchConvTranspose) {
      coord = {i, ol};
      coord.insert(coord.end(), k.begin(), k.end());
    } else {
      coord = k;
      coord.push_back(ol);
      coord.push_back(i);
    }
  }
  if (coord.size() != shape.size()) throw std::logic_error("weight_flat_index: rank mismatch");
  int64_t flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (coord[d] < 0 || coord[d] >= shape[d]) throw std::logic_error("weight_flat_index: out of range");
    flat = flat * shape[d] + coord[d];
  }
  return flat;
}

void for_each_weight_element(FrameworkLayout fl, const std::vector<int64_t>& shape, int64_t g,
                             const std::function<void(int64_t, int64_t, int64_t)>& f) {
  const int64_t O = weight_out_channels(fl, shape, g), I = weight_in_channels(fl, shape, g);
  const auto kernel = weight_kernel(fl, shape);
  int64_t kcount = 1;
  for (int64_t d : kernel) kcount *= d;
  std::vector<int64_t> k(kernel.size());
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      if ((o / (O / g)) != (i / (I / g))) continue;  // different groups: no element
      for (int64_t kf = 0; kf < kcount; ++kf) {
        int64_t rest = kf;
        for (size_t d = kernel.size(); d-- > 0;) {
          k[d] = rest % kernel[d];
          rest /= kernel[d];
        }
        f(o, i, weight_flat_index(fl, shape, g, o, i, k));
      }
    }
}

double read(const TensorView& t, int64_t i) {
  if (t.dtype == DType::Float32) return static_cast<const float*>(t.data)[i];
  return static_cast<const double*>(t.data)[i];
}

void write(const TensorView& t, int64_t i, double v) {
  if (t.dtype == DType::Float32)
    static_cast<float*>(t.data)[i] = static_cast<float>(v);
  else
    static_cast<double*>(t.data)[i] = v;
}

std::vector<double> read_all(const TensorView& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = read(t, i);
  return v;
}

std::vector<double> ref_out_ranges(FrameworkLayout fl, const TensorView& w, int64_t g) {
  std::vector<double> r(weight_out_channels(fl, w.shape, g), 0.0);
  for_each_weight_element(fl, w.shape, g, [&](int64_t o, int64_t, int64_t idx) {
    r[o] = std::max(r[o], std::abs(read(w, idx)));
  });
  return r;
}

std::vector<double> ref_in_ranges(FrameworkLayout fl, const TensorView& w, int64_t g) {
  std::vector<double> r(weight_in_channels(fl, w.shape, g), 0.0);
  for_each_weight_element(fl, w.shape, g, [&](int64_t, int64_t i, int64_t idx) {
    r[i] = std::max(r[i], std::abs(read(w, idx)));
  });
  return r;
}

// ------------------------------------------------------------------------------------------
// Builder

RefModel::RefModel(uint32_t seed) : rng(seed) {}

TensorView RefModel::make_tensor(const std::string& name, std::vector<int64_t> shape, DType dtype,
                                 const std::vector<double>& values) {
  TensorView t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.name = name;
  const int64_t n = t.numel();
  if (static_cast<int64_t>(values.size()) != n)
    throw std::logic_error("make_tensor '" + name + "': " + std::to_string(values.size()) +
                           " values for " + std::to_string(n) + " elements");
  storage_.emplace_back(static_cast<size_t>(std::max<int64_t>(n, 1)), 0.0);
  t.data = storage_.back().data();
  for (int64_t i = 0; i < n; ++i) write(t, i, values[i]);
  return t;
}

std::vector<double> RefModel::uniform(int64_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<double> RefModel::signed_uniform(int64_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::bernoulli_distribution sign(0.5);
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = sign(rng) ? d(rng) : -d(rng);
  return v;
}

namespace {
std::string out_name(const std::string& node) { return node + ":out"; }
}  // namespace

std::string RefModel::input(const std::string& name, std::vector<int64_t> shape) {
  graph.graph_inputs.push_back(name);
  input_shapes[name] = std::move(shape);
  return name;
}

void RefModel::output(const std::string& tensor) { graph.graph_outputs.push_back(tensor); }

std::string RefModel::conv(const std::string& name, const std::string& x, const ConvSpec& spec) {
  const int sr = static_cast<int>(spec.kernel.size());
  FrameworkLayout fl = spec.keras ? (spec.transposed ? FrameworkLayout::KerasConvTranspose
                                                     : FrameworkLayout::KerasConv)
                                  : (spec.transposed ? FrameworkLayout::TorchConvTranspose
                                                     : FrameworkLayout::TorchConv);
  const auto shape = weight_shape(fl, spec.in, spec.out, spec.groups, spec.kernel);
  int64_t fan_in = (spec.transposed ? spec.in : spec.in / spec.groups);
  for (int64_t k : spec.kernel) fan_in *= k;
  const double scale = spec.weight_scale > 0 ? spec.weight_scale : 1.0 / std::sqrt(double(fan_in));
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;

  Node n;
  n.name = name;
  n.kind = OpKind::Conv;
  n.op_type = spec.transposed ? "ConvTranspose" : "Conv";
  n.inputs = {x};
  n.outputs = {out_name(name)};
  n.spatial_rank = sr;
  n.weight.tensor = make_tensor(name + ".weight", shape, spec.dtype, uniform(numel, -scale, scale));
  n.weight.layout = channel_layout(fl, static_cast<int>(shape.size()), static_cast<int>(spec.groups));
  if (spec.bias) n.bias = make_tensor(name + ".bias", {spec.out}, spec.dtype, signed_uniform(spec.out, 0.05, 0.5));

  NodeAttrs a;
  a.layout = fl;
  a.stride = spec.stride.empty() ? std::vector<int64_t>(sr, 1) : spec.stride;
  a.pad_begin = spec.pad.empty() ? std::vector<int64_t>(sr, 0) : spec.pad;
  a.pad_end = a.pad_begin;
  a.output_padding = spec.output_padding.empty() ? std::vector<int64_t>(sr, 0) : spec.output_padding;
  n.has_padding = std::any_of(a.pad_begin.begin(), a.pad_begin.end(), [](int64_t p) { return p != 0; });
  attrs[name] = a;
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::linear(const std::string& name, const std::string& x, int64_t in, int64_t out,
                             bool bias, bool keras, DType dtype) {
  const FrameworkLayout fl = keras ? FrameworkLayout::KerasDense : FrameworkLayout::TorchLinear;
  const auto shape = weight_shape(fl, in, out, 1, {});
  const double scale = 1.0 / std::sqrt(double(in));
  Node n;
  n.name = name;
  n.kind = OpKind::Linear;
  n.op_type = keras ? "Dense" : "Linear";
  n.inputs = {x};
  n.outputs = {out_name(name)};
  n.spatial_rank = 0;
  n.weight.tensor = make_tensor(name + ".weight", shape, dtype, uniform(in * out, -scale, scale));
  n.weight.layout = channel_layout(fl, 2, 1);
  if (bias) n.bias = make_tensor(name + ".bias", {out}, dtype, signed_uniform(out, 0.05, 0.5));
  NodeAttrs a;
  a.layout = fl;
  attrs[name] = a;
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::batch_norm(const std::string& name, const std::string& x, int64_t c,
                                 DType dtype, double eps) {
  Node n;
  n.name = name;
  n.kind = OpKind::BatchNorm;
  n.op_type = "BatchNormalization";
  n.inputs = {x};
  n.outputs = {out_name(name)};
  auto gamma = signed_uniform(c, 0.2, 2.0);
  gamma[0] = -std::abs(gamma[0]);  // at least one negative gamma
  n.gamma = make_tensor(name + ".gamma", {c}, dtype, gamma);
  n.beta = make_tensor(name + ".beta", {c}, dtype, signed_uniform(c, 0.1, 2.0));
  n.mean = make_tensor(name + ".mean", {c}, dtype, signed_uniform(c, 0.1, 1.5));
  n.var = make_tensor(name + ".var", {c}, dtype, uniform(c, 1e-2, 10.0));
  n.eps = eps;
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

namespace {
Node simple(const std::string& name, OpKind kind, const char* op_type, const std::string& x) {
  Node n;
  n.name = name;
  n.kind = kind;
  n.op_type = op_type;
  n.inputs = {x};
  n.outputs = {name + ":out"};
  return n;
}
}  // namespace

std::string RefModel::relu(const std::string& name, const std::string& x) {
  attrs[name] = {};
  graph.add(simple(name, OpKind::Relu, "Relu", x));
  return out_name(name);
}

std::string RefModel::clip(const std::string& name, const std::string& x, double lo, double hi) {
  Node n = simple(name, OpKind::Clip, "Clip", x);
  n.clip_min = lo;
  n.clip_max = hi;
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::leaky_relu(const std::string& name, const std::string& x, double alpha) {
  Node n = simple(name, OpKind::LeakyRelu, "LeakyRelu", x);
  n.alpha = alpha;
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::prelu(const std::string& name, const std::string& x, int64_t channels) {
  Node n = simple(name, OpKind::PRelu, "PRelu", x);
  n.slope = make_tensor(name + ".slope", {channels}, DType::Float32, uniform(channels, 0.05, 0.4));
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::identity(const std::string& name, const std::string& x) {
  attrs[name] = {};
  graph.add(simple(name, OpKind::Identity, "Identity", x));
  return out_name(name);
}

std::string RefModel::zero_pad(const std::string& name, const std::string& x,
                               std::vector<int64_t> begin, std::vector<int64_t> end) {
  NodeAttrs a;
  a.pad_begin = std::move(begin);
  a.pad_end = std::move(end);
  attrs[name] = a;
  graph.add(simple(name, OpKind::ZeroPad, "Pad", x));
  return out_name(name);
}

std::string RefModel::pool(const std::string& name, const std::string& x, bool max) {
  NodeAttrs a;
  a.pool_max = max;
  attrs[name] = a;
  graph.add(simple(name, OpKind::Pool, max ? "MaxPool" : "AveragePool", x)).pool_kind =
      max ? prequant::PoolKind::Max : prequant::PoolKind::Average;
  return out_name(name);
}

std::string RefModel::global_avg_pool(const std::string& name, const std::string& x) {
  NodeAttrs a;
  a.pool_max = false;
  a.pool_global = true;
  attrs[name] = a;
  graph.add(simple(name, OpKind::Pool, "GlobalAveragePool", x)).pool_kind = prequant::PoolKind::Average;
  return out_name(name);
}

std::string RefModel::add(const std::string& name, const std::vector<std::string>& xs) {
  Node n;
  n.name = name;
  n.kind = OpKind::Add;
  n.op_type = "Add";
  n.inputs = xs;
  n.outputs = {out_name(name)};
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::concat(const std::string& name, const std::vector<std::string>& xs) {
  Node n;
  n.name = name;
  n.kind = OpKind::Concat;
  n.op_type = "Concat";
  n.inputs = xs;
  n.outputs = {out_name(name)};
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

std::vector<std::string> RefModel::split(const std::string& name, const std::string& x,
                                         const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  Node n;
  n.name = name;
  n.kind = OpKind::Split;
  n.op_type = "Split";
  n.inputs = {x};
  for (size_t k = 0; k < ranges.size(); ++k) {
    n.outputs.push_back(name + ":out" + std::to_string(k));
    n.slice_begin.push_back(ranges[k].first);
    n.slice_end.push_back(ranges[k].second);
  }
  auto outs = n.outputs;
  attrs[name] = {};
  graph.add(std::move(n));
  return outs;
}

std::string RefModel::resize(const std::string& name, const std::string& x) {
  attrs[name] = {};
  graph.add(simple(name, OpKind::Resize, "Resize", x));
  return out_name(name);
}

std::string RefModel::gated(const std::string& name, const std::string& x, prequant::Gate gate) {
  Node n = simple(name, OpKind::GatedActivation, prequant::gate_name(gate), x);
  n.gate = gate;
  attrs[name] = {};
  graph.add(std::move(n));
  return out_name(name);
}

std::string RefModel::opaque(const std::string& name, const std::vector<std::string>& xs,
                             const std::string& fn) {
  Node n;
  n.name = name;
  n.kind = OpKind::Opaque;
  n.op_type = fn == "add" ? "Add" : fn == "flatten" ? "Flatten" : "Tanh";
  n.inputs = xs;
  n.outputs = {out_name(name)};
  NodeAttrs a;
  a.opaque_fn = fn;
  attrs[name] = a;
  graph.add(std::move(n));
  return out_name(name);
}

std::vector<double> RefModel::out_ranges(const std::string& layer) {
  const Node& n = graph.at(layer);
  return ref_out_ranges(attrs.at(layer).layout, n.weight.tensor, n.weight.layout.groups);
}

std::vector<double> RefModel::in_ranges(const std::string& layer) {
  const Node& n = graph.at(layer);
  return ref_in_ranges(attrs.at(layer).layout, n.weight.tensor, n.weight.layout.groups);
}

// ------------------------------------------------------------------------------------------
// Snapshots

GraphSnapshot GraphSnapshot::take(const prequant::Graph& g) {
  GraphSnapshot s;
  s.graph_inputs = g.graph_inputs;
  s.graph_outputs = g.graph_outputs;
  for (const Node& n : g.nodes) {
    s.nodes.push_back({n.name, n.kind, n.removed, n.inputs, n.outputs, n.weight.tensor.data,
                       n.bias.data, !n.bias.empty(), n.clip_min, n.clip_max, n.clip_max_per_channel});
    for (const TensorView* t : {&n.weight.tensor, &n.bias, &n.gamma, &n.beta, &n.mean, &n.var, &n.slope}) {
      if (t->empty()) continue;
      const auto* p = static_cast<const unsigned char*>(t->data);
      s.bytes[t->data] = std::vector<unsigned char>(p, p + t->bytes());
      s.names[t->data] = t->name;
    }
  }
  return s;
}

std::string GraphSnapshot::diff(const GraphSnapshot& o) const {
  std::ostringstream out;
  if (graph_inputs != o.graph_inputs) return "graph inputs differ";
  if (graph_outputs != o.graph_outputs) return "graph outputs differ";
  if (nodes.size() != o.nodes.size()) return "node count differs";
  for (size_t k = 0; k < nodes.size(); ++k) {
    const auto& a = nodes[k];
    const auto& b = o.nodes[k];
    if (a.name != b.name) return "node " + std::to_string(k) + " name differs";
    if (a.kind != b.kind) return "node '" + a.name + "' kind differs";
    if (a.removed != b.removed) return "node '" + a.name + "' removed flag differs";
    if (a.inputs != b.inputs) return "node '" + a.name + "' inputs differ";
    if (a.outputs != b.outputs) return "node '" + a.name + "' outputs differ";
    if (a.weight != b.weight) return "node '" + a.name + "' weight view differs";
    if (a.bias != b.bias || a.has_bias != b.has_bias) return "node '" + a.name + "' bias differs";
    if (a.clip_min != b.clip_min || a.clip_max != b.clip_max ||
        a.clip_max_per_channel != b.clip_max_per_channel)
      return "node '" + a.name + "' clip bounds differ";
  }
  if (bytes.size() != o.bytes.size()) return "parameter set differs";
  for (const auto& [ptr, data] : bytes) {
    auto it = o.bytes.find(ptr);
    if (it == o.bytes.end()) return "a parameter disappeared";
    if (it->second.size() != data.size() ||
        std::memcmp(it->second.data(), data.data(), data.size()) != 0)
      return "bytes of parameter '" + names.at(ptr) + "' differ";
  }
  return {};
}

const prequant::Declined* find_declined(const std::vector<prequant::Declined>& declined,
                                        const std::string& node) {
  for (const auto& d : declined)
    if (std::find(d.nodes.begin(), d.nodes.end(), node) != d.nodes.end()) return &d;
  return nullptr;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

FaultInjection::FaultInjection(int n) { prequant::testing::set_fail_after_writes(n); }
FaultInjection::~FaultInjection() { prequant::testing::set_fail_after_writes(-1); }

}  // namespace pqtest
