// quantization_noise_test.cpp — the quantization_noise scale criterion (minimize_link_noise.cpp,
// model_link_noise.cpp): the FP32 function is unchanged, the modelled INT8 output noise — computed
// here on its own from the final weights, with the activation's moments by Monte Carlo — is no
// higher than at the start or under any other criterion, the per-channel target equalises the
// activation ranges into a depthwise layer, and a link without statistics says why it fell back.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::ClsOptions;
using prequant::ScaleCriterion;

ConvSpec spec(int64_t in, int64_t out, std::vector<int64_t> k, int64_t groups = 1) {
  ConvSpec s = conv_spec(in, out, std::move(k), {}, groups);
  s.weight_scale = 1.0;
  return s;
}

// The scale_criterion_test network: two sets, a pair and a triple, ReLU6 and ReLU between.
void build_network(RefModel& m) {
  auto y = m.conv("c0", m.input("x", {4, 6, 6}), spec(4, 8, {3, 3}));
  y = m.clip("a0", m.batch_norm("bn0", y, 8), 0, 6);
  y = m.conv("c1", y, spec(8, 12, {1, 1}));
  y = m.relu("a1", m.batch_norm("bn1", y, 12));
  y = m.conv("dw", y, spec(12, 12, {3, 3}, 12));
  y = m.clip("a2", m.batch_norm("bn2", y, 12), 0, 6);
  m.output(m.conv("c3", y, spec(12, 5, {1, 1})));
}

prequant::EqualizeOptions equalize_options(bool per_channel) {
  prequant::EqualizeOptions o;
  o.cls.scale_criterion = ScaleCriterion::QuantizationNoise;
  o.cls.weight_quantization.per_channel = per_channel;
  return o;
}

class QuantizationNoiseExact : public ::testing::TestWithParam<bool> {};

TEST_P(QuantizationNoiseExact, KeepsTheFp32Output) {
  RefModel m(7);
  build_network(m);
  const auto inputs = m.random_inputs(2, 3, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, equalize_options(GetParam()));
  ASSERT_EQ(r.cls.sets.size(), 2u);
  EXPECT_TRUE(r.cls.converged);
  bool moved = false;
  for (const auto& s : r.cls.sets)
    for (const auto& p : s.pairs) {
      EXPECT_TRUE(p.criterion_fallback.empty()) << p.layer1 << ": " << p.criterion_fallback;
      for (double v : p.scale) moved = moved || std::abs(std::log(v)) > 1e-3;
    }
  EXPECT_TRUE(moved) << "the criterion scaled nothing: the check would mean nothing";
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-4);
  EXPECT_NO_THROW(m.graph.lint());
}

INSTANTIATE_TEST_SUITE_P(Targets, QuantizationNoiseExact, ::testing::Values(false, true),
                         [](const auto& info) { return std::string(info.param ? "per_channel" : "per_tensor"); });

// One link x → c0 → clip [0, 6] → c1, with the statistics of c0's output given (no BN in the
// graph, so the test knows them exactly: z_c ~ N(beta_c, |gamma_c|)).
struct Link {
  RefModel m;
  prequant::FoldedBnStats stats;
  explicit Link(uint32_t seed, bool depthwise) : m(seed) {
    const int64_t c = 10;
    auto y = m.conv("c0", m.input("x", {3, 6, 6}), spec(3, c, {3, 3}));
    y = m.clip("a0", y, 0, 6);
    m.output(m.conv("c1", y, depthwise ? spec(c, c, {3, 3}, c) : spec(c, 7, {1, 1})));
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> g(0.2, 3.0), b(-1.5, 3.0), spread(std::log(0.05), std::log(20.0));
    for (int64_t k = 0; k < c; ++k) {
      stats.gamma.push_back((k % 3 ? 1 : -1) * g(rng));
      stats.beta.push_back(b(rng));
    }
    // Ranges that differ by decades across channels (what makes scaling matter).
    std::vector<double> f(static_cast<size_t>(c));
    for (auto& v : f) v = std::exp(spread(rng));
    prequant::scale_out_channels(m.node("c0").weight, f);
  }
};

// The model's J for the link as the graph is now, computed independently: the statistics of c0's
// output are the given ones divided by the scale the pass applied; the activation's moments by
// Monte Carlo; L1's input power from the estimate Σ E[y²] / Σ ||W0[c]||² taken at entry.
double modelled_noise(RefModel& m, const prequant::FoldedBnStats& stats, const std::vector<double>& scale,
                      double input_power, bool per_channel) {
  const auto& clip = m.node("a0");
  const auto& w0 = m.node("c0").weight;
  const auto& w1 = m.node("c1").weight;
  const size_t c = stats.beta.size();
  std::mt19937 rng(99);
  std::normal_distribution<double> normal;
  std::vector<double> t(200000);
  for (auto& v : t) v = normal(rng);
  std::vector<double> act(c), second(c), gain(c);
  for (size_t k = 0; k < c; ++k) {
    const double mu = stats.beta[k] / scale[k], sigma = std::abs(stats.gamma[k] / scale[k]);
    const double hi = clip.clip_max_per_channel.empty() ? clip.clip_max : clip.clip_max_per_channel[k];
    act[k] = std::max(std::clamp(mu + 3 * sigma, 0.0, hi), std::abs(std::clamp(mu - 3 * sigma, 0.0, hi)));
    double s2 = 0, g2 = 0;
    for (double v : t) {
      const double z = mu + sigma * v;
      const double a = std::clamp(z, 0.0, hi);
      s2 += a * a;
      g2 += (z > 0 && z < hi) ? 1.0 : 0.0;
    }
    second[k] = s2 / t.size();
    gain[k] = g2 / t.size();
  }
  // Weights element by element (torch layout [o, c/groups, kh, kw], read through the reference's indexing).
  const auto r0 = prequant::out_channel_ranges(w0);
  const int64_t o1 = w1.out_channels();
  std::vector<double> q(c, 0.0), taps_into(c, 0.0), r1(c, 0.0), fan_in0(c, 0.0);
  std::vector<std::vector<double>> row_max(static_cast<size_t>(o1), std::vector<double>(c, 0.0));
  std::vector<std::vector<double>> row_taps(static_cast<size_t>(o1), std::vector<double>(c, 0.0));
  for_each_weight_element(FrameworkLayout::TorchConv, w1.tensor.shape, w1.layout.groups,
                          [&](int64_t o, int64_t i, int64_t flat) {
                            const double v = read(w1.tensor, flat);
                            const size_t ch = static_cast<size_t>(i);
                            q[ch] += v * v;
                            taps_into[ch] += 1;
                            r1[ch] = std::max(r1[ch], std::abs(v));
                            row_max[o][ch] = std::max(row_max[o][ch], std::abs(v));
                            row_taps[o][ch] += 1;
                          });
  for (size_t k = 0; k < c; ++k) fan_in0[k] = static_cast<double>(w0.tensor.numel() / w0.out_channels());
  const double lw = 127.0 * 127.0 * 12.0, la = 255.0 * 255.0 * 12.0;
  double max_act = 0, max_r0 = 0, max_r1 = 0, sum_q = 0, sum_pq = 0, sum_m = 0;
  for (size_t k = 0; k < c; ++k) {
    max_act = std::max(max_act, act[k]);
    max_r0 = std::max(max_r0, r0[k]);
    max_r1 = std::max(max_r1, r1[k]);
    sum_q += q[k];
    sum_pq += fan_in0[k] * input_power * gain[k] * q[k];
    sum_m += taps_into[k] * second[k];
  }
  double j = max_act * max_act / la * sum_q;
  if (!per_channel) {
    j += max_r0 * max_r0 / lw * sum_pq + max_r1 * max_r1 / lw * sum_m;
  } else {
    for (int64_t o = 0; o < o1; ++o) {
      double mx = 0, power = 0;
      for (size_t k = 0; k < c; ++k)
        if (row_taps[o][k] > 0) mx = std::max(mx, row_max[o][k]), power += row_taps[o][k] * second[k];
      j += mx * mx / lw * power;
    }
  }
  return j;
}

double entry_input_power(RefModel& m, const prequant::FoldedBnStats& stats) {
  const auto& w0 = m.node("c0").weight;
  double power = 0, norm = 0;
  for (size_t k = 0; k < stats.beta.size(); ++k) power += stats.beta[k] * stats.beta[k] + stats.gamma[k] * stats.gamma[k];
  for (int64_t i = 0; i < w0.tensor.numel(); ++i) norm += w0.tensor.get(i) * w0.tensor.get(i);
  return power / norm;
}

struct Outcome {
  double noise;
  std::vector<double> scale;
};

Outcome run(uint32_t seed, bool depthwise, ScaleCriterion criterion, bool per_channel) {
  Link link(seed, depthwise);
  const double input_power = entry_input_power(link.m, link.stats);
  ClsOptions o;
  o.scale_criterion = criterion;
  o.weight_quantization.per_channel = per_channel;
  o.output_statistics["c0"] = link.stats;
  const auto r = prequant::scale_cls_sets(link.m.graph, {{{"c0", "c1"}}}, o);
  const auto& p = r.sets.at(0).pairs.at(0);
  EXPECT_TRUE(p.criterion_fallback.empty()) << p.criterion_fallback;
  return {modelled_noise(link.m, link.stats, p.scale, input_power, per_channel), p.scale};
}

class QuantizationNoiseLowest : public ::testing::TestWithParam<std::tuple<uint32_t, bool, bool>> {};

TEST_P(QuantizationNoiseLowest, NoHigherThanUnscaledOrAnyOtherCriterion) {
  const auto [seed, depthwise, per_channel] = GetParam();
  Link identity(seed, depthwise);
  const double j0 = modelled_noise(identity.m, identity.stats, std::vector<double>(identity.stats.beta.size(), 1.0),
                                   entry_input_power(identity.m, identity.stats), per_channel);
  const double j = run(seed, depthwise, ScaleCriterion::QuantizationNoise, per_channel).noise;
  // Monte Carlo against the engine's quadrature: 1e-3 relative.
  // Per tensor, c0's rows decades apart cost much; per channel only the activation and c1's rows
  // depend on s, and the gain is smaller. Either way the step must lower J, or the check means nothing.
  EXPECT_LT(j, j0 * (per_channel ? 0.999 : 0.9));
  for (auto other : {ScaleCriterion::Weights, ScaleCriterion::WeightsAndActivations, ScaleCriterion::Activations}) {
    const double jo = run(seed, depthwise, other, per_channel).noise;
    EXPECT_LT(j, jo * 1.001) << prequant::scale_criterion_name(other) << ": " << jo << " vs " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(Links, QuantizationNoiseLowest,
                         ::testing::Combine(::testing::Values(1u, 2u, 3u), ::testing::Bool(), ::testing::Bool()));

TEST(QuantizationNoise, PerChannelIntoDepthwiseEqualisesActivationRanges) {
  // Per-channel weights: L1's rows and a depthwise L2's rows are invariant to s, so only the
  // per-tensor activation quantizer is left: (max_c act_c/s_c)² Σ s_c² q_c is least when every
  // act_c/s_c is the same.
  Link link(5, true);
  ClsOptions o;
  o.scale_criterion = ScaleCriterion::QuantizationNoise;
  o.weight_quantization.per_channel = true;
  o.output_statistics["c0"] = link.stats;
  const auto r = prequant::scale_cls_sets(link.m.graph, {{{"c0", "c1"}}}, o);  // c1: depthwise
  const auto& s = r.sets.at(0).pairs.at(0).scale;
  double lo = INFINITY, hi = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    const double mu = link.stats.beta[k], sigma = std::abs(link.stats.gamma[k]);
    const double act = std::max(std::clamp(mu + 3 * sigma, 0.0, 6.0), std::abs(std::clamp(mu - 3 * sigma, 0.0, 6.0)));
    if (act <= 0) continue;
    lo = std::min(lo, act / s[k]);
    hi = std::max(hi, act / s[k]);
  }
  EXPECT_LT(hi / lo, 1.02);
}

TEST(QuantizationNoise, WithoutStatisticsFallsBackWithAReason) {
  Link link(4, false);
  ClsOptions o;
  o.scale_criterion = ScaleCriterion::QuantizationNoise;
  const auto r = prequant::scale_cls_sets(link.m.graph, {{{"c0", "c1"}}}, o);
  const auto& p = r.sets.at(0).pairs.at(0);
  EXPECT_NE(p.criterion_fallback.find("no batch norm was folded after 'c0'"), std::string::npos) << p.criterion_fallback;
  // The weight criterion's fixed point: c0's rows balanced against c1's columns.
  const auto r0 = link.m.out_ranges("c0"), r1 = link.m.in_ranges("c1");
  for (size_t k = 1; k < r0.size(); ++k) EXPECT_NEAR(r0[k] / r1[k], r0[0] / r1[0], 1e-6 * r0[0] / r1[0]);
}

TEST(QuantizationNoise, NamesAndOptionChecks) {
  EXPECT_EQ(prequant::parse_scale_criterion("quantization_noise"), ScaleCriterion::QuantizationNoise);
  EXPECT_STREQ(prequant::scale_criterion_name(ScaleCriterion::QuantizationNoise), "quantization_noise");
  Link link(1, false);
  ClsOptions o;
  o.scale_criterion = ScaleCriterion::QuantizationNoise;
  o.weight_quantization.bits = 1;
  EXPECT_THROW(prequant::scale_cls_sets(link.m.graph, {{{"c0", "c1"}}}, o), prequant::InvalidRequestError);
}

}  // namespace
}  // namespace pqtest
