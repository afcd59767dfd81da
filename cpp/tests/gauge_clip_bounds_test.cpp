// gauge_clip_bounds (the ReLU6 'bound' policy's normalization): every per-channel bound ≤ the
// clip's own max (a fusable ReLU6 then a per-channel Min), FP32 function exact against the
// reference forward, weight ratios unchanged (each tensor only multiplied by one factor).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::ClsOptions;
using prequant::Relu6Policy;

constexpr double kTol = 1e-5;

double rel(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

// x → c1 → act1 → dw → act2 → c3 → act3 → c4: a triple and a pair, each activation a ReLU6
// (relu6 = true) or a ReLU, producers unbalanced.
void build_chain(RefModel& m, bool relu6) {
  auto act = [&](const std::string& name, const std::string& x) {
    return relu6 ? m.clip(name, x, 0.0, 6.0) : m.relu(name, x);
  };
  auto y = act("a1", m.conv("c1", m.input("x", {3, 7, 7}), conv_spec(3, 8, {3, 3}, {1, 1})));
  y = act("a2", m.conv("dw", y, conv_spec(8, 8, {3, 3}, {1, 1}, 8)));
  y = act("a3", m.conv("c3", y, conv_spec(8, 6, {1, 1})));
  m.output(m.conv("c4", y, conv_spec(6, 4, {1, 1})));
  unbalance(m, "c1", 1);
  unbalance(m, "dw", 2);
  unbalance(m, "c3", 3);
}

void expect_bounds_at_most_clip(RefModel& m, const std::string& clip, double top) {
  const auto& n = m.node(clip);
  ASSERT_EQ(n.kind, prequant::OpKind::Clip) << clip;
  ASSERT_FALSE(n.clip_max_per_channel.empty()) << clip;
  EXPECT_EQ(n.clip_max, top) << clip;
  for (double b : n.clip_max_per_channel) EXPECT_LE(b, top * (1 + 1e-12)) << clip;
  const double highest = *std::max_element(n.clip_max_per_channel.begin(), n.clip_max_per_channel.end());
  EXPECT_NEAR(highest, top, 1e-12 * top) << clip << ": the largest bound is the clip itself";
}

TEST(GaugeClipBounds, ChainBoundsAreAtMostSixAndTheFunctionIsExact) {
  RefModel m(7);
  build_chain(m, true);
  const auto inputs = m.random_inputs(3, 11, 6.0);
  const auto env = m.forward_all(inputs);
  const auto before = m.forward(inputs);
  double mx = 0;
  for (double v : env.at("c1:out").data) mx = std::max(mx, v);
  ASSERT_GT(mx, 6.0) << "the clip must clip for the test to mean something";

  const auto r = prequant::scale_model(m.graph);
  ASSERT_EQ(r.sets.size(), 2u);
  for (const char* clip : {"a1", "a2", "a3"}) expect_bounds_at_most_clip(m, clip, 6.0);
  // bound = 6 / (cumulative scale, gauge included); the edits report the final bounds.
  const auto& pairs = r.sets[0].pairs;
  ASSERT_EQ(pairs.size(), 2u);
  for (size_t c = 0; c < pairs[0].scale.size(); ++c) {
    EXPECT_LT(rel(m.node("a1").clip_max_per_channel[c], 6.0 / pairs[0].scale[c]), 1e-9);
    EXPECT_LT(rel(m.node("a2").clip_max_per_channel[c], 6.0 / pairs[1].scale[c]), 1e-9);
  }
  ASSERT_EQ(r.activation_edits.size(), 3u);
  for (const auto& e : r.activation_edits) {
    EXPECT_EQ(e.upper_bound, m.node(e.node).clip_max_per_channel) << e.node;
    EXPECT_EQ(e.clip_max, 6.0) << e.node;
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// The gauge multiplies each weight tensor by one factor: against the same chain with ReLU (no
// gauge), every tensor's ratio is constant, so neither per-tensor nor per-channel weight
// quantization sees any difference.
TEST(GaugeClipBounds, ChangesNoWeightRatio) {
  RefModel with_relu6(7), with_relu(7);
  build_chain(with_relu6, true);
  build_chain(with_relu, false);
  prequant::scale_model(with_relu6.graph);
  prequant::scale_model(with_relu.graph);
  bool any_moved = false;
  for (const char* layer : {"c1", "dw", "c3", "c4"}) {
    const auto a = read_all(with_relu6.node(layer).weight.tensor);
    const auto b = read_all(with_relu.node(layer).weight.tensor);
    ASSERT_EQ(a.size(), b.size());
    const double ratio = a[0] / b[0];
    any_moved |= std::abs(std::log(ratio)) > 1e-3;
    for (size_t k = 0; k < a.size(); ++k) EXPECT_LT(rel(a[k], ratio * b[k]), 1e-6) << layer << " element " << k;  // float32
  }
  EXPECT_TRUE(any_moved) << "the gauge did nothing; the test does not test it";
}

// x → c0 → stream; blocks cb_k added to it, a ReLU6 after each Add; → fc. One region with clips.
TEST(GaugeClipBounds, RegionBoundsAreAtMostSixAndTheFunctionIsExact) {
  RefModel m(11);
  auto s = m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  for (int k = 1; k <= 2; ++k) {
    const std::string i = std::to_string(k);
    auto y = m.conv("cb" + i, s, conv_spec(6, 6, {1, 1}));
    s = m.clip("a" + i, m.add("add" + i, {s, y}), 0.0, 6.0);
  }
  m.output(m.conv("fc", s, conv_spec(6, 3, {1, 1})));
  unbalance(m, "c0", 18);
  const auto inputs = m.random_inputs(2, 13, 8.0);
  const auto before = m.forward(inputs);
  prequant::EqualizeOptions o;
  o.regions = true;
  const auto r = prequant::equalize_model(m.graph, o);
  ASSERT_FALSE(r.regions.regions.empty());
  for (const char* clip : {"a1", "a2"}) expect_bounds_at_most_clip(m, clip, 6.0);
  for (const auto& e : r.regions.activation_edits) EXPECT_EQ(e.upper_bound, m.node(e.node).clip_max_per_channel);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// A gauge the scale clamp forbids: bounds stay above 6, and the outer clip rises to the largest
// bound (Clip(0, max b) then Min), so the function stays exact.
TEST(GaugeClipBounds, ClampedGaugeRaisesTheOuterClipInstead) {
  RefModel m(7);
  build_chain(m, true);
  const auto inputs = m.random_inputs(3, 11, 6.0);
  const auto before = m.forward(inputs);
  ClsOptions o;
  o.max_scale = 1.0;  // every step s ≤ 1: bounds 6/s ≥ 6, and the gauge (> 1) is clamped to 1
  prequant::scale_model(m.graph, o);
  bool raised = false;
  for (const char* clip : {"a1", "a2", "a3"}) {
    const auto& n = m.node(clip);
    const double highest = *std::max_element(n.clip_max_per_channel.begin(), n.clip_max_per_channel.end());
    EXPECT_EQ(n.clip_max, std::max(6.0, highest)) << clip;
    raised |= n.clip_max > 6.0;
  }
  EXPECT_TRUE(raised);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// High-bias absorption after the gauge: reads the gauged scales and bounds, stays exact where the
// 3σ rule holds exactly (no pre-activation below c), and keeps every bound ≤ 6.
TEST(GaugeClipBounds, HighBiasAbsorptionKeepsBoundsAtMostSix) {
  RefModel m(21);
  auto y = m.conv("c1", m.input("x", {3, 7, 7}), conv_spec(3, 8, {3, 3}, {1, 1}));
  y = m.batch_norm("bn1", y, 8);
  y = m.clip("a1", y, 0.0, 6.0);
  m.output(m.conv("c2", y, conv_spec(8, 4, {1, 1})));
  prequant::EqualizeOptions o;
  o.absorb_high_bias = true;
  const auto r = prequant::equalize_model(m.graph, o);
  ASSERT_EQ(r.cls.sets.size(), 1u);
  const auto& n = m.node("a1");
  EXPECT_EQ(n.clip_max, 6.0);
  for (double b : n.clip_max_per_channel) EXPECT_LE(b, 6.0 * (1 + 1e-12));
}

// A bounded clip whose bound a user raised above its clip (min(clip(x, 0, 6), 9) is a clip at 6):
// the passes read the bounds alone, so they first clamp them to the clip; the function is kept.
TEST(GaugeClipBounds, BoundAboveTheClipIsClampedFirst) {
  RefModel m(7);
  build_chain(m, true);
  m.node("a1").clip_max_per_channel.assign(8, 6.0);
  m.node("a1").clip_max_per_channel[3] = 9.0;
  const auto inputs = m.random_inputs(3, 11, 6.0);
  const auto before = m.forward(inputs);
  prequant::scale_model(m.graph);
  expect_bounds_at_most_clip(m, "a1", 6.0);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

}  // namespace
}  // namespace pqtest
