// channel_kernels.cpp — the loops cross-layer scaling spends its time in (see the header).
//
// Compiled with -ffinite-math-only -fno-signed-zeros (cpp/CMakeLists.txt): without them GCC
// will not turn a floating-point max into a vector max (maxpd differs from `a < b ? b : a` only
// for NaN and for the sign of zero), and the range loop runs 2–4× slower. Both are safe here by
// the preconditions: every weight is checked finite before a pass measures or scales it,
// factors are finite, and every value a max compares is ≥ 0. On x86-64 each kernel also has an
// AVX2 copy, picked at load time (GCC target_clones), since the portable baseline is SSE2.
#include "channel_kernels.h"

#include <algorithm>
#include <cmath>

namespace prequant::detail {

namespace {

template <class C>
[[gnu::always_inline]] inline double ranges_of_row(const C* __restrict c, int64_t n, const double* __restrict fy,
                                                   double f, double* __restrict ry) {
  double m = 0;
  for (int64_t y = 0; y < n; ++y) {
    const double v = std::abs(static_cast<double>(c[y])) * fy[y];
    ry[y] = std::max(ry[y], v * f);
    m = std::max(m, v);
  }
  return m;
}

template <class T>
[[gnu::always_inline]] inline void scale_cells(T* __restrict p, int64_t n, int64_t inner, const double* __restrict fy,
                                               double f) {
  if (inner == 1) {
    for (int64_t y = 0; y < n; ++y) p[y] = static_cast<T>(p[y] * (f * fy[y]));
    return;
  }
  for (int64_t y = 0; y < n; ++y) {
    const double g = f * fy[y];
    T* q = p + y * inner;
    for (int64_t k = 0; k < inner; ++k) q[k] = static_cast<T>(q[k] * g);
  }
}

template <int64_t Inner, class T>
[[gnu::always_inline]] inline void max_abs_cells_of(const T* __restrict p, int64_t n, int64_t inner, float* __restrict cells) {
  const int64_t k_end = Inner > 0 ? Inner : inner;  // a compile-time count unrolls into vector code
  for (int64_t y = 0; y < n; ++y) {
    const T* q = p + y * k_end;
    T m = 0;
    for (int64_t k = 0; k < k_end; ++k) m = std::max(m, std::abs(q[k]));
    cells[y] = std::max(cells[y], static_cast<float>(m));
  }
}

template <class T>
[[gnu::always_inline]] inline void max_abs_cells_any(const T* p, int64_t n, int64_t inner, float* cells) {
  switch (inner) {  // the kernel sizes of most conv weights: 1, 3, 3×3, 5×5, 3×3×3, 7×7
    case 1: return max_abs_cells_of<1>(p, n, inner, cells);
    case 3: return max_abs_cells_of<3>(p, n, inner, cells);
    case 9: return max_abs_cells_of<9>(p, n, inner, cells);
    case 25: return max_abs_cells_of<25>(p, n, inner, cells);
    case 27: return max_abs_cells_of<27>(p, n, inner, cells);
    case 49: return max_abs_cells_of<49>(p, n, inner, cells);
    default: return max_abs_cells_of<0>(p, n, inner, cells);
  }
}

}  // namespace

PREQUANT_VECTOR_CLONES void max_abs_cells(const float* p, int64_t n, int64_t inner, float* cells) {
  max_abs_cells_any(p, n, inner, cells);
}

PREQUANT_VECTOR_CLONES void max_abs_cells(const double* p, int64_t n, int64_t inner, float* cells) {
  max_abs_cells_any(p, n, inner, cells);
}

PREQUANT_VECTOR_CLONES double scaled_row_ranges(const float* c, int64_t n, const double* fy, double f, double* ry) {
  return ranges_of_row(c, n, fy, f, ry);
}

PREQUANT_VECTOR_CLONES double scaled_row_ranges(const double* c, int64_t n, const double* fy, double f, double* ry) {
  return ranges_of_row(c, n, fy, f, ry);
}

PREQUANT_VECTOR_CLONES void scale_row(float* p, int64_t n, int64_t inner, const double* fy, double f) {
  scale_cells(p, n, inner, fy, f);
}

PREQUANT_VECTOR_CLONES void scale_row(double* p, int64_t n, int64_t inner, const double* fy, double f) {
  scale_cells(p, n, inner, fy, f);
}

}  // namespace prequant::detail
