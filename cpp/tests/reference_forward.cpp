// reference_forward.cpp — the reference forward pass of RefModel (declared in reference_model.h)
// and the error measures tests compare outputs with. Dense channel-first activations in double,
// one plain index loop per layer kind; no dilation.
//
// Before: a RefModel graph (possibly rewritten by an engine pass) and its graph-input tensors.
// After:  every activation by tensor name (forward_all), or the graph outputs (forward).
// Formulas (the layer definitions):
//   conv             y[n,o,p] = b[o] + Σ_{i in o's group, k} W[o,i,k]·x[n,i, p·stride + k − pad_begin]
//   transposed conv  y[n,o, q·stride + k − pad_begin] += W[o,i,k]·x[n,i,q], then + b[o]
//   batch norm       γ·(x − μ)/sqrt(var + ε) + β;  clip per channel when clip_max_per_channel is set
//   gated            x·g(gate_scale[c]·x): sigmoid, relu6(z + 3)/6, Φ(z), GELU's tanh form
// W[o,i,k] is located by weight_flat_index (reference_model.cpp), never by the engine's channel
// routines. Attributes the IR lacks (padding, strides, pool kind, opaque function) come from
// RefModel::attrs.
#include "reference_model.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

namespace pqtest {

using prequant::Node;
using prequant::OpKind;

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

// Channels of several (N, C_k, ...) tensors with equal other axes, one after another.
Tensor concat_channels(const std::vector<const Tensor*>& parts, const std::string& node) {
  const Geo g0 = geometry(*parts.at(0));
  const int64_t inner = g0.s[0] * g0.s[1] * g0.s[2];
  int64_t C = 0;
  for (const Tensor* p : parts) {
    const Geo g = geometry(*p);
    if (g.n != g0.n || g.s[0] * g.s[1] * g.s[2] != inner || g.rank != g0.rank)
      throw std::logic_error("concat '" + node + "': shape mismatch");
    C += g.c;
  }
  Tensor y = make(g0.n, C, g0.s, g0.rank);
  for (int64_t n = 0; n < g0.n; ++n) {
    int64_t offset = 0;
    for (const Tensor* p : parts) {
      const int64_t c = p->shape[1];
      for (int64_t i = 0; i < c * inner; ++i) y.data[(n * C + offset) * inner + i] = p->data[n * c * inner + i];
      offset += c;
    }
  }
  return y;
}

Tensor slice_channels(const Tensor& x, int64_t begin, int64_t end) {
  const Geo g = geometry(x);
  end = std::min(end, g.c);
  const int64_t inner = g.s[0] * g.s[1] * g.s[2];
  Tensor y = make(g.n, end - begin, g.s, g.rank);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t i = 0; i < (end - begin) * inner; ++i)
      y.data[n * (end - begin) * inner + i] = x.data[(n * g.c + begin) * inner + i];
  return y;
}

// Nearest-neighbour upsampling by 2 on every spatial axis.
Tensor upsample2_forward(const Tensor& x) {
  const Geo in = geometry(x);
  int64_t Y[3] = {1, 1, 1};
  for (int d = 0; d < in.rank; ++d) Y[d] = in.s[d] * 2;
  Tensor y = make(in.n, in.c, Y, in.rank);
  for (int64_t n = 0; n < in.n; ++n)
    for (int64_t c = 0; c < in.c; ++c)
      for (int64_t a = 0; a < Y[0]; ++a)
        for (int64_t b = 0; b < Y[1]; ++b)
          for (int64_t d = 0; d < Y[2]; ++d)
            y.data[at5(Y, in.c, n, c, a, b, d)] =
                x.data[at5(in.s, in.c, n, c, in.rank > 0 ? a / 2 : a, in.rank > 1 ? b / 2 : b, in.rank > 2 ? d / 2 : d)];
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
          const double hi = n.clip_max_per_channel.empty() ? n.clip_max
                                                           : std::min(n.clip_max, n.clip_max_per_channel.at(c));
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
      case OpKind::Add:
        y = x;
        for (size_t k = 1; k < n.inputs.size(); ++k) {
          const Tensor& z = get(k);
          if (z.shape != y.shape) throw std::logic_error("add '" + n.name + "': shape mismatch");
          for (size_t i = 0; i < y.data.size(); ++i) y.data[i] += z.data[i];
        }
        break;
      case OpKind::Concat: {
        std::vector<const Tensor*> parts;
        for (size_t k = 0; k < n.inputs.size(); ++k) parts.push_back(&get(k));
        y = concat_channels(parts, n.name);
        break;
      }
      case OpKind::Split:
        for (size_t k = 0; k < n.outputs.size(); ++k)
          env[n.outputs[k]] = slice_channels(x, n.slice_begin.at(k), n.slice_end.at(k));
        continue;
      case OpKind::Resize: y = upsample2_forward(x); break;
      case OpKind::GatedActivation:  // written from the definitions, not with prequant::gate_value
        y = per_channel(x, [&](double v, int64_t c) {
          const double z = (n.gate_scale.empty() ? 1.0 : n.gate_scale.at(c)) * v;
          switch (n.gate) {
            case prequant::Gate::Sigmoid: return v / (1.0 + std::exp(-z));
            case prequant::Gate::HardSigmoid: return v * std::min(std::max(z + 3.0, 0.0), 6.0) / 6.0;
            case prequant::Gate::GeluErf: return v * 0.5 * std::erfc(-z / std::sqrt(2.0));
            case prequant::Gate::GeluTanh:
              return v * 0.5 * (1.0 + std::tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)));
          }
          return 0.0;
        });
        break;
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

}  // namespace pqtest
