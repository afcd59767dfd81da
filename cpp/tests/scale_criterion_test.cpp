// scale_criterion_test.cpp — activation-aware CLS scale criteria (choose_cls_scales.cpp): the FP32
// function is unchanged, each criterion's fixed point holds (computed here from the BN's own
// parameters), and a link without statistics falls back to the weight criterion with a reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"
#include "prequant/report.h"

namespace pqtest {
namespace {

using prequant::EqualizeOptions;
using prequant::ScaleCriterion;

ConvSpec spec(int64_t in, int64_t out, std::vector<int64_t> k, int64_t groups = 1) {
  ConvSpec s = conv_spec(in, out, std::move(k), {}, groups);
  s.weight_scale = 1.0;  // uniform(-1, 1): the ReLU6s clip
  return s;
}

// x(4, 6, 6) → c0 → bn0 → ReLU6 → c1 (1x1) → bn1 → ReLU → dw (3x3 depthwise) → bn2 → ReLU6 → c3 (1x1).
// Sets: (c0, c1) and the triple (c1, dw, c3). `with_bn0` = false leaves c0 without statistics.
void build(RefModel& m, bool with_bn0 = true) {
  auto y = m.conv("c0", m.input("x", {4, 6, 6}), spec(4, 8, {3, 3}));
  if (with_bn0) y = m.batch_norm("bn0", y, 8);
  y = m.clip("a0", y, 0, 6);
  y = m.conv("c1", y, spec(8, 12, {1, 1}));
  y = m.relu("a1", m.batch_norm("bn1", y, 12));
  y = m.conv("dw", y, spec(12, 12, {3, 3}, 12));
  y = m.clip("a2", m.batch_norm("bn2", y, 12), 0, 6);
  m.output(m.conv("c3", y, spec(12, 5, {1, 1})));
}

// The activation range the criterion models, from the BN's own γ, β: g(β ± 3|γ|) through the clip.
std::vector<double> act_range(RefModel& m, const std::string& bn, double lo, double hi) {
  const auto& n = m.node(bn);
  std::vector<double> a;
  for (int64_t c = 0; c < n.gamma.numel(); ++c) {
    const double g = std::abs(n.gamma.get(c)), b = n.beta.get(c);
    a.push_back(std::max(std::abs(std::clamp(b - 3 * g, lo, hi)), std::abs(std::clamp(b + 3 * g, lo, hi))));
  }
  return a;
}

const prequant::ClsPairResult& pair(const prequant::ClsResult& r, const std::string& l1) {
  for (const auto& s : r.sets)
    for (const auto& p : s.pairs)
      if (p.layer1 == l1) return p;
  throw std::runtime_error("no pair from " + l1);
}

// max/min over channels of v (a fixed point up to the gauge's one factor per link: a constant),
// over the channels > 0: a channel whose activation is always 0 keeps the weight criterion.
double spread(const std::vector<double>& v) {
  double lo = INFINITY, hi = 0;
  size_t n = 0;
  for (double x : v)
    if (x > 0) lo = std::min(lo, x), hi = std::max(hi, x), ++n;
  EXPECT_GE(n, v.size() / 2) << "too few live channels for the check to mean anything";
  return hi / lo;
}

EqualizeOptions with(ScaleCriterion c) {
  EqualizeOptions o;
  o.cls.scale_criterion = c;
  o.cls.max_iterations = 1000;
  o.cls.tolerance = 1e-10;
  return o;
}

class ScaleCriterionExact : public ::testing::TestWithParam<ScaleCriterion> {};

TEST_P(ScaleCriterionExact, KeepsTheFp32Output) {
  RefModel m(7);
  build(m);
  const auto inputs = m.random_inputs(2, 3, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, with(GetParam()));
  ASSERT_EQ(r.cls.sets.size(), 2u);
  EXPECT_TRUE(r.cls.converged);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-4);
  EXPECT_NO_THROW(m.graph.lint());
}

INSTANTIATE_TEST_SUITE_P(Criteria, ScaleCriterionExact,
                         ::testing::Values(ScaleCriterion::Weights, ScaleCriterion::WeightsAndActivations,
                                           ScaleCriterion::Activations),
                         [](const auto& info) { return std::string(prequant::scale_criterion_name(info.param)); });

TEST(ScaleCriterion, ActivationsBalancesActivationAgainstConsumerColumns) {
  RefModel m(7);
  build(m);
  const auto a0 = act_range(m, "bn0", 0, 6), a1 = act_range(m, "bn1", 0, INFINITY);
  const auto a2 = act_range(m, "bn2", 0, 6);
  const auto r = prequant::equalize_model(m.graph, with(ScaleCriterion::Activations));
  // Ranges as the weights are now (r2·s): act/s = r2·s up to one factor on each link, into the
  // depthwise layer too (its range as it is now: times s1, divided by s2).
  const auto& s0 = pair(r.cls, "c0").scale;
  const auto& s1 = pair(r.cls, "c1").scale;
  const auto& s2 = pair(r.cls, "dw").scale;
  const auto r_c1 = m.in_ranges("c1"), r_dw = m.in_ranges("dw"), r_c3 = m.in_ranges("c3");
  std::vector<double> ratio0, ratio1, ratio2;
  for (size_t c = 0; c < s0.size(); ++c) ratio0.push_back(a0[c] / s0[c] / r_c1[c]);
  for (size_t c = 0; c < s1.size(); ++c) ratio1.push_back(a1[c] / s1[c] / r_dw[c]);
  for (size_t c = 0; c < s2.size(); ++c) ratio2.push_back(a2[c] / s2[c] / r_c3[c]);
  EXPECT_NEAR(spread(ratio0), 1.0, 1e-4);
  EXPECT_NEAR(spread(ratio1), 1.0, 1e-4);
  EXPECT_NEAR(spread(ratio2), 1.0, 1e-4);
  // Not the weight criterion's fixed point: the rows of c0 stay unbalanced against c1's columns.
  const auto r_c0 = m.out_ranges("c0");
  std::vector<double> dfq;
  for (size_t c = 0; c < r_c0.size(); ++c) dfq.push_back(r_c0[c] / r_c1[c]);
  EXPECT_GT(spread(dfq), 1.5);
  for (const auto& s : r.cls.sets)
    for (const auto& p : s.pairs) EXPECT_TRUE(p.criterion_fallback.empty()) << p.criterion_fallback;
}

TEST(ScaleCriterion, WeightsAndActivationsBalancesGeometricMeanOfSources) {
  RefModel m(11);
  build(m);
  const auto a0 = act_range(m, "bn0", 0, 6);
  const auto r = prequant::equalize_model(m.graph, with(ScaleCriterion::WeightsAndActivations));
  const auto& s0 = pair(r.cls, "c0").scale;
  const auto r_c0 = m.out_ranges("c0"), r_c1 = m.in_ranges("c1");
  std::vector<double> ratio;  // sqrt(r1'·act') / r2' with r1', r2' as the weights are now
  for (size_t c = 0; c < s0.size(); ++c) ratio.push_back(std::sqrt(r_c0[c] * a0[c] / s0[c]) / r_c1[c]);
  EXPECT_NEAR(spread(ratio), 1.0, 1e-4);
}

TEST(ScaleCriterion, WithoutStatisticsFallsBackToWeightsWithAReason) {
  RefModel fallback(5), weights(5);
  build(fallback, false);
  build(weights, false);
  const auto r = prequant::equalize_model(fallback.graph, with(ScaleCriterion::Activations));
  const auto w = prequant::equalize_model(weights.graph, with(ScaleCriterion::Weights));
  const auto& p = pair(r.cls, "c0");
  EXPECT_NE(p.criterion_fallback.find("no batch norm was folded after 'c0'"), std::string::npos) << p.criterion_fallback;
  EXPECT_TRUE(pair(r.cls, "c1").criterion_fallback.empty());
  EXPECT_NE(prequant::explain(r.cls).find("weight criterion (DFQ) for this pair"), std::string::npos);
  // The weight criterion's own pair result, where nothing else moved it: c0's rows balanced
  // against c1's columns up to one factor.
  const auto r_c0 = fallback.out_ranges("c0"), r_c1 = fallback.in_ranges("c1");
  std::vector<double> ratio;
  for (size_t c = 0; c < r_c0.size(); ++c) ratio.push_back(r_c0[c] / r_c1[c]);
  EXPECT_NEAR(spread(ratio), 1.0, 1e-4);
  EXPECT_TRUE(pair(w.cls, "c0").criterion_fallback.empty());
}

TEST(ScaleCriterion, NamesAndOptionChecks) {
  for (auto c : {ScaleCriterion::Weights, ScaleCriterion::WeightsAndActivations, ScaleCriterion::Activations})
    EXPECT_EQ(prequant::parse_scale_criterion(prequant::scale_criterion_name(c)), c);
  EXPECT_THROW(prequant::parse_scale_criterion("activation"), prequant::InvalidRequestError);
  EqualizeOptions o;
  o.cls.activation_sigmas = 0;
  RefModel m(1);
  build(m);
  EXPECT_THROW(prequant::equalize_model(m.graph, o), prequant::InvalidRequestError);
}

}  // namespace
}  // namespace pqtest
