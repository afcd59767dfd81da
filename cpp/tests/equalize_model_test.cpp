// equalize_model_test.cpp — the whole pipeline on a MobileNet-like chain (BN, ReLU6, depthwise).
#include <gtest/gtest.h>

#include <cmath>

#include "cls_models.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

using prequant::EqualizeOptions;
using prequant::OpKind;
using prequant::Relu6Policy;

constexpr double kTol = 1e-4;

ConvSpec cs(int64_t in, int64_t out, std::vector<int64_t> k, std::vector<int64_t> pad, int64_t groups,
            bool keras, std::vector<int64_t> stride = {}) {
  ConvSpec s = conv_spec(in, out, std::move(k), std::move(pad), groups);
  s.bias = false;
  s.keras = keras;
  s.stride = std::move(stride);
  s.weight_scale = 1.0;  // uniform(-1, 1): large enough that the ReLU6s clip
  return s;
}

// x(3, 8, 8) → conv0 (s2) → bn0 → a0 → dw1 → bn1 → a1 → pw1 → bn2 → exp2 → bn3 → a3 → dw2 → bn4 → a4
//   → pw2 → bn5 → gap → fc. Activations a* are ReLU6 (Clip(0, 6)). With `residual`, bn5's output
//   is added to bn2's output (which then fans out).
void build_mobilenet(RefModel& m, bool keras = false, bool residual = false) {
  auto y = m.conv("conv0", m.input("x", {3, 8, 8}), cs(3, 8, {3, 3}, {1, 1}, 1, keras, {2, 2}));
  y = m.clip("a0", m.batch_norm("bn0", y, 8), 0, 6);
  y = m.conv("dw1", y, cs(8, 8, {3, 3}, {1, 1}, 8, keras));
  y = m.clip("a1", m.batch_norm("bn1", y, 8), 0, 6);
  y = m.conv("pw1", y, cs(8, 12, {1, 1}, {}, 1, keras));
  const auto skip = m.batch_norm("bn2", y, 12);
  y = m.conv("exp2", skip, cs(12, 24, {1, 1}, {}, 1, keras));
  y = m.clip("a3", m.batch_norm("bn3", y, 24), 0, 6);
  y = m.conv("dw2", y, cs(24, 24, {3, 3}, {1, 1}, 24, keras));
  y = m.clip("a4", m.batch_norm("bn4", y, 24), 0, 6);
  y = m.conv("pw2", y, cs(24, 12, {1, 1}, {}, 1, keras));
  y = m.batch_norm("bn5", y, 12);
  if (residual) y = m.opaque("add", {y, skip}, "add");
  y = m.global_avg_pool("gap", y);
  m.output(m.linear("fc", y, 12, 10, true, keras));
}

using Sets = std::vector<std::vector<std::string>>;

Sets set_layers(const prequant::ClsResult& r) {
  Sets out;
  for (const auto& s : r.sets) {
    std::vector<std::string> l{s.pairs[0].layer1};
    for (const auto& p : s.pairs) l.push_back(p.layer2);
    out.push_back(l);
  }
  return out;
}

EqualizeOptions options(Relu6Policy p, bool hba) {
  EqualizeOptions o;
  o.cls.relu6 = p;
  o.absorb_high_bias = hba;
  return o;
}

double max_of(const Tensor& t) {
  double m = -INFINITY;
  for (double v : t.data) m = std::max(m, v);
  return m;
}

class EqualizeMobileNet : public ::testing::TestWithParam<bool> {};  // param: Keras layouts

TEST_P(EqualizeMobileNet, BoundKeepsOutputWithoutHighBias) {
  RefModel m(101);
  build_mobilenet(m, GetParam());
  const auto inputs = m.random_inputs(2, 7, 2.0);
  const auto env = m.forward_all(inputs);
  int clipping = 0;
  for (const char* bn : {"bn0:out", "bn1:out", "bn3:out", "bn4:out"}) clipping += max_of(env.at(bn)) > 6.0;
  ASSERT_GE(clipping, 2) << "the ReLU6s must clip for the 'bound' policy to be tested";
  const auto before = m.forward(inputs);

  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Bound, false));
  EXPECT_EQ(r.fold.folded.size(), 6u);
  EXPECT_TRUE(r.fold.declined.empty());
  for (const auto& n : m.graph.nodes) {
    if (n.kind == OpKind::BatchNorm) {
      EXPECT_TRUE(n.removed) << n.name;
    }
    if (n.is_layer()) {
      EXPECT_FALSE(n.bias.empty()) << n.name;
    }
  }
  EXPECT_EQ(set_layers(r.cls), (Sets{{"conv0", "dw1", "pw1"}, {"pw1", "exp2"}, {"exp2", "dw2", "pw2"}, {"pw2", "fc"}}));
  EXPECT_EQ(r.cls.activation_edits.size(), 4u);
  for (const char* a : {"a0", "a1", "a3", "a4"}) {
    EXPECT_EQ(m.node(a).kind, OpKind::Clip);
    EXPECT_FALSE(m.node(a).clip_max_per_channel.empty()) << a;
  }
  EXPECT_GT(r.cls.iterations, 1);
  EXPECT_TRUE(r.high_bias.absorbed.empty());
  EXPECT_TRUE(r.unroll.copies.empty());
  EXPECT_NO_THROW(m.graph.lint());
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

INSTANTIATE_TEST_SUITE_P(Layouts, EqualizeMobileNet, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "keras" : "torch"; });

TEST(EqualizeModel, HighBiasAbsorptionApplied) {
  RefModel with(101), without(101);
  build_mobilenet(with);
  build_mobilenet(without);
  const auto r = prequant::equalize_model(with.graph, options(Relu6Policy::Bound, true));
  const auto r0 = prequant::equalize_model(without.graph, options(Relu6Policy::Bound, false));
  EXPECT_TRUE(r0.high_bias.absorbed.empty());
  // Six pairs; the two into a padded depthwise (dw1, dw2) are declined, naming the border.
  ASSERT_EQ(r.high_bias.absorbed.size(), 4u);
  ASSERT_EQ(r.high_bias.declined.size(), 2u);
  for (const auto& d : r.high_bias.declined) {
    EXPECT_TRUE(d.nodes.at(1) == "dw1" || d.nodes.at(1) == "dw2") << d.nodes.at(1);
    EXPECT_TRUE(contains(d.reason, "border")) << d.reason;
  }
  // Same CLS either way (HBA runs after it).
  ASSERT_EQ(set_layers(r.cls), set_layers(r0.cls));

  std::unordered_map<std::string, prequant::FoldedBnStats> stats;
  for (const auto& f : r.fold.folded) stats[f.request.layer] = f.bn_stats;
  size_t pair_index = 0;
  for (const auto& s : r.cls.sets)
    for (const auto& p : s.pairs) {
      if (p.layer2 == "dw1" || p.layer2 == "dw2") continue;
      const auto& a = r.high_bias.absorbed.at(pair_index++);
      ASSERT_EQ(a.layer1, p.layer1);
      ASSERT_EQ(a.layer2, p.layer2);
      const auto& st = stats.at(p.layer1);
      // The clip between (if any), as CLS left it in the run without HBA.
      const prequant::Node* clip = nullptr;
      for (const auto& n : p.activations_between)
        if (without.node(n).kind == OpKind::Clip) clip = &without.node(n);
      for (size_t k = 0; k < a.amount.size(); ++k) {
        const double beta = st.beta[k] / p.scale[k], gamma = st.gamma[k] / p.scale[k];
        double c = p.relu_between ? std::max(0.0, beta - 3 * std::abs(gamma)) : beta;
        if (clip) {
          c = std::min(c, clip->clip_max_per_channel[k]);
          EXPECT_NEAR(with.node(clip->name).clip_max_per_channel[k], clip->clip_max_per_channel[k] - c, 1e-9);
        }
        EXPECT_NEAR(a.amount[k], c, 1e-9 * (1 + std::abs(c))) << p.layer1 << " channel " << k;
      }
    }
  // dw2 is the layer1 of one absorption and the layer2 only of a declined one: its bias dropped
  // by exactly c.
  const auto& cdw2 = r.high_bias.absorbed.at(2).amount;
  ASSERT_EQ(r.high_bias.absorbed.at(2).layer1, "dw2");
  const auto b_with = read_all(with.node("dw2").bias), b_without = read_all(without.node("dw2").bias);
  for (size_t k = 0; k < cdw2.size(); ++k)
    EXPECT_NEAR(b_with[k], b_without[k] - cdw2[k], 1e-5 * (1 + std::abs(cdw2[k])));
  // fc is only ever a layer2: its bias rose by W_fc·c.
  const auto& cpw2 = r.high_bias.absorbed.back().amount;
  const auto& wfc = without.node("fc").weight;
  std::vector<double> expect = read_all(without.node("fc").bias);
  for_each_weight_element(without.layout_of("fc"), wfc.tensor.shape, 1,
                          [&](int64_t o, int64_t i, int64_t idx) { expect[o] += read(wfc.tensor, idx) * cpw2[i]; });
  const auto got = read_all(with.node("fc").bias);
  for (size_t o = 0; o < got.size(); ++o) EXPECT_NEAR(got[o], expect[o], 1e-4 * (1 + std::abs(expect[o])));
  // The linear-bottleneck pair (pw1, exp2) has no activation: c = β' (absorbs everything).
  EXPECT_FALSE(r.cls.sets[1].pairs[0].relu_between);
}

TEST(EqualizeModel, ReplacePolicyEqualsTheReluModel) {
  RefModel m(103), relu_model(103);
  build_mobilenet(m);
  build_mobilenet(relu_model);
  for (const char* a : {"a0", "a1", "a3", "a4"}) relu_model.node(a).kind = OpKind::Relu;
  const auto inputs = m.random_inputs(2, 5, 2.0);
  const auto relu_out = relu_model.forward(inputs);
  ASSERT_GT(max_rel_error(relu_out, m.forward(inputs)), 1e-3) << "ReLU6 must matter on these inputs";
  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Replace, false));
  EXPECT_EQ(r.cls.activation_edits.size(), 4u);  // scale_cls_sets replaces the clips it scales across
  for (const char* a : {"a0", "a1", "a3", "a4"}) EXPECT_EQ(m.node(a).kind, OpKind::Relu) << a;
  EXPECT_EQ(r.cls.sets.size(), 4u);
  EXPECT_LT(max_rel_error(relu_out, m.forward(inputs)), kTol);
}

TEST(EqualizeModel, SkipPolicyScalesOnlyClipFreePairs) {
  RefModel m(107);
  build_mobilenet(m);
  const auto inputs = m.random_inputs(2, 5, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Skip, false));
  EXPECT_EQ(set_layers(r.cls), (Sets{{"pw1", "exp2"}, {"pw2", "fc"}}));
  for (const char* l : {"conv0", "dw1", "exp2", "dw2"}) {
    const auto* d = find_declined(r.cls.declined, l);
    ASSERT_NE(d, nullptr) << l;
    EXPECT_TRUE(contains(d->reason, "skip")) << d->reason;
  }
  for (const char* a : {"a0", "a1", "a3", "a4"}) {
    EXPECT_EQ(m.node(a).kind, OpKind::Clip);
    EXPECT_TRUE(m.node(a).clip_max_per_channel.empty());
  }
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(EqualizeModel, WithoutFoldingBatchNormsBlockEverySet) {
  RefModel m(109);
  build_mobilenet(m);
  const auto inputs = m.random_inputs(2, 5);
  const auto before = m.forward(inputs);
  EqualizeOptions o = options(Relu6Policy::Bound, true);
  o.fold = false;
  const auto r = prequant::equalize_model(m.graph, o);
  EXPECT_TRUE(r.fold.folded.empty());
  EXPECT_TRUE(r.cls.sets.empty());
  EXPECT_TRUE(r.high_bias.absorbed.empty());
  const auto* d = find_declined(r.cls.declined, "conv0");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "batch norm 'bn0'")) << d->reason;
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), 1e-12);
}

TEST(EqualizeModel, ResidualFanOutIsDeclinedAndOutputKept) {
  RefModel m(113);
  build_mobilenet(m, false, true);
  const auto inputs = m.random_inputs(2, 5, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Bound, false));
  EXPECT_EQ(set_layers(r.cls), (Sets{{"conv0", "dw1", "pw1"}, {"exp2", "dw2", "pw2"}}));
  const auto* d = find_declined(r.cls.declined, "pw1");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(contains(d->reason, "'exp2' and 'add'")) << d->reason;
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(EqualizeModel, UnrollsSharedWeightsFirst) {
  RefModel m(127);
  auto y = m.conv("a", m.input("x", {4, 6, 6}), conv_spec(4, 4, {3, 3}, {1, 1}));
  y = m.relu("ra", m.batch_norm("bna", y, 4));
  y = m.conv("b", y, conv_spec(4, 4, {3, 3}, {1, 1}));
  m.node("b").weight = m.node("a").weight;
  m.node("b").bias = m.node("a").bias;
  m.output(m.relu("rb", m.batch_norm("bnb", y, 4)));
  const auto inputs = m.random_inputs(2, 1);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Bound, false));
  EXPECT_EQ(r.unroll.copies.size(), 2u);
  EXPECT_EQ(r.fold.folded.size(), 2u);
  EXPECT_EQ(r.cls.sets.size(), 1u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

TEST(EqualizeModel, SecondRunFindsNothingToFoldOrAbsorb) {
  RefModel m(131);
  build_mobilenet(m);
  prequant::equalize_model(m.graph, options(Relu6Policy::Bound, true));
  const auto inputs = m.random_inputs(2, 5, 2.0);
  const auto before = m.forward(inputs);
  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Bound, true));
  EXPECT_TRUE(r.fold.folded.empty());
  EXPECT_TRUE(r.high_bias.absorbed.empty());
  EXPECT_EQ(r.high_bias.declined.size(), 6u);
  EXPECT_LT(max_rel_error(before, m.forward(inputs)), kTol);
}

// x → conv0 → bn0 → a0 → conv1 → bn1 → a1 → t (opaque) → conv2 → a2 (output clamp at 1).
// Only conv0 → a0 → conv1 is scaled; a1 sits in no scaled pair, a2 clamps the output.
void build_clamped(RefModel& m) {
  auto y = m.conv("conv0", m.input("x", {3, 6, 6}), cs(3, 8, {3, 3}, {1, 1}, 1, false));
  y = m.clip("a0", m.batch_norm("bn0", y, 8), 0, 6);
  y = m.conv("conv1", y, cs(8, 8, {1, 1}, {}, 1, false));
  y = m.clip("a1", m.batch_norm("bn1", y, 8), 0, 6);
  y = m.conv("conv2", m.opaque("t", {y}), cs(8, 4, {1, 1}, {}, 1, false));
  m.output(m.clip("a2", y, 0, 1.0));
}

// Before: 'replace' rewrote every Clip(0, m) in the graph, the output clamp included.
TEST(EqualizeModel, ReplaceTouchesOnlyClipsBetweenScaledLayers) {
  RefModel m(113), expected(113), all_relu(113);
  build_clamped(m);
  build_clamped(expected);
  build_clamped(all_relu);
  expected.node("a0").kind = OpKind::Relu;
  for (const char* a : {"a0", "a1", "a2"}) all_relu.node(a).kind = OpKind::Relu;
  const auto inputs = m.random_inputs(2, 5, 3.0);
  const auto want = expected.forward(inputs);
  ASSERT_GT(max_rel_error(want, all_relu.forward(inputs)), 1e-3) << "a1/a2 must clip on these inputs";
  const auto r = prequant::equalize_model(m.graph, options(Relu6Policy::Replace, false));
  EXPECT_EQ(set_layers(r.cls), (Sets{{"conv0", "conv1"}}));
  EXPECT_EQ(m.node("a0").kind, OpKind::Relu);
  EXPECT_EQ(m.node("a1").kind, OpKind::Clip);
  EXPECT_EQ(m.node("a2").kind, OpKind::Clip);
  ASSERT_EQ(r.cls.activation_edits.size(), 1u);
  EXPECT_EQ(r.cls.activation_edits[0].node, "a0");
  EXPECT_TRUE(r.activations.edits.empty());
  EXPECT_LT(max_rel_error(want, m.forward(inputs)), kTol);
}

// The standalone pass keeps AIMET's meaning: every ReLU6 becomes ReLU.
TEST(EqualizeModel, StandaloneReplaceRelu6StillReplacesEveryClip) {
  RefModel m(127);
  build_clamped(m);
  const auto r = prequant::replace_relu6_with_relu(m.graph);
  EXPECT_EQ(r.edits.size(), 3u);
  for (const char* a : {"a0", "a1", "a2"}) EXPECT_EQ(m.node(a).kind, OpKind::Relu) << a;
}

}  // namespace
}  // namespace pqtest
