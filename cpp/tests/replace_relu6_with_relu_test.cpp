// replace_relu6_with_relu_test.cpp — every Clip(0, m) becomes ReLU; other clips stay, with reasons.
#include <gtest/gtest.h>

#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::OpKind;

TEST(ReplaceRelu6WithRelu, ReplacesRelu6AndKeepsOtherClips) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  y = m.clip("relu6", y, 0, 6);
  y = m.clip("hardtanh", y, -1, 1);
  y = m.clip("relu_inf", y, 0, INFINITY);
  y = m.clip("bounded", y, 0, 6);
  m.node("bounded").clip_max_per_channel = {6, 5, 4, 3};
  m.output(y);
  const auto r = prequant::replace_relu6_with_relu(m.graph);
  EXPECT_EQ(m.node("relu6").kind, OpKind::Relu);
  EXPECT_EQ(m.node("hardtanh").kind, OpKind::Clip);
  EXPECT_EQ(m.node("relu_inf").kind, OpKind::Relu);
  EXPECT_EQ(m.node("bounded").kind, OpKind::Relu);
  EXPECT_TRUE(m.node("bounded").clip_max_per_channel.empty());
  ASSERT_EQ(r.edits.size(), 2u);
  EXPECT_EQ(r.edits[0].node, "relu6");
  EXPECT_EQ(r.edits[0].kind, prequant::ActivationEdit::Kind::ReplacedWithRelu);
  EXPECT_EQ(r.edits[1].node, "bounded");
  ASSERT_EQ(r.declined.size(), 1u);
  EXPECT_EQ(r.declined[0].pass, "replace_relu6_with_relu");
  EXPECT_EQ(r.declined[0].nodes, std::vector<std::string>{"hardtanh"});
  EXPECT_TRUE(contains(r.declined[0].reason, "not a ReLU6")) << r.declined[0].reason;
}

TEST(ReplaceRelu6WithRelu, OutputChangesOnlyWhereActivationsExceededSix) {
  RefModel m(3);
  auto y = m.linear("l1", m.input("x", {5}), 5, 6);
  m.output(m.linear("l2", m.clip("relu6", y, 0, 6), 6, 3));
  auto inputs = m.random_inputs(12, 1);
  for (int64_t n = 0; n < 12; ++n)
    for (int64_t i = 0; i < 5; ++i) inputs[0].data[n * 5 + i] *= n % 2 ? 40.0 : 0.5;
  const auto env = m.forward_all(inputs);
  const auto before = m.forward(inputs);
  prequant::replace_relu6_with_relu(m.graph);
  const auto after = m.forward(inputs);
  int changed = 0, unchanged = 0;
  for (int64_t n = 0; n < 12; ++n) {
    bool over = false;
    for (int64_t c = 0; c < 6; ++c) over = over || env.at("l1:out").data[n * 6 + c] > 6;
    double diff = 0;
    for (int64_t o = 0; o < 3; ++o) diff = std::max(diff, std::abs(after[0].data[n * 3 + o] - before[0].data[n * 3 + o]));
    if (over) {
      ++changed;
      EXPECT_GT(diff, 0.0) << "sample " << n;
    } else {
      ++unchanged;
      EXPECT_EQ(diff, 0.0) << "sample " << n;
    }
  }
  EXPECT_GT(changed, 0);
  EXPECT_GT(unchanged, 0);
}

TEST(ReplaceRelu6WithRelu, SkipsRemovedNodesAndNonClips) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  y = m.relu("r", m.clip("dead", y, 0, 6));
  m.output(y);
  m.node("dead").removed = true;
  m.graph.reindex();
  const auto r = prequant::replace_relu6_with_relu(m.graph);
  EXPECT_TRUE(r.edits.empty());
  EXPECT_TRUE(r.declined.empty());
  EXPECT_EQ(m.graph.nodes[1].kind, OpKind::Clip);
}

TEST(ReplaceRelu6WithRelu, NoClipsNoChanges) {
  RefModel m;
  build_chain3(m);
  const auto snap = GraphSnapshot::take(m.graph);
  const auto r = prequant::replace_relu6_with_relu(m.graph);
  EXPECT_TRUE(r.edits.empty());
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

}  // namespace
}  // namespace pqtest
