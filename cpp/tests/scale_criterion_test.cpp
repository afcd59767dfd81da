// scale_criterion_test.cpp — activation-aware CLS scale criteria (choose_cls_scales.cpp): the FP32
// function is unchanged, each criterion's fixed point holds (computed here from the BN's own
// parameters), a link without statistics falls back to the weight criterion with a reason, and a
// chain with no statistics at all keeps the chain correction (same fixed point, fewer sweeps).
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

// x → (conv 3×3 c→c, relu) × n, no batch norm: every link falls back to the weight criterion.
prequant::ClsResult scale_long_chain(ScaleCriterion criterion, bool solve_chains, double* function_error) {
  RefModel m(11);
  auto y = m.input("x", {6, 6, 6});
  for (int i = 0; i < 12; ++i) {
    y = m.conv("c" + std::to_string(i), y, conv_spec(6, 6, {3, 3}, {1, 1}));
    if (i + 1 < 12) y = m.relu("r" + std::to_string(i), y);
  }
  m.output(y);
  const auto inputs = m.random_inputs(2, 3);
  const auto ref = m.forward(inputs);
  prequant::ClsOptions o;
  o.scale_criterion = criterion;
  o.solve_chains = solve_chains;
  o.max_iterations = 5000;
  o.tolerance = 1e-10;
  auto r = prequant::scale_model(m.graph, o);
  *function_error = max_rel_error(ref, m.forward(inputs));
  return r;
}

// With no statistics every set takes DFQ's closed forms, so the chain correction (whose coupling
// model is the weight criterion's) still applies: the sweeps drop below plain Gauss-Seidel's, to
// the same fixed point.
TEST(ScaleCriterion, WithoutStatisticsTheChainCorrectionStillRuns) {
  double err_gs = 0, err = 0;
  const auto gs = scale_long_chain(ScaleCriterion::Weights, false, &err_gs);
  const auto waa = scale_long_chain(ScaleCriterion::WeightsAndActivations, true, &err);
  ASSERT_TRUE(gs.converged) << gs.iterations;
  ASSERT_TRUE(waa.converged) << waa.iterations;
  ASSERT_EQ(gs.sets.size(), 11u);
  ASSERT_EQ(waa.sets.size(), gs.sets.size());
  double worst = 0;
  for (size_t k = 0; k < gs.sets.size(); ++k) {
    const auto& a = gs.sets[k].pairs.at(0).scale;
    const auto& b = waa.sets[k].pairs.at(0).scale;
    ASSERT_EQ(a.size(), b.size());
    for (size_t c = 0; c < a.size(); ++c) worst = std::max(worst, std::abs(std::log(a[c] / b[c])));
    EXPECT_FALSE(waa.sets[k].pairs[0].criterion_fallback.empty()) << "set " << k << " found statistics";
  }
  EXPECT_LT(worst, 1e-6) << "sweeps " << gs.iterations << " vs " << waa.iterations;
  EXPECT_LT(waa.iterations * 2, gs.iterations) << "the chain correction did not run";
  EXPECT_LT(err, 1e-5);  // still the same function
  EXPECT_LT(err_gs, 1e-5);
  ::testing::Test::RecordProperty("sweeps_gauss_seidel", gs.iterations);
  ::testing::Test::RecordProperty("sweeps_weights_and_activations", waa.iterations);
}

TEST(ScaleCriterion, NamesAndOptionChecks) {
  for (auto c : {ScaleCriterion::Weights, ScaleCriterion::WeightsAndActivations, ScaleCriterion::Activations})
    EXPECT_EQ(prequant::parse_scale_criterion(prequant::scale_criterion_name(c)), c);
  EXPECT_THROW(prequant::parse_scale_criterion("activation"), prequant::InvalidRequestError);
  // The whole-model path weighs activations; the primitives (scale_model, scale_cls_sets) are DFQ's.
  EXPECT_EQ(EqualizeOptions{}.cls.scale_criterion, ScaleCriterion::WeightsAndActivations);
  EXPECT_EQ(prequant::ClsOptions{}.scale_criterion, ScaleCriterion::Weights);
  EqualizeOptions o;
  o.cls.activation_sigmas = 0;
  RefModel m(1);
  build(m);
  EXPECT_THROW(prequant::equalize_model(m.graph, o), prequant::InvalidRequestError);
}

}  // namespace
}  // namespace pqtest
