// correct_bias.cpp — analytic (data-free) bias correction, DFQ §4.2: cancel the mean output shift
// that quantizing a layer's weight causes, using only the statistics of the batch norms before it.
//
// Before: layers L whose input statistics the engine knows (propagate_channel_stats.cpp: from
//         batch norms, still in the graph or folded after a layer — `stats[P]` — through ReLU-like
//         activations, identities, zero pads, residual Adds, Concats, Splits, average pools and
//         Resizes); the weight as equalization left it.
// After:  b[o] −= Σ_i (Σ_k ε[o, i, k])·E[x_i] for each such L (a bias is created if L had none).
//         This changes the FP32 function on purpose: the FP32 output moves by −ε·E[x], the
//         quantized one's mean returns to the FP32 model's.
// Formula: ε = Q(W) − W with Q the given quantizer (symmetric: s = max|W|/(2^(b−1)−1),
//   Q(w) = s·clamp(round(w/s), ±(2^(b−1)−1)); asymmetric: [min(W, 0), max(W, 0)] on 0..2^b−1 with a
//   rounded zero point; per tensor, or per output channel). Ties round to even, as numpy does.
//   E[x] as propagate_channel_stats.cpp derives it (z ~ N(β, |γ|) after each BN, clipped-normal
//   means through activations, E[a + b] = E[a] + E[b], slices through Concat/Split, kept through
//   average pooling and Resize). Groups: Σ_i runs over the group's input channels (the weight's
//   layout says which).
// Preconditions: `stats` hold the BN folded after each layer as its output is *now* — after CLS
//   divided channel c by s[c] and high-bias absorption lowered it (track_folded_bn_stats does
//   this for equalize_model). Padding is ignored: border taps read zeros, not E[x] (DFQ does the
//   same); the error is a fraction of the correction, on border pixels only.
// Declined, with the node that stops it: input statistics unknown (propagate_channel_stats.cpp
//   names why: a graph input, an opaque node, a layer without a folded BN, max pooling, an
//   activation after a non-Gaussian tensor...), statistics of the wrong size, and transposed convs
//   (with stride s an output pixel sees about 1/s^d of the kernel's taps; the IR does not record
//   the stride, so the mean shift is unknown).
#include <algorithm>
#include <cmath>
#include <limits>

#include "pass_util.h"
#include "propagate_channel_stats.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

namespace {

double normal_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }
double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// One quantization grid per output channel (all equal for per-tensor).
struct Grid {
  double scale = 0.0, zero = 0.0, qmin = 0.0, qmax = 0.0;
  double error(double w) const {
    if (scale == 0.0) return 0.0;
    const double q = std::clamp(std::nearbyint(w / scale) + zero, qmin, qmax);
    return (q - zero) * scale - w;
  }
};

// Σ_i (Σ_k ε[o, i, k])·e[i] for the weight as it will be (W·out[o]·in[i]).
std::vector<double> weight_error_shift(const Weight& w, const std::vector<double>& out, const std::vector<double>& in,
                                       const std::vector<double>& e, const WeightQuantizer& q) {
  const size_t n_out = static_cast<size_t>(w.out_channels());
  std::vector<double> lo(n_out, 0.0), hi(n_out, 0.0);  // ranges include 0, as onnxruntime's do
  visit_channel_pairs(w, [&](int64_t o, int64_t i, std::span<const double> run) {
    const double f = out[o] * in[i];
    for (double v : run) {
      lo[o] = std::min(lo[o], v * f);
      hi[o] = std::max(hi[o], v * f);
    }
  });
  if (!q.per_channel) {
    const double l = *std::min_element(lo.begin(), lo.end()), h = *std::max_element(hi.begin(), hi.end());
    std::fill(lo.begin(), lo.end(), l);
    std::fill(hi.begin(), hi.end(), h);
  }
  std::vector<Grid> grid(n_out);
  for (size_t o = 0; o < n_out; ++o) {
    if (q.symmetric) {
      const double levels = std::ldexp(1.0, q.bits - 1) - 1.0;
      grid[o] = {std::max(-lo[o], hi[o]) / levels, 0.0, -levels, levels};
    } else {
      const double top = std::ldexp(1.0, q.bits) - 1.0;
      const double scale = (hi[o] - lo[o]) / top;
      grid[o] = {scale, scale > 0 ? std::nearbyint(-lo[o] / scale) : 0.0, 0.0, top};
    }
  }
  std::vector<double> shift(n_out, 0.0);
  visit_channel_pairs(w, [&](int64_t o, int64_t i, std::span<const double> run) {
    const double f = out[o] * in[i];
    double sum = 0.0;
    for (double v : run) sum += grid[o].error(v * f);
    shift[o] += sum * e[i];
  });
  return shift;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

double clipped_normal_mean(double mean, double std, double lo, double hi) {
  if (!(std > 0.0)) return std::clamp(mean, lo, hi);
  // E = lo·Φ(αl) + μ·(Φ(αh) − Φ(αl)) + σ·(φ(αl) − φ(αh)) + hi·(1 − Φ(αh)); an infinite bound's
  // terms vanish.
  const double al = (lo - mean) / std, ah = (hi - mean) / std;
  const double cl = std::isinf(lo) ? 0.0 : normal_cdf(al), ch = std::isinf(hi) ? 1.0 : normal_cdf(ah);
  const double pl = std::isinf(lo) ? 0.0 : normal_pdf(al), ph = std::isinf(hi) ? 0.0 : normal_pdf(ah);
  double e = mean * (ch - cl) + std * (pl - ph);
  if (!std::isinf(lo)) e += lo * cl;
  if (!std::isinf(hi)) e += hi * normal_cdf(-ah);  // 1 − Φ(αh), without cancellation
  return e;
}

BiasCorrectionResult correct_bias(Graph& graph, const std::unordered_map<std::string, FoldedBnStats>& stats,
                                  const WeightQuantizer& quantizer) {
  if (quantizer.bits < 2 || quantizer.bits > 16)
    throw InvalidRequestError("bias correction: weight bits must be in 2..16, got " + std::to_string(quantizer.bits));
  Transaction tx(graph);
  graph.reindex();
  BiasCorrectionResult result;
  // Plan every layer first against the weights as they are, then write: correcting one layer's
  // bias does not change any other layer's statistics (they come from BNs, not from biases).
  struct Plan {
    size_t node;
    BiasCorrection record;
  };
  std::vector<Plan> plans;
  const ChannelStatsMap channel_stats = propagate_channel_stats(graph, stats);
  for (size_t idx = 0; idx < graph.nodes.size(); ++idx) {
    const Node& layer = graph.nodes[idx];
    if (layer.removed || !layer.is_layer()) continue;
    auto decline = [&](std::string why) { result.declined.push_back({"correct_bias", {layer.name}, std::move(why)}); };
    if (layer.is_transposed()) {
      decline("'" + layer.name + "' is a transposed conv: with stride s an output pixel sees about 1/s^d of the "
              "kernel, and the graph does not record the stride, so the mean output shift is unknown");
      continue;
    }
    const std::string x = layer.inputs.empty() ? std::string() : layer.inputs[0];
    const auto known = channel_stats.known.find(x);
    if (known == channel_stats.known.end()) {
      decline(why_unknown(graph, channel_stats, x));
      continue;
    }
    const ChannelStats& src = known->second;
    const std::string from = join(src.from);
    const size_t in = static_cast<size_t>(layer.in_channels());
    if (src.mean.size() != in) {
      decline("the statistics from '" + from + "' have " + std::to_string(src.mean.size()) + " channels, '" +
              layer.name + "' reads " + std::to_string(in));
      continue;
    }
    require_finite_layer(tx, layer);
    const auto& e = src.mean;
    for (size_t k = 0; k < e.size(); ++k)
      if (!std::isfinite(e[k]))
        throw InvalidParameterError("bias correction: the statistics from '" + from + "' for '" + layer.name +
                                        "' are not finite at channel " + std::to_string(k) + "; check the BN's "
                                        "gamma and beta",
                                    layer.name);
    const DeferredScale* pending = tx.pending(layer.weight);
    const std::vector<double> ones_out(static_cast<size_t>(layer.out_channels()), 1.0), ones_in(in, 1.0);
    BiasCorrection rec;
    rec.layer = layer.name;
    rec.statistics_from = from;
    for (size_t b : src.between) rec.activations.push_back(graph.nodes[b].name);
    rec.correction = weight_error_shift(layer.weight, pending ? pending->out : ones_out,
                                        pending ? pending->in : ones_in, e, quantizer);
    plans.push_back({idx, std::move(rec)});
  }
  for (auto& plan : plans) {
    Node& layer = graph.nodes[plan.node];
    if (!layer.bias.empty()) tx.protect(layer.bias);
    plan.record.bias_added = ensure_bias(graph, layer);
    detail::note_write();
    for (size_t o = 0; o < plan.record.correction.size(); ++o)
      layer.bias.set(static_cast<int64_t>(o), layer.bias.get(static_cast<int64_t>(o)) - plan.record.correction[o]);
    result.corrected.push_back(std::move(plan.record));
  }
  tx.commit();
  return result;
}

std::unordered_map<std::string, FoldedBnStats> folded_bn_stats(const FoldResult& fold) {
  std::unordered_map<std::string, FoldedBnStats> stats;
  for (const auto& pair : fold.folded)
    if (pair.request.direction == FoldDirection::ConvThenBn) stats[pair.request.layer] = pair.bn_stats;
  return stats;
}

std::unordered_map<std::string, FoldedBnStats> track_folded_bn_stats(const FoldResult& fold, const ClsResult& cls,
                                                                      const HighBiasResult& high_bias,
                                                                      const ClsRegionsResult& regions) {
  auto stats = folded_bn_stats(fold);
  // A size mismatch (a result not from this graph) drops the entry: correct_bias then declines
  // the layers it feeds, rather than using statistics that no longer describe them.
  const auto divide = [&stats](const std::string& layer, const std::vector<double>& scale) {
    const auto s = stats.find(layer);
    if (s == stats.end()) return;
    if (scale.size() != s->second.gamma.size()) {
      stats.erase(s);
      return;
    }
    for (size_t c = 0; c < scale.size(); ++c) {
      s->second.gamma[c] /= scale[c];
      s->second.beta[c] /= scale[c];
    }
  };
  for (const auto& set : cls.sets)
    for (const auto& pair : set.pairs) divide(pair.layer1, pair.scale);
  // A region source's output channel c was divided by the region's s[c] when the source owns
  // every region channel (Add, fan-out); a Concat source owns a slice the result does not record,
  // so its statistics are dropped and the layers it feeds are declined.
  for (const auto& region : regions.regions)
    for (const auto& source : region.sources) divide(source, region.scale);
  for (const auto& a : high_bias.absorbed) {
    const auto s = stats.find(a.layer1);
    if (s == stats.end()) continue;
    if (a.amount.size() != s->second.beta.size()) {
      stats.erase(s);
      continue;
    }
    for (size_t c = 0; c < a.amount.size(); ++c) s->second.beta[c] -= a.amount[c];
  }
  return stats;
}

}  // namespace prequant
