// channel_kernels.h (internal) — the innermost loops of the channel routines (tensor.cpp), in a
// file of their own because they are compiled with their own flags (see channel_kernels.cpp).
// A "row" is `n` cells along the second channel axis, each `inner` contiguous elements, that
// share one index x on the first channel axis (factor f); fy holds the second axis's factors.
#pragma once

#include <cstdint>

// On x86-64 with GCC: an AVX2 copy of the function besides the baseline (SSE2) one, picked at
// load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PREQUANT_VECTOR_CLONES [[gnu::target_clones("avx2", "default")]]
#else
#define PREQUANT_VECTOR_CLONES
#endif

namespace prequant::detail {

// Cells of one element (inner = 1):
//   ry[y] = max(ry[y], |c[y]|·fy[y]·f)   for y < n;   returns max_y |c[y]|·fy[y].
// Preconditions: c, fy and f finite, fy and f ≥ 0, ry ≥ 0; the arrays do not overlap.
double scaled_row_ranges(const float* c, int64_t n, const double* fy, double f, double* ry);
double scaled_row_ranges(const double* c, int64_t n, const double* fy, double f, double* ry);

// cells[y] = max(cells[y], max_k |p[y·inner + k]|)   for y < n, k < inner.
// Preconditions: p finite; p and cells do not overlap.
void max_abs_cells(const float* p, int64_t n, int64_t inner, float* cells);
void max_abs_cells(const double* p, int64_t n, int64_t inner, float* cells);

// p[y·inner + k] = p[y·inner + k]·(f·fy[y]) in double, rounded once to the element type.
// Preconditions: p and the factors finite; p and fy do not overlap.
void scale_row(float* p, int64_t n, int64_t inner, const double* fy, double f);
void scale_row(double* p, int64_t n, int64_t inner, const double* fy, double f);

}  // namespace prequant::detail
