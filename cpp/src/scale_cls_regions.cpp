// scale_cls_regions.cpp — cross-layer scaling of equalization regions (find_cls_regions.cpp).
//
// Before: regions (find_cls_regions, or the user's: sources and sinks by name).
// After:  the same function, with each region channel's largest source range balanced against
//         its largest sink range.
// Preconditions: each region is exactly the one find_cls_regions grows from its first source
//   (checked: InvalidRequestError otherwise); finite weights.
// Formula, per region channel j (r = per-channel max |W| under the factors deferred so far):
//   R_src[j]  = max over sources and their output channels c mapped to j of r_out[c]
//   R_sink[j] = max over sinks and their input channels c mapped to j of r_in[c]
//   s[j] = sqrt(R_src[j] / R_sink[j])   (DFQ's pair formula; Brevitas' sinks^(1−α)/srcs^α, α = ½)
//   every source: W[c] /= s[j], b[c] /= s[j];  every sink: W[:, c] *= s[j].
//   Then both maxima become sqrt(R_src·R_sink). A region's tensors all carry x[c]/s[j], which
//   every node in it passes on unchanged (positively homogeneous per channel, or linear: Add,
//   Concat, Split, pooling, resize), so the FP32 function is exact.
//   Guards: a zero or non-finite range gives s = 1; s is clamped to [min_scale, max_scale].
//   ReLU6 inside: 'replace' turns the clip into ReLU; 'bound' divides its per-channel upper
//   bound by s (exact), then gauge_clip_bounds.cpp multiplies the region's scales by one factor
//   so that every bound is ≤ 6; 'skip' regions were declined by find_cls_regions.
//   Gated activation inside (options.gated_activations): gate_scale[c] *= s[j] (x·g(x) with
//   x = s·x' is s·x'·g(s·x'): exact).
//   Regions sharing a layer (a sink of one is a source of the next) disturb each other: with
//   max_iterations > 1 all regions are swept again until no |ln s| reaches `tolerance`.
// Activation-aware scale_criterion (choose_cls_scales.cpp's weights p, a, c):
//   The region's tensors are activations quantized per tensor (the Add outputs of a residual
//   stream, the sources' outputs after their activations, a concatenation), and all of them
//   carry x[c]/s[j]; act[j] = their largest range in channel j, data-free from the sources'
//   folded BN statistics (estimate_region_activation_ranges.cpp), as the graph is now:
//     ln s[j] = (p·ln R_src[j] + a·ln act[j] − c·ln R_sink[j]) / (p + a + c)
//   With several sources and sinks each side enters through its largest range, as in the weight
//   formula: per channel, the layer whose range is largest is the one its own per-tensor
//   quantizer's step is closest to being set by, and act is one more source-side range (it is
//   divided by s like the sources' rows). Fixed point (weights_and_activations, p = a = ½, c = 1):
//   sqrt(R_src'[j]·act'[j]) = R_sink'[j] with every range as it ends; weights: the formula above.
//   One step reaches it when no layer is both a source and a sink of the region.
//   A channel whose act is 0 (always clipped to 0) takes the weight formula. A region whose
//   ranges cannot be estimated (a source with no folded BN, a gated activation inside) takes the
//   weight formula in every channel, with the reason in its result's criterion_fallback.
#include <algorithm>
#include <cmath>

#include "choose_cls_scales.h"
#include "cls_region.h"
#include "estimate_region_activation_ranges.h"
#include "gauge_clip_bounds.h"
#include "pass_util.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

namespace {

std::vector<std::string> names_of(const Graph& graph, const std::vector<size_t>& indices) {
  std::vector<std::string> out;
  for (size_t i : indices) out.push_back(graph.nodes[i].name);
  return out;
}

std::string listed(const std::vector<std::string>& names) {
  std::string s;
  for (size_t k = 0; k < names.size(); ++k) s += (k ? ", '" : "'") + names[k] + "'";
  return s;
}

PlannedRegion plan_region(const Graph& graph, const ClsRegionSpec& spec,
                          const std::unordered_map<std::string, int64_t>& counts, Relu6Policy relu6,
                          bool gated) {
  if (spec.sources.empty()) throw InvalidRequestError("a CLS region names no source layer");
  const auto start = graph.find(spec.sources[0]);
  if (!start) throw InvalidRequestError("CLS region names '" + spec.sources[0] + "', which is not in the graph",
                                        spec.sources[0]);
  if (!graph.nodes[*start].is_layer() || graph.nodes[*start].outputs.size() != 1)
    throw InvalidRequestError("CLS region names '" + spec.sources[0] + "' as a source; only conv and linear "
                              "layers can be scaled", spec.sources[0]);
  std::string why, blocker;
  PlannedRegion partial;
  auto region = grow_region(graph, *start, counts, relu6, why, blocker, partial, gated);
  if (!region)
    throw InvalidRequestError("cannot scale the region of '" + spec.sources[0] + "': " + why, spec.sources[0]);
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  const auto sources = names_of(graph, region->sources), sinks = names_of(graph, region->sinks);
  if (sorted(sources) != sorted(spec.sources) || sorted(sinks) != sorted(spec.sinks))
    throw InvalidRequestError("the region of '" + spec.sources[0] + "' has sources " + listed(sources) +
                                  " and sinks " + listed(sinks) + ", not the ones given (" + listed(spec.sources) +
                                  "; " + listed(spec.sinks) + "); pass find_cls_regions' regions",
                              spec.sources[0]);
  return std::move(*region);
}

double guarded(double r_src, double r_sink, const ClsOptions& o) {
  if (!(r_src > 0) || !(r_sink > 0)) return 1.0;
  const double s = std::sqrt(r_src / r_sink);
  return std::isfinite(s) ? std::clamp(s, o.min_scale, o.max_scale) : 1.0;
}

// The layer's per-channel ranges as its weight will be once the deferred factors apply.
ChannelRanges pending_ranges(const Transaction& tx, const Node& layer) {
  std::vector<double> out(static_cast<size_t>(layer.out_channels()), 1.0);
  std::vector<double> in(static_cast<size_t>(layer.in_channels()), 1.0);
  if (const DeferredScale* d = tx.pending(layer.weight)) {
    for (size_t c = 0; c < out.size(); ++c) out[c] = std::abs(d->out[c]);
    for (size_t c = 0; c < in.size(); ++c) in[c] = std::abs(d->in[c]);
  }
  return channel_ranges(layer.weight, out, in);
}

// One balancing step of region r; returns max |ln s| and multiplies `total` by s. `act0`: the
// activation ranges at the start of the call (the region's tensors are divided by `total` since),
// or null for the weight criterion.
double scale_region(Graph& graph, Transaction& tx, const PlannedRegion& r, std::vector<double>& total,
                    const std::vector<double>* act0, const ClsOptions& options) {
  const size_t k = static_cast<size_t>(r.channels);
  std::vector<double> r_src(k, 0.0), r_sink(k, 0.0);
  for (size_t l : r.sources) {
    const Node& n = graph.nodes[l];
    const auto& map = r.channel_of.at(n.outputs[0]);
    const auto ranges = pending_ranges(tx, n).out;
    for (size_t c = 0; c < map.size(); ++c) r_src[map[c]] = std::max(r_src[map[c]], ranges[c]);
  }
  for (size_t l : r.sinks) {
    const Node& n = graph.nodes[l];
    const auto& map = r.channel_of.at(n.inputs[0]);
    const auto ranges = pending_ranges(tx, n).in;
    for (size_t c = 0; c < map.size(); ++c) r_sink[map[c]] = std::max(r_sink[map[c]], ranges[c]);
  }
  std::vector<double> s(k);
  double max_log = 0.0;
  for (size_t j = 0; j < k; ++j) {
    std::optional<double> by_criterion;
    if (act0 && (*act0)[j] > 0)
      by_criterion = criterion_scale(criterion_weights(options.scale_criterion), r_src[j], (*act0)[j] / total[j], r_sink[j]);
    s[j] = by_criterion ? std::clamp(*by_criterion, options.min_scale, options.max_scale)
                        : guarded(r_src[j], r_sink[j], options);
    max_log = std::max(max_log, std::abs(std::log(s[j])));
    total[j] *= s[j];
  }
  for (size_t l : r.sources) {
    Node& n = graph.nodes[l];
    const auto& map = r.channel_of.at(n.outputs[0]);
    std::vector<double> f(map.size());
    for (size_t c = 0; c < f.size(); ++c) f[c] = 1.0 / s[map[c]];
    tx.defer_scale(n.weight, f, {});
    if (!n.bias.empty()) {
      detail::note_write();
      for (size_t c = 0; c < f.size(); ++c) n.bias.set(c, n.bias.get(c) * f[c]);
    }
  }
  for (size_t l : r.sinks) {
    const Node& n = graph.nodes[l];
    const auto& map = r.channel_of.at(n.inputs[0]);
    std::vector<double> f(map.size());
    for (size_t c = 0; c < f.size(); ++c) f[c] = s[map[c]];
    tx.defer_scale(n.weight, {}, f);
  }
  for (size_t b : r.clips) {
    Node& n = graph.nodes[b];
    if (n.kind != OpKind::Clip || n.clip_max_per_channel.empty()) continue;  // a ReLU, or replaced
    const auto& map = r.channel_of.at(n.inputs[0]);
    for (size_t c = 0; c < map.size(); ++c) n.clip_max_per_channel[c] /= s[map[c]];
  }
  for (size_t b : r.gates) {
    Node& n = graph.nodes[b];
    const auto& map = r.channel_of.at(n.inputs[0]);
    if (n.gate_scale.empty()) n.gate_scale.assign(map.size(), 1.0);
    for (size_t c = 0; c < map.size(); ++c) n.gate_scale[c] *= s[map[c]];
  }
  return max_log;
}

// Each source's output channel c was divided by scale[j] (j its region channel): so are the
// statistics of the BN folded after it.
void divide_source_statistics(const Graph& graph, const PlannedRegion& r, const std::vector<double>& scale,
                              std::unordered_map<std::string, FoldedBnStats>& statistics) {
  for (size_t l : r.sources) {
    const Node& n = graph.nodes[l];
    const auto it = statistics.find(n.name);
    if (it == statistics.end()) continue;
    const auto& map = r.channel_of.at(n.outputs[0]);
    if (it->second.gamma.size() != map.size() || it->second.beta.size() != map.size()) {
      statistics.erase(it);
      continue;
    }
    for (size_t c = 0; c < map.size(); ++c) {
      it->second.gamma[c] /= scale[static_cast<size_t>(map[c])];
      it->second.beta[c] /= scale[static_cast<size_t>(map[c])];
    }
  }
}

}  // namespace

ClsRegionsResult detail::scale_cls_regions_ungauged(Graph& graph, const std::vector<ClsRegionSpec>& specs,
                                                    const ClsOptions& options,
                                                    std::unordered_map<std::string, FoldedBnStats>* statistics) {
  const auto counts = tensor_channel_counts(graph);
  std::vector<PlannedRegion> regions;
  for (const auto& spec : specs)
    regions.push_back(plan_region(graph, spec, counts, options.relu6, options.gated_activations));

  Transaction tx(graph);
  for (const auto& r : regions)
    for (const auto* list : {&r.sources, &r.sinks})
      for (size_t l : *list) {
        require_finite_layer(tx, graph.nodes[l]);
        protect_node(tx, graph.nodes[l]);
      }

  ClsRegionsResult result;
  for (const auto& r : regions)
    for (size_t b : r.clips) {
      Node& n = graph.nodes[b];
      if (n.kind != OpKind::Clip || (!std::isfinite(n.clip_max) && n.clip_max_per_channel.empty())) continue;
      if (options.relu6 == Relu6Policy::Replace) {
        n.kind = OpKind::Relu;
        n.clip_max_per_channel.clear();
        result.activation_edits.push_back({n.name, ActivationEdit::Kind::ReplacedWithRelu, {}});
      } else if (n.clip_max_per_channel.empty()) {
        n.clip_max_per_channel.assign(r.channel_of.at(n.inputs[0]).size(), n.clip_max);
      }
    }

  // Activation ranges once, with the clips as the policy left them; later sweeps divide them by
  // the scales taken since (every region tensor carries x/s; its clips' bounds are divided too).
  std::vector<std::optional<std::vector<double>>> act0(regions.size());
  std::vector<std::string> fallback(regions.size());
  if (options.scale_criterion != ScaleCriterion::Weights && !regions.empty()) {
    const auto stats = propagate_channel_stats(graph, statistics ? *statistics : options.output_statistics);
    for (size_t k = 0; k < regions.size(); ++k)
      act0[k] = estimate_region_activation_ranges(graph, regions[k], stats, options.activation_sigmas, fallback[k]);
  }

  std::vector<std::vector<double>> total;
  for (const auto& r : regions) total.emplace_back(static_cast<size_t>(r.channels), 1.0);
  const int iterations = std::max(1, options.max_iterations);
  for (int it = 0; it < iterations && !regions.empty(); ++it) {
    double max_log = 0.0;
    for (size_t k = 0; k < regions.size(); ++k)
      max_log = std::max(max_log, scale_region(graph, tx, regions[k], total[k], act0[k] ? &*act0[k] : nullptr, options));
    result.iterations = it + 1;
    result.last_max_log_scale = max_log;
    if (max_log < options.tolerance) break;
  }
  result.converged = result.last_max_log_scale < options.tolerance;

  for (size_t k = 0; k < regions.size(); ++k) {
    ClsRegionResult out;
    out.sources = names_of(graph, regions[k].sources);
    out.sinks = names_of(graph, regions[k].sinks);
    out.nodes = names_of(graph, regions[k].nodes);
    if (!act0[k]) out.criterion_fallback = std::move(fallback[k]);
    if (statistics) divide_source_statistics(graph, regions[k], total[k], *statistics);
    out.scale = std::move(total[k]);
    result.regions.push_back(std::move(out));
  }
  for (const auto& r : regions)
    for (size_t b : r.clips) {
      const Node& n = graph.nodes[b];
      if (n.kind == OpKind::Clip && !n.clip_max_per_channel.empty())
        result.activation_edits.push_back({n.name, ActivationEdit::Kind::BoundedPerChannel, n.clip_max_per_channel, {}, n.clip_max});
    }
  for (const auto& r : regions)
    for (size_t b : r.gates)
      result.activation_edits.push_back({graph.nodes[b].name, ActivationEdit::Kind::GateScaled, {}, graph.nodes[b].gate_scale});
  tx.commit();
  return result;
}


ClsRegionsResult scale_cls_regions(Graph& graph, const std::vector<ClsRegionSpec>& specs,
                                   const ClsOptions& options) {
  Transaction tx(graph);
  clamp_clip_bounds(graph);
  ClsRegionsResult result = detail::scale_cls_regions_ungauged(graph, specs, options);
  ClsResult no_sets;
  gauge_clip_bounds(graph, no_sets, &result, options);
  tx.commit();
  return result;
}

}  // namespace prequant
