// choose_cls_scales.cpp — the scale criterion of a CLS link, and the data-free activation ranges
// the activation-aware criteria weigh in (used by scale_cls_sets.cpp).
//
// Before: a link L1 → (activation, pads, pools) → L2 with its ranges as the sweep sees them now.
// After:  the step s[c] the link applies (L1's row c and the activation divided by s[c], L2's
//         column c multiplied by it); nothing in the graph changes here.
// Why: dividing channel c by s[c] is seen by up to three quantizers: L1's weight (row range
//   r1[c]/s), the activation between, quantized per tensor (act[c]/s), and L2's weight (column
//   range r2[c]·s). Each alone is best with its channel ranges equal (s ∝ r1, s ∝ act, s ∝ 1/r2
//   resp.; a uniform factor is free, see gauge_clip_bounds.cpp); DFQ balances only the two
//   weights, which scatters the activation ranges that ReLU6 had made nearly equal ([0, 6]).
//   Balancing the ranges the quantizers see, in log space, with equal weights:
//     ln s = (p·ln r1 + a·ln act − c·ln r2) / (p + a + c)
//   (a fixed point where the weighted geometric mean of the sources' ranges equals the sink's).
//   weights                  p = 1, a = 0, c = 1: s = sqrt(r1/r2)  (DFQ; act unused)
//   weights_and_activations  p = ½, a = ½, c = 1: s = sqrt(sqrt(r1·act)/r2)  (per-tensor weights:
//                            the producer's row and the activation share the source side)
//   activations              p = 0, a = 1, c = 1: s = sqrt(act/r2)  (per-channel weights: L1's
//                            rows are quantized each on its own, so s does not change their
//                            error). Also into a depthwise L2, although per-channel quantization
//                            makes its column invariant too: with c = 0 (s = act) the estimate's
//                            error enters s with exponent 1, and a channel whose estimated range is
//                            near 0 but whose real activations are not then dominates the
//                            per-tensor activation range (measured: MobileNetV2 per-channel 16.3
//                            dB against 20.3 with c = 1; docs/BENCHMARKS.md).
//   Check: at the activations fixed point act[c]/s[c] = r2[c]·s[c] for every channel.
// Activation range, data-free: z ~ N(β[c], |γ[c]|) from the BN folded after L1 (DFQ's and
//   correct_bias.cpp's model, γ through its magnitude), carried through the activations between:
//   act[c] = max(|g(β − kσ)|, |g(β + kσ)|) with k = activation_sigmas (default 3): g monotone
//   per channel (ReLU, Clip/ReLU6 with its per-channel bound, LeakyReLU, PReLU; pads and pools
//   keep the range). A channel always clipped to 0 has no activation range: the weight criterion.
// Preconditions: statistics in the layer's output units as the graph is now (equalize_model
//   fills options.output_statistics from its fold; scale_model_with_regions carries them
//   between rounds with divide_output_statistics).
#include "choose_cls_scales.h"

#include <algorithm>
#include <cmath>

namespace prequant {

CriterionWeights criterion_weights(ScaleCriterion criterion) {
  switch (criterion) {
    case ScaleCriterion::Weights:
      return {1.0, 0.0, 1.0};
    case ScaleCriterion::WeightsAndActivations:
      return {0.5, 0.5, 1.0};
    case ScaleCriterion::Activations:
      return {0.0, 1.0, 1.0};
    case ScaleCriterion::QuantizationNoise:  // its channels without a noise model: DFQ
      return {1.0, 0.0, 1.0};
  }
  return {};
}

std::optional<double> criterion_scale(const CriterionWeights& w, double r1, double act, double r2) {
  double log_s = 0.0;
  for (const auto& [weight, range, sign] : {std::tuple{w.producer, r1, 1.0}, std::tuple{w.activation, act, 1.0},
                                            std::tuple{w.consumer, r2, -1.0}}) {
    if (weight == 0.0) continue;
    if (!(range > 0) || !std::isfinite(range)) return std::nullopt;
    log_s += sign * weight * std::log(range);
  }
  const double total = w.producer + w.activation + w.consumer;
  if (!(total > 0)) return std::nullopt;
  const double s = std::exp(log_s / total);
  return std::isfinite(s) && s > 0 ? std::optional<double>(s) : std::nullopt;
}

std::optional<ValueAndSlope> pass_through_node(const Node& n, size_t c, double z) {
  switch (n.kind) {
    case OpKind::Identity:
    case OpKind::ZeroPad:
    case OpKind::Pool:  // max or average over a window: within the window's range
      return ValueAndSlope{z, 1.0};
    case OpKind::Relu:
      return z > 0 ? ValueAndSlope{z, 1.0} : ValueAndSlope{0.0, 0.0};
    case OpKind::Clip: {
      const double hi = std::max(n.clip_min, c < n.clip_max_per_channel.size() ? n.clip_max_per_channel[c] : n.clip_max);
      if (z <= n.clip_min) return ValueAndSlope{n.clip_min, 0.0};
      if (z >= hi) return ValueAndSlope{hi, 0.0};
      return ValueAndSlope{z, 1.0};
    }
    case OpKind::LeakyRelu:
      return z >= 0 ? ValueAndSlope{z, 1.0} : ValueAndSlope{n.alpha * z, n.alpha};
    case OpKind::PRelu: {
      if (n.slope.empty()) return std::nullopt;
      const double a = n.slope.numel() == 1 ? n.slope.get(0) : n.slope.get(c);
      return z >= 0 ? ValueAndSlope{z, 1.0} : ValueAndSlope{a * z, a};
    }
    default:
      return std::nullopt;
  }
}

namespace {

std::optional<double> through(const Node& n, size_t c, double z) {
  const auto v = pass_through_node(n, c, z);
  return v ? std::optional<double>(v->value) : std::nullopt;
}

}  // namespace

std::optional<std::vector<double>> estimate_activation_ranges(const Graph& graph, size_t layer,
                                                              const std::vector<size_t>& between,
                                                              const ClsOptions& options, std::string& why) {
  const Node& l = graph.nodes[layer];
  const auto s = options.output_statistics.find(l.name);
  if (s == options.output_statistics.end()) {
    why = "no batch norm was folded after '" + l.name + "' in this call, so its activation range is unknown";
    return std::nullopt;
  }
  const size_t channels = static_cast<size_t>(l.out_channels());
  if (s->second.beta.size() != channels || s->second.gamma.size() != channels) {
    why = "the statistics recorded for '" + l.name + "' do not match its " + std::to_string(channels) + " channels";
    return std::nullopt;
  }
  for (size_t b : between) {
    const Node& n = graph.nodes[b];
    if (n.kind == OpKind::PRelu && n.slope.numel() != 1 && static_cast<size_t>(n.slope.numel()) != channels) {
      why = "PReLU '" + n.name + "' has slopes that do not match the channels";
      return std::nullopt;
    }
    if (!through(n, 0, 0.0)) {
      why = std::string(op_kind_name(n.kind)) + " '" + n.name + "' sits between: its output range is not modelled";
      return std::nullopt;
    }
  }
  const double k = options.activation_sigmas;
  std::vector<double> act(channels, 0.0);
  for (size_t c = 0; c < channels; ++c) {
    const double mu = s->second.beta[c], sigma = std::abs(s->second.gamma[c]);
    double lo = mu - k * sigma, hi = mu + k * sigma;
    for (size_t b : between) {
      lo = *through(graph.nodes[b], c, lo);
      hi = *through(graph.nodes[b], c, hi);
    }
    const double a = std::max(std::abs(lo), std::abs(hi));
    act[c] = std::isfinite(a) ? a : 0.0;
  }
  return act;
}

void divide_output_statistics(std::unordered_map<std::string, FoldedBnStats>& stats, const ClsResult& cls) {
  for (const auto& set : cls.sets)
    for (const auto& pair : set.pairs) {
      const auto s = stats.find(pair.layer1);
      if (s == stats.end()) continue;
      if (pair.scale.size() != s->second.beta.size()) {
        stats.erase(s);
        continue;
      }
      for (size_t c = 0; c < pair.scale.size(); ++c) {
        s->second.gamma[c] /= pair.scale[c];
        s->second.beta[c] /= pair.scale[c];
      }
    }
}

}  // namespace prequant
