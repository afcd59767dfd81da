// scale_cls_test_util.h — helpers shared by the scale_cls_*_test.cpp files: how far a layer
// boundary is from equalized, and options that iterate CLS to convergence.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include <gtest/gtest.h>

#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace scale_cls_util {

using prequant::ClsOptions;
using prequant::ClsSetSpec;
using prequant::Relu6Policy;

inline constexpr double kTol = 1e-5;

inline double rel(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

// Max |ln(r_out(l1)[c] / r_in(l2)[c])|: how far a boundary is from equalized.
inline double range_log_mismatch(RefModel& m, const std::string& l1, const std::string& l2) {
  const auto a = m.out_ranges(l1), b = m.in_ranges(l2);
  double worst = 0;
  for (size_t c = 0; c < a.size() && c < b.size(); ++c) worst = std::max(worst, std::abs(std::log(a[c] / b[c])));
  return worst;
}

// Max relative difference between l1's output ranges and l2's input ranges.
inline double range_mismatch(RefModel& m, const std::string& l1, const std::string& l2) {
  const auto a = m.out_ranges(l1), b = m.in_ranges(l2);
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t c = 0; c < a.size() && c < b.size(); ++c) worst = std::max(worst, rel(a[c], b[c]));
  return worst;
}

inline ClsOptions iterate(Relu6Policy p = Relu6Policy::Bound, int iterations = 1000, double tol = 1e-10) {
  ClsOptions o;
  o.relu6 = p;
  o.max_iterations = iterations;
  o.tolerance = tol;
  return o;
}

}  // namespace scale_cls_util
}  // namespace pqtest
