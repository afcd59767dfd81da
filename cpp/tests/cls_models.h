// cls_models.h — small models shared by the cross-layer-scaling tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "reference_model.h"

namespace pqtest {

// Random per-output-channel factors in [1e-2, 1e2] on `layer` (rows and bias): the imbalance
// cross-layer scaling should remove (very different s[c] afterwards). Same seed, same factors.
inline void unbalance(RefModel& m, const std::string& layer, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> d(std::log(1e-2), std::log(1e2));
  prequant::Node& n = m.node(layer);
  std::vector<double> f(static_cast<size_t>(n.out_channels()));
  for (auto& v : f) v = std::exp(d(rng));
  prequant::scale_out_channels(n.weight, f);
  if (!n.bias.empty())
    for (size_t c = 0; c < f.size(); ++c)
      write(n.bias, static_cast<int64_t>(c), read(n.bias, static_cast<int64_t>(c)) * f[c]);
}

// What sits between the two layers of a pair.
enum class Between {
  None, Relu, LeakyRelu, PReluPerChannel, PReluShared, Identity, ZeroPad, MaxPool, AvgPool,
  Relu6, ClipMinZeroNoMax, ReluPadPool,
};

inline const char* between_name(Between b) {
  switch (b) {
    case Between::None: return "nothing";
    case Between::Relu: return "relu";
    case Between::LeakyRelu: return "leaky_relu";
    case Between::PReluPerChannel: return "prelu_per_channel";
    case Between::PReluShared: return "prelu_shared";
    case Between::Identity: return "identity";
    case Between::ZeroPad: return "zero_pad";
    case Between::MaxPool: return "max_pool";
    case Between::AvgPool: return "avg_pool";
    case Between::Relu6: return "relu6";
    case Between::ClipMinZeroNoMax: return "clip_0_inf";
    case Between::ReluPadPool: return "relu_pad_pool";
  }
  return "?";
}

// Adds the nodes for `b` after tensor x (channel count c, spatial rank 2); returns the output
// tensor and appends the node names to `names`.
inline std::string add_between(RefModel& m, Between b, const std::string& x, int64_t c,
                               std::vector<std::string>& names) {
  auto add = [&](const std::string& name, const std::string& out) {
    names.push_back(name);
    return out;
  };
  switch (b) {
    case Between::None: return x;
    case Between::Relu: return add("act", m.relu("act", x));
    case Between::LeakyRelu: return add("act", m.leaky_relu("act", x, 0.1));
    case Between::PReluPerChannel: return add("act", m.prelu("act", x, c));
    case Between::PReluShared: return add("act", m.prelu("act", x, 1));
    case Between::Identity: return add("act", m.identity("act", x));
    case Between::ZeroPad: return add("act", m.zero_pad("act", x, {1, 2}, {2, 0}));
    case Between::MaxPool: return add("act", m.pool("act", x, true));
    case Between::AvgPool: return add("act", m.pool("act", x, false));
    case Between::Relu6: return add("act", m.clip("act", x, 0.0, 6.0));
    case Between::ClipMinZeroNoMax: return add("act", m.clip("act", x, 0.0, INFINITY));
    case Between::ReluPadPool: {
      auto y = add("act", m.relu("act", x));
      y = add("pad", m.zero_pad("pad", y, {1, 1}, {1, 1}));
      return add("pool", m.pool("pool", y, true));
    }
  }
  return x;
}

inline bool relu_like(Between b) {
  return b == Between::Relu || b == Between::LeakyRelu || b == Between::PReluPerChannel ||
         b == Between::PReluShared || b == Between::Relu6 || b == Between::ClipMinZeroNoMax ||
         b == Between::ReluPadPool;
}

inline ConvSpec conv_spec(int64_t in, int64_t out, std::vector<int64_t> kernel, std::vector<int64_t> pad = {},
                          int64_t groups = 1) {
  ConvSpec s;
  s.in = in;
  s.out = out;
  s.kernel = std::move(kernel);
  s.pad = std::move(pad);
  s.groups = groups;
  return s;
}

// x(3, 8, 8) → c1 (3→6, 3x3, pad 1) → [between] → c2 (6→5, 3x3) → output.
inline std::vector<std::string> build_pair(RefModel& m, Between b) {
  std::vector<std::string> names;
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  y = add_between(m, b, y, 6, names);
  m.output(m.conv("c2", y, conv_spec(6, 5, {3, 3})));
  return names;
}

// x → c1 → relu → c2 → relu → c3: two overlapping pairs.
inline void build_chain3(RefModel& m) {
  auto y = m.conv("c1", m.input("x", {3, 8, 8}), conv_spec(3, 6, {3, 3}, {1, 1}));
  y = m.conv("c2", m.relu("r1", y), conv_spec(6, 8, {3, 3}, {1, 1}));
  m.output(m.conv("c3", m.relu("r2", y), conv_spec(8, 4, {1, 1})));
}

// x → c1 → relu → dw → relu → c3: a triple.
inline void build_triple(RefModel& m, bool keras = false) {
  ConvSpec s1 = conv_spec(3, 6, {3, 3}, {1, 1}), sdw = conv_spec(6, 6, {3, 3}, {1, 1}, 6),
           s3 = conv_spec(6, 5, {1, 1});
  s1.keras = sdw.keras = s3.keras = keras;
  auto y = m.conv("c1", m.input("x", {3, 7, 7}), s1);
  y = m.conv("dw", m.relu("r1", y), sdw);
  m.output(m.conv("c3", m.relu("r2", y), s3));
}

}  // namespace pqtest
