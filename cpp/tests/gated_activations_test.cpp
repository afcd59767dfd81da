// gated_activations_test.cpp — cross-layer scaling through x·g(x) activations (SiLU, HardSwish,
// GELU) with ClsOptions::gated_activations: the FP32 function against the reference forward, the
// rewritten gate scales, and the declines (option off, high-bias absorption, bias correction).
#include <gtest/gtest.h>

#include <cmath>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::ClsOptions;
using prequant::Gate;
using prequant::OpKind;

constexpr double kTol = 1e-4;  // float32 weights rescaled by factors up to 1e2

ClsOptions gated_on() {
  ClsOptions o;
  o.gated_activations = true;
  o.max_iterations = 200;
  o.tolerance = 1e-9;
  return o;
}

const Gate kGates[] = {Gate::Sigmoid, Gate::HardSigmoid, Gate::GeluErf, Gate::GeluTanh};

class GatedPair : public ::testing::TestWithParam<Gate> {};

// x → c1 → gate → c2: scaled through the gate, the function is the same and the gate carries s.
TEST_P(GatedPair, ScalesThroughExactlyAndRecordsTheGateScale) {
  RefModel m(7);
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.gated("act", y, GetParam()), conv_spec(6, 5, {3, 3})));
  unbalance(m, "c1", 3);
  const auto inputs = m.random_inputs(2, 11, 3.0);  // HardSwish: inputs reach both knees (±3)
  const auto before = m.forward(inputs);

  const auto r = prequant::scale_model(m.graph, gated_on());
  ASSERT_EQ(r.sets.size(), 1u);
  const auto& pair = r.sets[0].pairs[0];
  EXPECT_EQ(pair.activations_between, std::vector<std::string>{"act"});
  EXPECT_FALSE(pair.relu_between);
  const auto& gate = m.node("act").gate_scale;
  ASSERT_EQ(gate.size(), 6u);
  double max_log = 0.0;
  for (size_t c = 0; c < gate.size(); ++c) {
    EXPECT_NEAR(gate[c], pair.scale[c], 1e-12 * pair.scale[c]);
    max_log = std::max(max_log, std::abs(std::log(gate[c])));
  }
  EXPECT_GT(max_log, 1.0);  // the unbalance was undone: a real rescaling, not s = 1
  ASSERT_EQ(r.activation_edits.size(), 1u);
  EXPECT_EQ(r.activation_edits[0].kind, prequant::ActivationEdit::Kind::GateScaled);
  EXPECT_EQ(r.activation_edits[0].gate_scale, gate);
  // The pair's ranges are balanced, as through a ReLU.
  const auto r1 = m.out_ranges("c1"), r2 = m.in_ranges("c2");
  for (size_t c = 0; c < r1.size(); ++c) EXPECT_NEAR(r1[c], r2[c], 1e-5 * r2[c]);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// With the option off (the default) the same pair declines, naming the gate and the option.
TEST_P(GatedPair, DeclinesWithAReasonWhenTheOptionIsOff) {
  RefModel m(7);
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.gated("act", y, GetParam()), conv_spec(6, 5, {3, 3})));
  const auto found = prequant::find_cls_sets(m.graph);
  EXPECT_TRUE(found.sets.empty());
  const auto* d = find_declined(found.declined, "c1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "'act'")) << d->reason;
  EXPECT_TRUE(contains(d->reason, "gated_activations")) << d->reason;
  const auto before = GraphSnapshot::take(m.graph);
  const auto r = prequant::scale_model(m.graph);
  EXPECT_TRUE(r.sets.empty());
  EXPECT_EQ(GraphSnapshot::take(m.graph).diff(before), "");
  EXPECT_TRUE(m.node("act").gate_scale.empty());
}

INSTANTIATE_TEST_SUITE_P(Gates, GatedPair, ::testing::ValuesIn(kGates),
                         [](const auto& info) { return std::string(prequant::gate_name(info.param)); });

// MobileNetV3's block: c1 → HardSwish → depthwise → HardSwish → c3, a triple; each gate takes the
// scale of the layer before it (S12, then S23). A gate scale already set (a model equalized
// before) is multiplied, not overwritten.
TEST(GatedActivations, TripleThroughTwoGatesAndAnEarlierGateScale) {
  RefModel m(5);
  auto y = m.conv("c1", m.input("x", {3, 7, 7}), conv_spec(3, 6, {3, 3}, {1, 1}));
  y = m.conv("dw", m.gated("g1", y, Gate::HardSigmoid), conv_spec(6, 6, {3, 3}, {1, 1}, 6));
  m.output(m.conv("c3", m.gated("g2", y, Gate::Sigmoid), conv_spec(6, 5, {1, 1})));
  m.node("g2").gate_scale = {0.5, 2.0, 1.0, 3.0, 0.25, 1.5};
  unbalance(m, "c1", 1);
  unbalance(m, "dw", 2);
  const auto inputs = m.random_inputs(2, 4, 3.0);
  const auto before = m.forward(inputs);
  const std::vector<double> g2_before = m.node("g2").gate_scale;

  const auto r = prequant::scale_model(m.graph, gated_on());
  ASSERT_EQ(r.sets.size(), 1u);
  ASSERT_EQ(r.sets[0].pairs.size(), 2u);
  for (size_t c = 0; c < 6; ++c) {
    EXPECT_NEAR(m.node("g1").gate_scale[c], r.sets[0].pairs[0].scale[c], 1e-12 * r.sets[0].pairs[0].scale[c]);
    const double want = g2_before[c] * r.sets[0].pairs[1].scale[c];
    EXPECT_NEAR(m.node("g2").gate_scale[c], want, 1e-12 * want);
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// A residual stream whose blocks end in SiLU before the Add (ResNet-style "act after add" is
// x·g(x) here) and fan out: regions cross gates; equalize_model keeps the function.
TEST(GatedActivations, RegionsThroughGatesKeepTheFunction) {
  RefModel m(9);
  auto s = m.gated("g0", m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1})), Gate::Sigmoid);
  for (int k = 1; k <= 2; ++k) {
    const std::string i = std::to_string(k);
    auto y = m.gated("ga" + i, m.conv("ca" + i, s, conv_spec(6, 5, {3, 3}, {1, 1})), Gate::GeluErf);
    y = m.conv("cb" + i, y, conv_spec(5, 6, {1, 1}));
    s = m.add("add" + i, {s, y});
  }
  m.output(m.linear("fc", m.global_avg_pool("gap", s), 6, 4));
  for (const char* l : {"c0", "ca1", "cb1", "ca2", "cb2"}) unbalance(m, l, 20 + static_cast<uint32_t>(l[1]));
  const auto inputs = m.random_inputs(2, 8);
  const auto before = m.forward(inputs);

  prequant::EqualizeOptions off;
  off.regions = true;
  const auto declined = prequant::find_cls_regions(m.graph);
  EXPECT_TRUE(declined.regions.empty());
  ASSERT_FALSE(declined.declined.empty());
  EXPECT_TRUE(contains(declined.declined[0].reason, "gated_activations")) << declined.declined[0].reason;

  prequant::EqualizeOptions on = off;
  on.cls = gated_on();
  const auto r = prequant::equalize_model(m.graph, on);
  EXPECT_FALSE(r.regions.regions.empty());
  EXPECT_EQ(r.cls.sets.size(), 2u);  // ca_k → GELU → cb_k
  for (const auto& e : r.regions.activation_edits)
    if (e.node == "g0") EXPECT_EQ(e.gate_scale, m.node("g0").gate_scale);
  EXPECT_FALSE(m.node("g0").gate_scale.empty());
  EXPECT_FALSE(m.node("ga1").gate_scale.empty());
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// High-bias absorption must not move bias through x·g(x): declined, naming the gate.
TEST(GatedActivations, HighBiasAbsorptionDeclinesThroughAGate) {
  RefModel m(3);
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.gated("act", y, Gate::Sigmoid), conv_spec(6, 5, {3, 3})));
  const auto cls = prequant::scale_model(m.graph, gated_on());
  ASSERT_EQ(cls.sets.size(), 1u);
  std::unordered_map<std::string, prequant::FoldedBnStats> stats;
  stats["c1"] = {std::vector<double>(6, 0.5), std::vector<double>(6, 4.0)};
  const auto before = GraphSnapshot::take(m.graph);
  const auto r = prequant::absorb_high_bias(m.graph, cls.sets, stats);
  EXPECT_TRUE(r.absorbed.empty());
  const auto* d = find_declined(r.declined, "c1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "gated activation 'act'")) << d->reason;
  EXPECT_EQ(GraphSnapshot::take(m.graph).diff(before), "");
}

// Bias correction's E[x] is modelled through ReLU-like activations only: declined after a gate.
TEST(GatedActivations, BiasCorrectionDeclinesAfterAGate) {
  RefModel m(4);
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  y = m.batch_norm("bn", y, 6);
  m.output(m.conv("c2", m.gated("act", y, Gate::GeluTanh), conv_spec(6, 5, {3, 3})));
  const auto r = prequant::correct_bias(m.graph, {});
  const auto* d = find_declined(r.declined, "c2");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "gated activation 'act'")) << d->reason;
  for (const auto& c : r.corrected) EXPECT_NE(c.layer, "c2");
}

TEST(GatedActivations, LintRejectsANonPositiveGateScale) {
  RefModel m(2);
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  m.output(m.gated("act", y, Gate::Sigmoid));
  m.node("act").gate_scale = {1, 1, 0, 1, 1, 1};
  EXPECT_THROW(m.graph.lint(), prequant::GraphError);
}

}  // namespace
}  // namespace pqtest
