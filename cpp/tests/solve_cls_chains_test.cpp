// solve_cls_chains_test.cpp — the depth-wise correction: the tridiagonal solve itself, and that
// sweeps with it reach the same fixed point as plain Gauss-Seidel sweeps (1e-6 in ln s) on
// chains and on ResNet- and MobileNetV2-like graphs, in far fewer sweeps on long chains.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "../src/solve_cls_chains.h"
#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::ClsLinkEnds;
using prequant::ClsOptions;

TEST(SolveClsChains, SolvesTheTridiagonalSystemPerChain) {
  // Two chains: layers 0→1→2→3→4 (links 0..3, listed out of order) and 10→11 (link 4).
  const std::vector<ClsLinkEnds> links{{2, 3}, {0, 1}, {10, 11}, {3, 4}, {1, 2}};
  const std::vector<double> r{0.5, -1.0, 2.0, 0.25, 3.0};
  const auto d = prequant::solve_cls_chains(links, r);
  ASSERT_EQ(d.size(), links.size());
  // chain order: link 1 (0→1), 4 (1→2), 0 (2→3), 3 (3→4)
  const std::vector<size_t> chain{1, 4, 0, 3};
  for (size_t i = 0; i < chain.size(); ++i) {
    const double prev = i ? d[chain[i - 1]] : 0.0, next = i + 1 < chain.size() ? d[chain[i + 1]] : 0.0;
    EXPECT_NEAR(2 * d[chain[i]] - prev - next, r[chain[i]], 1e-12) << i;
  }
  EXPECT_NEAR(d[2], 1.0, 1e-12);  // a lone link: 2δ = r
}

TEST(SolveClsChains, DeclinesALayerOnTheSameSideOfTwoLinks) {
  EXPECT_TRUE(prequant::solve_cls_chains({{0, 1}, {0, 2}}, {1.0, 1.0}).empty());
  EXPECT_TRUE(prequant::solve_cls_chains({{0, 2}, {1, 2}}, {1.0, 1.0}).empty());
}

// LogSum against the plain sum of logs: ordinary ratios, ratios whose product leaves
// [2^-500, 2^500] (renormalized), and ratios beyond 2^±500 or overflowing a double (their own logs).
TEST(SolveClsChains, LogSumEqualsTheSumOfLogs) {
  const std::vector<std::pair<double, double>> cases{
      {3.0, 2.0}, {0.25, 7.0}, {1e70, 1.0}, {1e70, 1e-5}, {2.0, 1e70}, {1e70, 3.0}, {1e70, 1.0},
      {1e300, 1e-300}, {1e-300, 1e300}, {1e200, 1e-200}, {5e-310, 1.0}, {1.0, 1.0}, {1e100, 1e-70}};
  prequant::LogSum sum;
  double reference = 0.0;
  for (const auto& [out, in] : cases) {
    sum.add(out, in);
    reference += std::log(out) - std::log(in);
    EXPECT_NEAR(sum.value(), reference, 1e-12 * std::max(1.0, std::abs(reference))) << out << " / " << in;
  }
  EXPECT_TRUE(std::isfinite(sum.value()));
}

// x → (conv 3×3 c→c, relu) × n.
void build_long_chain(RefModel& m, int n, int64_t c = 6) {
  auto y = m.input("x", {c, 6, 6});
  for (int i = 0; i < n; ++i) {
    y = m.conv("c" + std::to_string(i), y, conv_spec(c, c, {3, 3}, {1, 1}));
    if (i + 1 < n) y = m.relu("r" + std::to_string(i), y);
  }
  m.output(y);
}

// ResNet-like: stem, then bottlenecks 1×1 → relu → 3×3 → relu → 1×1 whose output is added
// (opaque) to the block input: chains of three layers, the add ends each chain.
void build_resnet_like(RefModel& m, int blocks) {
  auto x = m.conv("stem", m.input("x", {3, 8, 8}), conv_spec(3, 16, {3, 3}, {1, 1}));
  x = m.relu("stem_r", x);
  for (int b = 0; b < blocks; ++b) {
    const std::string p = "b" + std::to_string(b) + "_";
    auto y = m.relu(p + "r1", m.conv(p + "c1", x, conv_spec(16, 8, {1, 1})));
    y = m.relu(p + "r2", m.conv(p + "c2", y, conv_spec(8, 8, {3, 3}, {1, 1})));
    y = m.conv(p + "c3", y, conv_spec(8, 16, {1, 1}));
    x = m.relu(p + "r3", m.opaque(p + "add", {y, x}, "add"));
  }
  m.output(m.global_avg_pool("gap", x));
}

// MobileNetV2-like without residuals: expand 1×1 → relu → depthwise 3×3 → relu → project 1×1,
// project feeding the next expand directly: one long chain of overlapping triples and pairs.
void build_mobilenet_like(RefModel& m, int blocks) {
  auto y = m.relu("stem_r", m.conv("stem", m.input("x", {3, 8, 8}), conv_spec(3, 8, {3, 3}, {1, 1})));
  for (int b = 0; b < blocks; ++b) {
    const std::string p = "b" + std::to_string(b) + "_";
    y = m.relu(p + "r1", m.conv(p + "exp", y, conv_spec(8, 16, {1, 1})));
    y = m.relu(p + "r2", m.conv(p + "dw", y, conv_spec(16, 16, {3, 3}, {1, 1}, 16)));
    y = m.conv(p + "proj", y, conv_spec(16, 8, {1, 1}));
  }
  m.output(y);
}

ClsOptions solver(bool chains, int iterations) {
  ClsOptions o;
  o.max_iterations = iterations;
  o.tolerance = 1e-10;
  o.solve_chains = chains;
  return o;
}

struct ClsRun {
  prequant::ClsResult result;
  std::vector<Tensor> out, ref;
};

ClsRun run(const std::function<void(RefModel&)>& build, const ClsOptions& o) {
  RefModel m(11);
  build(m);
  const auto inputs = m.random_inputs(2, 3);
  ClsRun r;
  r.ref = m.forward(inputs);
  r.result = prequant::scale_model(m.graph, o);
  r.out = m.forward(inputs);
  return r;
}

void expect_same_fixed_point(const std::function<void(RefModel&)>& build, int sweeps_cap) {
  const ClsRun gs = run(build, solver(false, sweeps_cap));
  const ClsRun fast = run(build, solver(true, sweeps_cap));
  ASSERT_TRUE(gs.result.converged) << "reference sweeps did not converge in " << sweeps_cap;
  ASSERT_TRUE(fast.result.converged);
  ASSERT_EQ(gs.result.sets.size(), fast.result.sets.size());
  double worst = 0;
  for (size_t k = 0; k < gs.result.sets.size(); ++k)
    for (size_t p = 0; p < gs.result.sets[k].pairs.size(); ++p) {
      const auto& a = gs.result.sets[k].pairs[p].scale;
      const auto& b = fast.result.sets[k].pairs[p].scale;
      ASSERT_EQ(a.size(), b.size());
      for (size_t c = 0; c < a.size(); ++c) worst = std::max(worst, std::abs(std::log(a[c] / b[c])));
    }
  EXPECT_LT(worst, 1e-6) << "sweeps " << gs.result.iterations << " vs " << fast.result.iterations;
  EXPECT_LE(fast.result.iterations, gs.result.iterations);
  EXPECT_LT(max_rel_error(fast.ref, fast.out), 1e-5);  // still the same function
  ::testing::Test::RecordProperty("sweeps_gauss_seidel", gs.result.iterations);
  ::testing::Test::RecordProperty("sweeps_with_chain_solve", fast.result.iterations);
}

TEST(SolveClsChainsFixedPoint, ShortChain) {
  expect_same_fixed_point([](RefModel& m) { build_long_chain(m, 4); }, 100000);
}

TEST(SolveClsChainsFixedPoint, LongChainInFewerSweeps) {
  const auto build = [](RefModel& m) { build_long_chain(m, 24); };
  expect_same_fixed_point(build, 200000);
  const ClsRun fast = run(build, solver(true, 100000));
  const ClsRun gs = run(build, solver(false, 100000));
  EXPECT_LT(fast.result.iterations * 2, gs.result.iterations);  // sweeps, not time: deterministic
}

TEST(SolveClsChainsFixedPoint, ResNetLike) {
  expect_same_fixed_point([](RefModel& m) { build_resnet_like(m, 4); }, 100000);
}

TEST(SolveClsChainsFixedPoint, MobileNetV2Like) {
  expect_same_fixed_point([](RefModel& m) { build_mobilenet_like(m, 5); }, 200000);
}

// Weights of scale 1e±35 and 1e±20: out/in range ratios up to 1e70 ≈ 2^232 reach the chain
// correction (whose residual sums logs through LogSum's renormalized product); the fixed point
// must still be the plain sweeps'.
TEST(SolveClsChainsFixedPoint, ExtremeRangeRatios) {
  const auto build = [](RefModel& m) {
    auto y = m.input("x", {4, 6, 6});
    const double scale[] = {1e35, 1e-35, 1e20, 1e-20, 1e35, 1e-35};
    for (int i = 0; i < 6; ++i) {
      ConvSpec spec = conv_spec(4, 4, {3, 3}, {1, 1});
      spec.bias = false;
      spec.weight_scale = scale[i];
      y = m.conv("c" + std::to_string(i), y, spec);
      if (i < 5) y = m.relu("r" + std::to_string(i), y);
    }
    m.output(y);
  };
  expect_same_fixed_point(build, 100000);
  const ClsRun fast = run(build, solver(true, 100000));
  ASSERT_EQ(fast.result.sets.size(), 5u);
  EXPECT_GT(std::abs(std::log(fast.result.sets[0].pairs[0].scale[0])), 30.0);  // the ratios were scaled away
}

}  // namespace
}  // namespace pqtest
