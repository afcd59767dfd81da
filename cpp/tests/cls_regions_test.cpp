// cls_regions_test.cpp — equalization regions (find_cls_regions, scale_cls_regions, and
// equalize_model's regions option) against the reference forward pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::ClsOptions;
using prequant::ClsRegionCandidates;
using prequant::OpKind;
using prequant::Relu6Policy;

constexpr double kTol = 1e-4;

// x → c0 → stream; three blocks ca_k → relu → cb_k added to the stream (no activation after the
// Add, as in EfficientNet); the stream → global average pool → fc. One region: sources c0, cb1..3;
// sinks ca1..3, fc.
void build_residual(RefModel& m, const std::string& reader = "") {
  auto s = m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  for (int k = 1; k <= 3; ++k) {
    const std::string i = std::to_string(k);
    auto y = m.relu("r" + i, m.conv("ca" + i, s, conv_spec(6, 5, {3, 3}, {1, 1})));
    y = m.conv("cb" + i, y, conv_spec(5, 6, {1, 1}));
    s = m.add("add" + i, {s, y});
  }
  if (reader == "opaque") m.output(m.opaque("tanh", {s}));
  if (reader == "output") m.output(s);
  m.output(m.linear("fc", m.global_avg_pool("gap", s), 6, 4));
}

ClsOptions iterated(Relu6Policy p = Relu6Policy::Bound, int iterations = 500) {
  ClsOptions o;
  o.relu6 = p;
  o.max_iterations = iterations;
  o.tolerance = 1e-9;
  return o;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// max over sources of out ranges vs max over sinks of in ranges, per region channel given by
// `channel` (layer, channel) → region channel.
void expect_balanced(RefModel& m, const std::vector<std::string>& sources, const std::vector<std::string>& sinks,
                     int64_t channels, const std::function<int64_t(const std::string&, int64_t)>& channel,
                     double tol) {
  std::vector<double> src(static_cast<size_t>(channels), 0.0), snk(static_cast<size_t>(channels), 0.0);
  for (const auto& l : sources) {
    const auto r = m.out_ranges(l);
    for (size_t c = 0; c < r.size(); ++c) {
      auto& v = src[static_cast<size_t>(channel(l, static_cast<int64_t>(c)))];
      v = std::max(v, r[c]);
    }
  }
  for (const auto& l : sinks) {
    const auto r = m.in_ranges(l);
    for (size_t c = 0; c < r.size(); ++c) {
      auto& v = snk[static_cast<size_t>(channel(l, static_cast<int64_t>(c)))];
      v = std::max(v, r[c]);
    }
  }
  for (size_t j = 0; j < src.size(); ++j) EXPECT_NEAR(src[j] / snk[j], 1.0, tol) << "region channel " << j;
}

TEST(FindClsRegions, ResidualStreamIsOneRegion) {
  RefModel m(3);
  build_residual(m);
  const ClsRegionCandidates found = prequant::find_cls_regions(m.graph);
  ASSERT_EQ(found.regions.size(), 1u) << (found.declined.empty() ? "" : found.declined[0].reason);
  EXPECT_EQ(sorted(found.regions[0].sources), sorted({"c0", "cb1", "cb2", "cb3"}));
  EXPECT_EQ(sorted(found.regions[0].sinks), sorted({"ca1", "ca2", "ca3", "fc"}));
  EXPECT_TRUE(found.declined.empty());
}

TEST(FindClsRegions, ChainsAreLeftToFindClsSets) {
  RefModel m(4);
  build_pair(m, Between::ReluPadPool);
  const auto found = prequant::find_cls_regions(m.graph);
  EXPECT_TRUE(found.regions.empty());
  EXPECT_TRUE(found.declined.empty());
}

TEST(FindClsRegions, OpaqueReaderDeclinesTheWholeRegionNamingIt) {
  RefModel m(5);
  build_residual(m, "opaque");
  const auto found = prequant::find_cls_regions(m.graph);
  EXPECT_TRUE(found.regions.empty());
  const auto* d = find_declined(found.declined, "tanh");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "'tanh'")) << d->reason;
  EXPECT_EQ(found.declined.size(), 1u);
  // and scaling it anyway is refused, changing nothing
  const auto before = GraphSnapshot::take(m.graph);
  EXPECT_THROW(prequant::scale_cls_regions(m.graph, {{{"c0", "cb1", "cb2", "cb3"}, {"ca1", "ca2", "ca3", "fc"}}}),
               prequant::InvalidRequestError);
  EXPECT_EQ(before.diff(GraphSnapshot::take(m.graph)), "");
}

TEST(FindClsRegions, GraphOutputDeclinesTheRegion) {
  RefModel m(6);
  build_residual(m, "output");
  const auto found = prequant::find_cls_regions(m.graph);
  EXPECT_TRUE(found.regions.empty());
  ASSERT_EQ(found.declined.size(), 1u);
  EXPECT_TRUE(contains(found.declined[0].reason, "graph output")) << found.declined[0].reason;
}

TEST(ScaleClsRegions, ResidualStreamKeepsOutputAndBalancesRanges) {
  RefModel m(7);
  build_residual(m);
  for (const char* l : {"c0", "cb1", "cb2", "cb3"}) unbalance(m, l, 11);  // the same factors: exact
  const auto inputs = m.random_inputs(2, 9);
  const auto before = m.forward(inputs);
  const auto found = prequant::find_cls_regions(m.graph);
  const auto r = prequant::scale_cls_regions(m.graph, found.regions, {});
  ASSERT_EQ(r.regions.size(), 1u);
  EXPECT_EQ(r.regions[0].scale.size(), 6u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  // one sweep balances exactly: no layer is both source and sink
  expect_balanced(m, {"c0", "cb1", "cb2", "cb3"}, {"ca1", "ca2", "ca3", "fc"}, 6,
                  [](const std::string&, int64_t c) { return c; }, 1e-5);
  EXPECT_EQ(std::count(r.regions[0].nodes.begin(), r.regions[0].nodes.end(), "add3"), 1);
  EXPECT_EQ(std::count(r.regions[0].nodes.begin(), r.regions[0].nodes.end(), "gap"), 1);
}

// x → c0 → relu t; cA (stride 2) on t; maxpool on t; concat(cA, pool) → cS. cA is a sink of t and
// a source of the concat: one region of 4 + 6 channels.
TEST(ScaleClsRegions, ConcatOfConvWithPooledBranch) {
  RefModel m(8);
  auto t = m.relu("r0", m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1})));
  ConvSpec a = conv_spec(6, 4, {3, 3}, {1, 1});
  a.stride = {2, 2};
  auto ya = m.conv("cA", t, a);
  auto yp = m.pool("mp", t, true);
  m.output(m.conv("cS", m.concat("cat", {ya, yp}), conv_spec(10, 5, {1, 1})));
  unbalance(m, "c0", 12);
  unbalance(m, "cA", 13);
  const auto inputs = m.random_inputs(2, 10);
  const auto before = m.forward(inputs);
  const auto found = prequant::find_cls_regions(m.graph);
  ASSERT_EQ(found.regions.size(), 1u) << (found.declined.empty() ? "" : found.declined[0].reason);
  EXPECT_EQ(sorted(found.regions[0].sources), sorted({"c0", "cA"}));
  EXPECT_EQ(sorted(found.regions[0].sinks), sorted({"cA", "cS"}));
  const auto r = prequant::scale_cls_regions(m.graph, found.regions, iterated());
  ASSERT_EQ(r.regions.size(), 1u);
  EXPECT_EQ(r.regions[0].scale.size(), 10u);
  EXPECT_TRUE(r.converged);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  // concat channel k < 4 is cA's output k; k ≥ 4 is c0's output k − 4 (through the pool)
  auto channel = [](const std::string& l, int64_t c) -> int64_t {
    if (l == "c0") return 4 + c;
    return c;  // cA out c, cS in c
  };
  // cA is both a sink (of c0's channels) and a source; balance each role separately
  std::vector<double> src(10, 0.0), snk(10, 0.0);
  for (size_t c = 0; c < 6; ++c) src[4 + c] = m.out_ranges("c0")[c];
  for (size_t c = 0; c < 4; ++c) src[c] = m.out_ranges("cA")[c];
  for (size_t c = 0; c < 10; ++c) snk[c] = m.in_ranges("cS")[c];
  for (size_t c = 0; c < 6; ++c) snk[4 + c] = std::max(snk[4 + c], m.in_ranges("cA")[c]);
  for (size_t j = 0; j < 10; ++j) EXPECT_NEAR(src[j] / snk[j], 1.0, 1e-4) << j;
  (void)channel;
}

// x → c0 (8) → split [0,3) / [3,8) → cA (3→4) and relu → cB (5→4); concat(cA, cB) → cC.
TEST(ScaleClsRegions, SplitAndConcat) {
  RefModel m(9);
  auto y = m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 8, {3, 3}, {1, 1}));
  auto parts = m.split("sp", y, {{0, 3}, {3, 1 << 30}});
  auto ya = m.conv("cA", parts[0], conv_spec(3, 4, {3, 3}, {1, 1}));
  auto yb = m.conv("cB", m.relu("rb", parts[1]), conv_spec(5, 4, {1, 1}));
  m.output(m.conv("cC", m.resize("up", m.concat("cat", {ya, yb})), conv_spec(8, 3, {3, 3})));
  unbalance(m, "c0", 14);
  unbalance(m, "cA", 15);
  unbalance(m, "cB", 16);
  const auto inputs = m.random_inputs(2, 11);
  const auto before = m.forward(inputs);
  const auto found = prequant::find_cls_regions(m.graph);
  ASSERT_EQ(found.regions.size(), 2u) << (found.declined.empty() ? "" : found.declined[0].reason);
  // cA and cB are sinks of one region and sources of the other: balanced once iterated
  const auto r = prequant::scale_cls_regions(m.graph, found.regions, iterated());
  EXPECT_TRUE(r.converged);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  expect_balanced(m, {"c0"}, {"cA", "cB"}, 8,
                  [](const std::string& l, int64_t c) { return l == "cB" ? c + 3 : c; }, 1e-4);
  expect_balanced(m, {"cA", "cB"}, {"cC"}, 8,
                  [](const std::string& l, int64_t c) { return l == "cB" ? c + 4 : c; }, 1e-4);
}

// c0 → relu → c1 and c2 (fan-out); add(c1, c2) → c3.
TEST(ScaleClsRegions, FanOutAndAdd) {
  RefModel m(10);
  auto t = m.relu("r0", m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1})));
  auto y1 = m.conv("c1", t, conv_spec(6, 5, {3, 3}, {1, 1}));
  auto y2 = m.conv("c2", t, conv_spec(6, 5, {1, 1}));
  m.output(m.conv("c3", m.add("add", {y1, y2}), conv_spec(5, 2, {3, 3})));
  unbalance(m, "c0", 17);
  const auto inputs = m.random_inputs(2, 12);
  const auto before = m.forward(inputs);
  const auto found = prequant::find_cls_regions(m.graph);
  ASSERT_EQ(found.regions.size(), 2u);
  const auto r = prequant::scale_cls_regions(m.graph, found.regions, iterated());
  EXPECT_TRUE(r.converged);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  expect_balanced(m, {"c0"}, {"c1", "c2"}, 6, [](const std::string&, int64_t c) { return c; }, 1e-4);
  expect_balanced(m, {"c1", "c2"}, {"c3"}, 5, [](const std::string&, int64_t c) { return c; }, 1e-4);
}

// The residual stream with a ReLU6 after each Add: the three ReLU6 policies.
void build_residual_relu6(RefModel& m) {
  auto s = m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  for (int k = 1; k <= 2; ++k) {
    const std::string i = std::to_string(k);
    auto y = m.conv("cb" + i, s, conv_spec(6, 6, {1, 1}));
    s = m.clip("a" + i, m.add("add" + i, {s, y}), 0.0, 0.5);
  }
  m.output(m.conv("fc", s, conv_spec(6, 3, {1, 1})));
}

TEST(ScaleClsRegions, Relu6PoliciesInsideARegion) {
  {
    RefModel m(11);
    build_residual_relu6(m);
    const auto found = prequant::find_cls_regions(m.graph, Relu6Policy::Skip);
    EXPECT_TRUE(found.regions.empty());
    ASSERT_FALSE(found.declined.empty());
    EXPECT_TRUE(contains(found.declined[0].reason, "'skip'")) << found.declined[0].reason;
  }
  {
    RefModel m(11);
    build_residual_relu6(m);
    unbalance(m, "c0", 18);
    const auto inputs = m.random_inputs(2, 13, 3.0);
    const auto before = m.forward(inputs);
    const auto found = prequant::find_cls_regions(m.graph, Relu6Policy::Bound);
    ASSERT_FALSE(found.regions.empty());
    const auto r = prequant::scale_cls_regions(m.graph, found.regions, iterated());
    EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
    EXPECT_FALSE(r.activation_edits.empty());
    EXPECT_EQ(m.node("a1").clip_max_per_channel.size(), 6u);
  }
  {
    RefModel m(11);
    build_residual_relu6(m);
    const auto found = prequant::find_cls_regions(m.graph, Relu6Policy::Replace);
    prequant::scale_cls_regions(m.graph, found.regions, iterated(Relu6Policy::Replace));
    EXPECT_EQ(m.node("a1").kind, OpKind::Relu);
  }
}

TEST(ScaleClsRegions, FailureLeavesTheGraphAsItWas) {
  RefModel m(12);
  build_residual(m);
  const auto found = prequant::find_cls_regions(m.graph);
  const auto before = GraphSnapshot::take(m.graph);
  {
    FaultInjection fault(2);
    EXPECT_ANY_THROW(prequant::scale_cls_regions(m.graph, found.regions, {}));
  }
  EXPECT_EQ(before.diff(GraphSnapshot::take(m.graph)), "");
}

TEST(EqualizeModelRegions, ResidualModelScalesMoreAndKeepsOutput) {
  RefModel m(13);
  build_residual(m);
  for (const char* l : {"c0", "cb1", "cb2", "cb3"}) unbalance(m, l, 19);
  const auto inputs = m.random_inputs(2, 14);
  const auto before = m.forward(inputs);
  prequant::EqualizeOptions o;
  o.regions = true;
  const auto r = prequant::equalize_model(m.graph, o);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  EXPECT_EQ(r.cls.sets.size(), 3u);  // ca_k → cb_k
  ASSERT_EQ(r.regions.regions.size(), 1u);
  EXPECT_TRUE(r.regions.converged);
  // c0 and cb_k were chain declines; now the region covers them
  for (const char* l : {"c0", "cb1", "cb2", "cb3"}) EXPECT_EQ(find_declined(r.cls.declined, l), nullptr) << l;
  // at convergence the region is balanced
  expect_balanced(m, {"c0", "cb1", "cb2", "cb3"}, {"ca1", "ca2", "ca3", "fc"}, 6,
                  [](const std::string&, int64_t c) { return c; }, 1e-4);
}

}  // namespace
}  // namespace pqtest
