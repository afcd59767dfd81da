// propagate_channel_stats_test.cpp — the analytic per-channel mean after Adds, Concats, Splits,
// pools, Resizes and activations against a Monte-Carlo estimate: inputs drawn so that each BN
// sees its own statistics, run through the reference forward pass (not the engine), averaged.
#include <gtest/gtest.h>

#include <cmath>

#include "../src/propagate_channel_stats.h"
#include "bn_sampling.h"
#include "cls_models.h"

namespace pqtest {
namespace {

using prequant::ChannelStatsMap;

const std::string* unknown_reason(const ChannelStatsMap& s, const std::string& t) {
  const auto it = s.unknown.find(t);
  return it == s.unknown.end() ? nullptr : &it->second;
}

TEST(PropagateChannelStats, MeansMatchSamplingThroughChannelNodes) {
  RefModel m(21);
  const auto b1 = m.batch_norm("bn1", m.input("x1", {4, 4, 4}), 4);
  const auto b2 = m.batch_norm("bn2", m.input("x2", {4, 4, 4}), 4);
  const auto b3 = m.batch_norm("bn3", m.input("x3", {2, 4, 4}), 2);
  // Two Gaussians summed (independent inputs), then a clip: needs the summed variance.
  const auto sum = m.add("add", {b1, b2});
  const auto r6 = m.clip("relu6", sum, 0.0, 6.0);
  const auto leaky = m.leaky_relu("leaky", m.add("add3", {b1, b2, b1}), 0.2);  // bn1 twice: correlated
  // A non-Gaussian residual stream: ReLU output + BN output (mean only).
  const auto ra = m.relu("relu_a", b1);
  const auto stream = m.add("stream", {ra, b2});
  const auto cat = m.concat("cat", {ra, b3});                    // 6 channels: [relu(bn1), bn3]
  const auto parts = m.split("split", cat, {{1, 5}, {3, 100}});  // [1, 5) and [3, 6)
  const auto avg = m.pool("avg", r6, false);
  const auto gap = m.global_avg_pool("gap", stream);
  const auto rs = m.resize("resize", ra);
  const auto id = m.identity("flatten", gap);
  const std::vector<std::string> checked{sum, r6, stream, cat, parts[0], parts[1], avg, gap, rs, id};
  for (const auto& t : checked) m.output(t);
  m.output(leaky);
  m.graph.reindex();

  const auto stats = prequant::propagate_channel_stats(m.graph, {});
  const auto xs = draw_bn_inputs(m, {{"x1", "bn1"}, {"x2", "bn2"}, {"x3", "bn3"}}, 20000, 99);
  const auto env = m.forward_all(xs);
  for (const auto& t : checked) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(stats.known.count(t)) << *unknown_reason(stats, t);
    const auto& s = stats.known.at(t);
    const auto [mean, se] = channel_mean_and_se(env.at(t));
    ASSERT_EQ(s.mean.size(), mean.size());
    for (size_t c = 0; c < mean.size(); ++c) EXPECT_NEAR(s.mean[c], mean[c], 5 * se[c] + 1e-9) << "channel " << c;
  }
  // Gaussian where it should be, with variances summed over independent inputs.
  EXPECT_TRUE(stats.known.at(sum).gaussian);
  const auto g1 = read_all(m.node("bn1").gamma), g2 = read_all(m.node("bn2").gamma);
  for (size_t c = 0; c < 4; ++c)
    EXPECT_NEAR(stats.known.at(sum).std[c], std::sqrt(g1[c] * g1[c] + g2[c] * g2[c]), 1e-6);
  EXPECT_FALSE(stats.known.at(stream).gaussian);
  EXPECT_NE(stats.known.at(stream).not_gaussian.find("relu_a"), std::string::npos);
  EXPECT_FALSE(stats.known.at(avg).gaussian);
  EXPECT_EQ(stats.known.at(r6).from, (std::vector<std::string>{"bn1", "bn2"}));
  // The activation after bn1 + bn2 + bn1 assumes independent inputs, which bn1 twice is not: the
  // engine computes *something* (documented), the test only pins that it is known.
  EXPECT_TRUE(stats.known.count(leaky));
}

// Where the statistics stop, each tensor names the node that stops it.
TEST(PropagateChannelStats, UnknownNamesTheNodeThatStopsIt) {
  RefModel m(5);
  const auto x = m.input("x", {4, 6, 6});
  const auto c0 = m.conv("no_bn", x, conv_spec(4, 4, {1, 1}));
  const auto b = m.batch_norm("bn", c0, 4);
  const auto r = m.relu("relu", b);
  const auto mx = m.pool("maxpool", r, true);
  const auto pad_avg = m.pool("padded_avg", r, false);
  m.node("padded_avg").has_padding = true;
  const auto unsaid = m.pool("unsaid", r, false);
  m.node("unsaid").pool_kind = prequant::PoolKind::Unknown;
  const auto relu_after_relu = m.relu("relu2", m.add("res", {r, b}));
  const auto silu = m.gated("silu", b, prequant::Gate::Sigmoid);
  const auto tanh = m.opaque("tanh", {b});
  const auto through = m.add("through", {m.identity("id", tanh), b});  // an unknown input stops the Add
  for (const auto& t : {x, mx, pad_avg, unsaid, relu_after_relu, silu, through}) m.output(t);
  m.graph.reindex();
  const auto s = prequant::propagate_channel_stats(m.graph, {});
  auto why = [&](const std::string& t) {
    const auto* w = unknown_reason(s, t);
    return w ? *w : std::string("(known)");
  };
  EXPECT_TRUE(contains(why(c0), "no batch norm follows 'no_bn'")) << why(c0);
  EXPECT_TRUE(contains(why(mx), "max pooling 'maxpool'")) << why(mx);
  EXPECT_TRUE(contains(why(pad_avg), "'padded_avg' counts its zero padding")) << why(pad_avg);
  EXPECT_TRUE(contains(why(unsaid), "did not say")) << why(unsaid);
  EXPECT_TRUE(contains(why(relu_after_relu), "activation 'relu2'")) << why(relu_after_relu);
  EXPECT_TRUE(contains(why(relu_after_relu), "relu")) << why(relu_after_relu);
  EXPECT_TRUE(contains(why(silu), "gated activation 'silu'")) << why(silu);
  EXPECT_TRUE(contains(why(through), "'tanh'")) << why(through);
  EXPECT_TRUE(contains(prequant::why_unknown(m.graph, s, x), "graph input"));
  // Known where nothing stops it.
  EXPECT_TRUE(s.known.count(b));
  EXPECT_TRUE(s.known.count(r));
}

// A residual stream through several Adds: a long chain (no recursion), every Add known.
TEST(PropagateChannelStats, LongResidualStream) {
  RefModel m(8);
  auto t = m.batch_norm("bn0", m.input("x", {3, 2, 2}), 3);
  for (int k = 0; k < 500; ++k) {
    const auto b = m.batch_norm("bn" + std::to_string(k + 1), m.identity("id" + std::to_string(k), t), 3);
    t = m.add("add" + std::to_string(k), {t, b});
  }
  m.output(t);
  m.graph.reindex();
  const auto s = prequant::propagate_channel_stats(m.graph, {});
  ASSERT_TRUE(s.known.count(t));
  EXPECT_TRUE(s.known.at(t).gaussian);
  EXPECT_EQ(s.known.at(t).from.size(), 501u);
}

}  // namespace
}  // namespace pqtest
