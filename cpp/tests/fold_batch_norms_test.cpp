// fold_batch_norms_test.cpp — find_batch_norm_folds, fold_batch_norms, fold_given_batch_norms.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "prequant/errors.h"
#include "prequant/passes.h"
#include "reference_model.h"

namespace pqtest {
namespace {

using prequant::FoldDirection;
using prequant::FoldRequest;
using prequant::OpKind;

constexpr double kTol = 1e-5;

// ---- conv→BN ------------------------------------------------------------------------------

struct ConvBnCase {
  std::string label;
  std::vector<int64_t> input;  // without batch
  ConvSpec spec;               // spec.in/out, kernel empty → linear
  bool linear = false;
  bool keras = false;
  double eps = 1e-5;
};

std::ostream& operator<<(std::ostream& os, const ConvBnCase& c) { return os << c.label; }

ConvSpec spec(int64_t in, int64_t out, std::vector<int64_t> kernel, std::vector<int64_t> pad = {},
              std::vector<int64_t> stride = {}, int64_t groups = 1) {
  ConvSpec s;
  s.in = in;
  s.out = out;
  s.kernel = std::move(kernel);
  s.pad = std::move(pad);
  s.stride = std::move(stride);
  s.groups = groups;
  return s;
}

ConvSpec transposed(ConvSpec s, std::vector<int64_t> output_padding = {}) {
  s.transposed = true;
  s.output_padding = std::move(output_padding);
  return s;
}
ConvSpec keras(ConvSpec s) { s.keras = true; return s; }
ConvSpec no_bias(ConvSpec s) { s.bias = false; return s; }
ConvSpec f64(ConvSpec s) { s.dtype = DType::Float64; return s; }

class FoldConvThenBn : public ::testing::TestWithParam<ConvBnCase> {};

TEST_P(FoldConvThenBn, FoldsExactly) {
  const auto& c = GetParam();
  RefModel m(11);
  auto x = m.input("x", c.input);
  const int64_t out = c.spec.out;
  std::string y = c.linear ? m.linear("layer", x, c.spec.in, out, c.spec.bias, c.keras, c.spec.dtype)
                           : m.conv("layer", x, c.spec);
  y = m.batch_norm("bn", y, out, c.spec.dtype, c.eps);
  m.output(m.relu("act", y));
  ASSERT_NO_THROW(m.graph.lint());
  const bool had_bias = !m.node("layer").bias.empty();
  const auto gamma = read_all(m.node("bn").gamma), beta = read_all(m.node("bn").beta);

  const auto found = prequant::find_batch_norm_folds(m.graph);
  ASSERT_EQ(found.folded.size(), 1u);
  EXPECT_EQ(found.folded[0].request.layer, "layer");
  EXPECT_EQ(found.folded[0].request.bn, "bn");
  EXPECT_EQ(found.folded[0].request.direction, FoldDirection::ConvThenBn);
  EXPECT_TRUE(found.declined.empty());

  const auto inputs = m.random_inputs(2, 5);
  const auto before = m.forward(inputs);
  const auto result = prequant::fold_batch_norms(m.graph);

  // Structure.
  ASSERT_EQ(result.folded.size(), 1u);
  const auto& pair = result.folded[0];
  EXPECT_EQ(pair.request.layer, "layer");
  EXPECT_EQ(pair.request.bn, "bn");
  EXPECT_EQ(pair.bias_added, !had_bias);
  EXPECT_EQ(pair.bn_stats.gamma, gamma);
  EXPECT_EQ(pair.bn_stats.beta, beta);
  EXPECT_TRUE(result.declined.empty());
  EXPECT_FALSE(m.graph.find("bn").has_value());
  EXPECT_TRUE(m.graph.nodes[*m.graph.find("layer") + 1].removed);
  const auto& layer = m.node("layer");
  EXPECT_EQ(layer.outputs[0], "bn:out");
  EXPECT_EQ(layer.inputs[0], "x");
  ASSERT_FALSE(layer.bias.empty());
  EXPECT_EQ(layer.bias.numel(), out);
  EXPECT_EQ(layer.bias.dtype, c.spec.dtype);
  EXPECT_EQ(m.graph.producer("bn:out"), m.graph.find("layer"));
  ASSERT_EQ(m.graph.consumers("bn:out").size(), 1u);
  EXPECT_EQ(m.graph.nodes[m.graph.consumers("bn:out")[0]].name, "act");
  EXPECT_NO_THROW(m.graph.lint());

  // Numerics.
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), c.spec.dtype == DType::Float64 ? 1e-12 : kTol);

  // Nothing left to fold.
  const auto again = prequant::fold_batch_norms(m.graph);
  EXPECT_TRUE(again.folded.empty());
  EXPECT_TRUE(again.declined.empty());
}

const ConvBnCase kConvBnCases[] = {
    {"conv1d", {3, 9}, spec(3, 4, {3}, {1}, {2})},
    {"conv2d", {3, 6, 6}, spec(3, 6, {3, 3}, {1, 1})},
    {"conv2d_stride2", {3, 7, 7}, spec(3, 5, {3, 3}, {1, 1}, {2, 2})},
    {"conv3d", {2, 4, 5, 5}, spec(2, 4, {2, 3, 3}, {0, 1, 1})},
    {"conv2d_grouped", {6, 5, 5}, spec(6, 4, {3, 3}, {1, 1}, {}, 2)},
    {"conv2d_depthwise", {4, 5, 5}, spec(4, 4, {3, 3}, {1, 1}, {}, 4)},
    {"conv2d_depthwise_multiplier", {4, 5, 5}, spec(4, 8, {3, 3}, {1, 1}, {}, 4)},
    {"conv_transpose2d_stride1", {4, 4, 4}, transposed(spec(4, 6, {3, 3}))},
    {"conv_transpose2d_stride2", {4, 4, 4}, transposed(spec(4, 6, {3, 3}, {1, 1}, {2, 2}), {1, 1})},
    {"conv_transpose2d_grouped", {4, 4, 4}, transposed(spec(4, 6, {2, 2}, {}, {2, 2}, 2))},
    {"conv_transpose1d", {3, 6}, transposed(spec(3, 5, {3}, {}, {2}))},
    {"conv_transpose3d", {2, 3, 3, 3}, transposed(spec(2, 4, {2, 2, 2}, {}, {2, 2, 2}))},
    {"keras_conv2d", {3, 6, 6}, keras(spec(3, 6, {3, 3}, {1, 1}))},
    {"keras_depthwise", {4, 5, 5}, keras(spec(4, 8, {3, 3}, {1, 1}, {}, 4))},
    {"keras_conv2d_transpose", {4, 4, 4}, keras(transposed(spec(4, 6, {3, 3}, {}, {2, 2})))},
    {"conv2d_without_bias", {3, 6, 6}, no_bias(spec(3, 6, {3, 3}, {1, 1}))},
    {"depthwise_without_bias", {4, 5, 5}, no_bias(spec(4, 4, {3, 3}, {1, 1}, {}, 4))},
    {"conv2d_float64", {3, 6, 6}, f64(spec(3, 6, {3, 3}, {1, 1}))},
    {"conv_transpose2d_float64_without_bias", {4, 4, 4}, f64(no_bias(transposed(spec(4, 6, {3, 3}, {}, {2, 2}, 2))))},
    {"linear", {7}, spec(7, 5, {}), true},
    {"linear_without_bias", {7}, no_bias(spec(7, 5, {})), true},
    {"keras_dense", {7}, spec(7, 5, {}), true, true},
    {"linear_float64", {7}, f64(spec(7, 5, {})), true},
    {"conv2d_large_eps", {3, 6, 6}, spec(3, 6, {3, 3}, {1, 1}), false, false, 1e-1},
};

INSTANTIATE_TEST_SUITE_P(Layers, FoldConvThenBn, ::testing::ValuesIn(kConvBnCases),
                         [](const auto& info) { return info.param.label; });

// Hand-computed conv→BN fold: W' = W·s, b' = β + (b − μ)·s.
TEST(FoldConvThenBnFormula, MatchesHandComputation) {
  RefModel m;
  auto y = m.linear("fc", m.input("x", {2}), 2, 2);
  m.output(m.batch_norm("bn", y, 2));
  auto& fc = m.node("fc");
  auto& bn = m.node("bn");
  fc.weight.tensor.assign(std::vector<double>{1, 2, 3, 4});
  fc.bias.assign(std::vector<double>{0.5, -1});
  bn.gamma.assign(std::vector<double>{2, -1});
  bn.beta.assign(std::vector<double>{1, 0.25});
  bn.mean.assign(std::vector<double>{0.5, 1});
  bn.var.assign(std::vector<double>{3, 15});
  bn.eps = 1;
  // s = [2/2, -1/4] = [1, -0.25]
  prequant::fold_batch_norms(m.graph);
  EXPECT_EQ(read_all(m.node("fc").weight.tensor), (std::vector<double>{1, 2, -0.75, -1}));
  // b' = [1 + (0.5 − 0.5)·1, 0.25 + (−1 − 1)·(−0.25)] = [1, 0.75]
  EXPECT_EQ(read_all(m.node("fc").bias), (std::vector<double>{1, 0.75}));
  EXPECT_EQ(m.graph.graph_outputs, std::vector<std::string>{"bn:out"});
}

// The BN's output is the graph output: the fold is still exact; the layer now produces it.
TEST(FoldConvThenBnStructure, BnOutputGraphOutputFolds) {
  RefModel m(2);
  auto y = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.batch_norm("bn", y, 4));
  const auto inputs = m.random_inputs(2, 1);
  const auto before = m.forward(inputs);
  const auto r = prequant::fold_batch_norms(m.graph);
  ASSERT_EQ(r.folded.size(), 1u);
  EXPECT_EQ(m.node("conv").outputs[0], "bn:out");
  EXPECT_EQ(m.graph.graph_outputs, std::vector<std::string>{"bn:out"});
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// Two folds into the same layer: BN before (BN→conv) and BN after (conv→BN).
TEST(FoldBothSides, BnBeforeAndAfterTheSameLayer) {
  RefModel m(21);
  auto y = m.batch_norm("bn0", m.input("x", {4, 6, 6}), 4);
  y = m.conv("conv", y, spec(4, 5, {3, 3}));
  y = m.batch_norm("bn1", y, 5);
  m.output(m.relu("relu", y));
  const auto inputs = m.random_inputs(2, 1);
  const auto before = m.forward(inputs);
  const auto r = prequant::fold_batch_norms(m.graph);
  ASSERT_EQ(r.folded.size(), 2u);
  EXPECT_FALSE(m.graph.find("bn0"));
  EXPECT_FALSE(m.graph.find("bn1"));
  EXPECT_EQ(m.node("conv").inputs[0], "x");
  EXPECT_EQ(m.node("conv").outputs[0], "bn1:out");
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// ---- BN→conv ------------------------------------------------------------------------------

class FoldBnThenConv : public ::testing::TestWithParam<ConvBnCase> {};

TEST_P(FoldBnThenConv, FoldsExactly) {
  const auto& c = GetParam();
  RefModel m(13);
  auto x = m.input("x", c.input);
  auto y = m.batch_norm("bn", x, c.spec.in, c.spec.dtype, c.eps);
  y = c.linear ? m.linear("layer", y, c.spec.in, c.spec.out, c.spec.bias, c.keras, c.spec.dtype)
               : m.conv("layer", y, c.spec);
  m.output(y);
  const bool had_bias = !m.node("layer").bias.empty();

  const auto found = prequant::find_batch_norm_folds(m.graph);
  ASSERT_EQ(found.folded.size(), 1u);
  EXPECT_EQ(found.folded[0].request.direction, FoldDirection::BnThenConv);

  const auto inputs = m.random_inputs(2, 6);
  const auto before = m.forward(inputs);
  const auto result = prequant::fold_batch_norms(m.graph);
  ASSERT_EQ(result.folded.size(), 1u);
  const auto& pair = result.folded[0];
  EXPECT_EQ(pair.request.layer, "layer");
  EXPECT_EQ(pair.request.bn, "bn");
  EXPECT_EQ(pair.request.direction, FoldDirection::BnThenConv);
  EXPECT_EQ(pair.bias_added, !had_bias);
  EXPECT_FALSE(m.graph.find("bn"));
  EXPECT_EQ(m.node("layer").inputs[0], "x");
  EXPECT_EQ(m.node("layer").outputs[0], "layer:out");
  ASSERT_EQ(m.graph.consumers("x").size(), 1u);
  EXPECT_EQ(m.graph.nodes[m.graph.consumers("x")[0]].name, "layer");
  EXPECT_NO_THROW(m.graph.lint());
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), c.spec.dtype == DType::Float64 ? 1e-12 : kTol);
}

const ConvBnCase kBnConvCases[] = {
    {"conv2d", {4, 6, 6}, spec(4, 6, {3, 3})},
    {"conv2d_stride2", {4, 7, 7}, spec(4, 6, {3, 3}, {}, {2, 2})},
    {"conv1d", {3, 9}, spec(3, 5, {3})},
    {"conv3d", {2, 4, 4, 4}, spec(2, 3, {2, 2, 2})},
    {"conv2d_grouped", {6, 5, 5}, spec(6, 4, {3, 3}, {}, {}, 2)},
    {"conv2d_depthwise", {4, 5, 5}, spec(4, 4, {3, 3}, {}, {}, 4)},
    {"keras_conv2d", {4, 6, 6}, keras(spec(4, 6, {3, 3}))},
    {"keras_depthwise_multiplier", {4, 5, 5}, keras(spec(4, 8, {3, 3}, {}, {}, 4))},
    {"conv2d_without_bias", {4, 6, 6}, no_bias(spec(4, 6, {3, 3}))},
    {"conv2d_float64", {4, 6, 6}, f64(spec(4, 6, {3, 3}))},
    {"linear", {7}, spec(7, 5, {}), true},
    {"linear_without_bias", {7}, no_bias(spec(7, 5, {})), true},
    {"keras_dense", {7}, spec(7, 5, {}), true, true},
};

INSTANTIATE_TEST_SUITE_P(Layers, FoldBnThenConv, ::testing::ValuesIn(kBnConvCases),
                         [](const auto& info) { return info.param.label; });

// Hand-computed BN→conv fold: W'[o,i] = W[o,i]·s[i]; b'[o] = b[o] + Σ_i W[o,i]·(β[i] − μ[i]·s[i]).
TEST(FoldBnThenConvFormula, MatchesHandComputation) {
  RefModel m;
  auto y = m.batch_norm("bn", m.input("x", {2}), 2);
  m.output(m.linear("fc", y, 2, 2));
  auto& fc = m.node("fc");
  auto& bn = m.node("bn");
  fc.weight.tensor.assign(std::vector<double>{1, 2, 3, 4});
  fc.bias.assign(std::vector<double>{0.5, -1});
  bn.gamma.assign(std::vector<double>{2, -1});
  bn.beta.assign(std::vector<double>{1, 0.25});
  bn.mean.assign(std::vector<double>{0.5, 1});
  bn.var.assign(std::vector<double>{3, 15});
  bn.eps = 1;
  // s = [1, -0.25]; shift = β − μ·s = [1 − 0.5, 0.25 + 0.25] = [0.5, 0.5]
  prequant::fold_batch_norms(m.graph);
  EXPECT_EQ(read_all(m.node("fc").weight.tensor), (std::vector<double>{1, -0.5, 3, -1}));
  // b' = [0.5 + 1·0.5 + 2·0.5, −1 + 3·0.5 + 4·0.5] = [2, 2.5]
  EXPECT_EQ(read_all(m.node("fc").bias), (std::vector<double>{2, 2.5}));
}

// ---- declined -----------------------------------------------------------------------------

// Runs find + fold and checks nothing changed and the BN's reason contains every `parts`.
void expect_declined(RefModel& m, const std::string& bn, const std::vector<std::string>& parts) {
  const auto snap = GraphSnapshot::take(m.graph);
  const auto found = prequant::find_batch_norm_folds(m.graph);
  const auto r = prequant::fold_batch_norms(m.graph);
  for (const auto& f : r.folded) EXPECT_NE(f.request.bn, bn);
  const auto* d = find_declined(r.declined, bn);
  ASSERT_NE(d, nullptr) << "no reason given for " << bn;
  EXPECT_EQ(d->pass, "fold_batch_norms");
  for (const auto& p : parts) EXPECT_TRUE(contains(d->reason, p)) << d->reason << "\n  lacks: " << p;
  ASSERT_NE(find_declined(found.declined, bn), nullptr);
  EXPECT_EQ(find_declined(found.declined, bn)->reason, d->reason);
  if (r.folded.empty()) {
    EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  }
  EXPECT_TRUE(m.graph.find(bn).has_value());
}

TEST(FoldDeclined, BnThenPaddedConv) {
  RefModel m;
  auto y = m.batch_norm("bn", m.input("x", {4, 5, 5}), 4);
  m.output(m.conv("conv", y, spec(4, 4, {3, 3}, {1, 1})));
  expect_declined(m, "bn", {"pads", "conv", "graph input"});
}

TEST(FoldDeclined, BnThenTransposedConv) {
  RefModel m;
  auto y = m.batch_norm("bn", m.input("x", {4, 5, 5}), 4);
  m.output(m.conv("convt", y, transposed(spec(4, 4, {3, 3}, {}, {2, 2}))));
  expect_declined(m, "bn", {"transposed", "convt"});
}

TEST(FoldDeclined, ConvOutputFeedsTwoNodes) {
  RefModel m;
  auto c = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  auto b = m.relu("relu", m.batch_norm("bn", c, 4));
  auto t = m.opaque("other", {c}, "tanh");
  m.output(m.opaque("add", {b, t}, "add"));
  expect_declined(m, "bn", {"also feeds", "'other'", "Relu 'relu'"});
}

TEST(FoldDeclined, BnInputFeedsTwoNodesButBnThenConvWorks) {
  // conv→BN is impossible (the conv's output also feeds 'other'); BN→conv still folds.
  RefModel m(4);
  auto c = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  auto b = m.conv("conv2", m.batch_norm("bn", c, 4), spec(4, 4, {1, 1}));
  auto t = m.opaque("other", {c}, "tanh");
  m.output(m.opaque("add", {b, t}, "add"));
  const auto inputs = m.random_inputs(2, 3);
  const auto before = m.forward(inputs);
  const auto r = prequant::fold_batch_norms(m.graph);
  ASSERT_EQ(r.folded.size(), 1u);
  EXPECT_EQ(r.folded[0].request.layer, "conv2");
  EXPECT_EQ(r.folded[0].request.direction, FoldDirection::BnThenConv);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(FoldDeclined, BnOutputIsGraphOutputForBnThenConv) {
  RefModel m;
  auto y = m.batch_norm("bn", m.input("x", {4, 5, 5}), 4);
  m.output(m.conv("conv", y, spec(4, 4, {1, 1})));
  m.output(y);
  expect_declined(m, "bn", {"graph output"});
}

TEST(FoldDeclined, ConvOutputIsGraphOutput) {
  RefModel m;
  auto c = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.relu("relu", m.batch_norm("bn", c, 4)));
  m.output(c);
  expect_declined(m, "bn", {"graph output"});
}

TEST(FoldDeclined, SharedWeight) {
  RefModel m;
  auto a = m.conv("a", m.input("x", {4, 5, 5}), spec(4, 4, {3, 3}, {1, 1}));
  a = m.relu("ra", m.batch_norm("bn_a", a, 4));
  auto b = m.conv("b", a, spec(4, 4, {3, 3}, {1, 1}));
  m.node("b").weight = m.node("a").weight;  // the same module called twice
  m.output(m.relu("rb", m.batch_norm("bn_b", b, 4)));
  expect_declined(m, "bn_a", {"shares its weight", "unroll_shared_weights"});
  expect_declined(m, "bn_b", {"shares its weight", "unroll_shared_weights"});
}

TEST(FoldDeclined, ChannelsLastLinearNextToBnOnRank3) {
  // PyTorch nn.Linear on (N, C, L) contracts L; a BatchNorm1d normalizes C. Equal counts do not
  // make them the same axis.
  for (int rank : {3, 0}) {
    RefModel m;
    auto y = m.linear("fc", m.input("x", {7}), 7, 7);
    m.node("fc").channels_last = true;
    m.node("fc").input_rank = rank;
    m.output(m.batch_norm("bn", y, 7));
    expect_declined(m, "bn", {"contracts the last axis", rank ? "rank-3" : "unknown rank", "axis 1"});
  }
  RefModel m;
  auto y = m.batch_norm("bn", m.input("x", {7}), 7);
  m.output(m.linear("fc", y, 7, 5));
  m.node("fc").channels_last = true;
  m.node("fc").input_rank = 3;
  expect_declined(m, "bn", {"BN→conv: 'fc' (", "contracts the last axis of a rank-3 tensor"});
}

TEST(FoldChannelsLast, LinearAndBnOnRank2Fold) {
  RefModel m;
  auto y = m.linear("fc", m.input("x", {7}), 7, 5);
  m.node("fc").channels_last = true;
  m.node("fc").input_rank = 2;
  m.output(m.relu("r", m.batch_norm("bn", y, 5)));
  const auto inputs = m.random_inputs(2, 3);
  const auto before = m.forward(inputs);
  ASSERT_EQ(prequant::fold_batch_norms(m.graph).folded.size(), 1u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(FoldDeclined, ActivationBetween) {
  RefModel m;
  auto c = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.opaque("t", {m.batch_norm("bn", m.relu("relu", c), 4)}));
  expect_declined(m, "bn", {"Relu 'relu'", "not a conv or linear layer", "Opaque 't'"});
}

TEST(FoldDeclined, ChannelMismatch) {
  // A malformed graph (the BN normalizes 3 channels of a 4-channel output): declined, not folded.
  RefModel m;
  auto c = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  m.output(m.relu("relu", m.batch_norm("bn", c, 3)));
  expect_declined(m, "bn", {"4 output channels", "normalizes 3"});
}

// ---- fold_given_batch_norms ---------------------------------------------------------------

class FoldGiven : public ::testing::Test {
 protected:
  void SetUp() override {
    auto y = m.conv("conv1", m.input("x", {3, 6, 6}), spec(3, 4, {3, 3}, {1, 1}));
    y = m.batch_norm("bn1", y, 4);
    y = m.relu("relu1", y);
    y = m.batch_norm("bn2", y, 4);  // after a ReLU: foldable only BN→conv into conv2
    y = m.conv("conv2", y, spec(4, 5, {1, 1}));
    y = m.batch_norm("bn3", y, 5);
    m.output(m.relu("relu3", y));
  }
  void expect_rejected(const std::vector<FoldRequest>& requests, const std::string& node,
                       const std::string& part) {
    const auto snap = GraphSnapshot::take(m.graph);
    try {
      prequant::fold_given_batch_norms(m.graph, requests);
      ADD_FAILURE() << "expected InvalidRequestError";
    } catch (const prequant::InvalidRequestError& e) {
      EXPECT_EQ(e.node(), node);
      EXPECT_TRUE(contains(e.what(), part)) << e.what() << "\n  lacks: " << part;
    }
    EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  }
  RefModel m{31};
};

TEST_F(FoldGiven, FoldsOnlyTheRequestedPairs) {
  const auto inputs = m.random_inputs(2, 2);
  const auto before = m.forward(inputs);
  const auto r = prequant::fold_given_batch_norms(
      m.graph, {{"conv1", "bn1", FoldDirection::ConvThenBn}, {"conv2", "bn2", FoldDirection::BnThenConv}});
  ASSERT_EQ(r.folded.size(), 2u);
  EXPECT_TRUE(r.declined.empty());
  EXPECT_FALSE(m.graph.find("bn1"));
  EXPECT_FALSE(m.graph.find("bn2"));
  EXPECT_TRUE(m.graph.find("bn3"));
  EXPECT_EQ(r.folded[0].request.bn, "bn1");
  EXPECT_EQ(r.folded[0].bn_stats.gamma.size(), 4u);
  EXPECT_EQ(r.folded[1].request.bn, "bn2");
  EXPECT_TRUE(r.folded[1].bn_stats.gamma.empty());
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST_F(FoldGiven, NonAdjacentPairRejected) {
  expect_rejected({{"conv1", "bn2", FoldDirection::ConvThenBn}}, "bn2", "does not read");
  expect_rejected({{"conv2", "bn1", FoldDirection::BnThenConv}}, "bn1", "does not read");
}

TEST_F(FoldGiven, WrongDirectionRejected) {
  expect_rejected({{"conv1", "bn1", FoldDirection::BnThenConv}}, "bn1", "does not read");
  expect_rejected({{"conv2", "bn2", FoldDirection::ConvThenBn}}, "bn2", "does not read");
}

TEST_F(FoldGiven, NotALayerRejected) {
  expect_rejected({{"relu1", "bn2", FoldDirection::ConvThenBn}}, "bn2", "not a conv or linear");
  expect_rejected({{"conv1", "relu1", FoldDirection::ConvThenBn}}, "relu1", "not a batch norm");
}

TEST_F(FoldGiven, UnknownNamesRejected) {
  expect_rejected({{"nope", "bn1", FoldDirection::ConvThenBn}}, "nope", "not in the graph");
  expect_rejected({{"conv1", "nope", FoldDirection::ConvThenBn}}, "nope", "not in the graph");
}

TEST_F(FoldGiven, BnListedTwiceRejected) {
  expect_rejected({{"conv1", "bn1", FoldDirection::ConvThenBn}, {"conv1", "bn1", FoldDirection::ConvThenBn}},
                  "bn1", "two fold pairs");
}

TEST_F(FoldGiven, ValidPairAfterInvalidOneStillRejectsAll) {
  expect_rejected({{"conv1", "bn1", FoldDirection::ConvThenBn}, {"conv1", "bn2", FoldDirection::ConvThenBn}},
                  "bn2", "does not read");
}

TEST_F(FoldGiven, AlreadyFoldedBnRejected) {
  prequant::fold_given_batch_norms(m.graph, {{"conv1", "bn1", FoldDirection::ConvThenBn}});
  expect_rejected({{"conv1", "bn1", FoldDirection::ConvThenBn}}, "bn1", "already folded");
}

TEST_F(FoldGiven, ChannelMismatchRejected) {
  RefModel bad;
  auto c = bad.conv("conv", bad.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
  bad.output(bad.batch_norm("bn", c, 3));
  try {
    prequant::fold_given_batch_norms(bad.graph, {{"conv", "bn", FoldDirection::ConvThenBn}});
    ADD_FAILURE() << "expected InvalidRequestError";
  } catch (const prequant::InvalidRequestError& e) {
    EXPECT_TRUE(contains(e.what(), "normalizes 3")) << e.what();
  }
}

// ---- invalid parameters -------------------------------------------------------------------

class FoldInvalidParameter : public ::testing::Test {
 protected:
  void SetUp() override {
    auto y = m.conv("conv", m.input("x", {3, 5, 5}), spec(3, 4, {3, 3}, {1, 1}));
    m.output(m.relu("relu", m.batch_norm("bn", y, 4)));
  }
  void expect_invalid(const std::string& node, const std::string& part) {
    const auto snap = GraphSnapshot::take(m.graph);
    try {
      prequant::fold_batch_norms(m.graph);
      ADD_FAILURE() << "expected InvalidParameterError";
    } catch (const prequant::InvalidParameterError& e) {
      EXPECT_EQ(e.node(), node);
      EXPECT_TRUE(contains(e.what(), part)) << e.what() << "\n  lacks: " << part;
    }
    EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
  }
  RefModel m{41};
};

TEST_F(FoldInvalidParameter, NanWeight) {
  write(m.node("conv").weight.tensor, 7, std::numeric_limits<double>::quiet_NaN());
  expect_invalid("conv", "weight");
}

TEST_F(FoldInvalidParameter, InfBias) {
  write(m.node("conv").bias, 1, std::numeric_limits<double>::infinity());
  expect_invalid("conv", "bias");
}

TEST_F(FoldInvalidParameter, NanGamma) {
  write(m.node("bn").gamma, 2, std::numeric_limits<double>::quiet_NaN());
  expect_invalid("bn", "gamma");
}

TEST_F(FoldInvalidParameter, NegativeVariance) {
  write(m.node("bn").var, 3, -0.5);
  expect_invalid("bn", "variance");
}

TEST_F(FoldInvalidParameter, ZeroVariancePlusEps) {
  write(m.node("bn").var, 1, 0.0);
  m.node("bn").eps = 0.0;
  expect_invalid("bn", "var + eps");
}

TEST_F(FoldInvalidParameter, ZeroVarianceWithPositiveEpsIsFine) {
  write(m.node("bn").var, 1, 0.0);
  const auto inputs = m.random_inputs(2, 1);
  const auto before = m.forward(inputs);
  EXPECT_EQ(prequant::fold_batch_norms(m.graph).folded.size(), 1u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST_F(FoldInvalidParameter, NegativeEps) {
  m.node("bn").eps = -1e-3;
  expect_invalid("bn", "eps");
}

// bn_stats hold the BN's γ and β (what high-bias absorption needs), for conv→BN only.
TEST(FoldedPairStats, GammaBetaOfTheFoldedBn) {
  RefModel m(8);
  auto y = m.batch_norm("bn0", m.input("x", {3, 6, 6}), 3, DType::Float64);
  y = m.conv("conv", y, spec(3, 4, {3, 3}));
  y = m.batch_norm("bn1", y, 4);
  m.output(m.relu("r", y));
  const auto g1 = read_all(m.node("bn1").gamma), b1 = read_all(m.node("bn1").beta);
  const auto r = prequant::fold_batch_norms(m.graph);
  ASSERT_EQ(r.folded.size(), 2u);
  for (const auto& p : r.folded) {
    if (p.request.direction == FoldDirection::ConvThenBn) {
      EXPECT_EQ(p.request.bn, "bn1");
      EXPECT_EQ(p.bn_stats.gamma, g1);
      EXPECT_EQ(p.bn_stats.beta, b1);
      EXPECT_LT(p.bn_stats.gamma[0], 0.0);  // the generator's negative γ survives unchanged
    } else {
      EXPECT_EQ(p.request.bn, "bn0");
      EXPECT_TRUE(p.bn_stats.gamma.empty());
      EXPECT_TRUE(p.bn_stats.beta.empty());
    }
  }
}

TEST(FoldDirectionName, Names) {
  EXPECT_STREQ(prequant::fold_direction_name(FoldDirection::ConvThenBn), "conv_then_bn");
  EXPECT_STREQ(prequant::fold_direction_name(FoldDirection::BnThenConv), "bn_then_conv");
}

}  // namespace
}  // namespace pqtest
