// scale_cls_requests_test.cpp — what the caller asks of cross-layer scaling: the ReLU6 policies
// (bound, replace, skip), validation of user-given sets (adjacency, kinds, a set given twice),
// and options checked before any write.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"
#include "scale_cls_test_util.h"

namespace pqtest {
namespace {

using namespace scale_cls_util;

// ---- ReLU6 policies -------------------------------------------------------------------------

TEST(ScaleRelu6, BoundKeepsOutputExactAndRescalesExistingBounds) {
  RefModel m(53);
  build_pair(m, Between::Relu6);
  const auto inputs = m.random_inputs(3, 1, 4.0);
  const auto before = m.forward(inputs);
  ClsOptions o;
  o.relu6 = Relu6Policy::Bound;
  const auto first = prequant::scale_model(m.graph, o);
  const auto bounds = m.node("act").clip_max_per_channel;
  ASSERT_EQ(bounds.size(), 6u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  // Disturb the pair so a second scaling changes the existing per-channel bounds (channel 2 / 8,
  // so every bound stays ≤ the clip's 6, as a valid bounded clip has it).
  auto& c1 = m.node("c1");
  for_each_weight_element(FrameworkLayout::TorchConv, c1.weight.tensor.shape, 1, [&](int64_t o2, int64_t, int64_t idx) {
    if (o2 == 2) write(c1.weight.tensor, idx, read(c1.weight.tensor, idx) / 8.0);
  });
  write(c1.bias, 2, read(c1.bias, 2) / 8.0);
  m.node("act").clip_max_per_channel[2] /= 8.0;
  for_each_weight_element(FrameworkLayout::TorchConv, m.node("c2").weight.tensor.shape, 1,
                          [&](int64_t, int64_t i, int64_t idx) {
                            if (i == 2) write(m.node("c2").weight.tensor, idx, read(m.node("c2").weight.tensor, idx) * 8.0);
                          });
  const auto mid = m.forward(inputs);
  ASSERT_LT(max_rel_error(before, mid), kTol);
  const auto second = prequant::scale_model(m.graph, o);
  const auto& s = second.sets.at(0).pairs.at(0).scale;
  EXPECT_NEAR(s[2], 1.0 / 8.0, 1e-5);
  EXPECT_LT(rel(m.node("act").clip_max_per_channel[2], bounds[2]), 1e-5);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
  (void)first;
}

TEST(ScaleRelu6, ReplaceTurnsClipIntoReluAndChangesOnlyClippedSamples) {
  RefModel m(59);
  auto y = m.linear("l1", m.input("x", {6}), 6, 8);
  y = m.clip("act", y, 0.0, 6.0);
  m.output(m.linear("l2", y, 8, 4));
  auto inputs = m.random_inputs(16, 3, 1.0);
  // Samples 0..7 small, 8..15 large: only large ones push activations past 6.
  for (int64_t n = 0; n < 16; ++n)
    for (int64_t i = 0; i < 6; ++i) inputs[0].data[n * 6 + i] *= n < 8 ? 0.5 : 40.0;
  const auto env = m.forward_all(inputs);
  const auto before = m.forward(inputs);
  std::vector<bool> clipped(16, false);
  for (int64_t n = 0; n < 16; ++n)
    for (int64_t c = 0; c < 8; ++c) clipped[n] = clipped[n] || env.at("l1:out").data[n * 8 + c] > 6.0;
  ASSERT_GT(std::count(clipped.begin(), clipped.end(), true), 0);
  ASSERT_GT(std::count(clipped.begin(), clipped.end(), false), 0);

  ClsOptions o;
  o.relu6 = Relu6Policy::Replace;
  const auto res = prequant::scale_model(m.graph, o);
  ASSERT_EQ(res.sets.size(), 1u);
  EXPECT_EQ(m.node("act").kind, prequant::OpKind::Relu);
  ASSERT_EQ(res.activation_edits.size(), 1u);
  EXPECT_EQ(res.activation_edits[0].node, "act");
  EXPECT_EQ(res.activation_edits[0].kind, prequant::ActivationEdit::Kind::ReplacedWithRelu);
  const auto after = m.forward(inputs);
  for (int64_t n = 0; n < 16; ++n) {
    double diff = 0, mag = 0;
    for (int64_t o2 = 0; o2 < 4; ++o2) {
      diff = std::max(diff, std::abs(after[0].data[n * 4 + o2] - before[0].data[n * 4 + o2]));
      mag = std::max(mag, std::abs(before[0].data[n * 4 + o2]));
    }
    if (clipped[n])
      EXPECT_GT(diff, 1e-3 * mag) << "sample " << n << " exceeded 6 but its output did not change";
    else
      EXPECT_LT(diff, kTol * mag) << "sample " << n << " never exceeded 6 but its output changed";
  }
}

TEST(ScaleRelu6, SkipLeavesThePairAlone) {
  RefModel m(61);
  build_pair(m, Between::Relu6);
  const auto snap = GraphSnapshot::take(m.graph);
  ClsOptions o;
  o.relu6 = Relu6Policy::Skip;
  const auto res = prequant::scale_model(m.graph, o);
  EXPECT_TRUE(res.sets.empty());
  const auto* d = find_declined(res.declined, "c1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "skip")) << d->reason;
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  // A user-given set across the clip is refused under 'skip'.
  EXPECT_THROW(prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "c2"}}}, o), prequant::InvalidRequestError);
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

TEST(ScaleRelu6, PolicyNames) {
  for (auto p : {Relu6Policy::Replace, Relu6Policy::Bound, Relu6Policy::Skip})
    EXPECT_EQ(prequant::parse_relu6_policy(prequant::relu6_policy_name(p)), p);
  EXPECT_THROW(prequant::parse_relu6_policy("relu"), prequant::InvalidRequestError);
}

// ---- user-given sets -----------------------------------------------------------------------

class ScaleGivenSets : public ::testing::Test {
 protected:
  void SetUp() override {
    build_chain3(m);
    auto y = m.conv("d1", m.input("x2", {4, 5, 5}), conv_spec(4, 4, {1, 1}));
    m.output(m.conv("d2", m.opaque("t", {y}), conv_spec(4, 2, {1, 1})));
  }
  void expect_rejected(const ClsSetSpec& spec, const std::string& part) {
    const auto snap = GraphSnapshot::take(m.graph);
    try {
      prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "c2"}}, spec});
      ADD_FAILURE() << "expected InvalidRequestError";
    } catch (const prequant::InvalidRequestError& e) {
      EXPECT_TRUE(contains(e.what(), part)) << e.what() << "\n  lacks: " << part;
    }
    EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  }
  RefModel m{67};
};

TEST_F(ScaleGivenSets, NonAdjacent) { expect_rejected({{"c1", "c3"}}, "not adjacent"); }
TEST_F(ScaleGivenSets, Reversed) { expect_rejected({{"c2", "c1"}}, "not adjacent"); }
TEST_F(ScaleGivenSets, AcrossOpaque) { expect_rejected({{"d1", "d2"}}, "'t'"); }
TEST_F(ScaleGivenSets, NotALayer) { expect_rejected({{"c1", "r1"}}, "only conv and linear"); }
TEST_F(ScaleGivenSets, Unknown) { expect_rejected({{"c1", "nope"}}, "not in the graph"); }
TEST_F(ScaleGivenSets, WrongSize) {
  expect_rejected({{"c1"}}, "2 layers");
  expect_rejected({{"c1", "c2", "c3", "c1"}}, "2 layers");
}
TEST_F(ScaleGivenSets, TripleNeedsDepthwiseMiddle) { expect_rejected({{"c1", "c2", "c3"}}, "depthwise"); }

TEST_F(ScaleGivenSets, ValidSetsAreScaled) {
  const auto res = prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c2", "c3"}}});
  ASSERT_EQ(res.sets.size(), 1u);
  EXPECT_LT(range_mismatch(m, "c2", "c3"), 1e-6);
  EXPECT_TRUE(res.declined.empty());
}

// ---- a pair given twice (issue 11, item 5) ----------------------------------------------------

// Before the check, a set given twice bounded its ReLU6 at 6/s² while reporting the function kept.
TEST(ScaleGivenSetsTwice, RepeatedPairIsRejectedNamingTheLayers) {
  for (const auto& sets : std::vector<std::vector<ClsSetSpec>>{
           {ClsSetSpec{{"c1", "c2"}}, ClsSetSpec{{"c1", "c2"}}},
       }) {
    RefModel m(71);
    build_pair(m, Between::Relu6);
    const auto snap = GraphSnapshot::take(m.graph);
    try {
      prequant::scale_cls_sets(m.graph, sets);
      ADD_FAILURE() << "expected InvalidRequestError";
    } catch (const prequant::InvalidRequestError& e) {
      EXPECT_TRUE(contains(e.what(), "'c1' → 'c2'")) << e.what();
      EXPECT_TRUE(contains(e.what(), "set 1 and again in set 2")) << e.what();
      EXPECT_EQ(e.node(), "c1");
    }
    EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  }
}

TEST(ScaleGivenSetsTwice, PairInsideAGivenTripleIsRejected) {
  RefModel m(73);
  build_triple(m);
  try {
    prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "dw", "c3"}}, ClsSetSpec{{"dw", "c3"}}});
    ADD_FAILURE() << "expected InvalidRequestError";
  } catch (const prequant::InvalidRequestError& e) {
    EXPECT_TRUE(contains(e.what(), "'dw' → 'c3'")) << e.what();
  }
}

TEST(ScaleGivenSetsTwice, OverlappingChainIsStillAccepted) {  // negative case: must not fire
  RefModel m(79);
  build_chain3(m);
  const auto inputs = m.random_inputs(2, 2);
  const auto before = m.forward(inputs);
  const auto res = prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "c2"}}, ClsSetSpec{{"c2", "c3"}}});
  EXPECT_EQ(res.sets.size(), 2u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// ---- options checked at the entry (issue 11, item 7) ------------------------------------------

TEST(ScaleOptions, InvalidOptionsAreRejectedBeforeAnyWrite) {
  auto bad = [](auto edit, const char* part) {
    RefModel m(83);
    build_pair(m, Between::Relu);
    const auto snap = GraphSnapshot::take(m.graph);
    ClsOptions o;
    edit(o);
    try {
      prequant::scale_model(m.graph, o);
      ADD_FAILURE() << "expected InvalidRequestError for " << part;
    } catch (const prequant::InvalidRequestError& e) {
      EXPECT_TRUE(contains(e.what(), part)) << e.what();
    }
    prequant::EqualizeOptions eo;
    eo.cls = o;
    EXPECT_THROW(prequant::equalize_model(m.graph, eo), prequant::InvalidRequestError) << part;
    EXPECT_THROW(prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "c2"}}}, o), prequant::InvalidRequestError);
    EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  };
  bad([](ClsOptions& o) { o.min_scale = 0; }, "min_scale");
  bad([](ClsOptions& o) { o.min_scale = -1; }, "min_scale");
  bad([](ClsOptions& o) { o.min_scale = NAN; }, "min_scale");
  bad([](ClsOptions& o) { o.max_scale = 1e-7; }, "max_scale");  // below min_scale: UB in std::clamp
  bad([](ClsOptions& o) { o.max_scale = INFINITY; }, "max_scale");
  bad([](ClsOptions& o) { o.tolerance = -1e-3; }, "tolerance");
  bad([](ClsOptions& o) { o.tolerance = NAN; }, "tolerance");
  bad([](ClsOptions& o) { o.max_iterations = 0; }, "max_iterations");
}

TEST(ScaleOptions, HighBiasSigmasChecked) {
  RefModel m(89);
  build_pair(m, Between::Relu);
  prequant::EqualizeOptions o;
  for (double sigmas : {-1.0, double(NAN), double(INFINITY)}) {
    o.high_bias_sigmas = sigmas;
    EXPECT_THROW(prequant::equalize_model(m.graph, o), prequant::InvalidRequestError) << sigmas;
    EXPECT_THROW(prequant::absorb_high_bias(m.graph, {}, {}, sigmas), prequant::InvalidRequestError) << sigmas;
  }
}

TEST(ScaleOptions, EdgeValuesAreAccepted) {  // negative case: must not fire
  RefModel m(97);
  build_pair(m, Between::Relu);
  ClsOptions o;
  o.min_scale = o.max_scale = 1.0;  // equal bounds: every scale is 1
  o.tolerance = 0;
  o.max_iterations = 1;
  const auto res = prequant::scale_model(m.graph, o);
  for (double s : res.sets.at(0).pairs.at(0).scale) EXPECT_EQ(s, 1.0);
  EXPECT_EQ(ClsOptions{}.max_iterations, prequant::kDefaultMaxIterations);
  EXPECT_EQ(prequant::EqualizeOptions{}.cls.max_iterations, prequant::kDefaultMaxIterations);
}


}  // namespace
}  // namespace pqtest
