// scale_cls_convergence_test.cpp — cross-layer scaling over overlapping sets: one pass against
// iterating to convergence, the guards (zero-range channels, clamped scales), float32
// resolution, and the guide's random function-preserving rescaling that CLS must undo.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"
#include "scale_cls_test_util.h"

namespace pqtest {
namespace {

using namespace scale_cls_util;

// ---- overlapping sets and iteration ---------------------------------------------------------

TEST(ScaleIteration, OnePassEqualizesOnlyTheLastSet) {
  RefModel m(37);
  build_chain3(m);
  const auto inputs = m.random_inputs(2, 2);
  const auto before = m.forward(inputs);
  ClsOptions one;
  one.max_iterations = 1;
  const auto res = prequant::scale_model(m.graph, one);
  ASSERT_EQ(res.sets.size(), 2u);
  EXPECT_EQ(res.iterations, 1);
  EXPECT_LT(range_mismatch(m, "c2", "c3"), 1e-6);
  EXPECT_GT(range_mismatch(m, "c1", "c2"), 1e-3) << "scaling c2's outputs disturbs the first set";
  EXPECT_GT(res.last_max_log_scale, 0.0);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(ScaleIteration, IteratingConverges) {
  RefModel m(37);
  build_chain3(m);
  const auto inputs = m.random_inputs(2, 2);
  const auto before = m.forward(inputs);
  const auto w1 = m.out_ranges("c1");
  const auto res = prequant::scale_model(m.graph, iterate(Relu6Policy::Bound, 1000, 1e-9));
  EXPECT_GT(res.iterations, 1);
  EXPECT_LT(res.iterations, 1000);
  EXPECT_LT(res.last_max_log_scale, 1e-9);
  EXPECT_LT(range_mismatch(m, "c1", "c2"), 1e-5);
  EXPECT_LT(range_mismatch(m, "c2", "c3"), 1e-5);
  // Reported scales are cumulative: c1's ranges were divided by exactly them.
  const auto n1 = m.out_ranges("c1");
  for (size_t c = 0; c < w1.size(); ++c) EXPECT_LT(rel(n1[c], w1[c] / res.sets[0].pairs[0].scale[c]), 1e-5);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(ScaleIteration, ScalingAnEqualizedModelAgainChangesNothing) {
  RefModel m(37);
  build_chain3(m);
  prequant::scale_model(m.graph, iterate(Relu6Policy::Bound, 1000, 1e-12));
  const auto res = prequant::scale_model(m.graph, iterate());
  for (const auto& s : res.sets)
    for (const auto& p : s.pairs)
      for (double v : p.scale) EXPECT_NEAR(v, 1.0, 1e-5);
}

// ---- guards -------------------------------------------------------------------------------

TEST(ScaleGuards, ZeroRangeChannelGetsScaleOne) {
  RefModel m(43);
  build_pair(m, Between::Relu);
  auto& c1 = m.node("c1");
  auto& c2 = m.node("c2");
  for_each_weight_element(FrameworkLayout::TorchConv, c1.weight.tensor.shape, 1,
                          [&](int64_t o, int64_t, int64_t idx) { if (o == 0) write(c1.weight.tensor, idx, 0.0); });
  for_each_weight_element(FrameworkLayout::TorchConv, c2.weight.tensor.shape, 1,
                          [&](int64_t, int64_t i, int64_t idx) { if (i == 3) write(c2.weight.tensor, idx, 0.0); });
  const auto inputs = m.random_inputs(2, 3);
  const auto before = m.forward(inputs);
  const auto b0 = read(m.node("c1").bias, 0);
  const auto res = prequant::scale_model(m.graph, iterate());
  const auto& s = res.sets.at(0).pairs.at(0).scale;
  EXPECT_EQ(s[0], 1.0);
  EXPECT_EQ(s[3], 1.0);
  for (size_t c : {1, 2, 4, 5}) EXPECT_NE(s[c], 1.0);
  for (double v : s) EXPECT_TRUE(std::isfinite(v));
  EXPECT_EQ(read(m.node("c1").bias, 0), b0);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(ScaleGuards, ScalesAreClamped) {
  RefModel m(47);
  build_pair(m, Between::Relu);
  auto& c1 = m.node("c1");
  // Channel 0 of c1 ×1e4 (s ≈ 100·…), channel 1 ×1e-4 (s ≈ 0.01·…).
  for_each_weight_element(FrameworkLayout::TorchConv, c1.weight.tensor.shape, 1, [&](int64_t o, int64_t, int64_t idx) {
    if (o == 0) write(c1.weight.tensor, idx, read(c1.weight.tensor, idx) * 1e4);
    if (o == 1) write(c1.weight.tensor, idx, read(c1.weight.tensor, idx) * 1e-4);
  });
  const auto inputs = m.random_inputs(2, 3);
  const auto before = m.forward(inputs);
  ClsOptions o;
  o.min_scale = 0.5;
  o.max_scale = 2.0;
  const auto res = prequant::scale_model(m.graph, o);
  const auto& s = res.sets.at(0).pairs.at(0).scale;
  EXPECT_EQ(s[0], 2.0);
  EXPECT_EQ(s[1], 0.5);
  for (double v : s) {
    EXPECT_GE(v, 0.5);
    EXPECT_LE(v, 2.0);
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}
// ---- the guide's random-rescaling case --------------------------------------------------------

// x → c1 → relu → dw → relu → c3 → relu → c4: a triple and an overlapping pair.
void build_mobile_block(RefModel& m) {
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 8, {3, 3}, {1, 1}));
  y = m.conv("dw", m.relu("r1", y), conv_spec(8, 8, {3, 3}, {1, 1}, 8));
  y = m.conv("c3", m.relu("r2", y), conv_spec(8, 16, {1, 1}));
  m.output(m.conv("c4", m.relu("r3", y), conv_spec(16, 8, {1, 1})));
}

// Multiplies l1's output channel c (weight and bias) by f[c] and divides l2's input channel c
// by it: the function is unchanged through ReLU.
void rescale(RefModel& m, const std::string& l1, const std::string& l2, const std::vector<double>& f) {
  auto& a = m.node(l1);
  for_each_weight_element(m.layout_of(l1), a.weight.tensor.shape, a.weight.layout.groups,
                          [&](int64_t o, int64_t, int64_t idx) { write(a.weight.tensor, idx, read(a.weight.tensor, idx) * f[o]); });
  for (size_t c = 0; c < f.size(); ++c) write(a.bias, c, read(a.bias, c) * f[c]);
  auto& b = m.node(l2);
  for_each_weight_element(m.layout_of(l2), b.weight.tensor.shape, b.weight.layout.groups,
                          [&](int64_t, int64_t i, int64_t idx) { write(b.weight.tensor, idx, read(b.weight.tensor, idx) / f[i]); });
}

std::vector<double> log_uniform(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<double> d(std::log(1e-2), std::log(1e2));
  std::vector<double> v(n);
  for (auto& x : v) x = std::exp(d(rng));
  return v;
}

// Output SQNR (dB) with every layer weight fake-quantized to int8, per tensor, symmetric.
double int8_weight_sqnr(RefModel& m, const std::vector<Tensor>& inputs, const std::vector<Tensor>& reference) {
  std::vector<std::pair<prequant::TensorView, std::vector<double>>> saved;
  for (auto& n : m.graph.nodes) {
    if (n.removed || !n.is_layer()) continue;
    auto v = read_all(n.weight.tensor);
    saved.emplace_back(n.weight.tensor, v);
    double mx = 0;
    for (double x : v) mx = std::max(mx, std::abs(x));
    const double q = mx / 127.0;
    for (size_t i = 0; i < v.size(); ++i) write(n.weight.tensor, i, std::round(v[i] / q) * q);
  }
  const auto out = m.forward(inputs);
  for (auto& [t, v] : saved)
    for (size_t i = 0; i < v.size(); ++i) write(t, i, v[i]);
  double signal = 0, noise = 0;
  for (size_t k = 0; k < out.size(); ++k)
    for (size_t i = 0; i < out[k].data.size(); ++i) {
      signal += reference[k].data[i] * reference[k].data[i];
      noise += (reference[k].data[i] - out[k].data[i]) * (reference[k].data[i] - out[k].data[i]);
    }
  return 10.0 * std::log10(signal / noise);
}

TEST(ScaleRandomRescaling, ClsUndoesARandomFunctionPreservingRescaling) {
  RefModel a(71), b(71);  // identical models
  build_mobile_block(a);
  build_mobile_block(b);
  const auto inputs = a.random_inputs(4, 5);
  const auto reference = a.forward(inputs);
  const double sqnr_original = int8_weight_sqnr(a, inputs, reference);

  std::mt19937 rng(2024);
  rescale(b, "c1", "dw", log_uniform(rng, 8));
  rescale(b, "dw", "c3", log_uniform(rng, 8));
  rescale(b, "c3", "c4", log_uniform(rng, 16));
  ASSERT_LT(max_rel_error(reference, b.forward(inputs)), kTol) << "the rescaling must preserve the function";
  EXPECT_GT(range_log_mismatch(b, "c3", "c4"), std::log(10.0));
  const double sqnr_rescaled = int8_weight_sqnr(b, inputs, reference);

  const auto opts = iterate(Relu6Policy::Bound, 1000, 1e-7);
  const auto ra = prequant::scale_model(a.graph, opts);
  const auto rb = prequant::scale_model(b.graph, opts);
  EXPECT_LT(ra.iterations, 1000);
  EXPECT_LT(rb.iterations, 1000);
  ASSERT_EQ(rb.sets.size(), 2u);
  EXPECT_LT(max_rel_error(reference, b.forward(inputs)), kTol);
  // Ranges equal again across every scaled boundary.
  EXPECT_LT(range_mismatch(b, "c3", "c4"), 1e-5);
  const auto q1 = b.out_ranges("c1"), q2 = b.out_ranges("dw"), q3 = b.in_ranges("c3");
  for (size_t c = 0; c < q1.size(); ++c) {
    EXPECT_LT(rel(q1[c], q2[c]), 1e-5);
    EXPECT_LT(rel(q2[c], q3[c]), 1e-5);
  }
  // The equalized model does not depend on the rescaling it started from.
  for (const char* layer : {"c1", "dw", "c3", "c4"}) {
    const auto x = a.out_ranges(layer), y = b.out_ranges(layer);
    for (size_t c = 0; c < x.size(); ++c) EXPECT_LT(rel(x[c], y[c]), 1e-4) << layer << " channel " << c;
  }
  const double sqnr_equalized = int8_weight_sqnr(b, inputs, reference);
  // The guide: rescaling drops int8-weight output SQNR far below the original; CLS restores it.
  EXPECT_LT(sqnr_rescaled, sqnr_original - 15.0)
      << "original " << sqnr_original << " dB, rescaled " << sqnr_rescaled << " dB";
  EXPECT_GT(sqnr_equalized, sqnr_rescaled + 15.0)
      << "rescaled " << sqnr_rescaled << " dB, equalized " << sqnr_equalized << " dB";
  EXPECT_GT(sqnr_equalized, sqnr_original - 6.0)
      << "original " << sqnr_original << " dB, equalized " << sqnr_equalized << " dB";
  (void)ra;
}

// With float32 weights the per-channel ranges cannot be equalized beyond float32 resolution, so
// a tolerance below it may never be met. Iterating must not change the function (the header's
// "After: the same function"), whatever the tolerance: an engine that re-rounds W1, b1 and W2 on
// every iteration random-walks the function away (2e-4 relative after 5000 iterations before
// scale_cls_sets iterated on range matrices and wrote each weight once).
TEST(ScaleIteration, ToleranceBelowFloat32ResolutionKeepsTheFunction) {
  RefModel m(71);
  build_mobile_block(m);
  const auto inputs = m.random_inputs(4, 5);
  const auto before = m.forward(inputs);
  const auto r = prequant::scale_model(m.graph, iterate(Relu6Policy::Bound, 5000, 1e-12));
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol) << "after " << r.iterations << " iterations";
}

}  // namespace
}  // namespace pqtest
