// find_cls_sets_test.cpp — which layer sets cross-layer scaling may equalize, and why not.
#include <gtest/gtest.h>

#include <cmath>

#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::Relu6Policy;

std::vector<std::vector<std::string>> layer_lists(const prequant::ClsCandidates& c) {
  std::vector<std::vector<std::string>> out;
  for (const auto& s : c.sets) out.push_back(s.layers);
  return out;
}

using Sets = std::vector<std::vector<std::string>>;

class FindPairThrough : public ::testing::TestWithParam<Between> {};

TEST_P(FindPairThrough, IsAPair) {
  RefModel m(3);
  build_pair(m, GetParam());
  const auto snap = GraphSnapshot::take(m.graph);
  const auto found = prequant::find_cls_sets(m.graph);
  EXPECT_EQ(layer_lists(found), (Sets{{"c1", "c2"}}));
  // c2 starts nothing: its output is the graph output.
  ASSERT_EQ(found.declined.size(), 1u);
  EXPECT_EQ(found.declined[0].pass, "scale_cls_sets");
  EXPECT_EQ(found.declined[0].nodes, std::vector<std::string>{"c2"});
  EXPECT_TRUE(contains(found.declined[0].reason, "graph output")) << found.declined[0].reason;
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

INSTANTIATE_TEST_SUITE_P(Activations, FindPairThrough,
                         ::testing::Values(Between::None, Between::Relu, Between::LeakyRelu,
                                           Between::PReluPerChannel, Between::PReluShared,
                                           Between::Identity, Between::ZeroPad, Between::MaxPool,
                                           Between::AvgPool, Between::Relu6,
                                           Between::ClipMinZeroNoMax, Between::ReluPadPool),
                         [](const auto& info) { return std::string(between_name(info.param)); });

TEST(FindClsSets, Relu6UnderEachPolicy) {
  for (auto policy : {Relu6Policy::Bound, Relu6Policy::Replace}) {
    RefModel m;
    build_pair(m, Between::Relu6);
    EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph, policy)), (Sets{{"c1", "c2"}}));
  }
  RefModel m;
  build_pair(m, Between::Relu6);
  const auto found = prequant::find_cls_sets(m.graph, Relu6Policy::Skip);
  EXPECT_TRUE(found.sets.empty());
  const auto* d = find_declined(found.declined, "c1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "'act'") && contains(d->reason, "skip")) << d->reason;
}

TEST(FindClsSets, UnboundedClipPassesUnderSkip) {
  RefModel m;
  build_pair(m, Between::ClipMinZeroNoMax);
  EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph, Relu6Policy::Skip)), (Sets{{"c1", "c2"}}));
}

TEST(FindClsSets, Triple) {
  RefModel m;
  build_triple(m);
  const auto found = prequant::find_cls_sets(m.graph);
  EXPECT_EQ(layer_lists(found), (Sets{{"c1", "dw", "c3"}}));
  // The depthwise layer starts no set of its own and is not reported as declined.
  EXPECT_EQ(find_declined(found.declined, "dw"), nullptr);
  EXPECT_NE(find_declined(found.declined, "c3"), nullptr);
}

TEST(FindClsSets, KerasTriple) {
  RefModel m;
  build_triple(m, true);
  EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph)), (Sets{{"c1", "dw", "c3"}}));
}

TEST(FindClsSets, TripleFallsBackToPairWhenThirdLayerUnreachable) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {1, 1}));
  y = m.conv("dw", m.relu("r", y), conv_spec(4, 4, {3, 3}, {1, 1}, 4));
  m.output(m.opaque("t", {y}));
  const auto found = prequant::find_cls_sets(m.graph);
  EXPECT_EQ(layer_lists(found), (Sets{{"c1", "dw"}}));
  const auto* d = find_declined(found.declined, "dw");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "'t'")) << d->reason;
}

TEST(FindClsSets, DepthwiseAfterDepthwiseMakesPairs) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 4, {1, 1}));
  y = m.conv("dw1", y, conv_spec(4, 4, {3, 3}, {1, 1}, 4));
  y = m.conv("dw2", m.relu("r", y), conv_spec(4, 4, {3, 3}, {1, 1}, 4));
  m.output(m.conv("c3", y, conv_spec(4, 2, {1, 1})));
  EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph)),
            (Sets{{"c1", "dw1"}, {"dw1", "dw2"}, {"dw2", "c3"}}));
}

TEST(FindClsSets, DepthwiseWithMultiplierIsNotAMiddleLayer) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 4, {1, 1}));
  y = m.conv("dwm", y, conv_spec(4, 8, {3, 3}, {1, 1}, 4));
  m.output(m.conv("c3", y, conv_spec(8, 2, {1, 1})));
  EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph)), (Sets{{"c1", "dwm"}, {"dwm", "c3"}}));
}

TEST(FindClsSets, OverlappingPairs) {
  RefModel m;
  build_chain3(m);
  EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph)), (Sets{{"c1", "c2"}, {"c2", "c3"}}));
}

struct KindCase {
  std::string label;
  std::function<void(RefModel&)> build;
};
std::ostream& operator<<(std::ostream& os, const KindCase& c) { return os << c.label; }

class FindLayerKinds : public ::testing::TestWithParam<KindCase> {};

TEST_P(FindLayerKinds, PairFound) {
  RefModel m;
  GetParam().build(m);
  EXPECT_EQ(layer_lists(prequant::find_cls_sets(m.graph)), (Sets{{"l1", "l2"}}));
}

ConvSpec tr(ConvSpec s) { s.transposed = true; return s; }

const KindCase kKindCases[] = {
    {"conv1d", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 9}), conv_spec(3, 4, {3}, {1}));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 2, {3})));
     }},
    {"conv3d", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {2, 4, 4, 4}), conv_spec(2, 4, {3, 3, 3}, {1, 1, 1}));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 3, {2, 2, 2})));
     }},
    {"transposed_then_conv", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 4, 4}), tr(conv_spec(3, 4, {3, 3})));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 2, {3, 3})));
     }},
    {"conv_then_transposed", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 4, 4}), conv_spec(3, 4, {3, 3}, {1, 1}));
       m.output(m.conv("l2", m.relu("r", y), tr(conv_spec(4, 6, {3, 3}, {}, 2))));
     }},
    {"linear_linear", [](RefModel& m) {
       auto y = m.linear("l1", m.input("x", {6}), 6, 5);
       m.output(m.linear("l2", m.relu("r", y), 5, 3));
     }},
    {"conv_pool_linear", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 6, 6}), conv_spec(3, 5, {3, 3}, {1, 1}));
       m.output(m.linear("l2", m.global_avg_pool("gap", m.relu("r", y)), 5, 3));
     }},
};

INSTANTIATE_TEST_SUITE_P(Kinds, FindLayerKinds, ::testing::ValuesIn(kKindCases),
                         [](const auto& info) { return info.param.label; });

// ---- declined -----------------------------------------------------------------------------

void expect_declined(RefModel& m, const std::string& layer, const std::vector<std::string>& parts,
                     Relu6Policy policy = Relu6Policy::Bound) {
  const auto found = prequant::find_cls_sets(m.graph, policy);
  for (const auto& s : found.sets) EXPECT_NE(s.layers[0], layer) << "a set starts at " << layer;
  const auto* d = find_declined(found.declined, layer);
  ASSERT_NE(d, nullptr) << "no reason for " << layer;
  EXPECT_EQ(d->pass, "scale_cls_sets");
  for (const auto& p : parts) EXPECT_TRUE(contains(d->reason, p)) << d->reason << "\n  lacks: " << p;
}

TEST(FindClsSetsDeclined, FanOut) {
  RefModel m;
  auto y = m.relu("r", m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1})));
  auto a = m.conv("a", y, conv_spec(4, 2, {1, 1}));
  auto b = m.conv("b", y, conv_spec(4, 2, {1, 1}));
  m.output(m.opaque("add", {a, b}, "add"));
  expect_declined(m, "c1", {"'r'", "'a' and 'b'", "all of them"});
}

TEST(FindClsSetsDeclined, OpaqueBetween) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.opaque("t", {y}), conv_spec(4, 2, {1, 1})));
  expect_declined(m, "c1", {"'t'", "Tanh", "positively homogeneous"});
}

TEST(FindClsSetsDeclined, FlattenBetweenConvAndLinear) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 4, 4}), conv_spec(3, 2, {3, 3}, {1, 1}));
  m.output(m.linear("fc", m.opaque("flat", {y}, "flatten"), 32, 3));
  expect_declined(m, "c1", {"'flat'", "Flatten"});
}

TEST(FindClsSetsDeclined, ChannelsLastLinearOnConvOutput) {
  // PyTorch nn.Linear applied to a conv's (N, C, H, W) output contracts W, not C.
  RefModel m;
  auto y = m.relu("r", m.conv("c1", m.input("x", {3, 4, 4}), conv_spec(3, 4, {3, 3}, {1, 1})));
  m.output(m.linear("fc", y, 4, 3));
  m.node("fc").channels_last = true;
  m.node("fc").input_rank = 4;
  expect_declined(m, "c1", {"'fc'", "contracts the last axis of a rank-4 tensor", "'c1'"});
}

TEST(FindClsSets, ChannelsLastLinearsPairAtAnyRank) {
  RefModel m;
  auto y = m.relu("r", m.linear("fc1", m.input("x", {5}), 5, 6));
  m.output(m.linear("fc2", y, 6, 3));
  for (const char* n : {"fc1", "fc2"}) {
    m.node(n).channels_last = true;
    m.node(n).input_rank = 3;
  }
  EXPECT_EQ(prequant::find_cls_sets(m.graph, Relu6Policy::Bound).sets.size(), 1u);
}

TEST(FindClsSetsDeclined, BatchNormBetween) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.relu("r", m.batch_norm("bn", y, 4)), conv_spec(4, 2, {1, 1})));
  expect_declined(m, "c1", {"'bn'", "fold batch norms first"});
}

TEST(FindClsSetsDeclined, GraphOutputBetween) {
  RefModel m;
  auto y = m.relu("r", m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1})));
  m.output(m.conv("c2", y, conv_spec(4, 2, {1, 1})));
  m.output(y);
  expect_declined(m, "c1", {"'r'", "graph output"});
}

TEST(FindClsSetsDeclined, UnusedOutput) {
  RefModel m;
  m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  expect_declined(m, "c1", {"not used"});
}

TEST(FindClsSetsDeclined, ChannelMismatch) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.relu("r", y), conv_spec(6, 2, {1, 1})));
  expect_declined(m, "c1", {"4 output channels", "takes 6"});
}

TEST(FindClsSetsDeclined, ClipWithNonZeroMin) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.conv("c2", m.clip("clip", y, -1.0, 1.0), conv_spec(4, 2, {1, 1})));
  for (auto p : {Relu6Policy::Bound, Relu6Policy::Replace, Relu6Policy::Skip})
    expect_declined(m, "c1", {"'clip'", "min", "positively homogeneous"}, p);
}

TEST(FindClsSetsDeclined, SharedWeight) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {4, 6, 6}), conv_spec(4, 4, {3, 3}, {1, 1}));
  y = m.conv("c2", m.relu("r", y), conv_spec(4, 4, {3, 3}, {1, 1}));
  m.node("c2").weight = m.node("c1").weight;
  m.output(y);
  expect_declined(m, "c1", {"shares its weight", "unroll_shared_weights"});
}

}  // namespace
}  // namespace pqtest
