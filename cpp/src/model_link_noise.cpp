// model_link_noise.cpp — the data-free statistics of the quantization_noise criterion and the
// noise model of one link built from them (the objective and its minimiser: minimize_link_noise.cpp).
//
// Before: a link L1 → (activation) → L2 with the BN statistics folded after L1 (and, where known,
//         of L1's input), the weights as stored and the factors the sweep has deferred.
// After:  nothing changes; LinkNoise describes J(u) for the target weight quantizer.
// Model (all variances; noise sources independent, uniform quantization error Δ²/12):
//   activation a_c = g(z_c), z_c ~ N(β_c, |γ_c|) (the BN folded after L1, DFQ's assumption):
//     m_c = E[a_c²] and κ_c = E[g'(z_c)²] (how much of L1's output noise passes the activation),
//     by Simpson's rule over z ∈ β ± 8|γ| (g piecewise linear: ReLU, clip with its per-channel
//     bound, leaky ReLU, PReLU; pads and pools pass a through, which overstates an average pool's
//     second moment).
//   L1's input power: P1_c = Σ over row c's elements of E[x_i²]; E[x²] from the statistics of the
//     layer producing L1's input (its folded BN through the ReLU-like nodes between), else from a
//     Gaussian tensor (BN in the graph, an Add of such: mean² + std²), else estimated from L1's own
//     output statistics as Σ_c (β_c² + γ_c²) / Σ_c ||W1[c]||² (inputs of equal power, uncorrelated).
//   The activation is quantized per tensor, asymmetric 8-bit: its step is (max_c range_c)/255.
//     The range of a channel is act_c (estimate_activation_ranges), as the other criteria use.
// Channels the model cannot weigh (a zero or non-finite range, power or column) are `fixed`: the
// caller gives them the weight criterion's step, as the other criteria do.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <array>

#include "choose_cls_scales.h"
#include "minimize_link_noise.h"

namespace prequant {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double log_or_skip(double v) { return v > 0 && std::isfinite(v) ? std::log(v) : kNegInf; }

// The second moment and slope moment of g(z), z ~ N(mu, sigma), g = `between` for channel c.
ValueAndSlope moments_through(const Graph& graph, const std::vector<size_t>& between, size_t c, double mu, double sigma) {
  auto at = [&](double z) {
    ValueAndSlope v{z, 1.0};
    for (size_t b : between) {
      const auto n = pass_through_node(graph.nodes[b], c, v.value);
      v = {n->value, v.slope * n->slope};
    }
    return v;
  };
  if (!(sigma > 0)) {
    const ValueAndSlope v = at(mu);
    return {v.value * v.value, v.slope * v.slope};
  }
  constexpr int kIntervals = 1600;  // even, for Simpson; t ∈ [−8, 8]
  constexpr double kReach = 8.0;
  const double h = 2 * kReach / kIntervals;
  double second = 0.0, slope = 0.0;
  for (int k = 0; k <= kIntervals; ++k) {
    const double t = -kReach + k * h;
    const double w = (k == 0 || k == kIntervals ? 1.0 : (k % 2 ? 4.0 : 2.0)) * std::exp(-0.5 * t * t);
    const ValueAndSlope v = at(mu + sigma * t);
    second += w * v.value * v.value;
    slope += w * v.slope * v.slope;
  }
  const double norm = h / 3.0 / std::sqrt(2.0 * M_PI);
  return {second * norm, slope * norm};
}

bool modelled(const Graph& graph, const std::vector<size_t>& between) {
  for (size_t b : between)
    if (!pass_through_node(graph.nodes[b], 0, 0.0)) return false;
  return true;
}

}  // namespace

WeightPairs weight_pairs(const Weight& w) {
  std::map<std::pair<int64_t, int64_t>, std::array<double, 3>> cells;  // (out, in) -> max, Σ², count
  visit_channel_pairs(w, [&](int64_t o, int64_t i, std::span<const double> run) {
    auto& cell = cells[{o, i}];
    for (double v : run) {
      cell[0] = std::max(cell[0], std::abs(v));
      cell[1] += v * v;
    }
    cell[2] += static_cast<double>(run.size());
  });
  WeightPairs p;
  p.out_channels = w.out_channels();
  p.in_channels = w.in_channels();
  p.row_start.assign(static_cast<size_t>(p.out_channels) + 1, 0);
  for (const auto& [key, cell] : cells) {
    ++p.row_start[static_cast<size_t>(key.first) + 1];
    p.in.push_back(static_cast<uint32_t>(key.second));
    p.max_abs.push_back(cell[0]);
    p.sum_sq.push_back(cell[1]);
    p.count.push_back(cell[2]);
  }
  for (size_t o = 0; o + 1 < p.row_start.size(); ++o) p.row_start[o + 1] += p.row_start[o];
  return p;
}

std::optional<ActivationMoments> activation_moments(const Graph& graph, const FoldedBnStats& stats,
                                                    const std::vector<size_t>& between) {
  if (stats.gamma.size() != stats.beta.size() || !modelled(graph, between)) return std::nullopt;
  for (size_t b : between) {
    const Node& n = graph.nodes[b];
    if (n.kind == OpKind::PRelu && n.slope.numel() != 1 && static_cast<size_t>(n.slope.numel()) != stats.beta.size())
      return std::nullopt;
  }
  ActivationMoments m;
  for (size_t c = 0; c < stats.beta.size(); ++c) {
    const ValueAndSlope v = moments_through(graph, between, c, stats.beta[c], std::abs(stats.gamma[c]));
    m.second.push_back(v.value);
    m.gain.push_back(v.slope);
  }
  return m;
}

std::optional<std::vector<double>> input_second_moments(const Graph& graph, size_t layer, const ClsOptions& options,
                                                        const ChannelStatsMap& propagated,
                                                        std::span<const double> weight_out_factor,
                                                        std::span<const double> weight_in_factor,
                                                        std::string& source) {
  const Node& l = graph.nodes[layer];
  const size_t channels = static_cast<size_t>(l.in_channels());
  if (l.inputs.empty()) return std::nullopt;
  // 1. The layer producing the input, through per-channel nodes (a walk, not a recursion).
  std::vector<size_t> chain;
  std::string tensor = l.inputs[0];
  for (auto p = graph.producer(tensor); p;) {
    const Node& n = graph.nodes[*p];
    if (n.is_layer()) {
      const auto s = options.output_statistics.find(n.name);
      if (s == options.output_statistics.end() || s->second.beta.size() != channels) break;
      std::reverse(chain.begin(), chain.end());
      const auto m = activation_moments(graph, s->second, chain);
      if (!m) break;
      source = "the batch norm folded after '" + n.name + "'";
      return m->second;
    }
    if (n.inputs.size() != 1 || !pass_through_node(n, 0, 0.0)) break;
    chain.push_back(*p);
    p = graph.producer(n.inputs[0]);
  }
  // 2. A Gaussian tensor.
  const auto known = propagated.known.find(tensor = l.inputs[0]);
  if (known != propagated.known.end() && known->second.gaussian && known->second.mean.size() == channels &&
      known->second.std.size() == channels) {
    std::vector<double> e(channels);
    for (size_t c = 0; c < channels; ++c) e[c] = known->second.mean[c] * known->second.mean[c] + known->second.std[c] * known->second.std[c];
    source = "the Gaussian statistics of '" + tensor + "'";
    return e;
  }
  // 3. From the layer's own output: E[y_c²] ≈ ||W[c]||²·E[x²].
  const auto own = options.output_statistics.find(l.name);
  if (own == options.output_statistics.end()) return std::nullopt;
  const WeightPairs w = weight_pairs(l.weight);
  double power = 0.0, norm = 0.0;
  for (size_t o = 0; o < own->second.beta.size() && o + 1 < w.row_start.size(); ++o) {
    power += own->second.beta[o] * own->second.beta[o] + own->second.gamma[o] * own->second.gamma[o];
    for (uint32_t k = w.row_start[o]; k < w.row_start[o + 1]; ++k) {
      const double f = weight_out_factor[o] * weight_in_factor[w.in[k]];
      norm += w.sum_sq[k] * f * f;
    }
  }
  if (!(norm > 0) || !(power > 0) || !std::isfinite(power / norm)) return std::nullopt;
  source = "an estimate from the output statistics of '" + l.name + "'";
  return std::vector<double>(channels, power / norm);
}

LinkNoise model_link_noise(const LinkNoiseInputs& in, std::vector<bool>& fixed) {
  const WeightPairs& w1 = *in.w1;
  const WeightPairs& w2 = *in.w2;
  const size_t channels = in.r1.size();
  const double weight_levels = std::ldexp(1.0, in.weights.bits - 1) - 1.0;
  const double log_weight = -std::log(12.0 * weight_levels * weight_levels);
  const double log_activation = -std::log(12.0 * 255.0 * 255.0);
  // Per channel: q (L2's column power), n2 (L2's taps reading it), P1 (L1's row input power).
  std::vector<double> q(channels, 0.0), n2(channels, 0.0), p1(channels, 0.0);
  for (size_t o = 0; o + 1 < w2.row_start.size(); ++o)
    for (uint32_t k = w2.row_start[o]; k < w2.row_start[o + 1]; ++k) {
      const double f = in.w2_out[o] * in.w2_in[w2.in[k]];
      q[w2.in[k]] += w2.sum_sq[k] * f * f;
      n2[w2.in[k]] += w2.count[k];
    }
  for (size_t c = 0; c + 1 < w1.row_start.size(); ++c)
    for (uint32_t k = w1.row_start[c]; k < w1.row_start[c + 1]; ++k) p1[c] += w1.count[k] * in.input_second[w1.in[k]];
  fixed.assign(channels, false);
  for (size_t c = 0; c < channels; ++c) {
    const bool weighable = in.act[c] > 0 && in.second[c] > 0 && q[c] > 0 && in.r2[c] > 0 &&
                           (in.weights.per_channel || in.r1[c] > 0);
    fixed[c] = !weighable || !std::isfinite(in.act[c] * in.second[c] * q[c] * in.r2[c] * in.r1[c]);
  }
  LinkNoise noise;
  noise.channels = channels;
  std::vector<uint32_t> all(channels);
  for (size_t c = 0; c < channels; ++c) all[c] = static_cast<uint32_t>(c);
  auto add_term = [&](NoiseMax m, NoiseSum s, double log_coef) {
    noise.maxes.push_back(std::move(m));
    noise.sums.push_back(std::move(s));
    noise.terms.push_back({noise.maxes.size() - 1, noise.sums.size() - 1, log_coef});
  };
  auto per_channel = [&](auto value) {
    std::vector<double> v(channels);
    for (size_t c = 0; c < channels; ++c) v[c] = log_or_skip(value(c));
    return v;
  };
  // Activation (per tensor).
  add_term({all, per_channel([&](size_t c) { return in.act[c]; }), -1.0},
           {all, per_channel([&](size_t c) { return q[c]; }), 1.0}, log_activation);
  // L1's weights, per tensor (per channel: invariant to s, omitted).
  if (!in.weights.per_channel)
    add_term({all, per_channel([&](size_t c) { return in.r1[c]; }), -1.0},
             {all, per_channel([&](size_t c) { return p1[c] * in.gain[c] * q[c]; }), 1.0}, log_weight);
  // L2's weights.
  if (!in.weights.per_channel) {
    add_term({all, per_channel([&](size_t c) { return in.r2[c]; }), 1.0},
             {all, per_channel([&](size_t c) { return n2[c] * in.second[c]; }), -1.0}, log_weight);
  } else {
    for (size_t o = 0; o + 1 < w2.row_start.size(); ++o) {
      NoiseMax m{{}, {}, 1.0};
      NoiseSum s{{}, {}, -1.0};
      for (uint32_t k = w2.row_start[o]; k < w2.row_start[o + 1]; ++k) {
        const uint32_t c = w2.in[k];
        m.index.push_back(c);
        m.a.push_back(log_or_skip(w2.max_abs[k] * in.w2_out[o] * in.w2_in[c]));
        s.index.push_back(c);
        s.b.push_back(log_or_skip(w2.count[k] * in.second[c]));
      }
      // Rows of one group read the same channels with the same taps: share the sum.
      if (!noise.sums.empty() && noise.sums.back().index == s.index && noise.sums.back().b == s.b) {
        noise.maxes.push_back(std::move(m));
        noise.terms.push_back({noise.maxes.size() - 1, noise.sums.size() - 1, log_weight});
      } else {
        add_term(std::move(m), std::move(s), log_weight);
      }
    }
  }
  return noise;
}

}  // namespace prequant

namespace prequant {

LinkNoiseCriterion::LinkNoiseCriterion(const Graph& graph, const ClsOptions& options)
    : graph_(graph), options_(options), propagated_(propagate_channel_stats(graph, options.output_statistics)) {}

std::optional<LinkNoiseEntry> LinkNoiseCriterion::prepare(size_t l1, const std::vector<size_t>& between,
                                                          std::span<const double> w1_out, std::span<const double> w1_in,
                                                          std::string& why) const {
  const Node& l = graph_.nodes[l1];
  const auto s = options_.output_statistics.find(l.name);
  if (s == options_.output_statistics.end()) {
    why = "no batch norm was folded after '" + l.name + "' in this call, so its activation is unknown";
    return std::nullopt;
  }
  LinkNoiseEntry entry;
  auto moments = activation_moments(graph_, s->second, between);
  if (!moments || moments->second.size() != static_cast<size_t>(l.out_channels())) {
    why = "the activation after '" + l.name + "' is not modelled or its statistics do not match its channels";
    return std::nullopt;
  }
  entry.moments = std::move(*moments);
  auto input = input_second_moments(graph_, l1, options_, propagated_, w1_out, w1_in, entry.input_source);
  if (!input) {
    why = "the input power of '" + l.name + "' is unknown (no statistics before it, and its own give no estimate)";
    return std::nullopt;
  }
  entry.input_second = std::move(*input);
  return entry;
}

const WeightPairs& LinkNoiseCriterion::pairs(size_t layer) {
  auto it = pairs_.find(layer);
  if (it == pairs_.end()) it = pairs_.emplace(layer, weight_pairs(graph_.nodes[layer].weight)).first;
  return it->second;
}

std::vector<double> LinkNoiseCriterion::step(LinkNoiseInputs in, const LinkNoiseEntry& entry,
                                             std::span<const double> act_entry, std::span<const double> pass_out1,
                                             std::span<const double> pass_in1, const std::vector<double>& fallback) const {
  const size_t channels = in.r1.size();
  std::vector<double> act(channels), second(channels), input(entry.input_second.size());
  for (size_t c = 0; c < channels; ++c) {
    act[c] = act_entry[c] * pass_out1[c];
    second[c] = entry.moments.second[c] * pass_out1[c] * pass_out1[c];
  }
  for (size_t i = 0; i < input.size(); ++i) input[i] = entry.input_second[i] / (pass_in1[i] * pass_in1[i]);
  in.act = act;
  in.second = second;
  in.gain = entry.moments.gain;
  in.input_second = input;
  in.weights = options_.weight_quantization;
  std::vector<bool> fixed;
  const LinkNoise noise = model_link_noise(in, fixed);
  std::vector<double> u0(channels, 0.0);
  for (size_t c = 0; c < channels; ++c)
    if (fixed[c]) u0[c] = std::log(fallback[c]);
  const double lo = std::log(options_.min_scale), hi = std::log(options_.max_scale);
  const std::vector<double> u = minimize_link_noise(noise, u0, fixed, lo, hi);
  std::vector<double> s(channels);
  for (size_t c = 0; c < channels; ++c) s[c] = std::clamp(std::exp(u[c]), options_.min_scale, options_.max_scale);
  return s;
}

}  // namespace prequant
