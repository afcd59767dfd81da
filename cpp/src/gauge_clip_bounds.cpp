// gauge_clip_bounds.cpp — keep a bounded ReLU6 a fusable ReLU6 followed by a per-channel Min.
//
// Before: scaled CLS pairs and regions; a Clip(0, m) between (ReLU6: m = 6) holds per-channel
//         bounds b[c] = m/s[c] (the 'bound' policy), which may exceed m by any factor.
// After:  the same function, with every b[c] ≤ m and max_c b[c] = m: the clip is Clip(0, m) —
//         the ReLU6 quantizers fuse into the conv before it — followed by min(·, b[c]), so the
//         first quantized tensor's range is [0, m], not the unclipped range of the conv output.
// Why it is free: scaling a pair's (a region's) whole scale vector by one factor α (s → α·s:
//   layer1's, the sources', output rows divided by α, layer2's, the sinks', input columns
//   multiplied by α, bounds divided by α) changes no per-channel ratio, so neither per-tensor nor
//   per-channel weight quantization error, and the FP32 function is unchanged exactly (clip is
//   positively homogeneous: clip(x/α, 0, b/α) = clip(x, 0, b)/α).
// Formula, per pair or region with bounded clips K: α = max_{k∈K, c} b_k[c] / m_k, clamped to
//   [min_scale, max_scale]; scale *= α, W_src[c] /= α, b_src[c] /= α, W_sink[:, c] *= α,
//   b_k[c] /= α. Only pairs/regions holding a bounded clip move; the clamp bounds the factor like
//   any scale step. When it clamps, some b_k[c] stay above m_k and clip_max becomes max_c b_k[c]
//   (Clip(0, max b) then Min: still exact, still bounds the first quantized range).
//   A clip whose clip_max is not finite (a bounded clip from an older model) has no target m and
//   is left as it is.
// Preconditions: the results' layers and clips are in the graph (as the scaling passes left them).
#include "gauge_clip_bounds.h"

#include <algorithm>
#include <cmath>

#include "pass_util.h"
#include "transaction.h"

namespace prequant {

namespace {

std::vector<Node*> bounded_clips(Graph& graph, const std::vector<std::string>& names) {
  std::vector<Node*> out;
  for (const auto& name : names)
    if (const auto i = graph.find(name)) {
      Node& n = graph.nodes[*i];
      if (n.kind == OpKind::Clip && !n.clip_max_per_channel.empty() && std::isfinite(n.clip_max) && n.clip_max > 0)
        out.push_back(&n);
    }
  return out;
}

// α for `clips`, or 1 when there is nothing to normalize.
double gauge_of(const std::vector<Node*>& clips, const ClsOptions& options) {
  double alpha = 0.0;
  for (const Node* n : clips)
    for (double b : n->clip_max_per_channel) alpha = std::max(alpha, b / n->clip_max);
  if (!(alpha > 0) || !std::isfinite(alpha)) return 1.0;
  return std::clamp(alpha, options.min_scale, options.max_scale);
}

void divide_clips(const std::vector<Node*>& clips, double alpha) {
  for (Node* n : clips) {
    double top = 0.0;
    for (double& b : n->clip_max_per_channel) top = std::max(top, b /= alpha);
    n->clip_max = std::max(n->clip_max, top);  // α clamped: the outer clip must not cut a bound
  }
}

// A gated activation in the pair or region, x·g(gate_scale·x), sees its input divided by α too:
// keeping x·g(x) with x = α·x' needs gate_scale[c] *= α (the scaling pass set
// gate_scale when it scaled through the gate, so it is never empty here).
void multiply_gates(Graph& graph, const std::vector<std::string>& names, double alpha) {
  for (const auto& name : names)
    if (const auto i = graph.find(name))
      if (Node& n = graph.nodes[*i]; n.kind == OpKind::GatedActivation)
        for (double& g : n.gate_scale) g *= alpha;
}

void divide_outputs(Transaction& tx, Node& layer, double alpha) {
  const std::vector<double> f(static_cast<size_t>(layer.out_channels()), 1.0 / alpha);
  tx.defer_scale(layer.weight, f, {});
  if (layer.bias.empty()) return;
  tx.protect(layer.bias);
  detail::note_write();
  for (size_t c = 0; c < f.size(); ++c) layer.bias.set(c, layer.bias.get(c) * f[c]);
}

void multiply_inputs(Transaction& tx, const Node& layer, double alpha) {
  tx.defer_scale(layer.weight, {}, std::vector<double>(static_cast<size_t>(layer.in_channels()), alpha));
}

void refresh_edits(const Graph& graph, std::vector<ActivationEdit>& edits) {
  for (auto& e : edits)
    if (e.kind == ActivationEdit::Kind::BoundedPerChannel)
      if (const auto i = graph.find(e.node)) {
        e.upper_bound = graph.nodes[*i].clip_max_per_channel;
        e.clip_max = graph.nodes[*i].clip_max;
      }
  for (auto& e : edits)
    if (e.kind == ActivationEdit::Kind::GateScaled)
      if (const auto i = graph.find(e.node)) e.gate_scale = graph.nodes[*i].gate_scale;
}

}  // namespace

void clamp_clip_bounds(Graph& graph) {
  for (Node& n : graph.nodes)
    if (!n.removed && n.kind == OpKind::Clip && std::isfinite(n.clip_max))
      for (double& b : n.clip_max_per_channel) b = std::min(b, n.clip_max);
}

void gauge_clip_bounds(Graph& graph, ClsResult& sets, ClsRegionsResult* regions, const ClsOptions& options) {
  Transaction tx(graph);
  for (auto& set : sets.sets)
    for (auto& pair : set.pairs) {
      const auto clips = bounded_clips(graph, pair.activations_between);
      const double alpha = gauge_of(clips, options);
      divide_clips(clips, alpha);  // also when α is 1 (clamped): clip_max ≥ every bound
      if (alpha == 1.0) continue;
      multiply_gates(graph, pair.activations_between, alpha);
      divide_outputs(tx, graph.at(pair.layer1), alpha);
      multiply_inputs(tx, graph.at(pair.layer2), alpha);
      for (double& v : pair.scale) v *= alpha;
    }
  refresh_edits(graph, sets.activation_edits);
  if (regions) {
    for (auto& region : regions->regions) {
      const auto clips = bounded_clips(graph, region.nodes);
      const double alpha = gauge_of(clips, options);
      divide_clips(clips, alpha);
      if (alpha == 1.0) continue;
      multiply_gates(graph, region.nodes, alpha);
      for (const auto& name : region.sources) divide_outputs(tx, graph.at(name), alpha);
      for (const auto& name : region.sinks) multiply_inputs(tx, graph.at(name), alpha);
      for (double& v : region.scale) v *= alpha;
    }
    refresh_edits(graph, regions->activation_edits);
  }
  tx.commit();
}

}  // namespace prequant
