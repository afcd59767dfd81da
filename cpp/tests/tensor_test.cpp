// tensor_test.cpp — TensorView access and the channel routines, for every layout of the table
// in tensor.h, against the reference model's explicit index formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "prequant/errors.h"
#include "prequant/tensor.h"
#include "reference_model.h"

namespace pqtest {
namespace {

using prequant::ChannelLayout;
using prequant::TensorView;
using prequant::Weight;

class ChannelRoutines : public ::testing::TestWithParam<LayoutCase> {
 protected:
  void SetUp() override {
    const auto& c = GetParam();
    shape_ = weight_shape(c.layout, c.in, c.out, c.groups, c.kernel);
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    w_.tensor = model_.make_tensor("w", shape_, c.dtype, model_.uniform(n, -2.0, 2.0));
    w_.layout = channel_layout(c.layout, static_cast<int>(shape_.size()), static_cast<int>(c.groups));
  }
  RefModel model_{7};
  std::vector<int64_t> shape_;
  Weight w_;
};

TEST_P(ChannelRoutines, ReferenceVisitsEveryElementOnce) {
  const auto& c = GetParam();
  std::set<int64_t> seen;
  int64_t visits = 0;
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t, int64_t, int64_t idx) {
    seen.insert(idx);
    ++visits;
  });
  EXPECT_EQ(visits, w_.tensor.numel());
  EXPECT_EQ(static_cast<int64_t>(seen.size()), w_.tensor.numel());
}

TEST_P(ChannelRoutines, ChannelCounts) {
  const auto& c = GetParam();
  EXPECT_EQ(w_.out_channels(), c.out);
  EXPECT_EQ(w_.in_channels(), c.in);
}

TEST_P(ChannelRoutines, Ranges) {
  const auto& c = GetParam();
  EXPECT_EQ(prequant::out_channel_ranges(w_), ref_out_ranges(c.layout, w_.tensor, c.groups));
  EXPECT_EQ(prequant::in_channel_ranges(w_), ref_in_ranges(c.layout, w_.tensor, c.groups));
}

TEST_P(ChannelRoutines, ScaleOutChannels) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const auto f = model_.uniform(c.out, 0.1, 10.0);
  int wrong = 0;
  prequant::scale_out_channels(w_, f);
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t, int64_t idx) {
    const double expected = c.dtype == DType::Float32
                                ? static_cast<double>(static_cast<float>(before[idx] * f[o]))
                                : before[idx] * f[o];
    wrong += read(w_.tensor, idx) != expected;
  });
  EXPECT_EQ(wrong, 0);
}

TEST_P(ChannelRoutines, ScaleInChannels) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const auto f = model_.uniform(c.in, 0.1, 10.0);
  int wrong = 0;
  prequant::scale_in_channels(w_, f);
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t, int64_t i, int64_t idx) {
    const double expected = c.dtype == DType::Float32
                                ? static_cast<double>(static_cast<float>(before[idx] * f[i]))
                                : before[idx] * f[i];
    wrong += read(w_.tensor, idx) != expected;
  });
  EXPECT_EQ(wrong, 0);
}

TEST_P(ChannelRoutines, ContractInChannels) {
  const auto& c = GetParam();
  const auto v = model_.uniform(c.in, -3.0, 3.0);
  std::vector<double> expected(c.out, 0.0);
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t i, int64_t idx) {
    expected[o] += read(w_.tensor, idx) * v[i];
  });
  const auto got = prequant::contract_in_channels(w_, v);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t o = 0; o < got.size(); ++o) EXPECT_NEAR(got[o], expected[o], 1e-12 * (1 + std::abs(expected[o])));
}

TEST_P(ChannelRoutines, ChannelRangesBoth) {
  const auto& c = GetParam();
  const auto r = prequant::channel_ranges(w_);
  EXPECT_EQ(r.out, ref_out_ranges(c.layout, w_.tensor, c.groups));
  EXPECT_EQ(r.in, ref_in_ranges(c.layout, w_.tensor, c.groups));
}

TEST_P(ChannelRoutines, ScaleChannelsBoth) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const auto fo = model_.uniform(c.out, 0.1, 10.0), fi = model_.uniform(c.in, 0.1, 10.0);
  const auto r = prequant::scale_channels(w_, fo, fi);
  int wrong = 0;
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t i, int64_t idx) {
    const double exact = before[idx] * (fo[o] * fi[i]);
    const double expected = c.dtype == DType::Float32 ? static_cast<double>(static_cast<float>(exact)) : exact;
    wrong += read(w_.tensor, idx) != expected;
  });
  EXPECT_EQ(wrong, 0);
  // The returned ranges are those of the scaled weight.
  EXPECT_EQ(r.out, ref_out_ranges(c.layout, w_.tensor, c.groups));
  EXPECT_EQ(r.in, ref_in_ranges(c.layout, w_.tensor, c.groups));
}

TEST_P(ChannelRoutines, ScaleChannelsEmptyFactorsMeanOne) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const auto fo = model_.uniform(c.out, 0.1, 10.0);
  prequant::scale_channels(w_, fo, {});
  int wrong = 0;
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t, int64_t idx) {
    const double exact = before[idx] * fo[o];
    wrong += read(w_.tensor, idx) != (c.dtype == DType::Float32 ? double(float(exact)) : exact);
  });
  EXPECT_EQ(wrong, 0);
  const auto mid = read_all(w_.tensor);
  prequant::scale_channels(w_, {}, {});
  EXPECT_EQ(read_all(w_.tensor), mid);
}

// ChannelScaling: prepared, then applied; the same bits as the exact product rounded once, and
// nothing written before apply().
TEST_P(ChannelRoutines, ChannelScalingAppliesBothFactorsOnce) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const auto fo = model_.uniform(c.out, -10.0, 10.0), fi = model_.uniform(c.in, 0.1, 10.0);
  const prequant::ChannelScaling scaling(w_, fo, fi);
  EXPECT_EQ(read_all(w_.tensor), before);
  scaling.apply();
  int wrong = 0;
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t i, int64_t idx) {
    const double exact = before[idx] * (fo[o] * fi[i]);
    wrong += read(w_.tensor, idx) != (c.dtype == DType::Float32 ? double(float(exact)) : exact);
  });
  EXPECT_EQ(wrong, 0);
  EXPECT_THROW(prequant::ChannelScaling(w_, std::vector<double>(c.out + 1, 1.0), {}), prequant::GraphError);
}

// channel_ranges with factors: the ranges W·diag(out_factor)·diag(in_factor) would have
// (negative factors count by magnitude), read in one pass; W is not written.
TEST_P(ChannelRoutines, ChannelRangesUnderFactors) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const auto fo = model_.uniform(c.out, -10.0, 10.0), fi = model_.uniform(c.in, 0.01, 100.0);
  std::vector<double> eo(c.out, 0.0), ei(c.in, 0.0);
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t i, int64_t idx) {
    const double v = std::abs(before[idx]) * std::abs(fo[o]) * fi[i];
    eo[o] = std::max(eo[o], v);
    ei[i] = std::max(ei[i], v);
  });
  const auto r = prequant::channel_ranges(w_, fo, fi);
  ASSERT_EQ(r.out.size(), eo.size());
  ASSERT_EQ(r.in.size(), ei.size());
  // Exact up to the order of the two products.
  for (int64_t o = 0; o < c.out; ++o) EXPECT_NEAR(r.out[o], eo[o], 1e-14 * eo[o]) << "out " << o;
  for (int64_t i = 0; i < c.in; ++i) EXPECT_NEAR(r.in[i], ei[i], 1e-14 * ei[i]) << "in " << i;
  EXPECT_EQ(read_all(w_.tensor), before);
  // Empty factors mean ones: the plain ranges, bit for bit.
  const auto unit = prequant::channel_ranges(w_, {}, {});
  EXPECT_EQ(unit.out, ref_out_ranges(c.layout, w_.tensor, c.groups));
  EXPECT_EQ(unit.in, ref_in_ranges(c.layout, w_.tensor, c.groups));
  EXPECT_THROW(prequant::channel_ranges(w_, std::vector<double>(c.out + 1, 1.0), {}), prequant::GraphError);
}

// RangeMatrix: the ranges of W·diag(out_factor)·diag(in_factor) without touching W.
TEST_P(ChannelRoutines, RangeMatrixPredictsRangesUnderFactors) {
  const auto& c = GetParam();
  const auto before = read_all(w_.tensor);
  const prequant::RangeMatrix matrix(w_);
  const auto fo = model_.uniform(c.out, 0.01, 100.0), fi = model_.uniform(c.in, 0.01, 100.0);
  std::vector<double> eo(c.out, 0.0), ei(c.in, 0.0);
  for_each_weight_element(c.layout, shape_, c.groups, [&](int64_t o, int64_t i, int64_t idx) {
    const double v = std::abs(before[idx]) * fo[o] * fi[i];
    eo[o] = std::max(eo[o], v);
    ei[i] = std::max(ei[i], v);
  });
  const auto r = matrix.ranges(fo, fi);
  // float32 weights: exact up to the order of the products; float64: the matrix keeps floats.
  const double tol = c.dtype == DType::Float32 ? 1e-14 : 1e-7;
  ASSERT_EQ(r.out.size(), eo.size());
  ASSERT_EQ(r.in.size(), ei.size());
  for (int64_t o = 0; o < c.out; ++o) EXPECT_NEAR(r.out[o], eo[o], tol * eo[o]) << "out " << o;
  for (int64_t i = 0; i < c.in; ++i) EXPECT_NEAR(r.in[i], ei[i], tol * ei[i]) << "in " << i;
  EXPECT_EQ(read_all(w_.tensor), before);
  // Unit factors give the plain ranges.
  const auto unit = matrix.ranges(std::vector<double>(c.out, 1.0), std::vector<double>(c.in, 1.0));
  const auto ro = ref_out_ranges(c.layout, w_.tensor, c.groups), ri = ref_in_ranges(c.layout, w_.tensor, c.groups);
  for (int64_t o = 0; o < c.out; ++o) EXPECT_NEAR(unit.out[o], ro[o], tol * ro[o]);
  for (int64_t i = 0; i < c.in; ++i) EXPECT_NEAR(unit.in[i], ri[i], tol * ri[i]);
}

const LayoutCase kCases[] = {
    {"torch_conv2d", FrameworkLayout::TorchConv, 6, 4, 1, {3, 3}},
    {"torch_conv1d", FrameworkLayout::TorchConv, 3, 5, 1, {4}},
    {"torch_conv2d_1x1", FrameworkLayout::TorchConv, 37, 11, 1, {1, 1}},
    {"torch_conv3d", FrameworkLayout::TorchConv, 4, 6, 2, {2, 3, 2}},
    {"torch_conv2d_grouped", FrameworkLayout::TorchConv, 6, 9, 3, {3, 2}},
    {"torch_conv2d_depthwise", FrameworkLayout::TorchConv, 5, 5, 5, {3, 3}},
    {"torch_conv2d_depthwise_multiplier", FrameworkLayout::TorchConv, 4, 8, 4, {3, 3}},
    {"torch_conv_transpose2d", FrameworkLayout::TorchConvTranspose, 4, 6, 1, {3, 3}},
    {"torch_conv_transpose2d_grouped", FrameworkLayout::TorchConvTranspose, 6, 4, 2, {3, 2}},
    {"torch_conv_transpose1d_depthwise", FrameworkLayout::TorchConvTranspose, 3, 3, 3, {5}},
    {"torch_conv_transpose3d_grouped", FrameworkLayout::TorchConvTranspose, 4, 8, 2, {2, 2, 2}},
    {"torch_linear", FrameworkLayout::TorchLinear, 7, 5, 1, {}},
    {"keras_conv2d", FrameworkLayout::KerasConv, 6, 4, 1, {3, 3}},
    {"keras_conv1d", FrameworkLayout::KerasConv, 3, 5, 1, {4}},
    {"keras_conv3d_grouped", FrameworkLayout::KerasConv, 4, 6, 2, {2, 3, 2}},
    // DepthwiseConv2D (kh, kw, C, M) reshaped to (kh, kw, 1, C*M), groups C.
    {"keras_depthwise_multiplier", FrameworkLayout::KerasConv, 4, 8, 4, {3, 3}},
    {"keras_depthwise", FrameworkLayout::KerasConv, 5, 5, 5, {3, 3}},
    {"keras_conv2d_transpose", FrameworkLayout::KerasConvTranspose, 6, 4, 1, {3, 3}},
    {"keras_conv2d_transpose_grouped", FrameworkLayout::KerasConvTranspose, 6, 4, 2, {2, 3}},
    {"keras_dense", FrameworkLayout::KerasDense, 7, 5, 1, {}},
    {"torch_conv2d_grouped_f64", FrameworkLayout::TorchConv, 6, 9, 3, {3, 2}, DType::Float64},
    {"torch_conv_transpose2d_grouped_f64", FrameworkLayout::TorchConvTranspose, 6, 4, 2, {3, 2}, DType::Float64},
    {"keras_depthwise_multiplier_f64", FrameworkLayout::KerasConv, 4, 8, 4, {3, 3}, DType::Float64},
    {"keras_dense_f64", FrameworkLayout::KerasDense, 7, 5, 1, {}, DType::Float64},
    {"torch_linear_f64", FrameworkLayout::TorchLinear, 7, 5, 1, {}, DType::Float64},
};

INSTANTIATE_TEST_SUITE_P(Layouts, ChannelRoutines, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.label; });

// The Keras DepthwiseConv2D table row: (kh, kw, C, M), output channel c·M + m. Check the
// reshaped view against explicit 4-d indexing of the original array.
TEST(KerasDepthwise, ReshapedViewMatchesFourDimensionalIndexing) {
  RefModel m(3);
  const int64_t kh = 3, kw = 2, C = 3, M = 2;
  Weight w;
  w.tensor = m.make_tensor("dw", {kh, kw, 1, C * M}, DType::Float32, m.uniform(kh * kw * C * M, -1, 1));
  w.layout = ChannelLayout{3, 2, static_cast<int>(C), false};
  auto at = [&](int64_t a, int64_t b, int64_t c, int64_t mm) {
    return read(w.tensor, ((a * kw + b) * C + c) * M + mm);
  };
  std::vector<double> out(C * M, 0.0), in(C, 0.0);
  for (int64_t a = 0; a < kh; ++a)
    for (int64_t b = 0; b < kw; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t mm = 0; mm < M; ++mm) {
          out[c * M + mm] = std::max(out[c * M + mm], std::abs(at(a, b, c, mm)));
          in[c] = std::max(in[c], std::abs(at(a, b, c, mm)));
        }
  EXPECT_EQ(prequant::out_channel_ranges(w), out);
  EXPECT_EQ(prequant::in_channel_ranges(w), in);
  EXPECT_EQ(w.out_channels(), C * M);
  EXPECT_EQ(w.in_channels(), C);
}

TEST(ChannelRoutinesErrors, InvalidLayoutThrowsGraphError) {
  RefModel m;
  Weight w;
  w.tensor = m.make_tensor("bad", {2, 3}, DType::Float32, m.uniform(6, -1, 1));
  w.layout = ChannelLayout{0, 0, 1, false};
  EXPECT_THROW(prequant::out_channel_ranges(w), prequant::GraphError);
  w.layout = ChannelLayout{0, 2, 1, false};
  EXPECT_THROW(prequant::in_channel_ranges(w), prequant::GraphError);
  w.layout = ChannelLayout{0, 1, 0, false};
  EXPECT_THROW(prequant::out_channel_ranges(w), prequant::GraphError);
}

TEST(ChannelRoutinesEdge, ZeroChannelHasZeroRange) {
  RefModel m;
  Weight w;
  w.tensor = m.make_tensor("w", {3, 2, 2}, DType::Float32, m.uniform(12, 0.5, 1));
  w.layout = ChannelLayout{0, 1, 1, false};
  for (int64_t k = 4; k < 8; ++k) write(w.tensor, k, 0.0);  // out channel 1
  const auto r = prequant::out_channel_ranges(w);
  EXPECT_EQ(r[1], 0.0);
  EXPECT_GT(r[0], 0.0);
  EXPECT_GT(r[2], 0.0);
}

TEST(TensorView, ElementAccessFloat32AndFloat64) {
  RefModel m;
  for (DType dt : {DType::Float32, DType::Float64}) {
    TensorView t = m.make_tensor("t", {2, 3}, dt, {1, 2, 3, 4, 5, 6});
    EXPECT_EQ(t.numel(), 6);
    EXPECT_EQ(t.bytes(), dt == DType::Float32 ? 24 : 48);
    EXPECT_FALSE(t.empty());
    EXPECT_EQ(t.get(4), 5.0);
    t.set(4, 0.1);
    EXPECT_EQ(read(t, 4), dt == DType::Float32 ? double(0.1f) : 0.1);
    EXPECT_EQ(t.to_doubles()[4], read(t, 4));
    const std::vector<double> v{9, 8, 7, 6, 5, 4};
    t.assign(v);
    EXPECT_EQ(read_all(t), v);
  }
  EXPECT_TRUE(TensorView{}.empty());
  EXPECT_STREQ(prequant::dtype_name(DType::Float32), "float32");
  EXPECT_STREQ(prequant::dtype_name(DType::Float64), "float64");
}

TEST(TensorView, Float64KeepsFullPrecisionThroughScaling) {
  RefModel m;
  Weight w;
  const double x = 1.0 + 1e-12;  // not representable in float32
  w.tensor = m.make_tensor("w", {2, 1}, DType::Float64, {x, -x});
  w.layout = ChannelLayout{0, 1, 1, false};
  const std::vector<double> f{3.0, 1.0 / 3.0};
  prequant::scale_out_channels(w, f);
  EXPECT_EQ(read(w.tensor, 0), x * 3.0);
  EXPECT_EQ(read(w.tensor, 1), -x * (1.0 / 3.0));
}

TEST(FindNonFinite, FindsNanAndInfinities) {
  RefModel m;
  for (DType dt : {DType::Float32, DType::Float64}) {
    TensorView t = m.make_tensor("t", {8}, dt, m.uniform(8, -1, 1));
    EXPECT_EQ(prequant::find_non_finite(t), -1);
    write(t, 5, std::numeric_limits<double>::quiet_NaN());
    EXPECT_EQ(prequant::find_non_finite(t), 5);
    write(t, 2, std::numeric_limits<double>::infinity());
    EXPECT_EQ(prequant::find_non_finite(t), 2);
    write(t, 2, 0.0);
    write(t, 5, 0.0);
    write(t, 7, -std::numeric_limits<double>::infinity());
    EXPECT_EQ(prequant::find_non_finite(t), 7);
    // Past the first block of the vectorized scan, and the first of several in a block.
    TensorView big = m.make_tensor("big", {10000}, dt, m.uniform(10000, -1, 1));
    EXPECT_EQ(prequant::find_non_finite(big), -1);
    write(big, 9001, std::numeric_limits<double>::infinity());
    write(big, 9999, std::numeric_limits<double>::quiet_NaN());
    EXPECT_EQ(prequant::find_non_finite(big), 9001);
    // Large but finite values are fine.
    write(t, 7, dt == DType::Float32 ? 3.0e38 : 1.0e308);
    EXPECT_EQ(prequant::find_non_finite(t), -1);
  }
}

}  // namespace
}  // namespace pqtest
