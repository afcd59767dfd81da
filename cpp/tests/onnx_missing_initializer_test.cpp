// onnx_missing_initializer_test.cpp — layers whose parameters are not initializers.
//
// Before: ONNX models where a Conv/Gemm/MatMul/BatchNormalization parameter is
//   (a) a graph input (fed at run time),
//   (b) computed by a node: a Constant, a DequantizeLinear (an already quantized model), an
//       Identity of either,
//   (c) a name nothing defines (a dangling input).
// After: (a) and (b) read fine; the layer stays opaque (no pass changes it or folds a BN into
//   it) with a reason that names the tensor, where it comes from and what to do — `prequant
//   inspect` and `--explain` print it; the rest of the model is still equalized and the written
//   model keeps the layer as it was. (c) is a ModelFormatError naming the node and the tensor.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "onnx_test_encoder.h"
#include "prequant/errors.h"
#include "prequant/onnx_io.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::OpKind;

std::string floats(size_t n, float start = 0.25f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + 0.125f * static_cast<float>(i % 7);
  return raw_of(v);
}

// BatchNormalization statistics for `c` channels, named <prefix>_scale, _B, _mean, _var.
std::vector<Msg> bn_stats(const std::string& prefix, size_t c) {
  return {tensor(prefix + "_scale", kFloat, {static_cast<int64_t>(c)}, floats(c, -0.5f)),
          tensor(prefix + "_B", kFloat, {static_cast<int64_t>(c)}, floats(c, 0.3f)),
          tensor(prefix + "_mean", kFloat, {static_cast<int64_t>(c)}, floats(c, -0.2f)),
          tensor(prefix + "_var", kFloat, {static_cast<int64_t>(c)}, floats(c, 0.5f))};
}
Msg bn_node(const std::string& in, const std::string& out, const std::string& prefix) {
  return node("BatchNormalization", {in, prefix + "_scale", prefix + "_B", prefix + "_mean", prefix + "_var"},
              out);
}
template <typename T>
std::vector<T> operator+(std::vector<T> a, const std::vector<T>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const prequant::Node& only(const prequant::Graph& g, const std::string& op_type) {
  const prequant::Node* found = nullptr;
  for (const auto& n : g.nodes)
    if (n.op_type == op_type) {
      EXPECT_EQ(found, nullptr) << "two " << op_type << " nodes";
      found = &n;
    }
  if (!found) throw std::runtime_error("no " + op_type + " node");
  return *found;
}

void expect_contains(const std::string& text, const std::vector<std::string>& words) {
  for (const auto& w : words) EXPECT_NE(text.find(w), std::string::npos) << "'" << w << "' not in: " << text;
}

// The BN after the layer is declined by folding (not folded into an opaque node), and the whole
// pipeline still runs and writes.
void expect_bn_stays(const std::string& bytes) {
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::FoldResult r = prequant::fold_batch_norms(m.graph());
  EXPECT_TRUE(r.folded.empty());
  ASSERT_EQ(r.declined.size(), 1u);
  EXPECT_TRUE(read_and_process(bytes));
}

// ---- (a) graph inputs -------------------------------------------------------------------

TEST(OnnxMissingInitializer, ConvWeightThatIsAGraphInputKeepsTheConvOpaque) {
  const std::string bytes = model({node("Conv", {"x", "W", "B"}, "c"), bn_node("c", "y", "bn")},
                                  std::vector<Msg>{tensor("B", kFloat, {2}, floats(2))} + bn_stats("bn", 2),
                                  {value_info("W", 4)});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& conv = only(m.graph(), "Conv");
  EXPECT_EQ(conv.kind, OpKind::Opaque);
  expect_contains(conv.opaque_reason, {"Conv node 'Conv_node'", "weight 'W'", "graph input", "export_params"});
  EXPECT_EQ(conv.inputs, (std::vector<std::string>{"x", "W"}));  // W is an activation now
  EXPECT_EQ(only(m.graph(), "BatchNormalization").kind, OpKind::BatchNorm);
  expect_bn_stays(bytes);
}

TEST(OnnxMissingInitializer, GemmWeightThatIsAGraphInputKeepsTheGemmOpaque) {
  const std::string bytes = model({node("Gemm", {"x", "W", "C"}, "y", {int_attr("transB", 1)})},
                                  {tensor("C", kFloat, {3}, floats(3))}, {value_info("W", 2)});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& gemm = only(m.graph(), "Gemm");
  EXPECT_EQ(gemm.kind, OpKind::Opaque);
  expect_contains(gemm.opaque_reason, {"weight B 'W'", "graph input"});
  EXPECT_TRUE(read_and_process(bytes));
}

TEST(OnnxMissingInitializer, BatchNormStatisticThatIsAGraphInputKeepsTheBatchNormOpaque) {
  std::vector<Msg> stats = bn_stats("bn", 2);
  stats.erase(stats.begin() + 2);  // bn_mean becomes a graph input
  const std::string bytes = model({node("Conv", {"x", "W"}, "c"), bn_node("c", "y", "bn")},
                                  std::vector<Msg>{tensor("W", kFloat, {2, 4, 1, 1}, floats(8))} + stats,
                                  {value_info("bn_mean", 1)});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  EXPECT_EQ(only(m.graph(), "Conv").kind, OpKind::Conv);
  const prequant::Node& bn = only(m.graph(), "BatchNormalization");
  EXPECT_EQ(bn.kind, OpKind::Opaque);
  expect_contains(bn.opaque_reason, {"its mean 'bn_mean'", "graph input"});
  prequant::OnnxModel again = prequant::OnnxModel::from_bytes(bytes);
  EXPECT_TRUE(prequant::fold_batch_norms(again.graph()).folded.empty());
  EXPECT_TRUE(read_and_process(bytes));
}

// An initializer that is also listed as a graph input (IR version < 4, or
// keep_initializers_as_inputs=True) is a weight with a default value: read as the initializer.
TEST(OnnxMissingInitializer, InitializerAlsoListedAsGraphInputIsStillAWeight) {
  const std::string bytes = model({node("Conv", {"x", "W"}, "y")},
                                  {tensor("W", kFloat, {2, 4, 1, 1}, floats(8))}, {value_info("W", 4)});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  EXPECT_EQ(only(m.graph(), "Conv").kind, OpKind::Conv);
}

// ---- (b) weights computed by nodes ------------------------------------------------------

TEST(OnnxMissingInitializer, ConvWeightFromAConstantNodeKeepsTheConvOpaque) {
  const Msg constant = node("Constant", {}, "W", {tensor_attr("value", tensor("", kFloat, {2, 4, 1, 1}, floats(8)))});
  const std::string bytes = model({constant, node("Conv", {"x", "W"}, "c"), bn_node("c", "y", "bn")},
                                  bn_stats("bn", 2));
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& conv = only(m.graph(), "Conv");
  EXPECT_EQ(conv.kind, OpKind::Opaque);
  expect_contains(conv.opaque_reason, {"weight 'W'", "Constant node 'Constant_node'", "not an initializer"});
  expect_bn_stays(bytes);
  // The written model keeps the Constant and the Conv reading it.
  prequant::OnnxModel folded = prequant::OnnxModel::from_bytes(bytes);
  (void)prequant::equalize_model(folded.graph());
  prequant::OnnxModel reread = prequant::OnnxModel::from_bytes(folded.to_bytes());
  EXPECT_EQ(only(reread.graph(), "Constant").kind, OpKind::Opaque);
  EXPECT_EQ(only(reread.graph(), "Conv").opaque_reason, conv.opaque_reason);
}

TEST(OnnxMissingInitializer, WeightThroughIdentityOfAConstantNamesTheConstant) {
  const Msg constant = node("Constant", {}, "Wc", {tensor_attr("value", tensor("", kFloat, {3, 4}, floats(12)))});
  const std::string bytes = model({constant, node("Identity", {"Wc"}, "W"), node("Gemm", {"x", "W"}, "y",
                                                                                  {int_attr("transB", 1)})},
                                  {});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& gemm = only(m.graph(), "Gemm");
  EXPECT_EQ(gemm.kind, OpKind::Opaque);
  expect_contains(gemm.opaque_reason, {"weight B 'W'", "Constant node 'Constant_node'"});
  EXPECT_TRUE(read_and_process(bytes));
}

TEST(OnnxMissingInitializer, DequantizedWeightSaysTheModelIsQuantized) {
  constexpr int kInt8 = 3;
  const std::string bytes = model(
      {node("DequantizeLinear", {"Wq", "Ws"}, "W"), node("Conv", {"x", "W"}, "c"), bn_node("c", "y", "bn")},
      std::vector<Msg>{tensor("Wq", kInt8, {2, 4, 1, 1}, std::string(8, '\x05')),
                       tensor("Ws", kFloat, {}, floats(1))} +
          bn_stats("bn", 2));
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& conv = only(m.graph(), "Conv");
  EXPECT_EQ(conv.kind, OpKind::Opaque);
  expect_contains(conv.opaque_reason, {"weight 'W'", "DequantizeLinear node", "already quantized",
                                       "float model"});
  expect_bn_stays(bytes);
}

TEST(OnnxMissingInitializer, MatMulWithAConstantRightOperandGivesAReason) {
  const Msg constant = node("Constant", {}, "B", {tensor_attr("value", tensor("", kFloat, {4, 3}, floats(12)))});
  const std::string bytes = model({constant, node("MatMul", {"x", "B"}, "y")}, {});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& mm = only(m.graph(), "MatMul");
  EXPECT_EQ(mm.kind, OpKind::Opaque);
  expect_contains(mm.opaque_reason, {"right operand 'B'", "Constant node"});
}

TEST(OnnxMissingInitializer, MatMulOfTwoActivationsIsOpaqueWithoutComplaint) {
  // x · x2 (attention-style): no layer, so nothing to explain.
  const std::string bytes = model({node("MatMul", {"x", "x2"}, "y")}, {}, {value_info("x2", 4)});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node& mm = only(m.graph(), "MatMul");
  EXPECT_EQ(mm.kind, OpKind::Opaque);
  EXPECT_EQ(mm.opaque_reason, "");
}

// ---- (c) dangling inputs ----------------------------------------------------------------

TEST(OnnxMissingInitializer, DanglingWeightIsAModelFormatErrorNamingNodeAndTensor) {
  const std::string bytes = model({node("Conv", {"x", "W_missing"}, "c"), bn_node("c", "y", "bn")},
                                  bn_stats("bn", 2));
  try {
    (void)prequant::OnnxModel::from_bytes(bytes);
    ADD_FAILURE() << "a Conv reading an undefined weight was accepted";
  } catch (const prequant::ModelFormatError& e) {
    EXPECT_EQ(e.node(), "Conv_node");
    expect_contains(e.what(), {"Conv node 'Conv_node'", "'W_missing'", "missing initializer", "re-export"});
  }
}

TEST(OnnxMissingInitializer, DanglingInputOfAnUnnamedNodeNamesItsPosition) {
  // NodeProto without a name: input 1, output 2, op_type 4.
  Msg unnamed;
  unnamed.bytes(1, "c").bytes(1, "bn_scale").bytes(1, "bn_B").bytes(1, "bn_mean").bytes(1, "gone_var");
  unnamed.bytes(2, "y").bytes(4, "BatchNormalization");
  std::vector<Msg> stats = bn_stats("bn", 2);
  stats.pop_back();
  const std::string bytes = model({node("Relu", {"x"}, "c"), unnamed}, stats);
  try {
    (void)prequant::OnnxModel::from_bytes(bytes);
    ADD_FAILURE() << "a BatchNormalization reading an undefined variance was accepted";
  } catch (const prequant::ModelFormatError& e) {
    EXPECT_EQ(e.node(), "#1");
    expect_contains(e.what(), {"BatchNormalization node '#1'", "'gone_var'"});
  }
}

}  // namespace
}  // namespace pqtest
