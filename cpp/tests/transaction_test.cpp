// transaction_test.cpp — every mutating pass is atomic: with a failure injected before the
// n-th parameter write (n = 0, 1, 2, ... until the pass succeeds), the pass throws and leaves
// every parameter bit-identical and the graph structure unchanged. The eventual successful run
// must then produce exactly what a run without any injected failure produces.
#include <gtest/gtest.h>

#include <functional>
#include <thread>

#include "cls_models.h"
#include "prequant/errors.h"
#include "prequant/passes.h"
#include "prequant/testing.h"

namespace pqtest {
namespace {

using prequant::ClsSetSpec;
using prequant::OpKind;
using prequant::Relu6Policy;

// Same structure and bit-identical parameter values (models built from the same seed).
std::string compare_models(const RefModel& a, const RefModel& b) {
  if (a.graph.nodes.size() != b.graph.nodes.size()) return "node count";
  for (size_t k = 0; k < a.graph.nodes.size(); ++k) {
    const auto& x = a.graph.nodes[k];
    const auto& y = b.graph.nodes[k];
    if (x.name != y.name || x.kind != y.kind || x.removed != y.removed || x.inputs != y.inputs ||
        x.outputs != y.outputs || x.clip_min != y.clip_min || x.clip_max != y.clip_max ||
        x.clip_max_per_channel != y.clip_max_per_channel)
      return "structure of node '" + x.name + "'";
    const prequant::TensorView* tx[] = {&x.weight.tensor, &x.bias, &x.gamma, &x.beta, &x.mean, &x.var, &x.slope};
    const prequant::TensorView* ty[] = {&y.weight.tensor, &y.bias, &y.gamma, &y.beta, &y.mean, &y.var, &y.slope};
    for (int t = 0; t < 7; ++t) {
      if (tx[t]->empty() != ty[t]->empty()) return "parameter presence of node '" + x.name + "'";
      if (!tx[t]->empty() && read_all(*tx[t]) != read_all(*ty[t])) return "parameter values of node '" + x.name + "'";
    }
  }
  return {};
}

// Runs `pass(model)` with failures injected after n = 0, 1, 2, ... writes until it succeeds;
// `twin` gets the same pass without injection. Returns the number of failed runs.
int expect_atomic(RefModel& model, RefModel& twin, const std::function<void(RefModel&)>& pass) {
  int writes = 0;
  {
    FaultInjection count_only(-1);  // disabled, but writes are still counted
    pass(twin);
    writes = prequant::testing::writes_seen();
  }
  const auto snap = GraphSnapshot::take(model.graph);
  int failures = 0;
  for (int n = 0; n < 100000; ++n) {
    bool ok = false;
    {
      FaultInjection inject(n);
      try {
        pass(model);
        ok = true;
      } catch (const prequant::Error& e) {
        EXPECT_TRUE(contains(e.what(), "injected failure")) << e.what();
      }
    }
    if (ok) break;
    ++failures;
    const auto diff = snap.diff(GraphSnapshot::take(model.graph));
    if (!diff.empty()) {
      ADD_FAILURE() << "after a failure injected at write " << n << ": " << diff;
      return failures;
    }
  }
  EXPECT_EQ(compare_models(model, twin), "");
  // Every counted write is a point of failure: the pass fails exactly `writes` times.
  EXPECT_EQ(failures, writes);
  return failures;
}

// conv(no bias)→BN, BN→conv, linear→BN, transposed conv→BN.
void build_fold_model(RefModel& m) {
  ConvSpec s = conv_spec(3, 4, {3, 3}, {1, 1});
  s.bias = false;
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), s);
  y = m.relu("r1", m.batch_norm("bn1", y, 4));
  y = m.batch_norm("bn2", y, 4);
  y = m.conv("c2", y, conv_spec(4, 4, {1, 1}));
  ConvSpec t = conv_spec(4, 6, {2, 2}, {}, 2);
  t.transposed = true;
  t.stride = {2, 2};
  y = m.conv("ct", m.relu("r2", y), t);
  y = m.relu("r3", m.batch_norm("bn3", y, 6));
  y = m.linear("fc", m.global_avg_pool("gap", y), 6, 5, false);
  m.output(m.batch_norm("bn4", y, 5));
}

TEST(Atomicity, FoldBatchNorms) {
  RefModel m(1), twin(1);
  build_fold_model(m);
  build_fold_model(twin);
  const int failures = expect_atomic(m, twin, [](RefModel& x) {
    EXPECT_EQ(prequant::fold_batch_norms(x.graph).folded.size(), 4u);
  });
  EXPECT_GE(failures, 4);  // at least one write per fold
}

TEST(Atomicity, FoldGivenBatchNorms) {
  RefModel m(2), twin(2);
  build_fold_model(m);
  build_fold_model(twin);
  const int failures = expect_atomic(m, twin, [](RefModel& x) {
    prequant::fold_given_batch_norms(x.graph, {{"c1", "bn1", prequant::FoldDirection::ConvThenBn},
                                               {"fc", "bn4", prequant::FoldDirection::ConvThenBn}});
  });
  EXPECT_GE(failures, 2);
}

// Triple with ReLU6 on both sides, then an overlapping pair: bounds, iterations, several layers.
void build_cls_model(RefModel& m) {
  auto y = m.conv("c1", m.input("x", {3, 7, 7}), conv_spec(3, 6, {3, 3}, {1, 1}));
  y = m.conv("dw", m.clip("a1", y, 0, 6), conv_spec(6, 6, {3, 3}, {1, 1}, 6));
  y = m.conv("c3", m.clip("a2", y, 0, 6), conv_spec(6, 5, {1, 1}));
  m.output(m.conv("c4", m.relu("r3", y), conv_spec(5, 4, {1, 1})));
}

TEST(Atomicity, ScaleClsSetsBound) {
  RefModel m(3), twin(3);
  build_cls_model(m);
  build_cls_model(twin);
  prequant::ClsOptions o;
  o.max_iterations = 3;
  o.tolerance = 0;
  const int failures = expect_atomic(m, twin, [&](RefModel& x) {
    prequant::scale_cls_sets(x.graph, {ClsSetSpec{{"c1", "dw", "c3"}}, ClsSetSpec{{"c3", "c4"}}}, o);
  });
  EXPECT_GE(failures, 4);  // four weights
  EXPECT_FALSE(m.node("a1").clip_max_per_channel.empty());
}

TEST(Atomicity, ScaleClsSetsReplace) {
  RefModel m(4), twin(4);
  build_cls_model(m);
  build_cls_model(twin);
  prequant::ClsOptions o;
  o.relu6 = Relu6Policy::Replace;
  const int failures = expect_atomic(m, twin, [&](RefModel& x) { prequant::scale_model(x.graph, o); });
  EXPECT_GE(failures, 4);
  EXPECT_EQ(m.node("a1").kind, OpKind::Relu);
}

// conv→BN→ReLU6→conv(no bias)→BN→relu→conv: HBA writes biases, creates one, lowers clip bounds.
void build_hba_model(RefModel& m) {
  auto y = m.conv("c1", m.input("x", {3, 6, 6}), conv_spec(3, 4, {3, 3}, {1, 1}));
  y = m.clip("a1", m.batch_norm("bn1", y, 4), 0, 6);
  ConvSpec s = conv_spec(4, 5, {3, 3});  // unpadded: absorption into a padded layer is declined
  s.bias = false;
  y = m.conv("c2", y, s);
  y = m.relu("r2", m.batch_norm("bn2", y, 5));
  m.output(m.conv("c3", y, conv_spec(5, 2, {1, 1})));
  // Make the BN shifts large enough that something is absorbed.
  for (const char* bn : {"bn1", "bn2"}) {
    auto& n = m.node(bn);
    for (int64_t c = 0; c < n.beta.numel(); ++c) write(n.beta, c, 3 * std::abs(read(n.gamma, c)) + 1.0);
  }
}

struct HbaInputs {
  std::vector<prequant::ClsSetResult> sets;
  std::unordered_map<std::string, prequant::FoldedBnStats> stats;
};

HbaInputs prepare_hba(RefModel& m) {
  build_hba_model(m);
  HbaInputs in;
  for (const auto& f : prequant::fold_batch_norms(m.graph).folded) in.stats[f.request.layer] = f.bn_stats;
  in.sets = prequant::scale_model(m.graph).sets;
  return in;
}

TEST(Atomicity, AbsorbHighBias) {
  RefModel m(5), twin(5);
  const auto in = prepare_hba(m);
  prepare_hba(twin);
  ASSERT_EQ(in.sets.size(), 2u);
  ASSERT_TRUE(m.node("c2").bias.empty() == false);  // c2 got a bias from folding bn2
  const int failures = expect_atomic(m, twin, [&](RefModel& x) {
    const auto r = prequant::absorb_high_bias(x.graph, in.sets, in.stats);
    EXPECT_EQ(r.absorbed.size(), 2u);
  });
  EXPECT_GE(failures, 2);
}

TEST(Atomicity, AbsorbHighBiasCreatingLayer2Bias) {
  RefModel m(6), twin(6);
  auto build = [](RefModel& x) {
    auto y = x.linear("l1", x.input("x", {3}), 3, 2);
    x.output(x.linear("l2", x.relu("act", y), 2, 2, /*bias=*/false));
  };
  build(m);
  build(twin);
  prequant::ClsPairResult p;
  p.layer1 = "l1";
  p.layer2 = "l2";
  p.scale = {1, 1};
  p.relu_between = true;
  p.activations_between = {"act"};
  const std::vector<prequant::ClsSetResult> sets{{{p}}};
  const std::unordered_map<std::string, prequant::FoldedBnStats> stats{{"l1", {{0.1, 0.2}, {3, 4}}}};
  const int failures = expect_atomic(m, twin, [&](RefModel& x) {
    EXPECT_TRUE(prequant::absorb_high_bias(x.graph, sets, stats).absorbed.at(0).bias_added);
  });
  EXPECT_GE(failures, 1);
}

void build_equalize_model(RefModel& m) {
  auto y = m.conv("c0", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  y = m.clip("a0", m.batch_norm("bn0", y, 6), 0, 6);
  y = m.conv("dw", y, conv_spec(6, 6, {3, 3}, {1, 1}, 6));
  y = m.clip("a1", m.batch_norm("bn1", y, 6), 0, 6);
  y = m.conv("pw", y, conv_spec(6, 6, {1, 1}));
  y = m.relu("r2", m.batch_norm("bn2", y, 6));
  y = m.conv("pw_shared", y, conv_spec(6, 6, {1, 1}));
  m.node("pw_shared").weight = m.node("pw").weight;  // a module called twice
  y = m.batch_norm("bn3", y, 6);
  m.output(m.linear("fc", m.global_avg_pool("gap", y), 6, 3));
}

void check_equalize_atomic(Relu6Policy policy, uint32_t seed) {
  RefModel m(seed), twin(seed);
  build_equalize_model(m);
  build_equalize_model(twin);
  prequant::EqualizeOptions o;
  o.cls.relu6 = policy;
  o.cls.max_iterations = 3;
  o.cls.tolerance = 0;
  o.absorb_high_bias = true;
  const int failures = expect_atomic(m, twin, [&](RefModel& x) {
    const auto r = prequant::equalize_model(x.graph, o);
    EXPECT_EQ(r.unroll.copies.size(), 1u);
    EXPECT_EQ(r.fold.folded.size(), 4u);
    EXPECT_FALSE(r.high_bias.absorbed.empty());
  });
  EXPECT_GE(failures, 10);
  EXPECT_NE(m.node("pw").weight.tensor.data, m.node("pw_shared").weight.tensor.data);
}

TEST(Atomicity, EqualizeModelBound) { check_equalize_atomic(Relu6Policy::Bound, 7); }
TEST(Atomicity, EqualizeModelReplace) { check_equalize_atomic(Relu6Policy::Replace, 8); }

TEST(Atomicity, EqualizeModelRestoresUnrolledViews) {
  // A failure in the fold step must undo the unroll that ran before it.
  RefModel m(9);
  build_equalize_model(m);
  const void* shared = m.node("pw").weight.tensor.data;
  {
    FaultInjection inject(1);
    EXPECT_THROW(prequant::equalize_model(m.graph), prequant::Error);
  }
  EXPECT_EQ(m.node("pw_shared").weight.tensor.data, shared);
  EXPECT_EQ(m.node("pw_shared").weight.tensor.name, "pw.weight");
  EXPECT_TRUE(m.graph.find("bn0").has_value());
  EXPECT_NO_THROW(m.graph.lint());
}

TEST(Atomicity, UnrollSharedWeights) {
  RefModel m(10), twin(10);
  build_equalize_model(m);
  build_equalize_model(twin);
  // unroll only copies into the graph's arena and writes no existing parameter, so no
  // injected failure can reach it: it succeeds at n = 0.
  const int failures = expect_atomic(m, twin, [](RefModel& x) {
    EXPECT_EQ(prequant::unroll_shared_weights(x.graph).copies.size(), 1u);
  });
  EXPECT_EQ(failures, 0);
}

TEST(Atomicity, ReplaceRelu6WithRelu) {
  RefModel m(11), twin(11);
  build_equalize_model(m);
  build_equalize_model(twin);
  const int failures = expect_atomic(m, twin, [](RefModel& x) {
    EXPECT_EQ(prequant::replace_relu6_with_relu(x.graph).edits.size(), 2u);
  });
  EXPECT_EQ(failures, 0);
}

TEST(Atomicity, InvalidParameterLeavesGraphUntouched) {
  // A failure found after earlier pairs were written (a NaN in the second set's layers).
  RefModel m(13);
  build_cls_model(m);
  write(m.node("c4").weight.tensor, 3, std::nan(""));
  const auto snap = GraphSnapshot::take(m.graph);
  EXPECT_THROW(prequant::scale_cls_sets(m.graph, {ClsSetSpec{{"c1", "dw", "c3"}}, ClsSetSpec{{"c3", "c4"}}}),
               prequant::InvalidParameterError);
  EXPECT_EQ(snap.diff(GraphSnapshot::take(m.graph)), "");
}

// The hook is per thread: a pass on another graph, on another thread, neither fails nor counts
// (the counters were plain globals written by every pass: a data race between concurrent passes).
TEST(FaultInjectionHook, ArmsOnlyTheCallingThread) {
  RefModel here(211), there(211);
  build_pair(here, Between::Relu);
  build_pair(there, Between::Relu);
  FaultInjection inject(0);
  bool other_ok = false;
  std::thread other([&] {
    try {
      prequant::scale_model(there.graph);
      other_ok = true;
    } catch (const prequant::Error&) {
    }
  });
  other.join();
  EXPECT_TRUE(other_ok);
  EXPECT_EQ(prequant::testing::writes_seen(), 0);
  EXPECT_THROW(prequant::scale_model(here.graph), prequant::Error);
}

}  // namespace
}  // namespace pqtest
