// minimize_link_noise.h (internal) — the quantization_noise scale criterion of one CLS link
// L1 → (activation) → L2: the modelled INT8 noise at L2's outputs as a function of the step
// u = ln s (minimize_link_noise.cpp), and the data-free statistics it is built from
// (model_link_noise.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "prequant/graph.h"
#include "prequant/passes.h"
#include "propagate_channel_stats.h"

namespace prequant {

// ---- The objective (minimize_link_noise.cpp) ----------------------------------------------
// J(u) = Σ_t exp(log_coef_t) · (max_{c∈A_t} exp(a_c + sign_A·u_c))² · Σ_{c∈B_t} exp(b_c + 2·sign_B·u_c).
// Each term is log-convex in u, so ln J is convex. Terms share their max and sum parts by index.
struct NoiseMax {
  std::vector<uint32_t> index;
  std::vector<double> a;  // ln of a range (−inf: the channel does not count)
  double sign = 1.0;      // +1: the range grows with s (L2's columns); −1: it shrinks (L1's rows, activation)
};
struct NoiseSum {
  std::vector<uint32_t> index;
  std::vector<double> b;  // ln of a power (−inf: the channel does not count)
  double sign = 1.0;      // +1: s² (noise before L2, through its column); −1: 1/s² (L2's own input power)
};
struct NoiseTerm {
  size_t max_part = 0, sum_part = 0;
  double log_coef = 0.0;
};
struct LinkNoise {
  size_t channels = 0;
  std::vector<NoiseMax> maxes;
  std::vector<NoiseSum> sums;
  std::vector<NoiseTerm> terms;
};

// ln J(u); with tau > 0 each max is smoothed to tau·ln Σ exp(x/tau) (≥ the max, within tau·ln n),
// and `grad` (if given) receives ∂/∂u. −inf when every term is empty.
double log_link_noise(const LinkNoise& noise, std::span<const double> u, double tau = 0.0,
                      std::vector<double>* grad = nullptr);

// Minimises ln J over the channels not `fixed` (those keep u0's value), from u0, within
// [lo, hi] per channel: L-BFGS on the smoothed objective with tau decreasing to 1e-3, keeping the
// iterate with the lowest exact ln J. Returns it (u0 itself if nothing is lower).
std::vector<double> minimize_link_noise(const LinkNoise& noise, std::vector<double> u0,
                                        const std::vector<bool>& fixed, double lo, double hi);

// ---- The statistics (model_link_noise.cpp) -------------------------------------------------
// Per (output, input) channel pair of a weight, as stored (without deferred factors): max |W|,
// Σ W² and the element count (taps), rows ordered by output channel.
struct WeightPairs {
  int64_t out_channels = 0, in_channels = 0;
  std::vector<uint32_t> row_start;  // out_channels + 1 offsets into the arrays below
  std::vector<uint32_t> in;
  std::vector<double> max_abs, sum_sq, count;
};
WeightPairs weight_pairs(const Weight& w);

// E[g(z)²] and E[g'(z)²] per channel, z ~ N(β[c], |γ[c]|), g = the nodes `between` in order
// (pass_through_node). Nullopt if a node is not modelled or the sizes disagree.
struct ActivationMoments {
  std::vector<double> second;  // E[a²]: the input power the activation gives L2
  std::vector<double> gain;    // E[g'²]: the fraction of L1's output noise that reaches L2
};
std::optional<ActivationMoments> activation_moments(const Graph& graph, const FoldedBnStats& stats,
                                                    const std::vector<size_t>& between);

// E[x_i²] of `layer`'s input channels, in the units of the graph at entry: from the BN folded
// after the layer that produces the input, through the ReLU-like nodes, pads and pools between;
// else from a Gaussian tensor's mean and std (propagate_channel_stats); else the estimate
// Σ_c E[y_c²] / Σ_c ||W[c]||² from the layer's own output statistics (inputs of equal power,
// uncorrelated). `source` says which. Nullopt if none applies.
std::optional<std::vector<double>> input_second_moments(const Graph& graph, size_t layer, const ClsOptions& options,
                                                        const ChannelStatsMap& propagated,
                                                        std::span<const double> weight_out_factor,
                                                        std::span<const double> weight_in_factor,
                                                        std::string& source);

// What one link's model reads, all as the sweep sees the link now. Weights: stored pairs times
// total factors (deferred ones and this pass's); activation statistics: entry values times this
// pass's factor of L1's output (act·f, E[a²]·f², E[x²]/f_in²).
struct LinkNoiseInputs {
  const WeightPairs* w1 = nullptr;
  const WeightPairs* w2 = nullptr;
  std::span<const double> w1_out, w1_in, w2_out, w2_in;  // total weight factors (by magnitude)
  std::span<const double> r1, r2;                        // L1's row ranges, L2's column ranges now
  std::span<const double> act, second, gain;             // activation range, E[a²], E[g'²] now
  std::span<const double> input_second;                  // E[x²] of L1's inputs now
  WeightQuantizer weights;
};

// The link's J and which channels it cannot model (a zero range or power): those are `fixed`.
LinkNoise model_link_noise(const LinkNoiseInputs& in, std::vector<bool>& fixed);

// The criterion within one scale_cls_sets call: entry statistics per link, weight pairs per layer.
struct LinkNoiseEntry {
  ActivationMoments moments;          // of the activation between, at entry
  std::vector<double> input_second;   // E[x²] of L1's inputs, at entry
  std::string input_source;           // where E[x²] came from (input_second_moments)
};
class LinkNoiseCriterion {
 public:
  LinkNoiseCriterion(const Graph& graph, const ClsOptions& options);
  // Entry statistics of L1 → between; nullopt with `why` if the link cannot be modelled.
  std::optional<LinkNoiseEntry> prepare(size_t l1, const std::vector<size_t>& between,
                                        std::span<const double> w1_out, std::span<const double> w1_in,
                                        std::string& why) const;
  const WeightPairs& pairs(size_t layer);
  // The step for one link now: the minimiser of J over the modelled channels, `fallback[c]` (the
  // weight criterion's step) for the others, clamped to [min_scale, max_scale].
  // `in` without the statistics: those come from `entry` times this pass's factors
  // (pass_out1: L1's output factor, pass_in1: L1's input factor).
  std::vector<double> step(LinkNoiseInputs in, const LinkNoiseEntry& entry, std::span<const double> act_entry,
                           std::span<const double> pass_out1, std::span<const double> pass_in1,
                           const std::vector<double>& fallback) const;

 private:
  const Graph& graph_;
  const ClsOptions& options_;
  ChannelStatsMap propagated_;
  std::unordered_map<size_t, WeightPairs> pairs_;
};

}  // namespace prequant
