// region_criterion_test.cpp — equalization regions under an activation-aware scale_criterion
// (scale_cls_regions.cpp with estimate_region_activation_ranges.cpp): the FP32 function is
// unchanged, the criterion's fixed point holds with activation ranges computed here from the BNs'
// own parameters, and a region without statistics keeps the weight criterion with a reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "cls_models.h"
#include "prequant/passes.h"
#include "prequant/report.h"

namespace pqtest {
namespace {

using prequant::EqualizeOptions;
using prequant::ScaleCriterion;

// x(3, 8, 8) → c0 → bn0 → stream s0 (no activation, as EfficientNet's projection); three blocks
// ca_k → bn → ReLU → cb_k → bn added to the stream (add1..3, no activation after the Add); the
// stream → max pool ps; a side branch cc → bn → ReLU6 → max pool pc; concat(ps, pc) → cs.
// One region: sources c0, cb1..3, cc; sinks ca1..3, cs; channels 0..5 the stream, 6..9 the side.
// `missing_bn`: that source gets no BN (its output statistics are unknown).
void build(RefModel& m, const std::string& missing_bn = "") {
  const auto x = m.input("x", {3, 8, 8});
  auto bn = [&](const std::string& layer, const std::string& t, int64_t c) {
    return layer == missing_bn ? t : m.batch_norm("bn_" + layer, t, c);
  };
  auto s = bn("c0", m.conv("c0", x, conv_spec(3, 6, {3, 3}, {1, 1})), 6);
  for (int k = 1; k <= 3; ++k) {
    const std::string i = std::to_string(k);
    auto y = m.relu("r" + i, bn("ca" + i, m.conv("ca" + i, s, conv_spec(6, 5, {3, 3}, {1, 1})), 5));
    y = bn("cb" + i, m.conv("cb" + i, y, conv_spec(5, 6, {1, 1})), 6);
    s = m.add("add" + i, {s, y});
  }
  auto side = m.clip("a_c", bn("cc", m.conv("cc", x, conv_spec(3, 4, {3, 3}, {1, 1})), 4), 0, 6);
  const auto cat = m.concat("cat", {m.pool("ps", s, true), m.pool("pc", side, true)});
  m.output(m.conv("cs", cat, conv_spec(10, 5, {1, 1})));
}

EqualizeOptions with(ScaleCriterion c) {
  EqualizeOptions o;
  o.regions = true;
  o.cls.scale_criterion = c;
  o.cls.max_iterations = 1000;
  o.cls.tolerance = 1e-10;
  return o;
}

// The region channels' activation ranges before equalization, from the BNs' γ, β (z ~ N(β, |γ|),
// 3σ): the stream's tensors s0, add1..3 are sums of independent Gaussians (the engine's model);
// the side channels are ReLU6(z). The largest over the stream's tensors, per channel.
std::vector<double> expected_act(RefModel& m) {
  auto g = [&](const std::string& bn, int64_t c) { return std::abs(m.node(bn).gamma.get(c)); };
  auto b = [&](const std::string& bn, int64_t c) { return m.node(bn).beta.get(c); };
  std::vector<double> act;
  for (int64_t c = 0; c < 6; ++c) {
    double mu = b("bn_c0", c), var = g("bn_c0", c) * g("bn_c0", c), a = 0;
    for (int k = 0; k <= 3; ++k) {
      if (k > 0) {
        const std::string bn = "bn_cb" + std::to_string(k);
        mu += b(bn, c);
        var += g(bn, c) * g(bn, c);
      }
      a = std::max({a, std::abs(mu - 3 * std::sqrt(var)), std::abs(mu + 3 * std::sqrt(var))});
    }
    act.push_back(a);
  }
  for (int64_t c = 0; c < 4; ++c)
    act.push_back(std::max(std::clamp(b("bn_cc", c) - 3 * g("bn_cc", c), 0.0, 6.0),
                           std::clamp(b("bn_cc", c) + 3 * g("bn_cc", c), 0.0, 6.0)));
  return act;
}

// Per region channel: the largest out range over the sources, the largest in range over the sinks.
void region_ranges(RefModel& m, std::vector<double>& src, std::vector<double>& sink) {
  src.assign(10, 0.0);
  sink.assign(10, 0.0);
  for (const char* l : {"c0", "cb1", "cb2", "cb3"}) {
    const auto r = m.out_ranges(l);
    for (size_t c = 0; c < 6; ++c) src[c] = std::max(src[c], r[c]);
  }
  const auto rc = m.out_ranges("cc");
  for (size_t c = 0; c < 4; ++c) src[6 + c] = rc[c];
  for (const char* l : {"ca1", "ca2", "ca3"}) {
    const auto r = m.in_ranges(l);
    for (size_t c = 0; c < 6; ++c) sink[c] = std::max(sink[c], r[c]);
  }
  const auto rs = m.in_ranges("cs");
  for (size_t c = 0; c < 10; ++c) sink[c] = std::max(sink[c], rs[c]);
}

double spread(const std::vector<double>& v) {
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return *hi / *lo;
}

class RegionCriterionExact : public ::testing::TestWithParam<ScaleCriterion> {};

TEST_P(RegionCriterionExact, KeepsTheFp32Output) {
  RefModel m(21);
  build(m);
  const auto inputs = m.random_inputs(2, 4, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, with(GetParam()));
  ASSERT_EQ(r.regions.regions.size(), 1u) << prequant::explain(r.regions);
  EXPECT_EQ(r.regions.regions[0].scale.size(), 10u);
  EXPECT_TRUE(r.regions.converged) << prequant::explain(r.regions);
  EXPECT_EQ(r.regions.regions[0].criterion_fallback, "");
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-4);
  EXPECT_NO_THROW(m.graph.lint());
}

INSTANTIATE_TEST_SUITE_P(Criteria, RegionCriterionExact,
                         ::testing::Values(ScaleCriterion::Weights, ScaleCriterion::WeightsAndActivations,
                                           ScaleCriterion::Activations),
                         [](const auto& info) { return std::string(prequant::scale_criterion_name(info.param)); });

// weights_and_activations' fixed point: sqrt(R_src'·act') = R_sink' per region channel, with every
// range as it ends (act' = act / S, S the region's cumulative scale), up to the one factor per
// region the ReLU6 gauge applies. Not the weight criterion's fixed point (R_src' = R_sink').
TEST(RegionCriterion, WeightsAndActivationsFixedPoint) {
  RefModel m(22);
  build(m);
  const auto act = expected_act(m);
  const auto r = prequant::equalize_model(m.graph, with(ScaleCriterion::WeightsAndActivations));
  ASSERT_EQ(r.regions.regions.size(), 1u);
  const auto& S = r.regions.regions[0].scale;
  std::vector<double> src, sink, ratio, dfq;
  region_ranges(m, src, sink);
  for (size_t j = 0; j < 10; ++j) {
    ratio.push_back(std::sqrt(src[j] * act[j] / S[j]) / sink[j]);
    dfq.push_back(src[j] / sink[j]);
  }
  EXPECT_NEAR(spread(ratio), 1.0, 1e-4);
  EXPECT_GT(spread(dfq), 1.5);
  // The activation ranges the stream's per-tensor quantizers see end closer together than the
  // weight criterion leaves them (the reason for the criterion).
  RefModel w(22);
  build(w);
  const auto rw = prequant::equalize_model(w.graph, with(ScaleCriterion::Weights));
  std::vector<double> act_wa, act_w;
  for (size_t j = 0; j < 6; ++j) {
    act_wa.push_back(act[j] / S[j]);
    act_w.push_back(act[j] / rw.regions.regions[0].scale[j]);
  }
  EXPECT_LT(spread(act_wa), spread(act_w));
}

// activations: act'/R_sink' is one constant (act' = R_sink' up to the gauge), every channel.
TEST(RegionCriterion, ActivationsFixedPoint) {
  RefModel m(23);
  build(m);
  const auto act = expected_act(m);
  const auto r = prequant::equalize_model(m.graph, with(ScaleCriterion::Activations));
  const auto& S = r.regions.regions.at(0).scale;
  std::vector<double> src, sink, ratio;
  region_ranges(m, src, sink);
  for (size_t j = 0; j < 10; ++j) ratio.push_back(act[j] / S[j] / sink[j]);
  EXPECT_NEAR(spread(ratio), 1.0, 1e-4);
}

// scale_cls_regions alone, swept many times with the statistics given by the caller: every sweep
// reads the ranges as the earlier sweeps left them, so the fixed point holds and stays.
TEST(RegionCriterion, RepeatedSweepsKeepTheFixedPoint) {
  RefModel m(26);
  build(m);
  const auto act = expected_act(m);
  const auto fold = prequant::fold_batch_norms(m.graph);
  prequant::ClsOptions o;
  o.scale_criterion = ScaleCriterion::WeightsAndActivations;
  o.max_iterations = 50;
  o.tolerance = 1e-10;
  for (const auto& p : fold.folded) o.output_statistics.emplace(p.request.layer, p.bn_stats);
  const auto found = prequant::find_cls_regions(m.graph);
  ASSERT_EQ(found.regions.size(), 1u);
  const auto r = prequant::scale_cls_regions(m.graph, found.regions, o);
  EXPECT_TRUE(r.converged) << prequant::explain(r);
  EXPECT_EQ(r.regions.at(0).criterion_fallback, "");
  const auto& S = r.regions[0].scale;
  std::vector<double> src, sink, ratio;
  region_ranges(m, src, sink);
  for (size_t j = 0; j < 10; ++j) ratio.push_back(std::sqrt(src[j] * act[j] / S[j]) / sink[j]);
  EXPECT_NEAR(spread(ratio), 1.0, 1e-4);
}

TEST(RegionCriterion, SourceWithoutStatisticsFallsBackToWeightsWithAReason) {
  RefModel m(24), w(24);
  build(m, "cb2");
  build(w, "cb2");
  const auto inputs = m.random_inputs(2, 5, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, with(ScaleCriterion::WeightsAndActivations));
  ASSERT_EQ(r.regions.regions.size(), 1u);
  const auto& why = r.regions.regions[0].criterion_fallback;
  EXPECT_NE(why.find("'cb2'"), std::string::npos) << why;
  EXPECT_NE(prequant::explain(r).find("weight criterion (DFQ) for this region: " + why), std::string::npos)
      << prequant::explain(r);
  EXPECT_EQ(prequant::to_json(r.regions)["regions"][0]["criterion_fallback"], why);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-4);
  // The weight criterion's fixed point: largest source range = largest sink range, per channel.
  std::vector<double> src, sink, ratio;
  region_ranges(m, src, sink);
  for (size_t j = 0; j < 10; ++j) ratio.push_back(src[j] / sink[j]);
  EXPECT_NEAR(spread(ratio), 1.0, 1e-4);
  // No reason under the weight criterion: nothing was asked that it could not do.
  const auto rw = prequant::equalize_model(w.graph, with(ScaleCriterion::Weights));
  EXPECT_EQ(rw.regions.regions.at(0).criterion_fallback, "");
}

TEST(RegionCriterion, GatedActivationInsideFallsBackNamingIt) {
  RefModel m(25);
  auto s = m.batch_norm("bn0", m.conv("c0", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1})), 4);
  auto y = m.batch_norm("bn1", m.conv("c1", s, conv_spec(4, 4, {1, 1})), 4);
  const auto t = m.gated("silu", m.add("add", {s, y}), prequant::Gate::Sigmoid);
  m.output(m.conv("c2", t, conv_spec(4, 3, {1, 1})));
  const auto inputs = m.random_inputs(2, 6);
  const auto before = m.forward(inputs);
  auto o = with(ScaleCriterion::WeightsAndActivations);
  o.cls.gated_activations = true;
  const auto r = prequant::equalize_model(m.graph, o);
  ASSERT_EQ(r.regions.regions.size(), 1u) << prequant::explain(r.regions);
  EXPECT_NE(r.regions.regions[0].criterion_fallback.find("'silu'"), std::string::npos)
      << r.regions.regions[0].criterion_fallback;
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-4);
}

}  // namespace
}  // namespace pqtest
