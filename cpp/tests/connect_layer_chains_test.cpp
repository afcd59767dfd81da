// connect_layer_chains_test.cpp — the graph of given layers for the manual APIs: connected along
// the chains it is the graph built the ordinary way (same forward, same scaling); refusals leave
// the graph as it was.
#include <gtest/gtest.h>

#include "reference_model.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

// l1: Linear 4→6, l2: 6→5, l3: 5→3. `direct` is x → l1 → l2 → l3 built the ordinary way;
// `given` holds the same layers (same weights), added as l3, l1, l2, each reading its own input.
struct Chains : ::testing::Test {
  Chains() {
    auto x = direct.input("x", {4});
    direct.output(direct.linear("l3", direct.linear("l2", direct.linear("l1", x, 4, 6), 6, 5), 5, 3));
    given.output(given.linear("l3", given.input("l3:in", {5}), 5, 3));
    given.output(given.linear("l1", given.input("l1:in", {4}), 4, 6));
    given.output(given.linear("l2", given.input("l2:in", {6}), 6, 5));
    for (const char* name : {"l1", "l2", "l3"}) {
      const auto w = read_all(direct.node(name).weight.tensor), b = read_all(direct.node(name).bias);
      for (size_t i = 0; i < w.size(); ++i) write(given.node(name).weight.tensor, int64_t(i), w[i]);
      for (size_t i = 0; i < b.size(); ++i) write(given.node(name).bias, int64_t(i), b[i]);
    }
  }
  RefModel direct{3}, given{4};
};

std::vector<std::string> node_names(const prequant::Graph& g) {
  std::vector<std::string> names;
  for (const auto& n : g.nodes) names.push_back(n.name);
  return names;
}

TEST_F(Chains, ConnectedGraphComputesAndScalesAsTheDirectOne) {
  prequant::connect_layer_chains(given.graph, {{"l1", "l2"}, {"l2", "l3"}});
  EXPECT_NO_THROW(given.graph.lint());
  EXPECT_EQ(node_names(given.graph), (std::vector<std::string>{"l1", "l2", "l3"}));
  EXPECT_EQ(given.graph.graph_inputs, std::vector<std::string>{"l1:in"});
  EXPECT_EQ(given.graph.graph_outputs, std::vector<std::string>{"l3:out"});
  EXPECT_EQ(given.node("l2").inputs, std::vector<std::string>{"l1:out"});
  EXPECT_EQ(given.node("l3").inputs, std::vector<std::string>{"l2:out"});

  const auto inputs = direct.random_inputs(2, 7, 3.0);
  EXPECT_LT(max_rel_error(given.forward(inputs), direct.forward(inputs)), 1e-12);

  const std::vector<prequant::ClsSetSpec> sets{{{"l1", "l2"}}, {{"l2", "l3"}}};
  const auto want = prequant::scale_cls_sets(direct.graph, sets);
  const auto got = prequant::scale_cls_sets(given.graph, sets);
  ASSERT_EQ(got.sets.size(), want.sets.size());
  for (const char* name : {"l1", "l2", "l3"}) {
    EXPECT_EQ(read_all(given.node(name).weight.tensor), read_all(direct.node(name).weight.tensor)) << name;
    EXPECT_EQ(read_all(given.node(name).bias), read_all(direct.node(name).bias)) << name;
  }
}

TEST_F(Chains, RepeatedLinksAndLoneLayersAddNothing) {
  prequant::connect_layer_chains(given.graph, {{"l1", "l2"}, {"l1", "l2"}, {"l3"}});
  EXPECT_NO_THROW(given.graph.lint());
  EXPECT_EQ(node_names(given.graph), (std::vector<std::string>{"l3", "l1", "l2"}));  // heads as added
  EXPECT_EQ(given.graph.graph_inputs, (std::vector<std::string>{"l3:in", "l1:in"}));
  EXPECT_EQ(given.graph.graph_outputs, (std::vector<std::string>{"l3:out", "l2:out"}));
}

void expect_refused(RefModel& m, const std::vector<std::vector<std::string>>& chains, const std::string& says,
                    const std::string& node) {
  const auto before = GraphSnapshot::take(m.graph);
  try {
    prequant::connect_layer_chains(m.graph, chains);
    FAIL() << "accepted; expected: " << says;
  } catch (const prequant::InvalidRequestError& e) {
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    EXPECT_EQ(e.node(), node);
  }
  EXPECT_EQ(GraphSnapshot::take(m.graph).diff(before), "");
}

TEST_F(Chains, RefusesWhatNoChainGraphCanHoldAndChangesNothing) {
  expect_refused(given, {{"l1", "l2"}, {"l1", "l3"}}, "Linear 'l1' feeds two different layers", "l1");
  expect_refused(given, {{"l1", "l3"}, {"l2", "l3"}}, "Linear 'l3' is fed by two different layers", "l3");
  expect_refused(given, {{"l1", "l2"}, {"l2", "l1"}}, "in a cycle", "");
  expect_refused(given, {{"l1", "conv9"}}, "'conv9' is not a layer", "conv9");
}

}  // namespace
}  // namespace pqtest
