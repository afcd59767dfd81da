// unroll_shared_weights_test.cpp — every layer gets its own copy of a shared weight or bias.
#include <gtest/gtest.h>

#include <cstring>

#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

constexpr double kTol = 1e-5;

bool same_bytes(const prequant::TensorView& a, const prequant::TensorView& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.data, b.data, static_cast<size_t>(a.bytes())) == 0;
}

// x → a → relu → b → relu → c, with b (and c) calling the same module as a.
void build_shared(RefModel& m, bool share_bias, bool third) {
  auto y = m.conv("a", m.input("x", {4, 6, 6}), conv_spec(4, 4, {3, 3}, {1, 1}));
  y = m.conv("b", m.relu("ra", y), conv_spec(4, 4, {3, 3}, {1, 1}));
  m.node("b").weight = m.node("a").weight;
  if (share_bias) m.node("b").bias = m.node("a").bias;
  if (third) {
    y = m.conv("c", m.relu("rb", y), conv_spec(4, 4, {3, 3}, {1, 1}));
    m.node("c").weight = m.node("a").weight;
    if (share_bias) m.node("c").bias = m.node("a").bias;
  }
  m.output(y);
}

TEST(UnrollSharedWeights, CopiesWeightAndBias) {
  RefModel m(3);
  build_shared(m, true, false);
  const auto inputs = m.random_inputs(2, 1);
  const auto before = m.forward(inputs);
  const void* original_w = m.node("a").weight.tensor.data;
  const void* original_b = m.node("a").bias.data;
  const auto r = prequant::unroll_shared_weights(m.graph);
  ASSERT_EQ(r.copies.size(), 2u);
  EXPECT_EQ(r.copies[0].node, "b");
  EXPECT_EQ(r.copies[0].original_name, "a.weight");
  EXPECT_EQ(r.copies[0].new_name, "a.weight__b");
  EXPECT_EQ(r.copies[1].node, "b");
  EXPECT_EQ(r.copies[1].original_name, "a.bias");
  EXPECT_EQ(r.copies[1].new_name, "a.bias__b");
  // The first user keeps the original tensors; the second owns equal copies.
  const auto& a = m.node("a");
  const auto& b = m.node("b");
  EXPECT_EQ(a.weight.tensor.data, original_w);
  EXPECT_EQ(a.bias.data, original_b);
  EXPECT_NE(b.weight.tensor.data, original_w);
  EXPECT_NE(b.bias.data, original_b);
  EXPECT_EQ(b.weight.tensor.name, "a.weight__b");
  EXPECT_EQ(b.weight.tensor.shape, a.weight.tensor.shape);
  EXPECT_EQ(b.weight.tensor.dtype, a.weight.tensor.dtype);
  EXPECT_TRUE(same_bytes(a.weight.tensor, b.weight.tensor));
  EXPECT_TRUE(same_bytes(a.bias, b.bias));
  EXPECT_EQ(b.weight.layout.out_axis, a.weight.layout.out_axis);
  EXPECT_NO_THROW(m.graph.lint());
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-15);
  // Running it again finds nothing.
  EXPECT_TRUE(prequant::unroll_shared_weights(m.graph).copies.empty());
}

TEST(UnrollSharedWeights, ThreeUsersTwoCopies) {
  RefModel m(4);
  build_shared(m, false, true);
  const auto r = prequant::unroll_shared_weights(m.graph);
  ASSERT_EQ(r.copies.size(), 2u);
  EXPECT_EQ(r.copies[0].node, "b");
  EXPECT_EQ(r.copies[1].node, "c");
  EXPECT_EQ(r.copies[1].new_name, "a.weight__c");
  EXPECT_NE(m.node("b").weight.tensor.data, m.node("c").weight.tensor.data);
  EXPECT_NE(m.node("a").bias.data, m.node("b").bias.data);  // biases were never shared
}

TEST(UnrollSharedWeights, NothingSharedNothingCopied) {
  RefModel m;
  build_chain3(m);
  const auto snap = GraphSnapshot::take(m.graph);
  EXPECT_TRUE(prequant::unroll_shared_weights(m.graph).copies.empty());
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

TEST(UnrollSharedWeights, Float64) {
  RefModel m;
  ConvSpec s = conv_spec(3, 3, {1, 1});
  s.dtype = DType::Float64;
  auto y = m.conv("a", m.input("x", {3, 4, 4}), s);
  m.output(m.conv("b", y, s));
  m.node("b").weight = m.node("a").weight;
  prequant::unroll_shared_weights(m.graph);
  EXPECT_EQ(m.node("b").weight.tensor.dtype, DType::Float64);
  EXPECT_TRUE(same_bytes(m.node("a").weight.tensor, m.node("b").weight.tensor));
}

TEST(UnrollSharedWeights, EnablesFoldingWithoutTouchingTheOtherUser) {
  RefModel m(5);
  auto y = m.conv("a", m.input("x", {4, 6, 6}), conv_spec(4, 4, {3, 3}, {1, 1}));
  y = m.relu("ra", y);
  y = m.conv("b", y, conv_spec(4, 4, {3, 3}, {1, 1}));
  m.node("b").weight = m.node("a").weight;
  m.output(m.relu("rb", m.batch_norm("bn", y, 4)));
  ASSERT_TRUE(prequant::fold_batch_norms(m.graph).folded.empty());  // shared: declined
  const auto inputs = m.random_inputs(2, 2);
  const auto before = m.forward(inputs);
  const auto a_before = read_all(m.node("a").weight.tensor);
  prequant::unroll_shared_weights(m.graph);
  const auto r = prequant::fold_batch_norms(m.graph);
  ASSERT_EQ(r.folded.size(), 1u);
  EXPECT_EQ(r.folded[0].request.layer, "b");
  EXPECT_EQ(read_all(m.node("a").weight.tensor), a_before);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(UnrollSharedWeights, WritesNoExistingParameter) {
  RefModel m;
  build_shared(m, true, true);
  const auto snap = GraphSnapshot::take(m.graph);
  prequant::unroll_shared_weights(m.graph);
  // Every original tensor still holds its bytes (copies live in the arena).
  for (const auto& [ptr, bytes] : snap.bytes)
    EXPECT_EQ(std::memcmp(ptr, bytes.data(), bytes.size()), 0) << snap.names.at(ptr);
}

}  // namespace
}  // namespace pqtest
