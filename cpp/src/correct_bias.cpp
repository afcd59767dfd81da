// correct_bias.cpp — analytic (data-free) bias correction, DFQ §4.2: cancel the mean output shift
// that quantizing a layer's weight causes, using only the statistics of the batch norm before it.
//
// Before: layers L whose input x = act(z) comes from a batch norm (still in the graph, or folded
//         after the previous layer P, `stats[P]`), through at most one activation and any
//         identities / zero pads; the weight as equalization left it.
// After:  b[o] −= Σ_i (Σ_k ε[o, i, k])·E[x_i] for each such L (a bias is created if L had none).
//         This changes the FP32 function on purpose: the FP32 output moves by −ε·E[x], the
//         quantized one's mean returns to the FP32 model's.
// Formula: ε = Q(W) − W with Q the given quantizer (symmetric: s = max|W|/(2^(b−1)−1),
//   Q(w) = s·clamp(round(w/s), ±(2^(b−1)−1)); asymmetric: [min(W, 0), max(W, 0)] on 0..2^b−1 with a
//   rounded zero point; per tensor, or per output channel). Ties round to even, as numpy does.
//   z ~ N(β, |γ|) per channel (γ enters through its magnitude: a negative γ flips x̂, not the
//   distribution). E[x] = E[clip(z, lo, hi)] (clipped_normal_mean) for ReLU (0, ∞) and clip
//   (lo, hi, or a per-channel bound); leaky ReLU / PReLU with slope a: E[relu(z)] − a·E[relu(−z)];
//   identity: β. Groups: Σ_i runs over the group's input channels (the weight's layout says which).
// Preconditions: `stats` hold the BN folded after each layer as its output is *now* — after CLS
//   divided channel c by s[c] and high-bias absorption lowered it (track_folded_bn_stats does
//   this for equalize_model). Padding is ignored: border taps read zeros, not E[x] (DFQ does the
//   same); the error is a fraction of the correction, on border pixels only.
// Declined, with the node that stops it: an input not produced by a BN or a layer with a folded
//   BN (graph input, opaque node, a layer without statistics), pooling between (max pooling
//   changes the mean and the IR does not say which kind), two activations in a row, statistics
//   of the wrong size, and transposed convs (with stride s an output pixel sees about 1/s^d of
//   the kernel's taps; the IR does not record the stride, so the mean shift is unknown).
#include <algorithm>
#include <cmath>
#include <limits>

#include "pass_util.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

namespace {

double normal_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }
double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// Where a layer's input statistics come from.
struct InputSource {
  std::vector<double> mean, std;             // z ~ N(mean[c], std[c]) before the activation
  const Node* activation = nullptr;          // Relu / Clip / LeakyRelu / PRelu, or none
  std::string from;                          // node giving the statistics
  std::vector<std::string> between;          // node names, in graph order
};

// Walks back from `layer`'s input to the BN (or layer with a folded BN) its statistics come from.
// Iterative: one step per node between, so graph depth does not matter.
std::optional<InputSource> find_input_source(const Graph& graph, const Node& layer,
                                             const std::unordered_map<std::string, FoldedBnStats>& stats,
                                             std::string& why) {
  InputSource src;
  std::vector<std::string> between;
  std::string tensor = layer.inputs.empty() ? std::string() : layer.inputs[0];
  while (true) {
    const auto p = graph.producer(tensor);
    if (!p) {
      why = "its input '" + tensor + "' is a graph input: no batch norm gives its statistics";
      return std::nullopt;
    }
    const Node& n = graph.nodes[*p];
    switch (n.kind) {
      case OpKind::Identity:
      case OpKind::ZeroPad:
        between.push_back(n.name);
        tensor = n.inputs.at(0);
        continue;
      case OpKind::Relu:
      case OpKind::Clip:
      case OpKind::LeakyRelu:
      case OpKind::PRelu:
        if (src.activation) {
          why = "two activations ('" + n.name + "', '" + src.activation->name +
                "') sit between it and the batch norm before it; the engine models one";
          return std::nullopt;
        }
        src.activation = &n;
        between.push_back(n.name);
        tensor = n.inputs.at(0);
        continue;
      case OpKind::BatchNorm: {
        const auto gamma = n.gamma.to_doubles(), beta = n.beta.to_doubles();
        src.mean = beta;
        for (double g : gamma) src.std.push_back(std::abs(g));
        src.from = n.name;
        break;
      }
      case OpKind::Conv:
      case OpKind::Linear: {
        const auto s = stats.find(n.name);
        if (s == stats.end()) {
          why = "no batch norm follows '" + n.name + "' (none was folded after it), so the statistics of its "
                "input are unknown";
          return std::nullopt;
        }
        src.mean = s->second.beta;
        for (double g : s->second.gamma) src.std.push_back(std::abs(g));
        src.from = n.name;
        break;
      }
      case OpKind::Pool:
        why = "pooling '" + n.name + "' sits between: max pooling changes the mean, and the graph does not "
              "say which kind it is";
        return std::nullopt;
      case OpKind::Opaque:
        why = "'" + n.name + "' (" + n.op_type + ") sits between: its effect on the statistics is unknown";
        return std::nullopt;
      case OpKind::GatedActivation:
        why = "gated activation '" + n.name + "' (x·g(x)) sits between: the engine models E[x] only through "
              "ReLU-like activations (clipped normal means)";
        return std::nullopt;
    }
    break;
  }
  std::reverse(between.begin(), between.end());
  src.between = std::move(between);
  return src;
}

// E[act(z)] per channel.
std::vector<double> expected_input(const InputSource& src) {
  const size_t c = src.mean.size();
  std::vector<double> e(c);
  const Node* a = src.activation;
  const double inf = std::numeric_limits<double>::infinity();
  const auto slope = a && a->kind == OpKind::PRelu ? a->slope.to_doubles() : std::vector<double>{};
  for (size_t k = 0; k < c; ++k) {
    const double m = src.mean[k], s = src.std[k];
    if (!a) {
      e[k] = m;
    } else if (a->kind == OpKind::Relu) {
      e[k] = clipped_normal_mean(m, s, 0.0, inf);
    } else if (a->kind == OpKind::Clip) {
      const double hi = a->clip_max_per_channel.empty() ? a->clip_max : a->clip_max_per_channel[k];
      e[k] = clipped_normal_mean(m, s, a->clip_min, hi);
    } else {
      const double alpha = a->kind == OpKind::LeakyRelu ? a->alpha : slope[slope.size() == 1 ? 0 : k];
      e[k] = clipped_normal_mean(m, s, 0.0, inf) - alpha * clipped_normal_mean(-m, s, 0.0, inf);
    }
  }
  return e;
}

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
  for (size_t idx = 0; idx < graph.nodes.size(); ++idx) {
    const Node& layer = graph.nodes[idx];
    if (layer.removed || !layer.is_layer()) continue;
    auto decline = [&](std::string why) { result.declined.push_back({"correct_bias", {layer.name}, std::move(why)}); };
    if (layer.is_transposed()) {
      decline("'" + layer.name + "' is a transposed conv: with stride s an output pixel sees about 1/s^d of the "
              "kernel, and the graph does not record the stride, so the mean output shift is unknown");
      continue;
    }
    std::string why;
    const auto src = find_input_source(graph, layer, stats, why);
    if (!src) {
      decline(why);
      continue;
    }
    const size_t in = static_cast<size_t>(layer.in_channels());
    if (src->mean.size() != in) {
      decline("the statistics from '" + src->from + "' have " + std::to_string(src->mean.size()) +
              " channels, '" + layer.name + "' reads " + std::to_string(in));
      continue;
    }
    if (src->activation && src->activation->kind == OpKind::PRelu) {
      const auto n = src->activation->slope.numel();
      if (n != 1 && static_cast<size_t>(n) != in) {
        decline("PReLU '" + src->activation->name + "' has " + std::to_string(n) + " slopes for " +
                std::to_string(in) + " channels");
        continue;
      }
    }
    require_finite_layer(tx, layer);
    const auto e = expected_input(*src);
    for (size_t k = 0; k < e.size(); ++k)
      if (!std::isfinite(e[k]))
        throw InvalidParameterError("bias correction: the statistics from '" + src->from + "' for '" + layer.name +
                                        "' are not finite at channel " + std::to_string(k) + "; check the BN's "
                                        "gamma and beta",
                                    layer.name);
    const DeferredScale* pending = tx.pending(layer.weight);
    const std::vector<double> ones_out(static_cast<size_t>(layer.out_channels()), 1.0), ones_in(in, 1.0);
    BiasCorrection rec;
    rec.layer = layer.name;
    rec.statistics_from = src->from;
    rec.activations = src->between;
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

std::unordered_map<std::string, FoldedBnStats> track_folded_bn_stats(const FoldResult& fold, const ClsResult& cls,
                                                                      const HighBiasResult& high_bias,
                                                                      const ClsRegionsResult& regions) {
  std::unordered_map<std::string, FoldedBnStats> stats;
  for (const auto& pair : fold.folded)
    if (pair.request.direction == FoldDirection::ConvThenBn) stats[pair.request.layer] = pair.bn_stats;
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
