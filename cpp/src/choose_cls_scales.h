// choose_cls_scales.h (internal) — the scale criterion of a CLS link (choose_cls_scales.cpp):
// which per-channel ranges the scale s[c] balances, and the data-free activation ranges the
// activation-aware criteria need.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "prequant/graph.h"
#include "prequant/passes.h"

namespace prequant {

// Exponents of one link's criterion: ln s = (p·ln r1 + a·ln act − c·ln r2) / (p + a + c), where
// r1 = the producer's output-channel range, act = the activation range between, r2 = the
// consumer's input-channel range (all as the link is now). Weights: p = c = 1, a = 0 (DFQ).
struct CriterionWeights {
  double producer = 1.0, activation = 0.0, consumer = 1.0;
};
CriterionWeights criterion_weights(ScaleCriterion criterion);

// The step factor for one channel: exp((p·ln r1 + a·ln act − c·ln r2) / (p + a + c)), or nullopt
// when a range it uses is not > 0 and finite (the caller then keeps scale 1 or falls back).
std::optional<double> criterion_scale(const CriterionWeights& w, double r1, double act, double r2);

// g(z) and g'(z) of one node between two scaled layers, for channel c (ReLU, Clip with its
// per-channel bound, LeakyReLU, PReLU; identity for Identity, ZeroPad, Pool); nullopt if the node
// is not modelled. The slope is what weight noise before the node is multiplied by.
struct ValueAndSlope {
  double value = 0.0, slope = 1.0;
};
std::optional<ValueAndSlope> pass_through_node(const Node& n, size_t c, double z);

// The activation range per output channel of `layer` after the nodes `between` (the link's
// activations, pads, pools), in the layer's output units as the graph is now (clip bounds as
// they are), from z ~ N(β[c], |γ[c]|) of the batch norm folded after the layer
// (options.output_statistics[layer]): act[c] = max(|g(β − kσ)|, |g(β + kσ)|), k =
// options.activation_sigmas, g the activations in order. A channel whose range is 0 (always
// clipped to 0) gets 0: the caller uses the weight criterion for it. Nullopt with `why` when the
// statistics are unknown or an activation between is not modelled.
std::optional<std::vector<double>> estimate_activation_ranges(const Graph& graph, size_t layer,
                                                              const std::vector<size_t>& between,
                                                              const ClsOptions& options, std::string& why);

// Statistics of the BNs folded after layers, carried through one scaling result: every pair's
// layer1 output channel c was divided by scale[c] (γ/s, β/s). Used between rounds of
// scale_model_with_regions so the next round sees the outputs as they are.
void divide_output_statistics(std::unordered_map<std::string, FoldedBnStats>& stats, const ClsResult& cls);

}  // namespace prequant
