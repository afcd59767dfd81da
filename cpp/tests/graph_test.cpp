// graph_test.cpp — Graph bookkeeping and lint messages.
#include <gtest/gtest.h>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/graph.h"

namespace pqtest {
namespace {

using prequant::GraphError;
using prequant::Node;
using prequant::OpKind;

// Expects lint() to throw a GraphError about `node` whose message contains every part.
void expect_lint_error(const prequant::Graph& g, const std::string& node, const std::vector<std::string>& parts) {
  try {
    g.lint();
    ADD_FAILURE() << "lint accepted the graph";
  } catch (const GraphError& e) {
    EXPECT_EQ(e.node(), node) << e.what();
    for (const auto& p : parts) EXPECT_TRUE(contains(e.what(), p)) << e.what() << "\n  lacks: " << p;
  }
}

TEST(GraphLint, ValidModelsPass) {
  RefModel a, b, c;
  build_chain3(a);
  build_triple(b, true);
  build_pair(c, Between::ReluPadPool);
  EXPECT_NO_THROW(a.graph.lint());
  EXPECT_NO_THROW(b.graph.lint());
  EXPECT_NO_THROW(c.graph.lint());
}

TEST(GraphLint, AddRejectsDuplicateName) {
  RefModel m;
  build_chain3(m);
  Node n;
  n.name = "c2";
  n.kind = OpKind::Relu;
  n.inputs = {"x"};
  n.outputs = {"other"};
  try {
    m.graph.add(n);
    ADD_FAILURE() << "add accepted a duplicate name";
  } catch (const GraphError& e) {
    EXPECT_EQ(e.node(), "c2");
    EXPECT_TRUE(contains(e.what(), "unique")) << e.what();
  }
}

TEST(GraphLint, DuplicateName) {
  RefModel m;
  build_chain3(m);
  Node n = m.graph.nodes[1];  // r1
  n.outputs = {"r1_again"};
  m.graph.nodes.push_back(n);
  expect_lint_error(m.graph, "r1", {"two nodes are named 'r1'", "unique"});
}

TEST(GraphLint, NonTopologicalOrder) {
  RefModel m;
  build_chain3(m);
  std::swap(m.graph.nodes[0], m.graph.nodes[1]);  // r1 now comes before c1, which produces its input
  m.graph.reindex();
  expect_lint_error(m.graph, "r1", {"'c1:out'", "before the node that produces it", "topological order"});
}

TEST(GraphLint, TensorProducedTwice) {
  RefModel m;
  build_chain3(m);
  m.graph.nodes[1].outputs = {"c1:out"};
  expect_lint_error(m.graph, "r1", {"'c1:out'", "produced twice", "exactly one producer"});
}

TEST(GraphLint, BiasShapeMismatch) {
  RefModel m;
  build_chain3(m);
  m.node("c2").bias = m.make_tensor("c2.bias", {3}, DType::Float32, {1, 2, 3});
  expect_lint_error(m.graph, "c2", {"bias 'c2.bias'", "3 values", "8 channels"});
}

TEST(GraphLint, BatchNormShapeMismatch) {
  RefModel m;
  auto y = m.batch_norm("bn", m.input("x", {4, 3, 3}), 4);
  m.output(y);
  m.node("bn").var = m.make_tensor("bn.var", {5}, DType::Float32, {1, 1, 1, 1, 1});
  expect_lint_error(m.graph, "bn", {"var 'bn.var'", "5 values", "4 channels"});
}

TEST(GraphLint, BatchNormMissingParameter) {
  RefModel m;
  m.output(m.batch_norm("bn", m.input("x", {4, 3, 3}), 4));
  m.node("bn").mean = {};
  expect_lint_error(m.graph, "bn", {"lacks one of gamma, beta, mean, var"});
}

TEST(GraphLint, LayerWithoutWeight) {
  RefModel m;
  build_chain3(m);
  m.node("c3").weight.tensor = {};
  expect_lint_error(m.graph, "c3", {"has no weight"});
}

TEST(GraphLint, LayoutAxesDoNotFit) {
  RefModel m;
  build_chain3(m);
  m.node("c2").weight.layout.in_axis = 4;
  expect_lint_error(m.graph, "c2", {"axes", "rank-4"});
}

TEST(GraphLint, GroupsDoNotDivide) {
  RefModel m;
  build_chain3(m);
  m.node("c2").weight.layout.groups = 3;
  expect_lint_error(m.graph, "c2", {"3 groups", "do not divide", "8 channels"});
}

TEST(GraphLint, LayerWithoutInput) {
  RefModel m;
  build_chain3(m);
  m.node("c3").inputs.clear();
  m.graph.reindex();
  expect_lint_error(m.graph, "c3", {"needs one data input and one output"});
}

TEST(GraphLint, RemovedNodesAreIgnored) {
  RefModel m;
  auto y = m.conv("c1", m.input("x", {3, 4, 4}), conv_spec(3, 4, {3, 3}));
  y = m.batch_norm("bn", y, 4);
  m.output(y);
  m.node("bn").var = {};  // broken, but removed below
  m.node("c1").outputs = {"bn:out"};
  m.node("bn").removed = true;
  m.graph.reindex();
  EXPECT_NO_THROW(m.graph.lint());
}

TEST(GraphIndex, FindProducerConsumers) {
  RefModel m;
  auto y = m.relu("r", m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3})));
  auto a = m.conv("a", y, conv_spec(4, 2, {1, 1}));
  auto b = m.conv("b", y, conv_spec(4, 2, {1, 1}));
  m.output(m.opaque("add", {a, b}, "add"));
  EXPECT_EQ(m.graph.find("c1"), std::optional<size_t>(0));
  EXPECT_FALSE(m.graph.find("zzz"));
  EXPECT_THROW(m.graph.at("zzz"), GraphError);
  EXPECT_EQ(m.graph.producer("r:out"), m.graph.find("r"));
  EXPECT_FALSE(m.graph.producer("x"));  // a graph input has no producer
  ASSERT_EQ(m.graph.consumers("r:out").size(), 2u);
  EXPECT_EQ(m.graph.consumers("r:out")[0], *m.graph.find("a"));
  EXPECT_EQ(m.graph.consumers("r:out")[1], *m.graph.find("b"));
  EXPECT_TRUE(m.graph.consumers("nothing").empty());
  EXPECT_TRUE(m.graph.is_graph_output("add:out"));
  EXPECT_FALSE(m.graph.is_graph_output("r:out"));
  // A node reading the same tensor twice is one consumer.
  auto twice = m.opaque("twice", {y, y}, "add");
  (void)twice;
  EXPECT_EQ(m.graph.consumers("r:out").size(), 3u);
  // Removal hides the node from find() and, after reindex(), from consumers().
  m.node("b").removed = true;
  m.graph.reindex();
  EXPECT_FALSE(m.graph.find("b"));
  EXPECT_EQ(m.graph.consumers("r:out").size(), 2u);
}

TEST(GraphIndex, UnnamedNodesGetNames) {
  prequant::Graph g;
  Node n;
  n.kind = OpKind::Relu;
  n.inputs = {"x"};
  n.outputs = {"y"};
  EXPECT_EQ(g.add(n).name, "node_0");
}

TEST(GraphArena, AllocateIsZeroedAndStable) {
  prequant::Graph g;
  auto a = g.allocate("a", DType::Float32, {3, 2});
  auto b = g.allocate("b", DType::Float64, {5});
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(a.dtype, DType::Float32);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(read(a, i), 0.0);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(read(b, i), 0.0);
  write(a, 5, 1.5);
  write(b, 4, 2.5);
  for (int k = 0; k < 1000; ++k) g.allocate("more" + std::to_string(k), DType::Float64, {7});
  EXPECT_EQ(read(a, 5), 1.5);
  EXPECT_EQ(read(b, 4), 2.5);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % alignof(double), 0u);
}

TEST(GraphNode, DepthwiseDetection) {
  RefModel m;
  auto y = m.conv("dw", m.input("x", {4, 5, 5}), conv_spec(4, 4, {3, 3}, {}, 4));
  y = m.conv("dwm", y, conv_spec(4, 8, {3, 3}, {}, 4));
  y = m.conv("g2", y, conv_spec(8, 8, {1, 1}, {}, 2));
  ConvSpec t = conv_spec(8, 8, {3, 3}, {}, 8);
  t.keras = true;
  m.output(m.conv("kdw", y, t));
  EXPECT_TRUE(m.node("dw").is_depthwise());
  EXPECT_FALSE(m.node("dwm").is_depthwise());
  EXPECT_FALSE(m.node("g2").is_depthwise());
  EXPECT_TRUE(m.node("kdw").is_depthwise());
  EXPECT_EQ(m.node("dwm").out_channels(), 8);
  EXPECT_EQ(m.node("dwm").in_channels(), 4);
  EXPECT_EQ(m.node("dwm").groups(), 4);
}

TEST(GraphNames, OpKindNames) {
  EXPECT_STREQ(prequant::op_kind_name(OpKind::Conv), "Conv");
  EXPECT_STREQ(prequant::op_kind_name(OpKind::BatchNorm), "BatchNorm");
  EXPECT_STREQ(prequant::op_kind_name(OpKind::ZeroPad), "ZeroPad");
  EXPECT_STREQ(prequant::op_kind_name(OpKind::Opaque), "Opaque");
}

}  // namespace
}  // namespace pqtest
