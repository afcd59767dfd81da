// estimate_region_activation_ranges.cpp — the activation range of each channel of an
// equalization region, data-free, as scale_cls_regions.cpp weighs it under an activation-aware
// scale_criterion.
//
// Before: a region (find_cls_regions.cpp) and the channel statistics of the graph as it is now
//         (propagate_channel_stats.cpp, from the BNs folded after the region's sources).
// After:  nothing changes; act[j] per region channel j, or a reason naming what stops it.
// Model, per tensor channel: an interval [lo, hi] holding the values but for a tail of
//   k = activation_sigmas standard deviations.
//   A Gaussian tensor (a source's output z ~ N(β, |γ|) of its folded BN, an Add or Concat of
//     Gaussians, independent inputs as propagate_channel_stats assumes): [μ − kσ, μ + kσ].
//   Otherwise from the producer's inputs, in graph order: ReLU, Clip (per-channel bound as it is
//     now), LeakyReLU, PReLU: g at lo, hi and 0 (piecewise linear, kinks at 0 and the bound);
//     Identity, Resize (nearest, linear: convex combinations), pooling (max, or an average) keep
//     the interval; a zero pad or a padded pool adds 0; Add of non-Gaussian inputs (a residual
//     stream after a ReLU): the sum of the intervals, an upper bound; Concat/Split: the slices.
//   A gated activation (x·g(x)) is not modelled: the region keeps the weight criterion.
// Which tensors count: every region tensor a per-tensor activation quantizer sees, i.e. all of
//   them but a tensor read only by ReLU/Clip (quantizers fuse that clamp into its producer:
//   onnxruntime QDQ, TFLite's fused activations), so the sources' outputs count after their
//   activations, the Add outputs and the concatenations as they are.
//   act[j] = max over those tensors and their channels c mapped to j of max(|lo_c|, |hi_c|): the
//   largest, the same rule as the region's source and sink weight ranges (scale_cls_regions.cpp).
#include "estimate_region_activation_ranges.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace prequant {

namespace {

struct Interval {
  std::vector<double> lo, hi;
};

std::string label(const Node& n) {
  return "'" + n.name + "' (" + (n.op_type.empty() ? op_kind_name(n.kind) : n.op_type) + ")";
}

// g(z) of a ReLU-like activation for channel c (parameters checked by the caller).
double activate(const Node& n, size_t c, double z) {
  switch (n.kind) {
    case OpKind::Relu:
      return std::max(z, 0.0);
    case OpKind::Clip: {
      const double hi = c < n.clip_max_per_channel.size() ? n.clip_max_per_channel[c] : n.clip_max;
      return std::clamp(z, n.clip_min, std::max(n.clip_min, hi));
    }
    case OpKind::LeakyRelu:
      return z >= 0 ? z : n.alpha * z;
    default: {  // PRelu
      const double a = n.slope.numel() == 1 ? n.slope.get(0) : n.slope.get(static_cast<int64_t>(c));
      return z >= 0 ? z : a * z;
    }
  }
}

bool fused_into_producer(const Graph& graph, const std::string& t) {
  const auto& readers = graph.consumers(t);
  if (readers.empty() || !graph.producer(t)) return false;
  return std::all_of(readers.begin(), readers.end(), [&](size_t u) {
    return graph.nodes[u].kind == OpKind::Relu || graph.nodes[u].kind == OpKind::Clip;
  });
}

class RangeModel {
 public:
  RangeModel(const Graph& g, const ChannelStatsMap& stats, double k) : g_(g), stats_(stats), k_(k) {}

  // The interval of tensor t from its Gaussian statistics, if it has them.
  bool from_statistics(const std::string& t) {
    const auto it = stats_.known.find(t);
    if (it == stats_.known.end() || !it->second.gaussian || it->second.std.size() != it->second.mean.size())
      return false;
    Interval v;
    for (size_t c = 0; c < it->second.mean.size(); ++c) {
      v.lo.push_back(it->second.mean[c] - k_ * it->second.std[c]);
      v.hi.push_back(it->second.mean[c] + k_ * it->second.std[c]);
    }
    iv_[t] = std::move(v);
    return true;
  }

  bool source(const Node& l, std::string& why) {
    if (from_statistics(l.outputs[0])) return true;
    why = why_unknown(g_, stats_, l.outputs[0]);
    return false;
  }

  bool node(const Node& n, std::string& why) {
    for (const auto& t : n.inputs)
      if (!iv_.count(t)) {
        why = "the range of '" + t + "', read by " + label(n) + ", is unknown";
        return false;
      }
    if (n.kind == OpKind::GatedActivation) {
      why = "gated activation " + label(n) + " (x·g(x)) is in the region: its output range is not modelled";
      return false;
    }
    bool all_gaussian = true;
    for (const auto& t : n.outputs) all_gaussian = from_statistics(t) && all_gaussian;
    if (all_gaussian) return true;
    const Interval& in = iv_.at(n.inputs.at(0));
    const size_t channels = in.lo.size();
    switch (n.kind) {
      case OpKind::Relu: case OpKind::Clip: case OpKind::LeakyRelu: case OpKind::PRelu: {
        if ((n.kind == OpKind::PRelu && n.slope.numel() != 1 && static_cast<size_t>(n.slope.numel()) != channels) ||
            (n.kind == OpKind::Clip && !n.clip_max_per_channel.empty() && n.clip_max_per_channel.size() != channels)) {
          why = label(n) + " has parameters that do not match its " + std::to_string(channels) + " channels";
          return false;
        }
        Interval v{std::vector<double>(channels), std::vector<double>(channels)};
        for (size_t c = 0; c < channels; ++c) {
          double a = activate(n, c, in.lo[c]), b = activate(n, c, in.hi[c]);
          double lo = std::min(a, b), hi = std::max(a, b);
          if (in.lo[c] < 0 && in.hi[c] > 0) lo = std::min(lo, activate(n, c, 0.0)), hi = std::max(hi, activate(n, c, 0.0));
          v.lo[c] = lo, v.hi[c] = hi;
        }
        iv_[n.outputs[0]] = std::move(v);
        return true;
      }
      case OpKind::Identity: case OpKind::Resize: case OpKind::ZeroPad: case OpKind::Pool: {
        Interval v = in;
        if (n.kind == OpKind::ZeroPad || (n.kind == OpKind::Pool && n.has_padding))
          for (size_t c = 0; c < channels; ++c) v.lo[c] = std::min(v.lo[c], 0.0), v.hi[c] = std::max(v.hi[c], 0.0);
        iv_[n.outputs[0]] = std::move(v);
        return true;
      }
      case OpKind::Add: {
        Interval v{std::vector<double>(channels, 0.0), std::vector<double>(channels, 0.0)};
        for (const auto& t : n.inputs) {
          const Interval& x = iv_.at(t);
          if (x.lo.size() != channels) {
            why = label(n) + " adds tensors of different channel counts";
            return false;
          }
          for (size_t c = 0; c < channels; ++c) v.lo[c] += x.lo[c], v.hi[c] += x.hi[c];
        }
        iv_[n.outputs[0]] = std::move(v);
        return true;
      }
      case OpKind::Concat: {
        Interval v;
        for (const auto& t : n.inputs) {
          const Interval& x = iv_.at(t);
          v.lo.insert(v.lo.end(), x.lo.begin(), x.lo.end());
          v.hi.insert(v.hi.end(), x.hi.begin(), x.hi.end());
        }
        iv_[n.outputs[0]] = std::move(v);
        return true;
      }
      case OpKind::Split: {
        for (size_t k = 0; k < n.outputs.size(); ++k) {
          const size_t b = static_cast<size_t>(n.slice_begin.at(k));
          const size_t e = std::min(channels, static_cast<size_t>(n.slice_end.at(k)));
          if (b >= e) {
            why = label(n) + " output " + std::to_string(k) + " has no channels";
            return false;
          }
          iv_[n.outputs[k]] = Interval{{in.lo.begin() + b, in.lo.begin() + e}, {in.hi.begin() + b, in.hi.begin() + e}};
        }
        return true;
      }
      default:
        why = label(n) + " is in the region but its output range is not modelled";
        return false;
    }
  }

  const Interval* find(const std::string& t) const {
    const auto it = iv_.find(t);
    return it == iv_.end() ? nullptr : &it->second;
  }

 private:
  const Graph& g_;
  const ChannelStatsMap& stats_;
  double k_;
  std::unordered_map<std::string, Interval> iv_;
};

}  // namespace

std::optional<std::vector<double>> estimate_region_activation_ranges(const Graph& graph, const PlannedRegion& region,
                                                                     const ChannelStatsMap& stats, double sigmas,
                                                                     std::string& why) {
  RangeModel model(graph, stats, sigmas);
  for (size_t s : region.sources)
    if (!model.source(graph.nodes[s], why)) return std::nullopt;
  for (size_t i : region.nodes)  // ascending index: graph (topological) order
    if (!model.node(graph.nodes[i], why)) return std::nullopt;
  std::vector<double> act(static_cast<size_t>(region.channels), 0.0);
  for (const auto& [t, map] : region.channel_of) {
    if (fused_into_producer(graph, t)) continue;
    const auto* v = model.find(t);
    if (!v || v->lo.size() != map.size()) {
      why = "the range of region tensor '" + t + "' is unknown";
      return std::nullopt;
    }
    for (size_t c = 0; c < map.size(); ++c) {
      const double r = std::max(std::abs(v->lo[c]), std::abs(v->hi[c]));
      if (std::isfinite(r)) act[static_cast<size_t>(map[c])] = std::max(act[static_cast<size_t>(map[c])], r);
    }
  }
  return act;
}

}  // namespace prequant
