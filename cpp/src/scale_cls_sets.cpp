// scale_cls_sets.cpp — cross-layer scaling: equalize per-channel weight ranges across a set.
//
// Before: CLS sets (find_cls_sets or the user's): pairs L1 → L2, triples L1 → DW → L3.
// After:  the same function, with each shared channel's weight ranges made equal.
// Preconditions: each set is adjacent as find_cls_sets defines it (checked: InvalidRequestError
//   otherwise); finite weights.
// Formula (r = per-channel max |W|; out ranges of L1/DW, in ranges of L2/L3):
//   pair    s = sqrt(r1/r2);  W1[c] /= s, b1[c] /= s, W2[:,c] *= s.  Both ranges → sqrt(r1·r2).
//   triple  P = r1·r2·r3; S12 = r1/P^(1/3); S23 = P^(1/3)/r3;
//           W1[c] /= S12, b1[c] /= S12; Wdw[c] *= S12/S23, bdw[c] /= S23; W3[:,c] *= S23.
//   Guards: a channel with a zero range gets scale 1; s is clamped to [min_scale, max_scale].
//   options.scale_criterion other than Weights (choose_cls_scales.cpp): a set with activation
//   statistics on at least one link steps each link (a pair, or each of a triple's two links in
//   turn) by ln s = (p·ln r1 + a·ln act − c·ln r2)/(p+a+c), act = the activation range between
//   from the BN statistics, as the link is now; in such a set a link without statistics, or a
//   channel without an activation range, uses the pair formula above. A set with no activation
//   statistics on any link takes DFQ's closed forms above (pair, triple), exactly as Weights.
//   The chain correction runs only while no set steps links (its coupling model is the weight
//   criterion's; the activation term weakens the coupling between links, so the sweeps converge
//   alone); with every set on the closed forms it is the Weights fixed point, reached faster.
//   quantization_noise (minimize_link_noise.cpp): each link steps to the minimiser of its modelled
//   INT8 output noise for options.weight_quantization; a link it cannot model uses the pair formula.
//   ReLU6 between: 'replace' turns the clip into ReLU; 'bound' divides the clip's per-channel
//   upper bound by the same s, which keeps the FP32 output exact; then gauge_clip_bounds.cpp
//   multiplies such a pair's scales by one factor so that every bound is ≤ 6 (a fusable ReLU6
//   followed by a per-channel Min; weight ranges' ratios unchanged).
//   Gated activation between (options.gated_activations): x·g(x) of L1's output y = s·y' is
//   s·y'·g(s·y'), so it becomes y'·g(gate_scale·y') with gate_scale[c] *= s[c] (exact).
//   Overlapping sets (L1→L2, L2→L3) disturb each other; with max_iterations > 1 a set is scaled
//   again while a neighbour sharing one of its layers moved by |ln s| ≥ `tolerance`, until no set
//   moves or the iterations run out. Reported scales are the product over iterations. With
//   solve_chains, each sweep is followed by a depth-wise correction (solve_cls_chains.cpp), so
//   the sweeps needed no longer grow with the length of a chain of sets; same fixed point.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <unordered_map>

#include "choose_cls_scales.h"
#include "cls_chain.h"
#include "pass_util.h"
#include "prequant/errors.h"
#include "prequant/passes.h"
#include "gauge_clip_bounds.h"
#include "minimize_link_noise.h"
#include "solve_cls_chains.h"

namespace prequant {

namespace {

struct PlannedSet {
  std::vector<size_t> layers;
  std::vector<ClsLink> links;  // layers.size() - 1 links
};

PlannedSet plan_set(const Graph& graph, const ClsSetSpec& spec, Relu6Policy relu6, bool gated) {
  if (spec.layers.size() != 2 && spec.layers.size() != 3)
    throw InvalidRequestError("a CLS set has 2 layers (a pair) or 3 (conv, depthwise, conv); got " +
                              std::to_string(spec.layers.size()));
  PlannedSet set;
  for (const auto& name : spec.layers) {
    const auto index = graph.find(name);
    if (!index) throw InvalidRequestError("CLS set names '" + name + "', which is not in the graph", name);
    if (!graph.nodes[*index].is_layer())
      throw InvalidRequestError("CLS set names '" + name + "', a " +
                                    op_kind_name(graph.nodes[*index].kind) +
                                    "; only conv and linear layers can be scaled",
                                name);
    set.layers.push_back(*index);
  }
  if (set.layers.size() == 3 && !graph.nodes[set.layers[1]].is_depthwise())
    throw InvalidRequestError("the middle layer of CLS set (" + spec.layers[0] + ", " +
                                  spec.layers[1] + ", " + spec.layers[2] + ") must be depthwise",
                              spec.layers[1]);
  for (size_t k = 0; k + 1 < set.layers.size(); ++k) {
    std::string why;
    auto link = follow_to_next_layer(graph, set.layers[k], relu6, why, gated);
    if (!link)
      throw InvalidRequestError("cannot scale '" + spec.layers[k] + "' → '" + spec.layers[k + 1] +
                                    "': " + why,
                                spec.layers[k]);
    if (link->next != set.layers[k + 1])
      throw InvalidRequestError("'" + spec.layers[k] + "' and '" + spec.layers[k + 1] +
                                    "' are not adjacent: the output of '" + spec.layers[k] +
                                    "' leads to '" + graph.nodes[link->next].name + "'",
                                spec.layers[k]);
    set.links.push_back(*link);
  }
  return set;
}

// A pair in two sets (a set given twice, or a pair inside a triple given again) would be
// scaled twice while the clip between is bounded per set: the bound would become 6/s², and the
// high-bias step would absorb the pair twice. Rejected instead of silently merged.
void require_distinct_pairs(const Graph& graph, const std::vector<PlannedSet>& sets) {
  std::unordered_map<size_t, size_t> set_of_first;  // layer1 of a pair -> index of its set
  for (size_t k = 0; k < sets.size(); ++k)
    for (size_t p = 0; p + 1 < sets[k].layers.size(); ++p) {
      const auto [it, fresh] = set_of_first.emplace(sets[k].layers[p], k);
      if (fresh) continue;
      const std::string& a = graph.nodes[sets[k].layers[p]].name;
      const std::string& b = graph.nodes[sets[k].layers[p + 1]].name;
      throw InvalidRequestError("the pair '" + a + "' → '" + b + "' is in CLS set " + std::to_string(it->second + 1) +
                                    " and again in set " + std::to_string(k + 1) +
                                    "; give each pair once (a triple already holds both of its pairs)",
                                a);
    }
}

double guarded_scale(double s, double r_a, double r_b, const ClsOptions& o) {
  if (!(r_a > 0) || !(r_b > 0) || !std::isfinite(s)) return 1.0;
  return std::clamp(s, o.min_scale, o.max_scale);
}

// The extremes of the scales one set applied (lo ≤ 1 ≤ hi; a NaN is ignored, as std::max
// ignores it). max |ln s| over the channels is max(−ln lo, ln hi), the same value as the
// per-channel maximum because ln is monotone: two logarithms per set instead of one per channel
// (the logs were a sixth of the engine's time on MobileNetV2, 32 sweeps).
struct ScaleExtremes {
  double lo = 1.0, hi = 1.0;
  void add(double s) {
    if (s < lo) lo = s;
    if (s > hi) hi = s;
  }
  double max_abs_log() const { return std::max(-std::log(lo), std::log(hi)); }
};

// b[c] *= f[c].
void multiply_bias(Node& layer, const std::vector<double>& f) {
  if (layer.bias.empty()) return;
  detail::note_write();
  for (size_t c = 0; c < f.size(); ++c) layer.bias.set(c, layer.bias.get(c) * f[c]);
}

// A clip between two scaled layers follows the first layer's output: bound[c] *= f[c].
void multiply_bounds(Graph& graph, const ClsLink& link, const std::vector<double>& f) {
  for (size_t b : link.between) {
    Node& n = graph.nodes[b];
    if (n.kind != OpKind::Clip || n.clip_max_per_channel.empty()) continue;
    for (size_t c = 0; c < f.size(); ++c) n.clip_max_per_channel[c] *= f[c];
  }
}

// A gated activation between follows the first layer's output x·f: gate_scale[c] /= f[c].
void divide_gate_scales(Graph& graph, const ClsLink& link, const std::vector<double>& f) {
  for (size_t b : link.between) {
    Node& n = graph.nodes[b];
    if (n.kind != OpKind::GatedActivation) continue;
    if (n.gate_scale.empty()) n.gate_scale.assign(f.size(), 1.0);
    for (size_t c = 0; c < f.size(); ++c) n.gate_scale[c] /= f[c];
  }
}

// After a sweep: per link, the mean log mismatch of the ranges over channels both sides use;
// solve_cls_chains turns the means into one uniform ln-scale per link, applied to those channels
// (a zero-range channel keeps scale 1). Sets whose layers moved by ≥ tolerance sweep again.
template <class Total, class OutRanges, class InRanges, class Multiply, class SetsOfLayer>
auto make_chain_correction(const std::vector<PlannedSet>& sets, Total& total, const ClsOptions& options,
                           OutRanges& out_ranges_of, InRanges& in_ranges_of, Multiply& multiply,
                           SetsOfLayer& sets_of_layer, std::vector<bool>& dirty) {
  std::vector<ClsLinkEnds> links;
  std::vector<std::pair<size_t, size_t>> where;  // (set, pair)
  for (size_t k = 0; k < sets.size(); ++k)
    for (size_t p = 0; p + 1 < sets[k].layers.size(); ++p) {
      links.push_back({sets[k].layers[p], sets[k].layers[p + 1]});
      where.emplace_back(k, p);
    }
  return [=, &total, &options, &out_ranges_of, &in_ranges_of, &multiply, &sets_of_layer, &dirty]() {
    if (links.size() < 2) return;
    std::vector<double> residual(links.size(), 0.0);
    std::vector<std::vector<double>> factor(links.size());
    for (size_t l = 0; l < links.size(); ++l) {
      const std::vector<double> out = out_ranges_of(links[l].producer);
      const std::vector<double>& in = in_ranges_of(links[l].consumer);
      LogSum sum;
      size_t count = 0;
      factor[l].assign(out.size(), 0.0);  // 0 marks a channel left alone
      for (size_t c = 0; c < out.size(); ++c)
        if (out[c] > 0 && in[c] > 0 && std::isfinite(out[c]) && std::isfinite(in[c])) {
          sum.add(out[c], in[c]);
          ++count;
          factor[l][c] = 1.0;
        }
      residual[l] = count ? sum.value() / static_cast<double>(count) : 0.0;
    }
    const std::vector<double> delta = solve_cls_chains(links, residual);
    for (size_t l = 0; l < delta.size(); ++l) {
      if (!(std::abs(delta[l]) >= options.tolerance)) continue;  // also skips a NaN
      const double s = std::clamp(std::exp(delta[l]), options.min_scale, options.max_scale);
      std::vector<double>& f = factor[l];
      for (double& v : f) v = v > 0 ? s : 1.0;
      multiply(links[l].producer, true, f, true);
      multiply(links[l].consumer, false, f, false);
      auto& t = total[where[l].first][where[l].second];
      for (size_t c = 0; c < f.size(); ++c) t[c] *= f[c];
      for (size_t layer : {links[l].producer, links[l].consumer})
        for (size_t k : sets_of_layer[layer]) dirty[k] = true;
    }
  };
}

}  // namespace

ClsResult detail::scale_cls_sets_ungauged(Graph& graph, const std::vector<ClsSetSpec>& specs,
                                          const ClsOptions& options) {
  check_options(options);
  std::vector<PlannedSet> sets;
  for (const auto& spec : specs) sets.push_back(plan_set(graph, spec, options.relu6, options.gated_activations));
  require_distinct_pairs(graph, sets);

  Transaction tx(graph);
  for (const auto& set : sets)
    for (size_t l : set.layers) {
      require_finite_layer(tx, graph.nodes[l]);
      protect_node(tx, graph.nodes[l]);
    }

  ClsResult result;
  // ReLU6 between scaled layers: replace, or give it a per-channel bound.
  for (const auto& set : sets)
    for (const auto& link : set.links)
      for (size_t b : link.between) {
        Node& n = graph.nodes[b];
        if (n.kind != OpKind::Clip || !std::isfinite(n.clip_max)) continue;
        if (options.relu6 == Relu6Policy::Replace) {
          n.kind = OpKind::Relu;
          result.activation_edits.push_back({n.name, ActivationEdit::Kind::ReplacedWithRelu, {}});
        } else if (n.clip_max_per_channel.empty()) {
          const auto channels = graph.nodes[set.layers[0]].out_channels();
          n.clip_max_per_channel.assign(static_cast<size_t>(channels), n.clip_max);
        }
      }

  // Cumulative scale per pair of each set.
  std::vector<std::vector<std::vector<double>>> total(sets.size());
  for (size_t k = 0; k < sets.size(); ++k)
    for (size_t p = 0; p < sets[k].links.size(); ++p)
      total[k].emplace_back(graph.nodes[sets[k].layers[p]].out_channels(), 1.0);

  // Iterate on per-channel ranges and cumulative factors; the weights are written once, at the
  // end (and only then, so a failure midway changes nothing). Ranges are cached per side:
  // scaling one side by f multiplies that side's ranges by f exactly and only invalidates the
  // other side's. A layer scaled on one side only (the ends of a chain: most of the weight
  // volume) is therefore measured once, straight from its weight; only a layer scaled on both
  // sides (the middle of a chain, a depthwise layer) keeps a RangeMatrix that sweeps re-read.
  struct LayerState {
    std::optional<RangeMatrix> matrix;
    std::vector<double> base_out, base_in;      // |factors| deferred by earlier passes (a fold)
    std::vector<double> out_factor, in_factor;  // this pass's
    std::optional<std::vector<double>> out_ranges, in_ranges;  // under base · factor
  };
  std::unordered_map<size_t, bool> in_scaled, out_scaled;
  for (const auto& set : sets)
    for (size_t p = 0; p < set.layers.size(); ++p) {
      out_scaled[set.layers[p]] |= p + 1 < set.layers.size();
      in_scaled[set.layers[p]] |= p > 0;
    }
  std::unordered_map<size_t, LayerState> state;
  for (const auto& set : sets)
    for (size_t l : set.layers)
      if (!state.count(l)) {
        const Node& n = graph.nodes[l];
        LayerState st;
        if (out_scaled[l] && in_scaled[l]) st.matrix.emplace(n.weight);
        st.out_factor.assign(static_cast<size_t>(n.out_channels()), 1.0);
        st.in_factor.assign(static_cast<size_t>(n.in_channels()), 1.0);
        st.base_out = st.out_factor, st.base_in = st.in_factor;
        if (const DeferredScale* d = tx.pending(n.weight)) {
          for (size_t c = 0; c < d->out.size(); ++c) st.base_out[c] = std::abs(d->out[c]);
          for (size_t c = 0; c < d->in.size(); ++c) st.base_in[c] = std::abs(d->in[c]);
        }
        state.emplace(l, std::move(st));
      }
  auto measure = [&](size_t layer, LayerState& st) {
    std::vector<double> fo(st.out_factor.size()), fi(st.in_factor.size());
    for (size_t c = 0; c < fo.size(); ++c) fo[c] = st.base_out[c] * st.out_factor[c];
    for (size_t c = 0; c < fi.size(); ++c) fi[c] = st.base_in[c] * st.in_factor[c];
    ChannelRanges r = st.matrix ? st.matrix->ranges(fo, fi) : channel_ranges(graph.nodes[layer].weight, fo, fi);
    st.out_ranges = std::move(r.out);
    st.in_ranges = std::move(r.in);
  };
  auto out_ranges_of = [&](size_t layer) -> const std::vector<double>& {
    LayerState& st = state.at(layer);
    if (!st.out_ranges) measure(layer, st);
    return *st.out_ranges;
  };
  auto in_ranges_of = [&](size_t layer) -> const std::vector<double>& {
    LayerState& st = state.at(layer);
    if (!st.in_ranges) measure(layer, st);
    return *st.in_ranges;
  };
  // factor[c] *= f[c] (or /= f[c]) on one side of `layer`; f > 0.
  auto multiply = [&](size_t layer, bool out_side, const std::vector<double>& f, bool invert) {
    LayerState& st = state.at(layer);
    auto& factor = out_side ? st.out_factor : st.in_factor;
    auto& same = out_side ? st.out_ranges : st.in_ranges;
    for (size_t c = 0; c < factor.size(); ++c) {
      const double g = invert ? 1.0 / f[c] : f[c];
      factor[c] *= g;
      if (same) (*same)[c] *= g;
    }
    (out_side ? st.in_ranges : st.out_ranges).reset();
  };
  // Sets sharing a layer disturb each other; only a set whose layers moved is scaled again.
  std::unordered_map<size_t, std::vector<size_t>> sets_of_layer;
  for (size_t k = 0; k < sets.size(); ++k)
    for (size_t l : sets[k].layers) sets_of_layer[l].push_back(k);
  std::vector<std::vector<size_t>> neighbours(sets.size());
  for (size_t a = 0; a < sets.size(); ++a) {
    for (size_t l : sets[a].layers)
      for (size_t b : sets_of_layer[l])
        if (b != a) neighbours[a].push_back(b);
    std::sort(neighbours[a].begin(), neighbours[a].end());
    neighbours[a].erase(std::unique(neighbours[a].begin(), neighbours[a].end()), neighbours[a].end());
  }
  // Activation ranges per link at entry (layer's output units); nullopt with the reason when unknown.
  const bool by_activations = options.scale_criterion != ScaleCriterion::Weights;
  std::vector<std::vector<std::optional<std::vector<double>>>> act0(sets.size());
  std::vector<std::vector<std::string>> fallback(sets.size());
  if (by_activations)
    for (size_t k = 0; k < sets.size(); ++k)
      for (size_t p = 0; p < sets[k].links.size(); ++p) {
        std::string why;
        act0[k].push_back(estimate_activation_ranges(graph, sets[k].layers[p], sets[k].links[p].between, options, why));
        fallback[k].push_back(why);
      }
  // A set none of whose links has activation ranges is DFQ's set: it takes DFQ's closed forms
  // below (the triple's cube root), not the link-by-link stepping. Stepping a triple's two links
  // in turn with the weight criterion stalled on channels whose ranges differ by decades (the
  // demo's stress case, BNs folded before the rescaling: per-tensor weight SQNR −0.1 dB against
  // 15.8 dB with `weights`).
  // quantization_noise: a link also needs its activation's moments and L1's input power.
  const bool by_noise = options.scale_criterion == ScaleCriterion::QuantizationNoise;
  std::optional<LinkNoiseCriterion> noise;
  std::vector<std::vector<std::optional<LinkNoiseEntry>>> noise_entry(sets.size());
  if (by_noise) {
    noise.emplace(graph, options);
    for (size_t k = 0; k < sets.size(); ++k)
      for (size_t p = 0; p < sets[k].links.size(); ++p) {
        const LayerState& st = state.at(sets[k].layers[p]);
        noise_entry[k].emplace_back();
        if (!act0[k][p]) continue;
        noise_entry[k][p] = noise->prepare(sets[k].layers[p], sets[k].links[p].between, st.base_out, st.base_in, fallback[k][p]);
        if (!noise_entry[k][p]) act0[k][p].reset();
      }
  }
  std::vector<bool> step_links(sets.size(), false);
  for (size_t k = 0; k < sets.size(); ++k)
    for (const auto& act : act0[k]) step_links[k] = step_links[k] || act.has_value();
  // One link's step under the chosen criterion: producer's out ranges r1 (row), consumer's in
  // ranges r2, activation ranges now (entry ranges times the producer's output factor).
  auto link_scale = [&](size_t k, size_t p, const std::vector<double>& r1, const std::vector<double>& r2) {
    const size_t producer = sets[k].layers[p];
    const CriterionWeights w = criterion_weights(options.scale_criterion);
    const auto& act = act0[k][p];
    const std::vector<double>& factor = state.at(producer).out_factor;
    std::vector<double> s(r1.size());
    for (size_t c = 0; c < s.size(); ++c) {
      std::optional<double> step;
      if (act && (*act)[c] > 0 && !by_noise) step = criterion_scale(w, r1[c], (*act)[c] * factor[c], r2[c]);
      s[c] = step ? std::clamp(*step, options.min_scale, options.max_scale)
                  : guarded_scale(std::sqrt(r1[c] / r2[c]), r1[c], r2[c], options);
    }
    if (by_noise && act) {  // s (the weight criterion's) stays on the channels the model cannot weigh
      const size_t consumer = sets[k].layers[p + 1];
      const LayerState &a = state.at(producer), &b = state.at(consumer);
      auto total = [](const std::vector<double>& base, const std::vector<double>& f) {
        std::vector<double> t(f.size());
        for (size_t c = 0; c < f.size(); ++c) t[c] = base[c] * f[c];
        return t;
      };
      const std::vector<double> w1_out = total(a.base_out, a.out_factor), w1_in = total(a.base_in, a.in_factor),
                                w2_out = total(b.base_out, b.out_factor), w2_in = total(b.base_in, b.in_factor);
      LinkNoiseInputs in;
      in.w1 = &noise->pairs(producer);
      in.w2 = &noise->pairs(consumer);
      in.w1_out = w1_out, in.w1_in = w1_in, in.w2_out = w2_out, in.w2_in = w2_in;
      in.r1 = r1, in.r2 = r2;
      s = noise->step(in, *noise_entry[k][p], *act, a.out_factor, a.in_factor, s);
    }
    return s;
  };

  std::vector<bool> dirty(sets.size(), true);
  const auto correct_chains = make_chain_correction(sets, total, options, out_ranges_of, in_ranges_of,
                                                    multiply, sets_of_layer, dirty);

  const int iterations = std::max(1, options.max_iterations);
  for (int it = 0; it < iterations; ++it) {
    double max_log = 0.0;
    bool any = false;
    for (size_t k = 0; k < sets.size(); ++k) {
      if (!dirty[k]) continue;
      any = true;
      dirty[k] = false;
      const auto& set = sets[k];
      const std::vector<double> r1 = out_ranges_of(set.layers[0]);
      ScaleExtremes extremes;
      if (step_links[k]) {  // each link in turn, as a pair, under the chosen criterion
        for (size_t p = 0; p + 1 < set.layers.size(); ++p) {
          const std::vector<double> out = out_ranges_of(set.layers[p]);
          const std::vector<double> s = link_scale(k, p, out, in_ranges_of(set.layers[p + 1]));
          for (size_t c = 0; c < s.size(); ++c) {
            extremes.add(s[c]);
            total[k][p][c] *= s[c];
          }
          multiply(set.layers[p], true, s, true);
          multiply(set.layers[p + 1], false, s, false);
        }
      } else if (set.layers.size() == 2) {
        const std::vector<double>& r2 = in_ranges_of(set.layers[1]);
        std::vector<double> s(r1.size());
        for (size_t c = 0; c < s.size(); ++c) {
          s[c] = guarded_scale(std::sqrt(r1[c] / r2[c]), r1[c], r2[c], options);
          extremes.add(s[c]);
          total[k][0][c] *= s[c];
        }
        multiply(set.layers[0], true, s, true);
        multiply(set.layers[1], false, s, false);
      } else {
        const std::vector<double> r2 = out_ranges_of(set.layers[1]);
        const std::vector<double>& r3 = in_ranges_of(set.layers[2]);
        std::vector<double> s12(r1.size()), s23(r1.size());
        for (size_t c = 0; c < r1.size(); ++c) {
          const double cube = std::cbrt(r1[c] * r2[c] * r3[c]);
          const bool ok = r1[c] > 0 && r2[c] > 0 && r3[c] > 0;
          s12[c] = ok ? guarded_scale(r1[c] / cube, r1[c], cube, options) : 1.0;
          s23[c] = ok ? guarded_scale(cube / r3[c], cube, r3[c], options) : 1.0;
          extremes.add(s12[c]);
          extremes.add(s23[c]);
          total[k][0][c] *= s12[c];
          total[k][1][c] *= s23[c];
        }
        multiply(set.layers[0], true, s12, true);
        multiply(set.layers[1], false, s12, false);  // depthwise: in channel c = out channel c
        multiply(set.layers[1], true, s23, true);
        multiply(set.layers[2], false, s23, false);
      }
      const double set_log = extremes.max_abs_log();
      max_log = std::max(max_log, set_log);
      if (set_log >= options.tolerance)
        for (size_t b : neighbours[k]) dirty[b] = true;
    }
    if (!any) break;
    const bool closed_forms_only = std::find(step_links.begin(), step_links.end(), true) == step_links.end();
    if (options.solve_chains && closed_forms_only && it + 1 < iterations) correct_chains();
    result.iterations = it + 1;
    result.last_max_log_scale = max_log;
  }
  result.converged = std::none_of(dirty.begin(), dirty.end(), [](bool d) { return d; });

  // Weights at commit (each once); biases and clip bounds follow the layer's output factor now.
  for (auto& [layer, st] : state) {
    Node& n = graph.nodes[layer];
    tx.defer_scale(n.weight, st.out_factor, st.in_factor);
    multiply_bias(n, st.out_factor);
  }
  for (const auto& set : sets)
    for (size_t p = 0; p < set.links.size(); ++p)
      multiply_bounds(graph, set.links[p], state.at(set.layers[p]).out_factor);
  for (const auto& set : sets)
    for (size_t p = 0; p < set.links.size(); ++p)
      divide_gate_scales(graph, set.links[p], state.at(set.layers[p]).out_factor);

  for (size_t k = 0; k < sets.size(); ++k) {
    ClsSetResult out;
    for (size_t p = 0; p < sets[k].links.size(); ++p) {
      ClsPairResult pair;
      pair.layer1 = graph.nodes[sets[k].layers[p]].name;
      pair.layer2 = graph.nodes[sets[k].layers[p + 1]].name;
      pair.scale = std::move(total[k][p]);
      pair.relu_between = sets[k].links[p].relu_like;
      for (size_t b : sets[k].links[p].between) pair.activations_between.push_back(graph.nodes[b].name);
      if (by_activations && !act0[k][p]) pair.criterion_fallback = fallback[k][p];
      out.pairs.push_back(std::move(pair));
    }
    result.sets.push_back(std::move(out));
  }
  for (const auto& set : sets)
    for (const auto& link : set.links)
      for (size_t b : link.between) {
        const Node& n = graph.nodes[b];
        if (n.kind == OpKind::Clip && !n.clip_max_per_channel.empty())
          result.activation_edits.push_back(
              {n.name, ActivationEdit::Kind::BoundedPerChannel, n.clip_max_per_channel, {}, n.clip_max});
        if (n.kind == OpKind::GatedActivation)
          result.activation_edits.push_back({n.name, ActivationEdit::Kind::GateScaled, {}, n.gate_scale});
      }
  tx.commit();
  return result;
}

ClsResult scale_cls_sets(Graph& graph, const std::vector<ClsSetSpec>& specs, const ClsOptions& options) {
  Transaction tx(graph);
  clamp_clip_bounds(graph);
  ClsResult result = detail::scale_cls_sets_ungauged(graph, specs, options);
  gauge_clip_bounds(graph, result, nullptr, options);
  tx.commit();
  return result;
}

ClsResult scale_model(Graph& graph, const ClsOptions& options) {
  check_options(options);
  ClsCandidates found = find_cls_sets(graph, options.relu6, options.gated_activations);
  ClsResult result = scale_cls_sets(graph, found.sets, options);
  result.declined = std::move(found.declined);
  return result;
}

}  // namespace prequant
