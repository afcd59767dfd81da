// weight_stats_test.cpp — collect_weight_stats: per-output-channel five-number summaries in every
// layout of tensor.h's table against closed-form values (the elements are placed with the
// reference model's own index formulas), and the weight SQNR against a hand computation and an
// independent element-by-element computation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "prequant/errors.h"
#include "prequant/weight_stats.h"
#include "reference_model.h"

namespace pqtest {
namespace {

using prequant::ChannelLayout;
using prequant::LayerWeightStats;
using prequant::Node;
using prequant::OpKind;
using prequant::Weight;

// A graph holding one layer with the given weight values (flat, row-major).
struct OneLayer {
  RefModel model{5};
  std::vector<int64_t> shape;

  OneLayer(const LayoutCase& c, const std::vector<double>& values) {
    shape = weight_shape(c.layout, c.in, c.out, c.groups, c.kernel);
    Node n;
    n.name = "layer<" + c.label + ">";
    n.kind = c.kernel.empty() ? OpKind::Linear : OpKind::Conv;
    n.op_type = "TestOp";
    n.spatial_rank = static_cast<int>(c.kernel.size());
    n.inputs = {"x"};
    n.outputs = {"y"};
    n.weight.tensor = model.make_tensor("w", shape, c.dtype, values);
    n.weight.layout = channel_layout(c.layout, static_cast<int>(shape.size()), static_cast<int>(c.groups));
    model.graph.add(std::move(n));
  }
  const Weight& weight() const { return model.graph.nodes.front().weight; }
};

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

class WeightStatsLayouts : public ::testing::TestWithParam<LayoutCase> {};

// Channel o holds ±(o+1)·{1, 2, ..., n} (negative for odd o), wherever the layout puts it; so its
// summary is known in closed form: quartile p of {1..n} is 1 + p·(n − 1) (linear interpolation).
TEST_P(WeightStatsLayouts, FiveNumberSummaryPerOutputChannel) {
  const auto& c = GetParam();
  const auto shape = weight_shape(c.layout, c.in, c.out, c.groups, c.kernel);
  std::vector<double> values(static_cast<size_t>(numel_of(shape)));
  std::vector<int64_t> count(static_cast<size_t>(c.out), 0);
  for_each_weight_element(c.layout, shape, c.groups, [&](int64_t o, int64_t, int64_t idx) {
    const double sign = o % 2 ? -1.0 : 1.0;
    values[static_cast<size_t>(idx)] = sign * static_cast<double>((o + 1) * ++count[static_cast<size_t>(o)]);
  });
  OneLayer l(c, values);
  const auto stats = prequant::collect_weight_stats(l.model.graph);
  ASSERT_EQ(stats.layers.size(), 1u);
  const LayerWeightStats& s = stats.layers[0];
  EXPECT_EQ(s.name, "layer<" + c.label + ">");
  EXPECT_EQ(s.shape, shape);
  EXPECT_EQ(s.groups, c.groups);
  EXPECT_EQ(s.transposed, is_transposed(c.layout));
  EXPECT_EQ(s.depthwise, c.groups > 1 && c.groups == c.in && c.groups == c.out);
  ASSERT_EQ(static_cast<int64_t>(s.channels.size()), c.out);
  const double n = static_cast<double>(numel_of(shape) / c.out);
  for (int64_t o = 0; o < c.out; ++o) {
    const double k = static_cast<double>(o + 1), sign = o % 2 ? -1.0 : 1.0;
    auto quartile = [&](double p) { return sign * k * (1 + p * (n - 1)); };
    const auto& ch = s.channels[static_cast<size_t>(o)];
    SCOPED_TRACE("channel " + std::to_string(o));
    EXPECT_DOUBLE_EQ(ch.min, std::min(quartile(0), quartile(1)));
    EXPECT_DOUBLE_EQ(ch.max, std::max(quartile(0), quartile(1)));
    EXPECT_DOUBLE_EQ(ch.q1, sign > 0 ? quartile(0.25) : quartile(0.75));
    EXPECT_DOUBLE_EQ(ch.median, quartile(0.5));
    EXPECT_DOUBLE_EQ(ch.q3, sign > 0 ? quartile(0.75) : quartile(0.25));
    EXPECT_DOUBLE_EQ(ch.range, k * n);
  }
  EXPECT_DOUBLE_EQ(prequant::range_ratio(s), static_cast<double>(c.out));  // (O·n) / (1·n)
}

// Random weights: the summaries against a sort of each channel's elements gathered with the
// reference index formulas, and both SQNRs against an element-by-element computation.
TEST_P(WeightStatsLayouts, RandomWeightsMatchIndependentComputation) {
  const auto& c = GetParam();
  RefModel rng(11);
  const auto shape = weight_shape(c.layout, c.in, c.out, c.groups, c.kernel);
  std::vector<double> values = rng.uniform(numel_of(shape), -1.0, 1.0);
  // Spread the channels over three decades, as an unequalized layer's are.
  for_each_weight_element(c.layout, shape, c.groups, [&](int64_t o, int64_t, int64_t idx) {
    values[static_cast<size_t>(idx)] *= std::pow(10.0, -3.0 * static_cast<double>(o) / static_cast<double>(c.out));
  });
  OneLayer l(c, values);
  const std::vector<double> stored = read_all(l.weight().tensor);  // as float32 or float64
  for (int bits : {8, 4}) {
    SCOPED_TRACE("bits " + std::to_string(bits));
    const auto s = prequant::collect_weight_stats(l.model.graph, bits).layers.at(0);
    std::vector<std::vector<double>> per(static_cast<size_t>(c.out));
    for_each_weight_element(c.layout, shape, c.groups,
                            [&](int64_t o, int64_t, int64_t idx) { per[o].push_back(stored[idx]); });
    const double levels = (1 << (bits - 1)) - 1;
    double tensor_max = 0;
    for (double v : stored) tensor_max = std::max(tensor_max, std::abs(v));
    double signal = 0, noise_t = 0, noise_c = 0;
    for (int64_t o = 0; o < c.out; ++o) {
      auto v = per[o];
      std::sort(v.begin(), v.end());
      auto q = [&](double p) {
        const double h = p * static_cast<double>(v.size() - 1);
        const size_t lo = static_cast<size_t>(h);
        return lo + 1 < v.size() ? v[lo] + (h - static_cast<double>(lo)) * (v[lo + 1] - v[lo]) : v[lo];
      };
      const auto& ch = s.channels[static_cast<size_t>(o)];
      EXPECT_EQ(ch.min, v.front());
      EXPECT_EQ(ch.max, v.back());
      EXPECT_NEAR(ch.q1, q(0.25), 1e-15);
      EXPECT_NEAR(ch.median, q(0.5), 1e-15);
      EXPECT_NEAR(ch.q3, q(0.75), 1e-15);
      EXPECT_EQ(ch.range, std::max(-v.front(), v.back()));
      const double step_c = std::max(-v.front(), v.back()) / levels, step_t = tensor_max / levels;
      for (double w : v) {
        signal += w * w;
        const double qt = std::round(w / step_t) * step_t, qc = std::round(w / step_c) * step_c;
        noise_t += (w - qt) * (w - qt);
        noise_c += (w - qc) * (w - qc);
      }
    }
    EXPECT_NEAR(s.sqnr_per_tensor_db, 10 * std::log10(signal / noise_t), 1e-9);
    EXPECT_NEAR(s.sqnr_per_channel_db, 10 * std::log10(signal / noise_c), 1e-9);
  }
}

const LayoutCase kCases[] = {
    {"torch_conv2d", FrameworkLayout::TorchConv, 6, 4, 1, {3, 3}},
    {"torch_conv1d_grouped", FrameworkLayout::TorchConv, 6, 9, 3, {4}},
    {"torch_conv2d_depthwise", FrameworkLayout::TorchConv, 5, 5, 5, {3, 3}},
    {"torch_conv_transpose2d", FrameworkLayout::TorchConvTranspose, 4, 6, 1, {3, 3}},
    {"torch_conv_transpose2d_grouped", FrameworkLayout::TorchConvTranspose, 6, 4, 2, {3, 2}},
    {"torch_linear", FrameworkLayout::TorchLinear, 7, 5, 1, {}},
    {"keras_conv2d", FrameworkLayout::KerasConv, 6, 4, 1, {3, 3}},
    {"keras_depthwise_multiplier", FrameworkLayout::KerasConv, 4, 8, 4, {3, 3}},
    {"keras_conv2d_transpose", FrameworkLayout::KerasConvTranspose, 6, 4, 1, {3, 3}},
    {"keras_dense", FrameworkLayout::KerasDense, 7, 5, 1, {}},
    {"keras_dense_f64", FrameworkLayout::KerasDense, 7, 5, 1, {}, DType::Float64},
    {"torch_conv_transpose2d_grouped_f64", FrameworkLayout::TorchConvTranspose, 6, 4, 2, {3, 2}, DType::Float64},
};

INSTANTIATE_TEST_SUITE_P(Layouts, WeightStatsLayouts, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.label; });

// W = [[1.0, 0.3], [-0.8, 0.6]] (out × in) at 2 bits: levels ±1.
//   per tensor:  Δ = 1:   q = [[1, 0], [-1, 1]];      noise = 0.09 + 0.04 + 0.16 = 0.29
//   per channel: Δ = 1, 0.8: q = [[1, 0], [-0.8, 0.8]]; noise = 0.09 + 0.04 = 0.13
//   signal = 1 + 0.09 + 0.64 + 0.36 = 2.09
TEST(WeightStatsSqnr, HandComputedTwoBitExample) {
  for (auto layout : {FrameworkLayout::TorchLinear, FrameworkLayout::KerasDense}) {
    const std::vector<double> torch_order{1.0, 0.3, -0.8, 0.6}, keras_order{1.0, -0.8, 0.3, 0.6};
    OneLayer l({"dense", layout, 2, 2, 1, {}, DType::Float64},
               layout == FrameworkLayout::TorchLinear ? torch_order : keras_order);
    const auto s = prequant::collect_weight_stats(l.model.graph, 2).layers.at(0);
    SCOPED_TRACE(layout_name(layout));
    EXPECT_NEAR(s.sqnr_per_tensor_db, 10 * std::log10(2.09 / 0.29), 1e-9);
    EXPECT_NEAR(s.sqnr_per_channel_db, 10 * std::log10(2.09 / 0.13), 1e-9);
    EXPECT_DOUBLE_EQ(s.channels[0].range, 1.0);
    EXPECT_DOUBLE_EQ(s.channels[1].range, 0.8);
    EXPECT_NEAR(s.channels[1].median, -0.1, 1e-15);
    EXPECT_DOUBLE_EQ(prequant::range_ratio(s), 1.25);
  }
}

TEST(WeightStatsSqnr, ExactAndAllZeroWeights) {
  const LayoutCase c{"linear", FrameworkLayout::TorchLinear, 2, 2, 1, {}};
  // At 2 bits (levels ±1, Δ = max|W|) 0.25 rounds to 0: finite; values on the grid: exact.
  OneLayer off_grid(c, {1.0, -0.5, 0.25, 0.0});
  EXPECT_TRUE(std::isfinite(prequant::collect_weight_stats(off_grid.model.graph, 2).layers.at(0).sqnr_per_tensor_db));
  OneLayer grid(c, {1.0, -1.0, 0.0, 1.0});
  const auto g = prequant::collect_weight_stats(grid.model.graph, 2).layers.at(0);
  EXPECT_EQ(g.sqnr_per_tensor_db, std::numeric_limits<double>::infinity());
  EXPECT_EQ(g.sqnr_per_channel_db, std::numeric_limits<double>::infinity());

  OneLayer zero(c, {0.0, 0.0, 0.0, 0.0});
  const auto z = prequant::collect_weight_stats(zero.model.graph).layers.at(0);
  EXPECT_TRUE(std::isnan(z.sqnr_per_tensor_db));
  EXPECT_EQ(prequant::count_zero_channels(z), 2);
  EXPECT_EQ(prequant::range_ratio(z), 1.0);
  // JSON: non-finite numbers become null.
  const auto j = prequant::to_json(prequant::collect_weight_stats(zero.model.graph));
  EXPECT_TRUE(j["layers"][0]["sqnr_per_tensor_db"].is_null());
  EXPECT_EQ(j["layers"][0]["channels"], 2);
  EXPECT_EQ(j["layers"][0]["zero_channels"], 2);
}

TEST(WeightStatsGraph, OnlyLiveLayersInGraphOrderAndWeightsUnchanged) {
  RefModel m(3);
  auto x = m.input("x", {3, 8, 8});
  ConvSpec spec;
  spec.in = 3;
  spec.out = 4;
  x = m.conv("conv1", x, spec);
  x = m.batch_norm("bn1", x, 4);
  x = m.relu("relu1", x);
  spec.in = 4;
  spec.out = 6;
  x = m.conv("conv2", x, spec);
  x = m.global_avg_pool("pool", x);
  x = m.linear("fc", x, 6, 3, true, /*keras=*/true);
  m.output(x);
  const auto w1 = read_all(m.node("conv1").weight.tensor);
  m.node("conv2").removed = true;
  const auto stats = prequant::collect_weight_stats(m.graph);
  ASSERT_EQ(stats.layers.size(), 2u);
  EXPECT_EQ(stats.layers[0].name, "conv1");
  EXPECT_EQ(stats.layers[0].kind, OpKind::Conv);
  EXPECT_EQ(stats.layers[1].name, "fc");
  EXPECT_EQ(stats.layers[1].kind, OpKind::Linear);
  EXPECT_EQ(stats.layers[1].channels.size(), 3u);
  EXPECT_EQ(read_all(m.node("conv1").weight.tensor), w1);
  const auto j = prequant::to_json(stats);
  EXPECT_EQ(j["bits"], 8);
  EXPECT_EQ(j["layers"][1]["kind"], "linear");
  EXPECT_EQ(j["layers"][0]["median"].size(), 4u);
}

TEST(WeightStatsErrors, NonFiniteWeightAndBadBits) {
  OneLayer l({"linear", FrameworkLayout::TorchLinear, 2, 2, 1, {}}, {1.0, NAN, 0.5, 0.25});
  try {
    prequant::collect_weight_stats(l.model.graph);
    FAIL() << "expected InvalidParameterError";
  } catch (const prequant::InvalidParameterError& e) {
    EXPECT_EQ(e.node(), "layer<linear>");
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos);
  }
  OneLayer ok({"linear", FrameworkLayout::TorchLinear, 2, 2, 1, {}}, {1.0, 0.5, 0.5, 0.25});
  EXPECT_THROW(prequant::collect_weight_stats(ok.model.graph, 1), prequant::InvalidRequestError);
  EXPECT_THROW(prequant::collect_weight_stats(ok.model.graph, 17), prequant::InvalidRequestError);
}

}  // namespace
}  // namespace pqtest
