// tensor.cpp — TensorView element access and the channel routines every pass builds on.
//
// A weight's elements are visited as five nested loops over the blocks around its two channel
// axes (outer, first channel axis, middle, second channel axis, inner); the innermost block is
// contiguous, so the loops stream through memory once. Full (cross-group) channel indices:
//   regular:     o = o_axis;  i = (o / (O/g))·(I/g) + i_axis
//   transposed:  i = i_axis;  o = (i / (I/g))·(O/g) + o_axis
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "prequant/errors.h"
#include "prequant/tensor.h"
#include "channel_kernels.h"
#include "transaction.h"

namespace prequant {

const char* dtype_name(DType dtype) { return dtype == DType::Float32 ? "float32" : "float64"; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorView::bytes() const {
  return numel() * (dtype == DType::Float32 ? 4 : 8);
}

double TensorView::get(int64_t i) const {
  return dtype == DType::Float32 ? static_cast<const float*>(data)[i]
                                 : static_cast<const double*>(data)[i];
}

void TensorView::set(int64_t i, double value) {
  if (dtype == DType::Float32)
    static_cast<float*>(data)[i] = static_cast<float>(value);
  else
    static_cast<double*>(data)[i] = value;
}

std::vector<double> TensorView::to_doubles() const {
  std::vector<double> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[static_cast<size_t>(i)] = get(i);
  return out;
}

void TensorView::assign(std::span<const double> values) {
  for (size_t i = 0; i < values.size(); ++i) set(static_cast<int64_t>(i), values[i]);
}

namespace {

// The blocks around the two channel axes, and tables that turn the local indices (x along the
// first channel axis, y along the second) into full channels: o = oa[x] + ob[y], i = ia[x] + ib[y].
struct ChannelWalk {
  int64_t outer = 1, first = 1, middle = 1, second = 1, inner = 1;
  std::vector<int64_t> oa, ob, ia, ib;
  bool out_first = true;
  bool plain = false;  // one group: o and i are the local indices themselves

  explicit ChannelWalk(const Weight& w) {
    const auto& shape = w.tensor.shape;
    const auto& l = w.layout;
    const int rank = static_cast<int>(shape.size());
    if (l.out_axis < 0 || l.out_axis >= rank || l.in_axis < 0 || l.in_axis >= rank ||
        l.out_axis == l.in_axis || l.groups < 1)
      throw GraphError("weight '" + w.tensor.name + "' has an invalid channel layout (out axis " +
                           std::to_string(l.out_axis) + ", in axis " + std::to_string(l.in_axis) +
                           ", groups " + std::to_string(l.groups) + ", rank " +
                           std::to_string(rank) + ")",
                       w.tensor.name);
    const int a = std::min(l.out_axis, l.in_axis), b = std::max(l.out_axis, l.in_axis);
    for (int d = 0; d < a; ++d) outer *= shape[d];
    first = shape[a];
    for (int d = a + 1; d < b; ++d) middle *= shape[d];
    second = shape[b];
    for (int d = b + 1; d < rank; ++d) inner *= shape[d];
    out_first = l.out_axis < l.in_axis;
    plain = l.groups == 1;
    // Per-group sizes: the per-group axis is the in axis, or the out axis when transposed.
    const int64_t o_local = shape[l.out_axis], i_local = shape[l.in_axis];
    const int64_t opg = l.transposed ? o_local : o_local / l.groups;
    const int64_t ipg = l.transposed ? i_local / l.groups : i_local;
    // Along the out axis index u and in axis index v:
    //   regular:    o = u,                 i = (u / opg)·ipg + v
    //   transposed: o = (v / ipg)·opg + u, i = v
    std::vector<int64_t> o_of_u(o_local), i_of_u(o_local, 0), o_of_v(i_local, 0), i_of_v(i_local);
    for (int64_t u = 0; u < o_local; ++u) {
      o_of_u[u] = u;
      if (!l.transposed) i_of_u[u] = (u / opg) * ipg;
    }
    for (int64_t v = 0; v < i_local; ++v) {
      i_of_v[v] = v;
      if (l.transposed) o_of_v[v] = (v / ipg) * opg;
    }
    if (out_first) {
      oa = std::move(o_of_u), ia = std::move(i_of_u), ob = std::move(o_of_v), ib = std::move(i_of_v);
    } else {
      oa = std::move(o_of_v), ia = std::move(i_of_v), ob = std::move(o_of_u), ib = std::move(i_of_u);
    }
  }

  // Calls f(x, begin) for each row: the second*inner contiguous elements from `begin` that share
  // the first-axis index x (fast paths stream a row instead of visiting (x, y) blocks).
  template <class F>
  void run_rows(F&& f) const {
    const int64_t row = second * inner;
    int64_t offset = 0;
    for (int64_t p0 = 0; p0 < outer; ++p0)
      for (int64_t x = 0; x < first; ++x)
        for (int64_t p1 = 0; p1 < middle; ++p1) {
          f(x, offset);
          offset += row;
        }
  }

  // Calls f(x, y, o, i, begin, count): `count` contiguous elements from `begin` share (o, i).
  template <class F>
  void run(F&& f) const {
    int64_t offset = 0;
    for (int64_t p0 = 0; p0 < outer; ++p0)
      for (int64_t x = 0; x < first; ++x) {
        const int64_t ox = oa[x], ix = ia[x];
        for (int64_t p1 = 0; p1 < middle; ++p1)
          for (int64_t y = 0; y < second; ++y) {
            f(x, y, ox + ob[y], ix + ib[y], offset, inner);
            offset += inner;
          }
      }
  }
};

template <class T, class F>
void walk_typed(const Weight& w, F&& f) {
  T* data = static_cast<T*>(w.tensor.data);
  ChannelWalk(w).run([&](int64_t, int64_t, int64_t o, int64_t i, int64_t begin, int64_t count) {
    f(o, i, data + begin, count);
  });
}

// Dispatches on the weight's dtype once, then walks.
template <class F>
void walk(const Weight& w, F&& f) {
  if (w.tensor.dtype == DType::Float32)
    walk_typed<float>(w, f);
  else
    walk_typed<double>(w, f);
}

// The bits of |x|: for non-negative IEEE values the unsigned order of the bits is the numeric
// order (NaN above +Inf), so integer max — which vectorizes where a float max reduction does not
// without -ffast-math — gives max |x| and keeps any NaN visible.
template <class T>
using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
template <class T>
constexpr Bits<T> kAbsMask = static_cast<Bits<T>>(~Bits<T>(0) >> 1);

template <class T>
Bits<T> abs_bits(T x) {
  Bits<T> b;
  std::memcpy(&b, &x, sizeof b);
  return b & kAbsMask<T>;
}

template <class T>
T from_bits(Bits<T> b) {
  T x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

template <class T>
double max_abs(const T* p, int64_t n) {
  Bits<T> m = 0;
  for (int64_t k = 0; k < n; ++k) m = std::max(m, abs_bits(p[k]));
  return static_cast<double>(from_bits<T>(m));
}

}  // namespace

namespace {
void require_layout(const Weight& w) {
  const auto& l = w.layout;
  const int rank = static_cast<int>(w.tensor.shape.size());
  if (l.out_axis < 0 || l.out_axis >= rank || l.in_axis < 0 || l.in_axis >= rank || l.out_axis == l.in_axis ||
      l.groups < 1)
    throw GraphError("weight '" + w.tensor.name + "' has an invalid channel layout (out axis " +
                         std::to_string(l.out_axis) + ", in axis " + std::to_string(l.in_axis) + ", groups " +
                         std::to_string(l.groups) + ", rank " + std::to_string(rank) + ")",
                     w.tensor.name);
}
}  // namespace

int64_t Weight::out_channels() const {
  require_layout(*this);
  const auto& l = layout;
  return l.transposed ? tensor.shape.at(l.out_axis) * l.groups : tensor.shape.at(l.out_axis);
}

int64_t Weight::in_channels() const {
  require_layout(*this);
  const auto& l = layout;
  return l.transposed ? tensor.shape.at(l.in_axis) : tensor.shape.at(l.in_axis) * l.groups;
}

std::vector<double> out_channel_ranges(const Weight& w) {
  std::vector<double> r(static_cast<size_t>(w.out_channels()), 0.0);
  walk(w, [&](int64_t o, int64_t, auto* p, int64_t n) {
    r[o] = std::max(r[o], max_abs(p, n));
  });
  return r;
}

std::vector<double> in_channel_ranges(const Weight& w) {
  std::vector<double> r(static_cast<size_t>(w.in_channels()), 0.0);
  walk(w, [&](int64_t, int64_t i, auto* p, int64_t n) {
    r[i] = std::max(r[i], max_abs(p, n));
  });
  return r;
}

void scale_out_channels(const Weight& w, std::span<const double> factor) {
  detail::note_write();
  walk(w, [&](int64_t o, int64_t, auto* p, int64_t n) {
    using T = std::remove_pointer_t<decltype(p)>;
    const double f = factor[o];
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(p[k] * f);
  });
}

void scale_in_channels(const Weight& w, std::span<const double> factor) {
  detail::note_write();
  walk(w, [&](int64_t, int64_t i, auto* p, int64_t n) {
    using T = std::remove_pointer_t<decltype(p)>;
    const double f = factor[i];
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(p[k] * f);
  });
}

ChannelRanges channel_ranges(const Weight& w) {
  ChannelRanges r{std::vector<double>(static_cast<size_t>(w.out_channels()), 0.0),
                  std::vector<double>(static_cast<size_t>(w.in_channels()), 0.0)};
  walk(w, [&](int64_t o, int64_t i, auto* p, int64_t n) {
    const double m = max_abs(p, n);
    r.out[o] = std::max(r.out[o], m);
    r.in[i] = std::max(r.in[i], m);
  });
  return r;
}

ChannelRanges scale_channels(const Weight& w, std::span<const double> out_factor,
                             std::span<const double> in_factor) {
  detail::note_write();
  ChannelRanges r{std::vector<double>(static_cast<size_t>(w.out_channels()), 0.0),
                  std::vector<double>(static_cast<size_t>(w.in_channels()), 0.0)};
  walk(w, [&](int64_t o, int64_t i, auto* p, int64_t n) {
    using T = std::remove_pointer_t<decltype(p)>;
    const double f = (out_factor.empty() ? 1.0 : out_factor[o]) * (in_factor.empty() ? 1.0 : in_factor[i]);
    T m = 0;
    for (int64_t k = 0; k < n; ++k) {
      p[k] = static_cast<T>(p[k] * f);
      m = std::max(m, std::abs(p[k]));
    }
    r.out[o] = std::max(r.out[o], static_cast<double>(m));
    r.in[i] = std::max(r.in[i], static_cast<double>(m));
  });
  return r;
}

namespace {

// The ranges of W·diag(out_factor)·diag(in_factor) (factors ≥ 0, full length) into r, for data
// laid out as `cw` says.
template <class T>
void scaled_ranges(const ChannelWalk& cw, const T* data, std::span<const double> out_factor,
                   std::span<const double> in_factor, ChannelRanges& r) {
  if (cw.plain) {
    // One group: x and y are the channels themselves; rows stream through the kernel.
    const double* fx = cw.out_first ? out_factor.data() : in_factor.data();
    const double* fy = cw.out_first ? in_factor.data() : out_factor.data();
    double* rx = cw.out_first ? r.out.data() : r.in.data();
    double* ry = cw.out_first ? r.in.data() : r.out.data();
    std::vector<T> cells(cw.inner == 1 ? 0 : static_cast<size_t>(cw.second));  // max |W| over inner
    cw.run_rows([&](int64_t x, int64_t begin) {
      const T* row = data + begin;
      if (cw.inner > 1) {
        for (int64_t y = 0; y < cw.second; ++y) cells[y] = static_cast<T>(max_abs(row + y * cw.inner, cw.inner));
        row = cells.data();
      }
      rx[x] = std::max(rx[x], detail::scaled_row_ranges(row, cw.second, fy, fx[x], ry) * fx[x]);
    });
    return;
  }
  cw.run([&](int64_t, int64_t, int64_t o, int64_t i, int64_t begin, int64_t count) {
    const double v = max_abs(data + begin, count) * out_factor[o] * in_factor[i];
    r.out[o] = std::max(r.out[o], v);
    r.in[i] = std::max(r.in[i], v);
  });
}

// |factor| at full length (empty = ones), checked against the channel count.
std::vector<double> magnitudes(const Weight& w, std::span<const double> factor, int64_t channels, const char* side) {
  if (factor.empty()) return std::vector<double>(static_cast<size_t>(channels), 1.0);
  if (static_cast<int64_t>(factor.size()) != channels)
    throw GraphError("weight '" + w.tensor.name + "': " + std::to_string(factor.size()) + " " + side +
                         "-channel factors for " + std::to_string(channels) + " channels",
                     w.tensor.name);
  std::vector<double> m(factor.size());
  for (size_t c = 0; c < m.size(); ++c) m[c] = std::abs(factor[c]);
  return m;
}

}  // namespace

ChannelRanges channel_ranges(const Weight& w, std::span<const double> out_factor, std::span<const double> in_factor) {
  const ChannelWalk cw(w);
  const int64_t out = w.out_channels(), in = w.in_channels();
  const auto fo = magnitudes(w, out_factor, out, "output"), fi = magnitudes(w, in_factor, in, "input");
  ChannelRanges r{std::vector<double>(static_cast<size_t>(out), 0.0), std::vector<double>(static_cast<size_t>(in), 0.0)};
  if (w.tensor.dtype == DType::Float32)
    scaled_ranges(cw, static_cast<const float*>(w.tensor.data), fo, fi, r);
  else
    scaled_ranges(cw, static_cast<const double*>(w.tensor.data), fo, fi, r);
  return r;
}

struct RangeMatrix::Tables {
  ChannelWalk walk;   // of the weight
  ChannelWalk cells;  // of the matrix: the weight's walk with outer, middle and inner collapsed

  explicit Tables(const Weight& w) : walk(w), cells(walk) { cells.outer = cells.middle = cells.inner = 1; }
};

RangeMatrix::RangeMatrix(const Weight& w)
    : tables_(std::make_shared<Tables>(w)),
      out_channels_(w.out_channels()),
      in_channels_(w.in_channels()) {
  const ChannelWalk& cw = tables_->walk;
  m_.assign(static_cast<size_t>(cw.first * cw.second), 0.0f);
  auto fill = [&](const auto* data) {
    // Row by row: cell (x, y) takes the max over the row's `inner` elements at y.
    cw.run_rows([&](int64_t x, int64_t begin) {
      detail::max_abs_cells(data + begin, cw.second, cw.inner, m_.data() + x * cw.second);
    });
  };
  if (w.tensor.dtype == DType::Float32)
    fill(static_cast<const float*>(w.tensor.data));
  else
    fill(static_cast<const double*>(w.tensor.data));
}

ChannelRanges RangeMatrix::ranges(std::span<const double> out_factor, std::span<const double> in_factor) const {
  ChannelRanges r{std::vector<double>(static_cast<size_t>(out_channels_), 0.0),
                  std::vector<double>(static_cast<size_t>(in_channels_), 0.0)};
  scaled_ranges(tables_->cells, m_.data(), out_factor, in_factor, r);
  return r;
}

void visit_out_channels(const Weight& w, const std::function<void(int64_t, std::span<const double>)>& visit) {
  std::vector<double> buffer;
  walk(w, [&](int64_t o, int64_t, auto* p, int64_t n) {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (std::is_same_v<T, double>) {
      visit(o, std::span<const double>(p, static_cast<size_t>(n)));
    } else {
      buffer.assign(p, p + n);
      visit(o, std::span<const double>(buffer));
    }
  });
}

void visit_channel_pairs(const Weight& w,
                         const std::function<void(int64_t, int64_t, std::span<const double>)>& visit) {
  std::vector<double> buffer;
  walk(w, [&](int64_t o, int64_t i, auto* p, int64_t n) {
    buffer.assign(p, p + n);
    visit(o, i, std::span<const double>(buffer));
  });
}

struct ChannelScaling::Tables {
  ChannelWalk walk;
};

ChannelScaling::ChannelScaling(const Weight& w, std::span<const double> out_factor,
                               std::span<const double> in_factor)
    : tables_(std::make_shared<Tables>(Tables{ChannelWalk(w)})), tensor_(w.tensor) {
  out_.assign(static_cast<size_t>(w.out_channels()), 1.0);
  in_.assign(static_cast<size_t>(w.in_channels()), 1.0);
  if (!out_factor.empty()) {
    if (out_factor.size() != out_.size())
      throw GraphError("weight '" + w.tensor.name + "': " + std::to_string(out_factor.size()) +
                           " output-channel factors for " + std::to_string(out_.size()) + " channels",
                       w.tensor.name);
    std::copy(out_factor.begin(), out_factor.end(), out_.begin());
  }
  if (!in_factor.empty()) {
    if (in_factor.size() != in_.size())
      throw GraphError("weight '" + w.tensor.name + "': " + std::to_string(in_factor.size()) +
                           " input-channel factors for " + std::to_string(in_.size()) + " channels",
                       w.tensor.name);
    std::copy(in_factor.begin(), in_factor.end(), in_.begin());
  }
}

namespace {
template <class T>
void apply_scaling(const ChannelWalk& cw, T* data, const std::vector<double>& out, const std::vector<double>& in) noexcept {
  if (cw.plain) {
    // One group: the row's channel is x on the first axis, y on the second.
    const double* fx = cw.out_first ? out.data() : in.data();
    const double* fy = cw.out_first ? in.data() : out.data();
    cw.run_rows([&](int64_t x, int64_t begin) { detail::scale_row(data + begin, cw.second, cw.inner, fy, fx[x]); });
    return;
  }
  cw.run([&](int64_t, int64_t, int64_t o, int64_t i, int64_t begin, int64_t count) {
    const double g = out[o] * in[i];
    T* q = data + begin;
    for (int64_t k = 0; k < count; ++k) q[k] = static_cast<T>(q[k] * g);
  });
}
}  // namespace

void ChannelScaling::apply() const noexcept {
  if (tensor_.dtype == DType::Float32)
    apply_scaling(tables_->walk, static_cast<float*>(tensor_.data), out_, in_);
  else
    apply_scaling(tables_->walk, static_cast<double*>(tensor_.data), out_, in_);
}

std::vector<double> contract_in_channels(const Weight& w, std::span<const double> v) {
  std::vector<double> out(static_cast<size_t>(w.out_channels()), 0.0);
  walk(w, [&](int64_t o, int64_t i, auto* p, int64_t n) {
    double sum = 0;
    for (int64_t k = 0; k < n; ++k) sum += static_cast<double>(p[k]);
    out[o] += sum * v[i];
  });
  return out;
}

namespace {
// Scans blocks with a branch-free test (exponent bits all ones = NaN or ±Inf), which vectorizes;
// only a block that holds one is searched element by element.
template <class T>
[[gnu::always_inline]] inline int64_t find_non_finite_typed(const T* p, int64_t n) {
  constexpr Bits<T> exponent = kAbsMask<T> & ~(kAbsMask<T> >> (sizeof(T) == 4 ? 8 : 11));
  constexpr int64_t block = 4096;
  for (int64_t start = 0; start < n; start += block) {
    const int64_t end = std::min(n, start + block);
    Bits<T> bad = 0;
    for (int64_t i = start; i < end; ++i) bad |= static_cast<Bits<T>>((abs_bits(p[i]) & exponent) == exponent);
    if (bad)
      for (int64_t i = start; i < end; ++i)
        if (!std::isfinite(p[i])) return i;
  }
  return -1;
}
}  // namespace

PREQUANT_VECTOR_CLONES int64_t find_non_finite(const TensorView& t) {
  if (t.dtype == DType::Float32) return find_non_finite_typed(static_cast<const float*>(t.data), t.numel());
  return find_non_finite_typed(static_cast<const double*>(t.data), t.numel());
}

}  // namespace prequant
