// prequant/passes.h — the engine's passes. One pass per source file in cpp/src/; each file's
// header states Before/After, preconditions and the formula.
//
// Every mutating pass is atomic: it validates and plans first, and if anything fails while it
// writes, every parameter it touched is restored bit for bit and the graph structure is left as
// it was (see transaction.h). Names are the same in C++, the CLI and Python.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "prequant/graph.h"
#include "prequant/results.h"

namespace prequant {

// What to do with a clip activation (ReLU6) between two layers CLS would scale.
enum class Relu6Policy {
  Replace,  // replace the clip with ReLU, then scale (AIMET; FP32 output changes slightly)
  Bound,    // scale, and clip channel c at max/s[c] (FP32 output unchanged); the pair's scales
            // are then gauged so every bound ≤ max: Clip(0, max) then a per-channel Min
  Skip,     // leave such pairs unscaled
};
const char* relu6_policy_name(Relu6Policy p);
Relu6Policy parse_relu6_policy(const std::string& name);  // "replace" | "bound" | "skip"

// Which per-channel ranges a CLS scale balances (choose_cls_scales.cpp has the derivation).
enum class ScaleCriterion {
  Weights,                // DFQ: the producer's row range against the consumer's column range
  WeightsAndActivations,  // + the activation range between (data-free, from the BN statistics):
                          // for per-tensor weight quantization
  Activations,            // the activation range against the consumer's column range: for
                          // per-channel weight quantization (the producer's rows are invariant)
  QuantizationNoise,      // minimise the modelled INT8 noise at the consumer's output, for the
                          // target ClsOptions::weight_quantization (minimize_link_noise.cpp)
};
const char* scale_criterion_name(ScaleCriterion c);
// "weights" | "weights_and_activations" | "activations" | "quantization_noise"
ScaleCriterion parse_scale_criterion(const std::string& name);

// The one default for CLS iterations, shared by C++, the CLI and Python (_core.DEFAULT_MAX_ITERATIONS).
// Iterating only rescales sets whose neighbours moved, so on sets that do not overlap it costs
// one pass, as AIMET's single pass; on overlapping sets (chains) it converges instead of
// stopping after the first disturbance.
inline constexpr int kDefaultMaxIterations = 100;

// The weight quantizer analytic bias correction (and the quantization_noise criterion) assumes: the one the model will be quantized
// with (onnxruntime QDQ's default for weights: symmetric, per channel or per tensor).
struct WeightQuantizer {
  int bits = 8;              // 2..16
  bool per_channel = false;  // one scale per output channel, else one per tensor
  bool symmetric = true;     // levels −(2^(b−1)−1)..2^(b−1)−1, zero at 0; else min/max with a zero point
};

// "per_tensor" | "per_channel" (also spelt with '-'): the 8-bit symmetric weight quantizer the
// quantization_noise criterion models (ClsOptions::weight_quantization).
WeightQuantizer parse_weight_quantization(const std::string& name);

struct ClsOptions {
  Relu6Policy relu6 = Relu6Policy::Bound;
  int max_iterations = kDefaultMaxIterations;  // 1 = one pass over the sets (AIMET)
  double tolerance = 1e-6;     // stop when every |ln s| of an iteration is below this
  double min_scale = 1e-6;     // clamp for s
  double max_scale = 1e6;
  // After each sweep, solve each chain of sets for a depth-wise correction (solve_cls_chains.cpp):
  // the sweeps to converge stop growing with depth. false = plain Gauss-Seidel sweeps (reference).
  bool solve_chains = true;
  // Scale across x·g(x) activations (SiLU, HardSwish, GELU: OpKind::GatedActivation) by
  // multiplying their gate_scale[c] by s[c] (exact). Off: they decline, as any non-homogeneous op.
  bool gated_activations = false;
  // What s balances. A link whose activation range is unknown (no BN folded after its first
  // layer, a gated activation between) uses Weights, with the reason in the pair's result.
  // Weights (DFQ) for the primitives (scale_cls_sets, scale_model, the AIMET-named APIs);
  // EqualizeOptions overrides it (below).
  ScaleCriterion scale_criterion = ScaleCriterion::Weights;
  double activation_sigmas = 3.0;  // activation range: the BN's β ± k·|γ| through the activation
  // The weight quantizer the quantization_noise criterion models (bits, per channel or per
  // tensor; symmetric). Activations are modelled per tensor, 8-bit, asymmetric (onnxruntime QDQ,
  // TFLite). Unused by the other criteria.
  WeightQuantizer weight_quantization;
  // The BN folded after each layer (layer name → γ, β, in the layer's output units as the graph
  // is now): the activation ranges' source. equalize_model fills it from its fold.
  std::unordered_map<std::string, FoldedBnStats> output_statistics;
};


struct EqualizeOptions {
  // The whole-model path weighs activation ranges too: on pretrained EfficientNet-Lite0 it beat
  // DFQ's weight-only balance in every INT8 mode measured (onnxruntime and TFLite, per-tensor and
  // per-channel; docs/BENCHMARKS.md). A set whose links have no BN statistics still takes DFQ's
  // closed forms (scale_cls_sets.cpp).
  ClsOptions cls{.scale_criterion = ScaleCriterion::WeightsAndActivations};
  bool fold = true;
  // Also scale equalization regions (residual Adds, Concats, fan-out) the chains decline,
  // alternating region sweeps with the chain sweeps until neither moves (scale_cls_regions.cpp).
  bool regions = false;
  // Off by default: high-bias absorption only approximates the function (the 3σ rule), and on
  // EfficientNet-Lite0 it did not improve INT8 accuracy (docs/BENCHMARKS.md). AIMET runs it.
  bool absorb_high_bias = false;
  double high_bias_sigmas = 3.0;
  // Off by default: it changes the FP32 function on purpose, to cancel the mean output shift
  // weight quantization with `bias_quantizer` would cause (docs/BENCHMARKS.md has the numbers).
  bool bias_correction = false;
  WeightQuantizer bias_quantizer;
};

// check_options.cpp — InvalidRequestError with the fix unless min_scale > 0, max_scale ≥
// min_scale (both finite), tolerance ≥ 0 finite, max_iterations ≥ 1, high_bias_sigmas ≥ 0
// finite. Every pass taking options calls it first.
void check_options(const ClsOptions& options);
void check_options(const EqualizeOptions& options);

// unroll_shared_weights.cpp — give every node its own copy of a weight shared by several.
UnrollResult unroll_shared_weights(Graph& graph);

// find_batch_norm_folds.cpp / fold_batch_norms.cpp
FoldResult find_batch_norm_folds(const Graph& graph);
FoldResult fold_batch_norms(Graph& graph);
FoldResult fold_given_batch_norms(Graph& graph, const std::vector<FoldRequest>& requests);

// replace_relu6_with_relu.cpp — every Clip(0, m) becomes Relu.
ActivationResult replace_relu6_with_relu(Graph& graph);

// find_cls_sets.cpp / scale_cls_sets.cpp
ClsCandidates find_cls_sets(const Graph& graph, Relu6Policy relu6 = Relu6Policy::Bound,
                            bool gated_activations = false);
ClsResult scale_cls_sets(Graph& graph, const std::vector<ClsSetSpec>& sets,
                         const ClsOptions& options = {});
ClsResult scale_model(Graph& graph, const ClsOptions& options = {});

// find_cls_regions.cpp / scale_cls_regions.cpp — regions beyond chains: sources meeting in one
// tensor through Add / Concat / Split / fan-out / per-channel nodes, and the sinks reading it.
// A region that is a plain chain (one source, one sink) is left to find_cls_sets.
ClsRegionCandidates find_cls_regions(const Graph& graph, Relu6Policy relu6 = Relu6Policy::Bound,
                                     bool gated_activations = false);
ClsRegionsResult scale_cls_regions(Graph& graph, const std::vector<ClsRegionSpec>& regions,
                                   const ClsOptions& options = {});

// connect_layer_chains.cpp — the graph of given layers for the manual APIs (no model): each chain's
// layers connected in order; InvalidRequestError for a layer feeding or fed by two, or a cycle.
void connect_layer_chains(Graph& graph, const std::vector<std::vector<std::string>>& chains);

// absorb_high_bias.cpp — bn_stats maps layer name to the BN folded after it.
HighBiasResult absorb_high_bias(Graph& graph, const std::vector<ClsSetResult>& sets,
                                const std::unordered_map<std::string, FoldedBnStats>& bn_stats,
                                double sigmas = 3.0);

// correct_bias.cpp — analytic (data-free) bias correction, DFQ §4.2. `stats` maps a layer to the
// BN folded after it, as its output is now (see track_folded_bn_stats); BNs still in the graph
// are read directly.
BiasCorrectionResult correct_bias(Graph& graph, const std::unordered_map<std::string, FoldedBnStats>& stats,
                                  const WeightQuantizer& quantizer = {});
// The statistics of each BN folded after a layer, by layer: conv→BN folds only (a BN folded into the
// layer after it, BN→conv, says nothing of that layer's output). High-bias absorption and bias
// correction both start from this.
std::unordered_map<std::string, FoldedBnStats> folded_bn_stats(const FoldResult& fold);
// The statistics of each BN folded after a layer (conv→BN), carried through what equalization did
// since: the layer's output channel c divided by its CLS scale s[c] (γ/s, β/s), and the bias
// high-bias absorption moved out (β − c).
std::unordered_map<std::string, FoldedBnStats> track_folded_bn_stats(const FoldResult& fold, const ClsResult& cls,
                                                                      const HighBiasResult& high_bias,
                                                                      const ClsRegionsResult& regions = {});
// E[act(z)] for z ~ N(mean, std) clipped to [lo, hi] (±infinity allowed): the clipped-normal mean.
double clipped_normal_mean(double mean, double std, double lo, double hi);

// equalize_model.cpp — unroll, fold, ReLU6 policy, CLS, high-bias absorption.
EqualizeResult equalize_model(Graph& graph, const EqualizeOptions& options = {});

}  // namespace prequant
