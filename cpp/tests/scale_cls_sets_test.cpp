// scale_cls_sets_test.cpp — cross-layer scaling's formula and exactness: pairs through every
// positively homogeneous op, every layer kind and layout, and the conv → depthwise → conv triple.
// Iteration, guards and the random-rescaling case: scale_cls_convergence_test.cpp; ReLU6
// policies, user-given sets and options: scale_cls_requests_test.cpp.
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

// ---- pairs through every positively homogeneous op ----------------------------------------

class ScalePairThrough : public ::testing::TestWithParam<Between> {};

TEST_P(ScalePairThrough, EqualizesExactly) {
  const Between b = GetParam();
  RefModel m(5);
  const auto names = build_pair(m, b);
  const auto inputs = m.random_inputs(2, 9, 8.0);
  const auto env = m.forward_all(inputs);
  const auto before = m.forward(inputs);
  if (b == Between::Relu6) {  // the clip must actually clip for the test to mean something
    double mx = 0;
    for (double v : env.at("c1:out").data) mx = std::max(mx, v);
    ASSERT_GT(mx, 6.0);
  }
  const auto r1 = m.out_ranges("c1"), r2 = m.in_ranges("c2");
  const auto b1 = read_all(m.node("c1").bias);

  const auto res = prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "c2"}}});
  ASSERT_EQ(res.sets.size(), 1u);
  ASSERT_EQ(res.sets[0].pairs.size(), 1u);
  const auto& p = res.sets[0].pairs[0];
  EXPECT_EQ(p.layer1, "c1");
  EXPECT_EQ(p.layer2, "c2");
  EXPECT_EQ(p.relu_between, relu_like(b));
  EXPECT_EQ(p.activations_between, names);
  EXPECT_EQ(res.iterations, 1);
  ASSERT_EQ(p.scale.size(), r1.size());
  const auto n1 = m.out_ranges("c1"), n2 = m.in_ranges("c2");
  const auto nb1 = read_all(m.node("c1").bias);
  // A bounded ReLU6 between: the whole scale vector carries one extra factor α (the gauge that
  // puts every bound at ≤ 6, gauge_clip_bounds.cpp): ranges balanced up to α, α = 1/min_c s[c].
  double alpha = 1.0;
  if (b == Between::Relu6) {
    double smallest = INFINITY;
    for (size_t c = 0; c < r1.size(); ++c) smallest = std::min(smallest, std::sqrt(r1[c] / r2[c]));
    alpha = 1.0 / smallest;
  }
  for (size_t c = 0; c < r1.size(); ++c) {
    EXPECT_LT(rel(p.scale[c], alpha * std::sqrt(r1[c] / r2[c])), 1e-12) << "channel " << c;
    EXPECT_LT(rel(n1[c] * alpha, std::sqrt(r1[c] * r2[c])), 1e-6) << "channel " << c;
    EXPECT_LT(rel(n2[c] / alpha, std::sqrt(r1[c] * r2[c])), 1e-6) << "channel " << c;
    EXPECT_LT(rel(nb1[c], b1[c] / p.scale[c]), 1e-6) << "channel " << c;
  }
  if (b == Between::Relu6) {
    const auto& clip = m.node("act");
    EXPECT_EQ(clip.kind, prequant::OpKind::Clip);
    ASSERT_EQ(clip.clip_max_per_channel.size(), r1.size());
    for (size_t c = 0; c < r1.size(); ++c) {
      EXPECT_LT(rel(clip.clip_max_per_channel[c], 6.0 / p.scale[c]), 1e-12);
      EXPECT_LE(clip.clip_max_per_channel[c], 6.0 * (1 + 1e-12)) << "channel " << c;
    }
    EXPECT_EQ(clip.clip_max, 6.0);  // a ReLU6 (fusable) before the per-channel min
    EXPECT_LT(rel(*std::max_element(clip.clip_max_per_channel.begin(), clip.clip_max_per_channel.end()), 6.0), 1e-12);
    ASSERT_EQ(res.activation_edits.size(), 1u);
    EXPECT_EQ(res.activation_edits[0].clip_max, 6.0);
    EXPECT_EQ(res.activation_edits[0].node, "act");
    EXPECT_EQ(res.activation_edits[0].kind, prequant::ActivationEdit::Kind::BoundedPerChannel);
    EXPECT_EQ(res.activation_edits[0].upper_bound, clip.clip_max_per_channel);
  } else {
    EXPECT_TRUE(res.activation_edits.empty());
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

INSTANTIATE_TEST_SUITE_P(Activations, ScalePairThrough,
                         ::testing::Values(Between::None, Between::Relu, Between::LeakyRelu,
                                           Between::PReluPerChannel, Between::PReluShared,
                                           Between::Identity, Between::ZeroPad, Between::MaxPool,
                                           Between::AvgPool, Between::Relu6,
                                           Between::ClipMinZeroNoMax, Between::ReluPadPool),
                         [](const auto& info) { return std::string(between_name(info.param)); });

// ---- layer kinds -------------------------------------------------------------------------

struct KindCase {
  std::string label;
  std::function<void(RefModel&)> build;  // layers "l1", "l2"
};
std::ostream& operator<<(std::ostream& os, const KindCase& c) { return os << c.label; }

ConvSpec tr(ConvSpec s, std::vector<int64_t> stride = {}) {
  s.transposed = true;
  s.stride = std::move(stride);
  return s;
}
ConvSpec ks(ConvSpec s) { s.keras = true; return s; }
ConvSpec f64(ConvSpec s) { s.dtype = DType::Float64; return s; }
ConvSpec nb(ConvSpec s) { s.bias = false; return s; }

class ScaleLayerKinds : public ::testing::TestWithParam<KindCase> {};

TEST_P(ScaleLayerKinds, EqualizesExactly) {
  RefModel m(17);
  GetParam().build(m);
  const auto found = prequant::find_cls_sets(m.graph);
  ASSERT_EQ(found.sets.size(), 1u);
  ASSERT_EQ(found.sets[0].layers, (std::vector<std::string>{"l1", "l2"}));
  const auto inputs = m.random_inputs(2, 4);
  const auto before = m.forward(inputs);
  const auto r1 = m.out_ranges("l1"), r2 = m.in_ranges("l2");
  double spread = 0;
  for (size_t c = 0; c < r1.size(); ++c) spread = std::max(spread, std::abs(std::log(r1[c] / r2[c])));
  ASSERT_GT(spread, 0.05) << "the pair starts nearly equalized; the test would prove little";
  const auto res = prequant::scale_model(m.graph);
  ASSERT_EQ(res.sets.size(), 1u);
  EXPECT_LT(range_mismatch(m, "l1", "l2"), 1e-6);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

const KindCase kKindCases[] = {
    {"conv1d", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 9}), conv_spec(3, 4, {3}, {1}));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 2, {3})));
     }},
    {"conv3d", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {2, 4, 4, 4}), conv_spec(2, 4, {3, 3, 3}, {1, 1, 1}));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 3, {2, 2, 2})));
     }},
    {"grouped_pair", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {4, 6, 6}), conv_spec(4, 6, {3, 3}, {1, 1}, 2));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(6, 4, {3, 3}, {}, 2)));
     }},
    {"transposed_stride2_then_conv", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 4, 4}), tr(conv_spec(3, 4, {3, 3}), {2, 2}));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 2, {3, 3})));
     }},
    {"conv_then_grouped_transposed", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 4, 4}), conv_spec(3, 4, {3, 3}, {1, 1}));
       m.output(m.conv("l2", m.relu("r", y), tr(conv_spec(4, 6, {3, 3}, {}, 2), {2, 2})));
     }},
    {"transposed_then_transposed", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 3, 3}), tr(conv_spec(3, 4, {2, 2}, {}, 1), {2, 2}));
       m.output(m.conv("l2", m.leaky_relu("r", y, 0.2), tr(conv_spec(4, 2, {3, 3}))));
     }},
    {"conv_transpose1d_then_conv1d", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 5}), tr(conv_spec(3, 4, {3}), {2}));
       m.output(m.conv("l2", m.relu("r", y), conv_spec(4, 2, {3})));
     }},
    {"keras_conv_pair", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 6, 6}), ks(conv_spec(3, 4, {3, 3}, {1, 1})));
       m.output(m.conv("l2", m.relu("r", y), ks(conv_spec(4, 2, {3, 3}))));
     }},
    {"keras_conv_then_keras_transpose", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 5, 5}), ks(conv_spec(3, 4, {3, 3}, {1, 1})));
       m.output(m.conv("l2", m.relu("r", y), ks(tr(conv_spec(4, 6, {3, 3}), {2, 2}))));
     }},
    {"depthwise_multiplier_pair", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {1, 1}));
       m.output(m.conv("l2", m.relu("r", y), ks(conv_spec(4, 8, {3, 3}, {1, 1}, 4))));
     }},
    {"linear_linear", [](RefModel& m) {
       auto y = m.linear("l1", m.input("x", {6}), 6, 5);
       m.output(m.linear("l2", m.relu("r", y), 5, 3));
     }},
    {"keras_dense_pair", [](RefModel& m) {
       auto y = m.linear("l1", m.input("x", {6}), 6, 5, true, true);
       m.output(m.linear("l2", m.prelu("r", y, 5), 5, 3, true, true));
     }},
    {"conv_global_pool_linear", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 6, 6}), conv_spec(3, 5, {3, 3}, {1, 1}));
       m.output(m.linear("l2", m.global_avg_pool("gap", m.relu("r", y)), 5, 3));
     }},
    {"float64_pair", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 6, 6}), f64(conv_spec(3, 4, {3, 3}, {1, 1})));
       m.output(m.conv("l2", m.relu("r", y), f64(conv_spec(4, 2, {3, 3}))));
     }},
    {"no_bias_layer1", [](RefModel& m) {
       auto y = m.conv("l1", m.input("x", {3, 6, 6}), nb(conv_spec(3, 4, {3, 3}, {1, 1})));
       m.output(m.conv("l2", m.relu("r", y), nb(conv_spec(4, 2, {3, 3}))));
     }},
};

INSTANTIATE_TEST_SUITE_P(Kinds, ScaleLayerKinds, ::testing::ValuesIn(kKindCases),
                         [](const auto& info) { return info.param.label; });

// ---- triple -------------------------------------------------------------------------------

void check_triple(bool keras) {
  RefModel m(23);
  build_triple(m, keras);
  const auto inputs = m.random_inputs(2, 3);
  const auto before = m.forward(inputs);
  const auto r1 = m.out_ranges("c1"), r2 = m.out_ranges("dw"), r3 = m.in_ranges("c3");
  const auto bdw = read_all(m.node("dw").bias);
  const auto res = prequant::scale_model(m.graph);
  ASSERT_EQ(res.sets.size(), 1u);
  ASSERT_EQ(res.sets[0].pairs.size(), 2u);
  const auto& p12 = res.sets[0].pairs[0];
  const auto& p23 = res.sets[0].pairs[1];
  EXPECT_EQ(p12.layer1, "c1");
  EXPECT_EQ(p12.layer2, "dw");
  EXPECT_EQ(p23.layer1, "dw");
  EXPECT_EQ(p23.layer2, "c3");
  EXPECT_EQ(p12.activations_between, std::vector<std::string>{"r1"});
  EXPECT_EQ(p23.activations_between, std::vector<std::string>{"r2"});
  const auto n1 = m.out_ranges("c1"), n2 = m.out_ranges("dw"), n3 = m.in_ranges("c3");
  const auto nbdw = read_all(m.node("dw").bias);
  for (size_t c = 0; c < r1.size(); ++c) {
    const double cube = std::cbrt(r1[c] * r2[c] * r3[c]);
    EXPECT_LT(rel(p12.scale[c], r1[c] / cube), 1e-12);
    EXPECT_LT(rel(p23.scale[c], cube / r3[c]), 1e-12);
    EXPECT_LT(rel(n1[c], cube), 1e-6);
    EXPECT_LT(rel(n2[c], cube), 1e-6);
    EXPECT_LT(rel(n3[c], cube), 1e-6);
    EXPECT_LT(rel(nbdw[c], bdw[c] / p23.scale[c]), 1e-6);
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(ScaleTriple, ConvDepthwiseConv) { check_triple(false); }
TEST(ScaleTriple, KerasConvDepthwiseConv) { check_triple(true); }

TEST(ScaleTriple, Relu6BoundOnBothSides) {
  RefModel m(29);
  auto y = m.conv("c1", m.input("x", {3, 7, 7}), conv_spec(3, 6, {3, 3}, {1, 1}));
  ConvSpec sdw = conv_spec(6, 6, {3, 3}, {1, 1}, 6);
  sdw.weight_scale = 1.0;
  y = m.conv("dw", m.clip("a1", y, 0, 6), sdw);
  m.output(m.conv("c3", m.clip("a2", y, 0, 6), conv_spec(6, 5, {1, 1})));
  const auto inputs = m.random_inputs(2, 3, 8.0);
  const auto env = m.forward_all(inputs);
  double mx1 = 0, mx2 = 0;
  for (double v : env.at("c1:out").data) mx1 = std::max(mx1, v);
  for (double v : env.at("dw:out").data) mx2 = std::max(mx2, v);
  ASSERT_GT(mx1, 6.0);
  ASSERT_GT(mx2, 6.0);
  const auto before = m.forward(inputs);
  const auto res = prequant::scale_model(m.graph, iterate());
  ASSERT_EQ(res.sets.size(), 1u);
  EXPECT_EQ(res.activation_edits.size(), 2u);
  for (size_t c = 0; c < 6; ++c) {
    EXPECT_LT(rel(m.node("a1").clip_max_per_channel[c], 6.0 / res.sets[0].pairs[0].scale[c]), 1e-9);
    EXPECT_LT(rel(m.node("a2").clip_max_per_channel[c], 6.0 / res.sets[0].pairs[1].scale[c]), 1e-9);
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

}  // namespace
}  // namespace pqtest
