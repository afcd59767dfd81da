// absorb_high_bias_test.cpp — high-bias absorption: the 3σ formula by hand, exactness where the
// header promises it, clip bounds, and the declined cases.
#include <gtest/gtest.h>

#include <cmath>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::ClsPairResult;
using prequant::ClsSetResult;
using prequant::FoldedBnStats;

constexpr double kTol = 1e-5;

ClsSetResult one_pair(const std::string& l1, const std::string& l2, std::vector<double> scale,
                      bool relu_between, std::vector<std::string> between) {
  ClsPairResult p;
  p.layer1 = l1;
  p.layer2 = l2;
  p.scale = std::move(scale);
  p.relu_between = relu_between;
  p.activations_between = std::move(between);
  return ClsSetResult{{p}};
}

void expect_values(const prequant::TensorView& t, const std::vector<double>& expected, double tol = 1e-6) {
  const auto v = read_all(t);
  ASSERT_EQ(v.size(), expected.size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(v[i], expected[i], tol) << "element " << i;
}

// l1: Linear 3→2, b1 = [0.5, −0.25];  [relu | identity];  l2: Linear 2→2, W2 = [[1, 2], [3, 4]],
// b2 = [0.1, 0.2]. BN after l1: γ = [2, −1], β = [7, 1]; CLS scale s = [1, 2].
class HighBiasByHand : public ::testing::Test {
 protected:
  void build(bool relu, bool l2_bias = true) {
    auto y = m.linear("l1", m.input("x", {3}), 3, 2);
    y = relu ? m.relu("act", y) : m.identity("act", y);
    m.output(m.linear("l2", y, 2, 2, l2_bias));
    m.node("l1").bias.assign(std::vector<double>{0.5, -0.25});
    m.node("l2").weight.tensor.assign(std::vector<double>{1, 2, 3, 4});
    if (l2_bias) m.node("l2").bias.assign(std::vector<double>{0.1, 0.2});
    sets = {one_pair("l1", "l2", {1, 2}, relu, {"act"})};
  }
  RefModel m;
  std::vector<ClsSetResult> sets;
  std::unordered_map<std::string, FoldedBnStats> stats{{"l1", {{2, -1}, {7, 1}}}};
};

TEST_F(HighBiasByHand, ReluBetween) {
  build(true);
  // γ' = [2, −0.5], β' = [7, 0.5]; c = [max(0, 7 − 6), max(0, 0.5 − 1.5)] = [1, 0]
  const auto r = prequant::absorb_high_bias(m.graph, sets, stats);
  ASSERT_EQ(r.absorbed.size(), 1u);
  EXPECT_EQ(r.absorbed[0].layer1, "l1");
  EXPECT_EQ(r.absorbed[0].layer2, "l2");
  EXPECT_EQ(r.absorbed[0].amount, (std::vector<double>{1, 0}));
  EXPECT_FALSE(r.absorbed[0].bias_added);
  EXPECT_TRUE(r.declined.empty());
  expect_values(m.node("l1").bias, {-0.5, -0.25});
  expect_values(m.node("l2").bias, {0.1 + 1, 0.2 + 3});
}

TEST_F(HighBiasByHand, NoActivationBetween) {
  build(false);
  // c = β' = [7, 0.5]; b2 += W2·c = [7 + 1, 21 + 2]
  const auto r = prequant::absorb_high_bias(m.graph, sets, stats);
  ASSERT_EQ(r.absorbed.size(), 1u);
  EXPECT_EQ(r.absorbed[0].amount, (std::vector<double>{7, 0.5}));
  expect_values(m.node("l1").bias, {0.5 - 7, -0.25 - 0.5});
  expect_values(m.node("l2").bias, {0.1 + 8, 0.2 + 23});
}

TEST_F(HighBiasByHand, OtherSigmas) {
  build(true);
  // k = 1: c = [7 − 2, max(0, 0.5 − 0.5)] = [5, 0]
  const auto r = prequant::absorb_high_bias(m.graph, sets, stats, 1.0);
  EXPECT_EQ(r.absorbed.at(0).amount, (std::vector<double>{5, 0}));
}

TEST_F(HighBiasByHand, Layer2WithoutBiasGetsOne) {
  build(true, false);
  const auto r = prequant::absorb_high_bias(m.graph, sets, stats);
  ASSERT_EQ(r.absorbed.size(), 1u);
  EXPECT_TRUE(r.absorbed[0].bias_added);
  ASSERT_FALSE(m.node("l2").bias.empty());
  EXPECT_EQ(m.node("l2").bias.dtype, DType::Float32);
  expect_values(m.node("l2").bias, {1, 3});
}

TEST_F(HighBiasByHand, ClipBoundReducedByC) {
  auto y = m.linear("l1", m.input("x", {3}), 3, 2);
  y = m.clip("act", y, 0, 6);
  m.output(m.linear("l2", y, 2, 2));
  m.node("l1").bias.assign(std::vector<double>{0.5, -0.25});
  m.node("l2").weight.tensor.assign(std::vector<double>{1, 2, 3, 4});
  m.node("l2").bias.assign(std::vector<double>{0.1, 0.2});
  m.node("act").clip_max_per_channel = {6, 0.5};
  // channel 0: β' = 10, γ' = 0.1 → 9.7, capped at the bound 6; channel 1: β' = 1, γ' = 0.1 → 0.7, capped at 0.5
  std::unordered_map<std::string, FoldedBnStats> st{{"l1", {{0.1, -0.1}, {10, 1}}}};
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", {1, 1}, true, {"act"})}, st);
  ASSERT_EQ(r.absorbed.size(), 1u);
  EXPECT_EQ(r.absorbed[0].amount, (std::vector<double>{6, 0.5}));
  EXPECT_EQ(m.node("act").clip_max_per_channel, (std::vector<double>{0, 0}));
  expect_values(m.node("l1").bias, {0.5 - 6, -0.25 - 0.5});
  expect_values(m.node("l2").bias, {0.1 + 6 + 1, 0.2 + 18 + 2});
}

TEST_F(HighBiasByHand, ClipBoundReducedByCWhenBelowBound) {
  auto y = m.linear("l1", m.input("x", {3}), 3, 2);
  y = m.clip("act", y, 0, 6);
  m.output(m.linear("l2", y, 2, 2));
  m.node("act").clip_max_per_channel = {6, 3};
  std::unordered_map<std::string, FoldedBnStats> st{{"l1", {{2, -1}, {7, 1}}}};
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", {1, 2}, true, {"act"})}, st);
  EXPECT_EQ(r.absorbed.at(0).amount, (std::vector<double>{1, 0}));
  EXPECT_EQ(m.node("act").clip_max_per_channel, (std::vector<double>{5, 3}));
}

// Conv layer2: b2[o] += Σ_i Σ_k W2[o, i, k]·c[i], in torch and Keras layouts, and depthwise.
struct Layer2Case {
  std::string label;
  ConvSpec spec;
};
std::ostream& operator<<(std::ostream& os, const Layer2Case& c) { return os << c.label; }
class HighBiasLayer2 : public ::testing::TestWithParam<Layer2Case> {};

TEST_P(HighBiasLayer2, SumsOverKernelAndGroups) {
  RefModel m(3);
  const auto& s2 = GetParam().spec;
  auto y = m.conv("l1", m.input("x", {3, 6, 6}), conv_spec(3, s2.in, {1, 1}));
  m.output(m.conv("l2", m.identity("act", y), s2));
  std::vector<double> gamma = m.signed_uniform(s2.in, 0.2, 1), beta = m.signed_uniform(s2.in, 0.5, 3),
                      scale = m.uniform(s2.in, 0.5, 2);
  const auto b1 = read_all(m.node("l1").bias);
  const auto b2 = m.node("l2").bias.empty() ? std::vector<double>(s2.out, 0.0) : read_all(m.node("l2").bias);
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", scale, false, {"act"})},
                                            {{"l1", {gamma, beta}}});
  ASSERT_EQ(r.absorbed.size(), 1u);
  std::vector<double> c(s2.in), e1(s2.in), e2 = b2;
  for (int64_t i = 0; i < s2.in; ++i) {
    c[i] = beta[i] / scale[i];
    e1[i] = b1[i] - c[i];
  }
  const auto& w2 = m.node("l2").weight;
  for_each_weight_element(m.layout_of("l2"), w2.tensor.shape, w2.layout.groups,
                          [&](int64_t o, int64_t i, int64_t idx) { e2[o] += read(w2.tensor, idx) * c[i]; });
  for (int64_t i = 0; i < s2.in; ++i) EXPECT_NEAR(r.absorbed[0].amount[i], c[i], 1e-12);
  expect_values(m.node("l1").bias, e1, 1e-5);
  expect_values(m.node("l2").bias, e2, 1e-5);
  EXPECT_EQ(r.absorbed[0].bias_added, !s2.bias);
}

ConvSpec keras_spec(ConvSpec s) { s.keras = true; return s; }
ConvSpec no_bias_spec(ConvSpec s) { s.bias = false; return s; }

INSTANTIATE_TEST_SUITE_P(
    Kinds, HighBiasLayer2,
    ::testing::Values(Layer2Case{"conv3x3", conv_spec(4, 5, {3, 3})},
                      Layer2Case{"grouped", conv_spec(4, 6, {2, 3}, {}, 2)},
                      Layer2Case{"depthwise", conv_spec(4, 4, {3, 3}, {}, 4)},
                      Layer2Case{"depthwise_without_bias", no_bias_spec(conv_spec(4, 4, {3, 3}, {}, 4))},
                      Layer2Case{"depthwise_multiplier", conv_spec(4, 8, {3, 3}, {}, 4)},
                      Layer2Case{"keras_conv", keras_spec(conv_spec(4, 5, {3, 3}))},
                      Layer2Case{"keras_depthwise", keras_spec(conv_spec(4, 4, {3, 3}, {}, 4))}),
    [](const auto& info) { return info.param.label; });

// ---- declined -----------------------------------------------------------------------------

TEST(HighBiasDeclined, WithoutFoldedBn) {
  RefModel m;
  auto y = m.conv("l1", m.input("x", {3, 5, 5}), conv_spec(3, 4, {3, 3}));
  m.output(m.conv("l2", m.relu("act", y), conv_spec(4, 2, {1, 1})));
  const auto snap = GraphSnapshot::take(m.graph);
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", {1, 1, 1, 1}, true, {"act"})}, {});
  EXPECT_TRUE(r.absorbed.empty());
  ASSERT_EQ(r.declined.size(), 1u);
  EXPECT_EQ(r.declined[0].pass, "absorb_high_bias");
  EXPECT_EQ(r.declined[0].nodes, (std::vector<std::string>{"l1", "l2"}));
  EXPECT_TRUE(contains(r.declined[0].reason, "no batch norm was folded after 'l1'")) << r.declined[0].reason;
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

TEST(HighBiasDeclined, TransposedLayer2) {
  RefModel m;
  auto y = m.conv("l1", m.input("x", {3, 5, 5}), conv_spec(3, 4, {3, 3}));
  ConvSpec t = conv_spec(4, 2, {3, 3});
  t.transposed = true;
  m.output(m.conv("l2", m.relu("act", y), t));
  const auto snap = GraphSnapshot::take(m.graph);
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", {1, 1, 1, 1}, true, {"act"})},
                                            {{"l1", {{1, 1, 1, 1}, {5, 5, 5, 5}}}});
  EXPECT_TRUE(r.absorbed.empty());
  ASSERT_EQ(r.declined.size(), 1u);
  EXPECT_TRUE(contains(r.declined[0].reason, "transposed")) << r.declined[0].reason;
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

TEST(HighBiasDeclined, WrongSizedStatistics) {
  RefModel m;
  auto y = m.conv("l1", m.input("x", {3, 5, 5}), conv_spec(3, 4, {3, 3}));
  m.output(m.conv("l2", m.relu("act", y), conv_spec(4, 2, {1, 1})));
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", {1, 1, 1, 1}, true, {"act"})},
                                            {{"l1", {{1, 1}, {5, 5}}}});
  ASSERT_EQ(r.declined.size(), 1u);
  EXPECT_TRUE(contains(r.declined[0].reason, "4 channels")) << r.declined[0].reason;
}

TEST(HighBiasDeclined, Layer1WithoutBias) {
  RefModel m;
  ConvSpec s = conv_spec(3, 4, {3, 3});
  s.bias = false;
  auto y = m.conv("l1", m.input("x", {3, 5, 5}), s);
  m.output(m.conv("l2", m.relu("act", y), conv_spec(4, 2, {1, 1})));
  const auto r = prequant::absorb_high_bias(m.graph, {one_pair("l1", "l2", {1, 1, 1, 1}, true, {"act"})},
                                            {{"l1", {{1, 1, 1, 1}, {5, 5, 5, 5}}}});
  ASSERT_EQ(r.declined.size(), 1u);
  EXPECT_TRUE(contains(r.declined[0].reason, "no bias")) << r.declined[0].reason;
}

TEST(HighBiasDeclined, OnlyBnsFoldedAfterTheLayerCount) {
  // The BN sits before conv1 (folded BN→conv): it says nothing about conv1's output.
  RefModel m(5);
  auto y = m.batch_norm("bn", m.input("x", {3, 6, 6}), 3);
  y = m.conv("conv1", y, conv_spec(3, 4, {3, 3}));
  m.output(m.conv("conv2", m.relu("act", y), conv_spec(4, 2, {1, 1})));
  prequant::EqualizeOptions o;
  o.absorb_high_bias = true;
  const auto r = prequant::equalize_model(m.graph, o);
  ASSERT_EQ(r.fold.folded.size(), 1u);
  EXPECT_EQ(r.fold.folded[0].request.direction, prequant::FoldDirection::BnThenConv);
  ASSERT_EQ(r.cls.sets.size(), 1u);
  EXPECT_TRUE(r.high_bias.absorbed.empty());
  const auto* d = find_declined(r.high_bias.declined, "conv1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "no batch norm was folded after")) << d->reason;
}

// ---- exactness in a real pipeline: fold, CLS, absorb -----------------------------------------

// x → conv1 → bn → [act] → conv2 (no padding) → output. Returns stats of the folded BN.
struct Pipeline {
  RefModel m;
  prequant::ClsResult cls;
  std::unordered_map<std::string, FoldedBnStats> stats;

  Pipeline(uint32_t seed, Between act, bool pad2 = false) : m(seed) {
    std::vector<std::string> names;
    auto y = m.conv("conv1", m.input("x", {3, 6, 6}), conv_spec(3, 6, {3, 3}, {1, 1}));
    y = m.batch_norm("bn", y, 6);
    y = add_between(m, act, y, 6, names);
    m.output(m.conv("conv2", y, conv_spec(6, 4, {3, 3}, pad2 ? std::vector<int64_t>{1, 1} : std::vector<int64_t>{})));
  }
  // Make x̂ ≈ 0 for tiny inputs (mean = conv1's bias) and give even channels β > 3|γ| + 1.
  void make_beta_high() {
    auto& bn = m.node("bn");
    for (int64_t c = 0; c < 6; ++c) {
      write(bn.mean, c, read(m.node("conv1").bias, c));
      if (c % 2 == 0) write(bn.beta, c, 3 * std::abs(read(bn.gamma, c)) + 1.0 + 0.1 * c);
    }
  }
  void fold_and_scale(prequant::Relu6Policy p = prequant::Relu6Policy::Bound) {
    const auto f = prequant::fold_batch_norms(m.graph);
    for (const auto& pair : f.folded) stats[pair.request.layer] = pair.bn_stats;
    prequant::ClsOptions o;
    o.relu6 = p;
    cls = prequant::scale_model(m.graph, o);
  }
};

TEST(HighBiasExactness, NoActivationIsExact) {
  for (Between b : {Between::None, Between::Identity, Between::MaxPool, Between::AvgPool}) {
    Pipeline p(7, b);
    const auto inputs = p.m.random_inputs(2, 3);
    const auto before = p.m.forward(inputs);
    p.fold_and_scale();
    const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
    ASSERT_EQ(r.absorbed.size(), 1u) << between_name(b);
    double moved = 0;
    for (double c : r.absorbed[0].amount) moved = std::max(moved, std::abs(c));
    EXPECT_GT(moved, 0.1) << between_name(b);
    EXPECT_LT(max_rel_error(before, p.m.forward(inputs)), kTol) << between_name(b);
  }
}

TEST(HighBiasExactness, ReluCaseExactWherePreActivationStaysAboveC) {
  for (Between b : {Between::Relu, Between::LeakyRelu, Between::PReluPerChannel, Between::Relu6}) {
    Pipeline p(11, b);
    p.make_beta_high();
    const auto inputs = p.m.random_inputs(2, 3, 1e-3);
    const auto before = p.m.forward(inputs);
    p.fold_and_scale();
    const auto pre = p.m.forward_all(inputs).at("bn:out");  // conv1's output after fold + CLS
    const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
    ASSERT_EQ(r.absorbed.size(), 1u) << between_name(b);
    const auto& c = r.absorbed[0].amount;
    int positive = 0;
    for (double v : c) positive += v > 0;
    EXPECT_GE(positive, 3) << between_name(b);
    // Precondition of exactness: every pre-activation ≥ c of its channel (where c > 0).
    const int64_t spatial = pre.numel() / (pre.shape[0] * 6);
    for (int64_t n = 0; n < pre.shape[0]; ++n)
      for (int64_t ch = 0; ch < 6; ++ch)
        for (int64_t s = 0; s < spatial; ++s)
          if (c[ch] > 0) {
            ASSERT_GE(pre.data[(n * 6 + ch) * spatial + s], c[ch]) << between_name(b);
          }
    EXPECT_LT(max_rel_error(before, p.m.forward(inputs)), kTol) << between_name(b);
  }
}

TEST(HighBiasExactness, ClipBoundInPipelineReducedByC) {
  Pipeline p(13, Between::Relu6);
  p.make_beta_high();
  const auto inputs = p.m.random_inputs(2, 3, 1e-3);
  const auto before = p.m.forward(inputs);
  p.fold_and_scale(prequant::Relu6Policy::Bound);
  const auto bounds = p.m.node("act").clip_max_per_channel;
  ASSERT_EQ(bounds.size(), 6u);
  const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
  ASSERT_EQ(r.absorbed.size(), 1u);
  const auto& c = r.absorbed[0].amount;
  for (size_t k = 0; k < 6; ++k) {
    EXPECT_LE(c[k], bounds[k]);
    EXPECT_DOUBLE_EQ(p.m.node("act").clip_max_per_channel[k], bounds[k] - c[k]);
  }
  EXPECT_LT(max_rel_error(before, p.m.forward(inputs)), kTol);
}

TEST(HighBiasExactness, ScaleEntersTheFormula) {
  // c uses γ/s and β/s with the pair's CLS scale.
  Pipeline p(17, Between::Relu);
  p.make_beta_high();
  p.fold_and_scale();
  const auto& pair = p.cls.sets.at(0).pairs.at(0);
  const auto& st = p.stats.at("conv1");
  const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
  for (size_t k = 0; k < 6; ++k)
    EXPECT_NEAR(r.absorbed.at(0).amount[k],
                std::max(0.0, st.beta[k] / pair.scale[k] - 3 * std::abs(st.gamma[k]) / pair.scale[k]), 1e-12);
}

// A plain Clip(0, 6) between (no per-channel bound yet, e.g. a hand-made set without CLS): a
// shifted input hits the same clip at 6, so the bound must drop by c as well (or the pair be
// declined); otherwise the output changes wherever the activation exceeded 6 − c.
TEST(HighBiasExactness, ScalarClipBetweenExactOrDeclined) {
  Pipeline p(29, Between::Relu6);
  p.make_beta_high();
  auto& bn = p.m.node("bn");
  write(bn.beta, 0, 3 * std::abs(read(bn.gamma, 0)) + 7.0);  // channel 0 sits above 6
  const auto inputs = p.m.random_inputs(2, 3, 1e-3);
  const auto before = p.m.forward(inputs);
  const auto f = prequant::fold_batch_norms(p.m.graph);
  ASSERT_EQ(f.folded.size(), 1u);
  ASSERT_TRUE(p.m.node("act").clip_max_per_channel.empty());
  const auto r = prequant::absorb_high_bias(
      p.m.graph, {one_pair("conv1", "conv2", std::vector<double>(6, 1.0), true, {"act"})},
      {{"conv1", f.folded[0].bn_stats}});
  if (r.absorbed.empty()) {
    ASSERT_EQ(r.declined.size(), 1u);
  } else {
    EXPECT_LT(max_rel_error(before, p.m.forward(inputs)), kTol)
        << "the Clip's upper bound was not lowered by the absorbed amount";
  }
}

TEST(HighBiasAtomicity, InvalidLaterPairRollsBackEarlierOnes) {
  RefModel m(31);
  auto y = m.conv("l1", m.input("x", {3, 5, 5}), conv_spec(3, 4, {1, 1}));
  y = m.conv("l2", m.relu("a1", y), conv_spec(4, 4, {1, 1}));
  m.output(m.conv("l3", m.relu("a2", y), conv_spec(4, 2, {1, 1})));
  write(m.node("l3").weight.tensor, 2, std::nan(""));
  const auto snap = GraphSnapshot::take(m.graph);
  const std::vector<double> ones(4, 1.0);
  const FoldedBnStats st{{0.5, 0.5, 0.5, 0.5}, {4, 4, 4, 4}};
  EXPECT_THROW(prequant::absorb_high_bias(m.graph,
                                          {one_pair("l1", "l2", ones, true, {"a1"}), one_pair("l2", "l3", ones, true, {"a2"})},
                                          {{"l1", st}, {"l2", st}}),
               prequant::InvalidParameterError);
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

// The header promises exactness when no activation sits between. A padded layer2 sees zeros at
// its border where the absorbed shift is missing; the pass must either stay exact there or
// decline (saying why). See the report: this currently fails.
TEST(HighBiasExactness, NoActivationPaddedLayer2ExactOrDeclined) {
  Pipeline p(19, Between::None, /*pad2=*/true);
  const auto inputs = p.m.random_inputs(2, 3);
  const auto before = p.m.forward(inputs);
  p.fold_and_scale();
  const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
  if (r.absorbed.empty()) {
    ASSERT_EQ(r.declined.size(), 1u);
    EXPECT_TRUE(contains(r.declined[0].reason, "pad")) << r.declined[0].reason;
  } else {
    EXPECT_LT(max_rel_error(before, p.m.forward(inputs)), kTol)
        << "bias absorbed into padded 'conv2' changes its border outputs";
  }
}

TEST(HighBiasExactness, NoActivationZeroPadBetweenExactOrDeclined) {
  Pipeline p(23, Between::ZeroPad);
  const auto inputs = p.m.random_inputs(2, 3);
  const auto before = p.m.forward(inputs);
  p.fold_and_scale();
  const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
  if (r.absorbed.empty()) {
    ASSERT_EQ(r.declined.size(), 1u);
    EXPECT_TRUE(contains(r.declined[0].reason, "pad")) << r.declined[0].reason;
  } else {
    EXPECT_LT(max_rel_error(before, p.m.forward(inputs)), kTol)
        << "bias absorbed across a ZeroPad changes the padded border";
  }
}

// With an activation between, a padded layer2's border still misses the shift (a systematic
// error, unlike the 3σ tail): declined too, naming the padding.
TEST(HighBiasDeclined, PaddedLayer2OrZeroPadWithActivationBetween) {
  for (bool pad2 : {true, false}) {
    Pipeline p(29, pad2 ? Between::Relu : Between::ReluPadPool, pad2);
    p.make_beta_high();
    p.fold_and_scale();
    const auto r = prequant::absorb_high_bias(p.m.graph, p.cls.sets, p.stats);
    EXPECT_TRUE(r.absorbed.empty()) << pad2;
    ASSERT_EQ(r.declined.size(), 1u) << pad2;
    EXPECT_TRUE(contains(r.declined[0].reason, "border")) << r.declined[0].reason;
  }
}

}  // namespace
}  // namespace pqtest
