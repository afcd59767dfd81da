// reference_model.cpp — see reference_model.h. Written from the layer definitions with explicit
// index loops; deliberately shares no code with the engine's channel routines.
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
// Tensors and errors

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

double max_abs_value(const std::vector<Tensor>& a) {
  double m = 0;
  for (const auto& t : a)
    for (double v : t.data) m = std::max(m, std::abs(v));
  return m;
}

double max_rel_error(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k].shape != b[k].shape) return INFINITY;
    for (size_t i = 0; i < a[k].data.size(); ++i) {
      const double d = std::abs(a[k].data[i] - b[k].data[i]);
      if (std::isnan(d)) return INFINITY;
      diff = std::max(diff, d);
    }
  }
  return diff / std::max(max_abs_value(a), 1e-300);
}

double max_rel_error(const Tensor& a, const Tensor& b) {
  return max_rel_error(std::vector<Tensor>{a}, std::vector<Tensor>{b});
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
  graph.add(simple(name, OpKind::Pool, max ? "MaxPool" : "AveragePool", x));
  return out_name(name);
}

std::string RefModel::global_avg_pool(const std::string& name, const std::string& x) {
  NodeAttrs a;
  a.pool_max = false;
  a.pool_global = true;
  attrs[name] = a;
  graph.add(simple(name, OpKind::Pool, "GlobalAveragePool", x));
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
// Reference forward

namespace {

// Spatial geometry padded to three axes (missing axes have size 1).
struct Geo {
  int64_t n = 1, c = 1, s[3] = {1, 1, 1};
  int rank = 0;
};

Geo geometry(const Tensor& x) {
  if (x.shape.size() < 2 || x.shape.size() > 5)
    throw std::logic_error("reference forward: activation rank " + std::to_string(x.shape.size()));
  Geo g;
  g.n = x.shape[0];
  g.c = x.shape[1];
  g.rank = static_cast<int>(x.shape.size()) - 2;
  for (int d = 0; d < g.rank; ++d) g.s[d] = x.shape[2 + d];
  return g;
}

Tensor make(int64_t n, int64_t c, const int64_t* s, int rank) {
  Tensor t;
  t.shape = {n, c};
  for (int d = 0; d < rank; ++d) t.shape.push_back(s[d]);
  t.data.assign(static_cast<size_t>(t.numel()), 0.0);
  return t;
}

inline int64_t at5(const int64_t* s, int64_t C, int64_t n, int64_t c, int64_t a, int64_t b, int64_t d) {
  return (((n * C + c) * s[0] + a) * s[1] + b) * s[2] + d;
}

Tensor conv_forward(const Tensor& x, const Node& node, const NodeAttrs& at) {
  const FrameworkLayout fl = at.layout;
  const auto& w = node.weight.tensor;
  const int64_t g = node.weight.layout.groups;
  const int64_t O = weight_out_channels(fl, w.shape, g), I = weight_in_channels(fl, w.shape, g);
  const auto kernel = weight_kernel(fl, w.shape);
  const int sr = static_cast<int>(kernel.size());
  const Geo in = geometry(x);
  if (in.rank != sr) throw std::logic_error("conv '" + node.name + "': input rank does not fit the kernel");
  if (in.c != I)
    throw std::logic_error("conv '" + node.name + "': input has " + std::to_string(in.c) +
                           " channels, weight expects " + std::to_string(I));
  int64_t K[3] = {1, 1, 1}, st[3] = {1, 1, 1}, pb[3] = {0, 0, 0}, pe[3] = {0, 0, 0}, op[3] = {0, 0, 0};
  for (int d = 0; d < sr; ++d) {
    K[d] = kernel[d];
    st[d] = at.stride[d];
    pb[d] = at.pad_begin[d];
    pe[d] = at.pad_end[d];
    op[d] = at.output_padding.empty() ? 0 : at.output_padding[d];
  }
  const int64_t Kn = K[0] * K[1] * K[2];
  const int64_t Opg = O / g, Ipg = I / g;
  const bool tr = is_transposed(fl);
  // Canonical copy: non-transposed (O, Ipg, K), transposed (I, Opg, K).
  std::vector<double> Wc(static_cast<size_t>((tr ? I * Opg : O * Ipg) * Kn));
  std::vector<int64_t> k(sr);
  for (int64_t a = 0; a < (tr ? I : O); ++a)
    for (int64_t bl = 0; bl < (tr ? Opg : Ipg); ++bl)
      for (int64_t k0 = 0; k0 < K[0]; ++k0)
        for (int64_t k1 = 0; k1 < K[1]; ++k1)
          for (int64_t k2 = 0; k2 < K[2]; ++k2) {
            const int64_t kk[3] = {k0, k1, k2};
            for (int d = 0; d < sr; ++d) k[d] = kk[d];
            int64_t o, i;
            if (tr) {
              i = a;
              o = (i / Ipg) * Opg + bl;
            } else {
              o = a;
              i = (o / Opg) * Ipg + bl;
            }
            const int64_t idx = weight_flat_index(fl, w.shape, g, o, i, k);
            Wc[((a * (tr ? Opg : Ipg) + bl) * K[0] + k0) * K[1] * K[2] + k1 * K[2] + k2] = read(w, idx);
          }
  int64_t Y[3];
  for (int d = 0; d < 3; ++d)
    Y[d] = tr ? (in.s[d] - 1) * st[d] - pb[d] - pe[d] + K[d] + op[d]
              : (in.s[d] + pb[d] + pe[d] - K[d]) / st[d] + 1;
  Tensor y = make(in.n, O, Y, sr);
  if (!tr) {
    for (int64_t n = 0; n < in.n; ++n)
      for (int64_t o = 0; o < O; ++o) {
        const int64_t grp = o / Opg;
        const double b = node.bias.empty() ? 0.0 : read(node.bias, o);
        for (int64_t y0 = 0; y0 < Y[0]; ++y0)
          for (int64_t y1 = 0; y1 < Y[1]; ++y1)
            for (int64_t y2 = 0; y2 < Y[2]; ++y2) {
              double acc = b;
              for (int64_t il = 0; il < Ipg; ++il) {
                const int64_t i = grp * Ipg + il;
                for (int64_t k0 = 0; k0 < K[0]; ++k0) {
                  const int64_t p0 = y0 * st[0] + k0 - pb[0];
                  if (p0 < 0 || p0 >= in.s[0]) continue;
                  for (int64_t k1 = 0; k1 < K[1]; ++k1) {
                    const int64_t p1 = y1 * st[1] + k1 - pb[1];
                    if (p1 < 0 || p1 >= in.s[1]) continue;
                    for (int64_t k2 = 0; k2 < K[2]; ++k2) {
                      const int64_t p2 = y2 * st[2] + k2 - pb[2];
                      if (p2 < 0 || p2 >= in.s[2]) continue;
                      acc += Wc[((o * Ipg + il) * K[0] + k0) * K[1] * K[2] + k1 * K[2] + k2] *
                             x.data[at5(in.s, in.c, n, i, p0, p1, p2)];
                    }
                  }
                }
              }
              y.data[at5(Y, O, n, o, y0, y1, y2)] = acc;
            }
      }
  } else {
    for (int64_t n = 0; n < in.n; ++n)
      for (int64_t i = 0; i < I; ++i) {
        const int64_t grp = i / Ipg;
        for (int64_t x0 = 0; x0 < in.s[0]; ++x0)
          for (int64_t x1 = 0; x1 < in.s[1]; ++x1)
            for (int64_t x2 = 0; x2 < in.s[2]; ++x2) {
              const double v = x.data[at5(in.s, in.c, n, i, x0, x1, x2)];
              for (int64_t ol = 0; ol < Opg; ++ol) {
                const int64_t o = grp * Opg + ol;
                for (int64_t k0 = 0; k0 < K[0]; ++k0) {
                  const int64_t q0 = x0 * st[0] + k0 - pb[0];
                  if (q0 < 0 || q0 >= Y[0]) continue;
                  for (int64_t k1 = 0; k1 < K[1]; ++k1) {
                    const int64_t q1 = x1 * st[1] + k1 - pb[1];
                    if (q1 < 0 || q1 >= Y[1]) continue;
                    for (int64_t k2 = 0; k2 < K[2]; ++k2) {
                      const int64_t q2 = x2 * st[2] + k2 - pb[2];
                      if (q2 < 0 || q2 >= Y[2]) continue;
                      y.data[at5(Y, O, n, o, q0, q1, q2)] +=
                          v * Wc[((i * Opg + ol) * K[0] + k0) * K[1] * K[2] + k1 * K[2] + k2];
                    }
                  }
                }
              }
            }
      }
    if (!node.bias.empty())
      for (int64_t n = 0; n < in.n; ++n)
        for (int64_t o = 0; o < O; ++o) {
          const double b = read(node.bias, o);
          for (int64_t p = 0; p < Y[0] * Y[1] * Y[2]; ++p) y.data[(n * O + o) * Y[0] * Y[1] * Y[2] + p] += b;
        }
  }
  return y;
}

// Applies f(value, channel) elementwise.
template <class F>
Tensor per_channel(const Tensor& x, F f) {
  const Geo in = geometry(x);
  const int64_t spatial = in.s[0] * in.s[1] * in.s[2];
  Tensor y = x;
  for (int64_t n = 0; n < in.n; ++n)
    for (int64_t c = 0; c < in.c; ++c)
      for (int64_t p = 0; p < spatial; ++p) {
        double& v = y.data[(n * in.c + c) * spatial + p];
        v = f(v, c);
      }
  return y;
}

Tensor zero_pad_forward(const Tensor& x, const NodeAttrs& at) {
  const Geo in = geometry(x);
  int64_t pb[3] = {0, 0, 0}, Y[3] = {1, 1, 1};
  for (int d = 0; d < in.rank; ++d) {
    pb[d] = at.pad_begin[d];
    Y[d] = in.s[d] + at.pad_begin[d] + at.pad_end[d];
  }
  Tensor y = make(in.n, in.c, Y, in.rank);
  for (int64_t n = 0; n < in.n; ++n)
    for (int64_t c = 0; c < in.c; ++c)
      for (int64_t a = 0; a < in.s[0]; ++a)
        for (int64_t b = 0; b < in.s[1]; ++b)
          for (int64_t d = 0; d < in.s[2]; ++d)
            y.data[at5(Y, in.c, n, c, a + pb[0], b + pb[1], d + pb[2])] =
                x.data[at5(in.s, in.c, n, c, a, b, d)];
  return y;
}

Tensor pool_forward(const Tensor& x, const NodeAttrs& at) {
  const Geo in = geometry(x);
  if (at.pool_global) {
    Tensor y;
    y.shape = {in.n, in.c};
    y.data.assign(static_cast<size_t>(in.n * in.c), 0.0);
    const int64_t spatial = in.s[0] * in.s[1] * in.s[2];
    for (int64_t n = 0; n < in.n; ++n)
      for (int64_t c = 0; c < in.c; ++c) {
        double s = 0;
        for (int64_t p = 0; p < spatial; ++p) s += x.data[(n * in.c + c) * spatial + p];
        y.data[n * in.c + c] = s / double(spatial);
      }
    return y;
  }
  const int64_t w = at.pool_window;
  int64_t W[3] = {1, 1, 1}, Y[3] = {1, 1, 1};
  for (int d = 0; d < in.rank; ++d) {
    W[d] = w;
    Y[d] = in.s[d] / w;
  }
  Tensor y = make(in.n, in.c, Y, in.rank);
  for (int64_t n = 0; n < in.n; ++n)
    for (int64_t c = 0; c < in.c; ++c)
      for (int64_t a = 0; a < Y[0]; ++a)
        for (int64_t b = 0; b < Y[1]; ++b)
          for (int64_t d = 0; d < Y[2]; ++d) {
            double m = -INFINITY, s = 0;
            int64_t cnt = 0;
            for (int64_t i = 0; i < W[0]; ++i)
              for (int64_t j = 0; j < W[1]; ++j)
                for (int64_t k = 0; k < W[2]; ++k) {
                  const double v = x.data[at5(in.s, in.c, n, c, a * W[0] + i, b * W[1] + j, d * W[2] + k)];
                  m = std::max(m, v);
                  s += v;
                  ++cnt;
                }
            y.data[at5(Y, in.c, n, c, a, b, d)] = at.pool_max ? m : s / double(cnt);
          }
  return y;
}

}  // namespace

std::vector<Tensor> RefModel::random_inputs(int64_t batch, uint32_t seed, double scale) const {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<Tensor> out;
  for (const auto& name : graph.graph_inputs) {
    Tensor t;
    t.shape = {batch};
    const auto& s = input_shapes.at(name);
    t.shape.insert(t.shape.end(), s.begin(), s.end());
    t.data.resize(static_cast<size_t>(t.numel()));
    for (auto& v : t.data) v = d(gen);
    out.push_back(std::move(t));
  }
  return out;
}

std::map<std::string, Tensor> RefModel::forward_all(const std::vector<Tensor>& inputs) const {
  std::map<std::string, Tensor> env;
  for (size_t k = 0; k < graph.graph_inputs.size(); ++k) env[graph.graph_inputs[k]] = inputs.at(k);
  for (const Node& n : graph.nodes) {
    if (n.removed) continue;
    auto get = [&](size_t k) -> const Tensor& {
      auto it = env.find(n.inputs.at(k));
      if (it == env.end()) throw std::logic_error("node '" + n.name + "' reads unknown tensor '" + n.inputs[k] + "'");
      return it->second;
    };
    const Tensor& x = get(0);
    const NodeAttrs& at = attrs.at(n.name);
    Tensor y;
    switch (n.kind) {
      case OpKind::Conv:
      case OpKind::Linear: y = conv_forward(x, n, at); break;
      case OpKind::BatchNorm: {
        const int64_t C = n.gamma.numel();
        if (geometry(x).c != C) throw std::logic_error("batch norm '" + n.name + "': channel mismatch");
        y = per_channel(x, [&](double v, int64_t c) {
          return read(n.gamma, c) * (v - read(n.mean, c)) / std::sqrt(read(n.var, c) + n.eps) +
                 read(n.beta, c);
        });
        break;
      }
      case OpKind::Relu: y = per_channel(x, [](double v, int64_t) { return v > 0 ? v : 0.0; }); break;
      case OpKind::Clip:
        y = per_channel(x, [&](double v, int64_t c) {
          const double hi = n.clip_max_per_channel.empty() ? n.clip_max : n.clip_max_per_channel.at(c);
          return std::min(std::max(v, n.clip_min), hi);
        });
        break;
      case OpKind::LeakyRelu:
        y = per_channel(x, [&](double v, int64_t) { return v >= 0 ? v : n.alpha * v; });
        break;
      case OpKind::PRelu:
        y = per_channel(x, [&](double v, int64_t c) {
          const double a = n.slope.numel() == 1 ? read(n.slope, 0) : read(n.slope, c);
          return v >= 0 ? v : a * v;
        });
        break;
      case OpKind::Identity: y = x; break;
      case OpKind::ZeroPad: y = zero_pad_forward(x, at); break;
      case OpKind::Pool: y = pool_forward(x, at); break;
      case OpKind::Opaque:
        if (at.opaque_fn == "add") {
          y = x;
          for (size_t k = 1; k < n.inputs.size(); ++k) {
            const Tensor& z = get(k);
            if (z.shape != y.shape) throw std::logic_error("add '" + n.name + "': shape mismatch");
            for (size_t i = 0; i < y.data.size(); ++i) y.data[i] += z.data[i];
          }
        } else if (at.opaque_fn == "flatten") {
          y = x;
          y.shape = {x.shape[0], x.numel() / x.shape[0]};
        } else {
          y = x;
          for (auto& v : y.data) v = std::tanh(v);
        }
        break;
    }
    env[n.outputs.at(0)] = std::move(y);
  }
  return env;
}

std::vector<Tensor> RefModel::forward(const std::vector<Tensor>& inputs) const {
  auto env = forward_all(inputs);
  std::vector<Tensor> out;
  for (const auto& name : graph.graph_outputs) {
    auto it = env.find(name);
    if (it == env.end()) throw std::logic_error("graph output '" + name + "' was not computed");
    out.push_back(it->second);
  }
  return out;
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
