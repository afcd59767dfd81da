// correct_bias_test.cpp — analytic bias correction against sampling: the correction must equal
// E[(W_q − W)·x], estimated by running the reference forward pass with the quantized and the
// original weight on inputs drawn so that the BN before the layer sees its own statistics
// (x ~ N(mean, sqrt(var + eps)), hence z = BN(x) ~ N(β, |γ|)), through the activation.
// The quantizer here is the test's own (round half to even, as numpy), located by the reference
// layout formulas, not the engine's channel routines.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "bn_sampling.h"
#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"
#include "prequant/report.h"

namespace pqtest {
namespace {

using prequant::WeightQuantizer;

// W_q − W for the test's quantizer (symmetric or min/max; per tensor or per output channel).
std::vector<double> reference_quantized(FrameworkLayout fl, const prequant::TensorView& w, int64_t groups,
                                        const WeightQuantizer& q) {
  const auto v = read_all(w);
  const int64_t outs = weight_out_channels(fl, w.shape, groups);
  std::vector<double> lo(outs, 0.0), hi(outs, 0.0);
  for_each_weight_element(fl, w.shape, groups, [&](int64_t o, int64_t, int64_t f) {
    lo[o] = std::min(lo[o], v[f]);
    hi[o] = std::max(hi[o], v[f]);
  });
  if (!q.per_channel) {
    const double l = *std::min_element(lo.begin(), lo.end()), h = *std::max_element(hi.begin(), hi.end());
    std::fill(lo.begin(), lo.end(), l);
    std::fill(hi.begin(), hi.end(), h);
  }
  std::vector<double> out = v;
  for_each_weight_element(fl, w.shape, groups, [&](int64_t o, int64_t, int64_t f) {
    double scale, zero = 0, qmin, qmax;
    if (q.symmetric) {
      qmax = std::pow(2.0, q.bits - 1) - 1;
      qmin = -qmax;
      scale = std::max(-lo[o], hi[o]) / qmax;
    } else {
      qmin = 0;
      qmax = std::pow(2.0, q.bits) - 1;
      scale = (hi[o] - lo[o]) / qmax;
      zero = std::nearbyint(-lo[o] / scale);
    }
    out[f] = (std::clamp(std::nearbyint(v[f] / scale) + zero, qmin, qmax) - zero) * scale;
  });
  return out;
}

struct Sampled {
  std::vector<double> mean, se;  // per output channel: E[(W_q − W)·x] and its standard error
};

// Runs the model (one output pixel per sample: the input is as large as the kernel) with the
// original and the quantized weight of `layer` on inputs drawn from the BNs' own statistics.
Sampled sample_shift(RefModel& m, const std::map<std::string, std::string>& bn_of_input, const std::string& layer,
                     FrameworkLayout fl, int64_t groups, const WeightQuantizer& q, int64_t samples) {
  const auto x = draw_bn_inputs(m, bn_of_input, samples, 12345);
  const auto& w = m.node(layer).weight.tensor;
  const auto original = read_all(w);
  const auto y = m.forward(x);
  const auto wq = reference_quantized(fl, w, groups, q);
  for (size_t i = 0; i < wq.size(); ++i) write(w, static_cast<int64_t>(i), wq[i]);
  const auto yq = m.forward(x);
  for (size_t i = 0; i < original.size(); ++i) write(w, static_cast<int64_t>(i), original[i]);
  const int64_t outs = y[0].shape[1], pixels = y[0].numel() / samples / outs;
  EXPECT_EQ(pixels, 1);
  Sampled r{std::vector<double>(outs, 0.0), std::vector<double>(outs, 0.0)};
  std::vector<double> sq(outs, 0.0);
  for (int64_t s = 0; s < samples; ++s)
    for (int64_t o = 0; o < outs; ++o) {
      const double d = yq[0].data[s * outs + o] - y[0].data[s * outs + o];
      r.mean[o] += d;
      sq[o] += d * d;
    }
  for (int64_t o = 0; o < outs; ++o) {
    r.mean[o] /= samples;
    r.se[o] = std::sqrt(std::max(0.0, sq[o] / samples - r.mean[o] * r.mean[o]) / samples);
  }
  return r;
}

struct Case {
  std::string label;
  Between between;
  int64_t in, out, groups;
  std::vector<int64_t> kernel;  // empty: linear
  bool keras = false;
  WeightQuantizer quantizer{};
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.label; }

class CorrectBiasSampled : public ::testing::TestWithParam<Case> {};

// input → BN (var in [1e-2, 10], non-zero means, a negative γ) → activation → layer.
TEST_P(CorrectBiasSampled, MatchesSampledExpectation) {
  const Case& c = GetParam();
  RefModel m(7);
  std::vector<int64_t> shape{c.in};
  shape.insert(shape.end(), c.kernel.begin(), c.kernel.end());
  auto t = m.batch_norm("bn", m.input("x", shape), c.in);
  std::vector<std::string> names;
  t = add_between(m, c.between, t, c.in, names);
  FrameworkLayout fl;
  if (c.kernel.empty()) {
    t = m.linear("layer", t, c.in, c.out, true, c.keras);
    fl = c.keras ? FrameworkLayout::KerasDense : FrameworkLayout::TorchLinear;
  } else {
    auto spec = conv_spec(c.in, c.out, c.kernel, {}, c.groups);
    spec.keras = c.keras;
    t = m.conv("layer", t, spec);
    fl = m.layout_of("layer");
  }
  m.output(t);
  m.graph.reindex();
  const auto bias_before = read_all(m.node("layer").bias);
  const auto sampled = sample_shift(m, {{"x", "bn"}}, "layer", fl, c.groups, c.quantizer, 40000);

  const auto r = prequant::correct_bias(m.graph, {}, c.quantizer);
  ASSERT_EQ(r.corrected.size(), 1u) << (r.declined.empty() ? "" : r.declined[0].reason);
  const auto& corr = r.corrected[0];
  EXPECT_EQ(corr.layer, "layer");
  EXPECT_EQ(corr.statistics_from, "bn");
  EXPECT_EQ(corr.activations, names);
  ASSERT_EQ(corr.correction.size(), static_cast<size_t>(c.out));
  const auto bias_after = read_all(m.node("layer").bias);
  int significant = 0;
  for (int64_t o = 0; o < c.out; ++o) {
    EXPECT_NEAR(corr.correction[o], sampled.mean[o], 5 * sampled.se[o] + 1e-9) << "channel " << o;
    EXPECT_NEAR(bias_after[o], bias_before[o] - corr.correction[o], 1e-6) << "channel " << o;
    significant += std::abs(sampled.mean[o]) > 5 * sampled.se[o];
  }
  // Not vacuous: the shift the correction cancels is measurably non-zero.
  EXPECT_GT(significant, 0);
}

WeightQuantizer quantizer(int bits, bool per_channel, bool symmetric) {
  WeightQuantizer q;
  q.bits = bits;
  q.per_channel = per_channel;
  q.symmetric = symmetric;
  return q;
}

// 4-bit weights make the shift large against the sampling noise; 8 bits is the default case.
const Case kCases[] = {
    {"relu_conv", Between::Relu, 4, 6, 1, {3, 3}, false, quantizer(4, false, true)},
    {"relu6_conv", Between::Relu6, 4, 6, 1, {3, 3}, false, quantizer(4, false, true)},
    {"identity_conv", Between::Identity, 4, 6, 1, {3, 3}, false, quantizer(4, false, true)},
    {"nothing_conv_int8", Between::None, 4, 6, 1, {3, 3}, false, quantizer(8, false, true)},
    {"leaky_relu_conv", Between::LeakyRelu, 4, 6, 1, {3, 3}, false, quantizer(4, false, true)},
    {"prelu_conv", Between::PReluPerChannel, 4, 6, 1, {3, 3}, false, quantizer(4, false, true)},
    {"clip_0_inf_conv", Between::ClipMinZeroNoMax, 4, 6, 1, {3, 3}, false, quantizer(4, true, true)},
    {"relu_per_channel", Between::Relu, 4, 6, 1, {3, 3}, false, quantizer(4, true, true)},
    {"relu_asymmetric", Between::Relu, 4, 6, 1, {3, 3}, false, quantizer(4, false, false)},
    {"relu_per_channel_asymmetric", Between::Relu, 4, 6, 1, {3, 3}, false, quantizer(4, true, false)},
    {"relu6_depthwise", Between::Relu6, 6, 6, 6, {3, 3}, false, quantizer(4, false, true)},
    {"relu_grouped", Between::Relu, 6, 4, 2, {3, 3}, false, quantizer(4, true, true)},
    {"relu_keras_conv", Between::Relu, 4, 6, 1, {3, 3}, true, quantizer(4, false, true)},
    {"relu6_keras_depthwise", Between::Relu6, 4, 4, 4, {3, 3}, true, quantizer(4, true, true)},
    {"relu_conv1d", Between::Relu, 3, 5, 1, {3}, false, quantizer(4, false, true)},
    {"relu_conv3d", Between::Relu, 3, 4, 1, {2, 2, 2}, false, quantizer(4, false, true)},
    {"relu_linear", Between::Relu, 8, 5, 1, {}, false, quantizer(4, false, true)},
    {"relu6_keras_dense", Between::Relu6, 8, 5, 1, {}, true, quantizer(3, false, true)},
};

INSTANTIATE_TEST_SUITE_P(Layers, CorrectBiasSampled, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.label; });

// Through channel nodes: the layer's input statistics come from several BNs, through a residual
// Add (Gaussian sum, then a clip: the summed variance matters), a Concat, a Split and an average
// pool. The correction must equal E[(W_q − W)·x] sampled through the reference forward.
enum class Topology { AddRelu6, AddStream, Concat, Split, AvgPool };

std::string topology_name(Topology t) {
  static const char* const names[] = {"add_relu6", "add_stream", "concat", "split", "avg_pool"};
  return names[static_cast<int>(t)];
}

class CorrectBiasThroughChannelNodes : public ::testing::TestWithParam<Topology> {};

TEST_P(CorrectBiasThroughChannelNodes, MatchesSampledExpectation) {
  RefModel m(17);
  const bool pooled = GetParam() == Topology::AvgPool;
  const int64_t side = pooled ? 6 : 3;
  const auto b1 = m.batch_norm("bn1", m.input("x1", {4, side, side}), 4);
  const auto b2 = m.batch_norm("bn2", m.input("x2", {4, side, side}), 4);
  std::string t;
  int64_t in = 4;
  switch (GetParam()) {
    case Topology::AddRelu6: t = m.clip("relu6", m.add("add", {b1, b2}), 0.0, 6.0); break;
    case Topology::AddStream: t = m.add("add", {b1, b2}); break;
    case Topology::Concat: t = m.concat("cat", {m.relu("relu", b1), b2}), in = 8; break;
    case Topology::Split: t = m.split("split", m.concat("cat", {m.relu("relu", b1), b2}), {{2, 6}})[0]; break;
    case Topology::AvgPool: t = m.pool("avg", m.add("add", {m.relu("relu", b1), b2}), false); break;
  }
  m.output(m.conv("layer", t, conv_spec(in, 5, {3, 3})));
  m.graph.reindex();
  const WeightQuantizer q = quantizer(4, false, true);
  const auto sampled = sample_shift(m, {{"x1", "bn1"}, {"x2", "bn2"}}, "layer", m.layout_of("layer"), 1, q, 40000);
  const auto r = prequant::correct_bias(m.graph, {}, q);
  ASSERT_EQ(r.corrected.size(), 1u) << (r.declined.empty() ? "" : r.declined[0].reason);
  const auto& corr = r.corrected[0];
  EXPECT_EQ(corr.statistics_from, "bn1, bn2");
  int significant = 0;
  for (int64_t o = 0; o < 5; ++o) {
    EXPECT_NEAR(corr.correction[o], sampled.mean[o], 5 * sampled.se[o] + 1e-9) << "channel " << o;
    significant += std::abs(sampled.mean[o]) > 5 * sampled.se[o];
  }
  EXPECT_GT(significant, 0);
}

INSTANTIATE_TEST_SUITE_P(Nodes, CorrectBiasThroughChannelNodes,
                         ::testing::Values(Topology::AddRelu6, Topology::AddStream, Topology::Concat, Topology::Split,
                                           Topology::AvgPool),
                         [](const auto& info) { return topology_name(info.param); });

// The FP32 function changes by exactly −correction[o] at every output pixel of each corrected
// layer (two layers reading one residual sum, padded convs), against the reference forward.
TEST(CorrectBiasFp32, OutputMovesByMinusCorrection) {
  RefModel m(23);
  const auto b1 = m.batch_norm("bn1", m.input("x1", {4, 5, 5}), 4);
  const auto b2 = m.batch_norm("bn2", m.input("x2", {4, 5, 5}), 4);
  const auto r6 = m.clip("relu6", m.add("add", {b1, b2}), 0.0, 6.0);
  m.output(m.conv("a", r6, conv_spec(4, 6, {3, 3}, {1, 1})));
  m.output(m.conv("b", r6, conv_spec(4, 3, {1, 1})));
  m.graph.reindex();
  const auto xs = m.random_inputs(3, 4);
  const auto before = m.forward(xs);
  const auto r = prequant::correct_bias(m.graph, {});
  ASSERT_EQ(r.corrected.size(), 2u);
  const auto after = m.forward(xs);
  for (size_t k = 0; k < 2; ++k) {
    const auto& corr = r.corrected[k];
    EXPECT_EQ(corr.layer, k == 0 ? "a" : "b");
    EXPECT_EQ(corr.activations, (std::vector<std::string>{"add", "relu6"}));
    const int64_t outs = before[k].shape[1], pixels = before[k].numel() / before[k].shape[0] / outs;
    double largest = 0.0;
    for (int64_t n = 0; n < before[k].shape[0]; ++n)
      for (int64_t o = 0; o < outs; ++o)
        for (int64_t p = 0; p < pixels; ++p) {
          const size_t i = static_cast<size_t>((n * outs + o) * pixels + p);
          EXPECT_NEAR(after[k].data[i] - before[k].data[i], -corr.correction[o], 1e-5) << corr.layer << " " << o;
        }
    for (double c : corr.correction) largest = std::max(largest, std::abs(c));
    EXPECT_GT(largest, 1e-4) << "vacuous: nothing moved";
  }
}

// Declines through channel nodes name the node that stops the statistics; nothing is written.
TEST(CorrectBiasDeclines, ThroughChannelNodesWithReasons) {
  RefModel m(3);
  const auto b = m.batch_norm("bn", m.input("x", {4, 6, 6}), 4);
  const auto r = m.relu("relu", b);
  const auto mx = m.pool("maxpool", r, true);
  const auto up = m.resize("up", mx);
  m.output(m.conv("after_max", m.concat("cat", {m.pool("avg", r, false), mx}), conv_spec(8, 2, {1, 1})));
  m.output(m.conv("after_relu_relu", m.relu("relu2", m.add("res", {r, b})), conv_spec(4, 2, {1, 1})));
  m.output(m.conv("after_resize", up, conv_spec(4, 2, {1, 1})));
  m.output(m.conv("after_res", m.add("res2", {r, b}), conv_spec(4, 2, {1, 1})));  // must not decline
  m.graph.reindex();
  const auto snap = GraphSnapshot::take(m.graph);
  auto rr = prequant::correct_bias(m.graph, {});
  auto reason = [&](const std::string& node) {
    const auto* d = find_declined(rr.declined, node);
    return d ? d->reason : std::string("(not declined)");
  };
  EXPECT_TRUE(contains(reason("after_max"), "max pooling 'maxpool'")) << reason("after_max");
  EXPECT_TRUE(contains(reason("after_relu_relu"), "activation 'relu2'")) << reason("after_relu_relu");
  EXPECT_TRUE(contains(reason("after_resize"), "max pooling 'maxpool'")) << reason("after_resize");
  ASSERT_EQ(rr.corrected.size(), 1u);
  EXPECT_EQ(rr.corrected[0].layer, "after_res");
  (void)snap;
}

// The clipped-normal mean against sampling, including a negative mean and a narrow clip.
TEST(ClippedNormalMean, MatchesSampling) {
  std::mt19937 rng(3);
  std::normal_distribution<double> n01(0.0, 1.0);
  struct C { double mu, sigma, lo, hi; };
  for (const C c : {C{0.5, 1.0, 0.0, INFINITY}, C{-1.5, 0.7, 0.0, INFINITY}, C{2.0, 3.0, 0.0, 6.0},
                    C{7.0, 1.0, 0.0, 6.0}, C{-0.2, 0.1, -INFINITY, INFINITY}, C{1.0, 2.0, -1.0, 0.5}}) {
    double sum = 0, sq = 0;
    const int n = 400000;
    for (int i = 0; i < n; ++i) {
      const double x = std::clamp(c.mu + c.sigma * n01(rng), c.lo, c.hi);
      sum += x;
      sq += x * x;
    }
    const double mean = sum / n, se = std::sqrt((sq / n - mean * mean) / n);
    EXPECT_NEAR(prequant::clipped_normal_mean(c.mu, c.sigma, c.lo, c.hi), mean, 5 * se + 1e-12)
        << c.mu << " " << c.sigma << " [" << c.lo << ", " << c.hi << "]";
  }
  EXPECT_DOUBLE_EQ(prequant::clipped_normal_mean(7.0, 0.0, 0.0, 6.0), 6.0);
}

// After equalize_model: the statistics of the BN folded after conv1 carried through the CLS scale
// (and the per-channel ReLU6 bound), and with high-bias absorption through the bias it moved (c:
// the pre-activation and the bound both drop by c), against sampling the original BN's Gaussian.
class CorrectBiasAfterEqualize : public ::testing::TestWithParam<bool> {};

TEST_P(CorrectBiasAfterEqualize, UsesFoldedStatisticsThroughClsAndHighBias) {
  const bool high_bias = GetParam();
  auto build = [](RefModel& m) {
    auto t = m.conv("conv1", m.input("x", {3, 5, 5}), conv_spec(3, 6, {3, 3}));
    t = m.batch_norm("bn", t, 6);
    // Means well above 3σ on some channels, so high-bias absorption moves bias; one γ negative.
    m.node("bn").gamma.assign(std::vector<double>{-0.5, 0.3, 1.2, 0.4, -0.2, 0.8});
    m.node("bn").beta.assign(std::vector<double>{3.0, 4.0, -1.0, 2.5, 1.5, 0.5});
    t = m.clip("act", t, 0.0, 6.0);
    m.output(m.conv("conv2", t, conv_spec(6, 4, {3, 3})));
    m.graph.reindex();
  };
  RefModel plain(11), corrected(11);
  build(plain);
  build(corrected);
  const auto gamma = read_all(plain.node("bn").gamma), beta = read_all(plain.node("bn").beta);
  prequant::EqualizeOptions options;
  options.absorb_high_bias = high_bias;
  const auto r0 = prequant::equalize_model(plain.graph, options);
  EXPECT_TRUE(r0.bias_correction.corrected.empty());
  options.bias_correction = true;
  const auto r = prequant::equalize_model(corrected.graph, options);
  ASSERT_EQ(r.cls.sets.size(), 1u);
  const auto& scale = r.cls.sets[0].pairs.at(0).scale;
  std::vector<double> moved(6, 0.0);
  if (high_bias) {
    ASSERT_EQ(r.high_bias.absorbed.size(), 1u);
    moved = r.high_bias.absorbed[0].amount;
    EXPECT_GT(*std::max_element(moved.begin(), moved.end()), 0.0);
  }
  ASSERT_EQ(r.bias_correction.corrected.size(), 1u);
  const auto& c = r.bias_correction.corrected[0];
  EXPECT_EQ(c.layer, "conv2");
  EXPECT_EQ(c.statistics_from, "conv1");
  const auto* d = find_declined(r.bias_correction.declined, "conv1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "graph input")) << d->reason;

  // Reference: E[x_c] by sampling clip(z/s, 0, 6/s), z ~ N(β, |γ|); ε from the equalized weight.
  std::mt19937 rng(5);
  std::normal_distribution<double> n01(0.0, 1.0);
  std::vector<double> ex(6, 0.0), se(6, 0.0);
  const int n = 200000;
  for (int ch = 0; ch < 6; ++ch) {
    double sum = 0, sq = 0;
    for (int i = 0; i < n; ++i) {
      const double z = (beta[ch] + std::abs(gamma[ch]) * n01(rng)) / scale[ch] - moved[ch];
      const double x = std::clamp(z, 0.0, 6.0 / scale[ch] - moved[ch]);
      sum += x;
      sq += x * x;
    }
    ex[ch] = sum / n;
    se[ch] = std::sqrt((sq / n - ex[ch] * ex[ch]) / n);
  }
  const auto fl = corrected.layout_of("conv2");
  const auto& w = corrected.node("conv2").weight.tensor;
  const auto wq = reference_quantized(fl, w, 1, WeightQuantizer{});
  const auto v = read_all(w);
  std::vector<double> expected(4, 0.0), tol(4, 1e-9);
  for_each_weight_element(fl, w.shape, 1, [&](int64_t o, int64_t i, int64_t f) {
    expected[o] += (wq[f] - v[f]) * ex[i];
    tol[o] += 5 * std::abs(wq[f] - v[f]) * se[i];
  });
  const auto b0 = read_all(plain.node("conv2").bias), b1 = read_all(corrected.node("conv2").bias);
  for (int o = 0; o < 4; ++o) {
    EXPECT_NEAR(c.correction[o], expected[o], tol[o]) << "channel " << o;
    EXPECT_NEAR(b1[o], b0[o] - c.correction[o], 1e-6) << "channel " << o;
  }
  EXPECT_TRUE(contains(prequant::explain(r), "Bias correction: 1 layer corrected"));
  EXPECT_EQ(prequant::to_json(r)["bias_correction"]["changes_fp32_output"], true);
}

INSTANTIATE_TEST_SUITE_P(HighBias, CorrectBiasAfterEqualize, ::testing::Bool());

// Must not fire: no statistics, opaque or pooling in between, transposed layers. Each declined
// with a reason naming what stops it; nothing written.
TEST(CorrectBiasDeclines, WithReasons) {
  RefModel m(2);
  auto t = m.conv("first", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}));
  auto a = m.relu("relu_a", t);
  t = m.conv("no_bn_before", a, conv_spec(4, 4, {1, 1}));
  t = m.batch_norm("bn", t, 4);
  t = m.relu("relu", t);
  auto p = m.pool("pool", t, true);
  auto o = m.opaque("tanh", {t});
  auto u = m.conv("after_pool", p, conv_spec(4, 2, {1, 1}));
  auto v = m.conv("after_opaque", o, conv_spec(4, 2, {1, 1}));
  auto tr = conv_spec(4, 2, {2, 2});
  tr.transposed = true;
  auto w = m.conv("transposed", t, tr);
  m.output(u);
  m.output(v);
  m.output(w);
  m.graph.reindex();
  const auto before = GraphSnapshot::take(m.graph);
  const auto r = prequant::correct_bias(m.graph, {});
  EXPECT_TRUE(r.corrected.empty());
  auto reason = [&](const std::string& node) {
    const auto* d = find_declined(r.declined, node);
    return d ? d->reason : std::string("(not declined)");
  };
  EXPECT_TRUE(contains(reason("first"), "graph input")) << reason("first");
  EXPECT_TRUE(contains(reason("no_bn_before"), "no batch norm follows 'first'")) << reason("no_bn_before");
  EXPECT_TRUE(contains(reason("after_pool"), "pooling 'pool'")) << reason("after_pool");
  EXPECT_TRUE(contains(reason("after_opaque"), "'tanh'")) << reason("after_opaque");
  EXPECT_TRUE(contains(reason("transposed"), "transposed")) << reason("transposed");
  EXPECT_EQ(before.diff(GraphSnapshot::take(m.graph)), "");
  EXPECT_THROW(prequant::correct_bias(m.graph, {}, quantizer(1, false, true)), prequant::InvalidRequestError);
}

// A layer without a bias gets one; a failure mid-write leaves every bias as it was.
TEST(CorrectBiasAtomic, AddsBiasAndRollsBack) {
  RefModel m(4);
  auto t = m.batch_norm("bn", m.input("x", {3}), 3);
  t = m.relu("relu", t);
  t = m.linear("a", t, 3, 2, /*bias=*/false);
  auto t2 = m.batch_norm("bn2", t, 2);
  m.output(m.linear("b", t2, 2, 2));
  m.graph.reindex();
  const auto before = GraphSnapshot::take(m.graph);
  {
    FaultInjection fail(1);
    EXPECT_THROW(prequant::correct_bias(m.graph, {}), prequant::Error);
  }
  EXPECT_EQ(before.diff(GraphSnapshot::take(m.graph)), "");
  const auto r = prequant::correct_bias(m.graph, {});
  ASSERT_EQ(r.corrected.size(), 2u);
  EXPECT_TRUE(r.corrected[0].bias_added);
  EXPECT_FALSE(m.node("a").bias.empty());
}

}  // namespace
}  // namespace pqtest
