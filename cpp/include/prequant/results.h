// prequant/results.h — what each pass did and what it declined, as data.
//
// Front ends build their user-facing objects (ClsSetInfo, fold pair lists) from these, and the
// command-line tool prints them with --explain or --json. Nothing a pass considers is dropped
// silently: every candidate it does not act on is a Declined with a reason.
#pragma once

#include <string>
#include <vector>
#include <utility>

namespace prequant {

// A candidate a pass looked at and did not transform.
struct Declined {
  std::string pass;                // "fold_batch_norms", "scale_cls_sets", ...
  std::vector<std::string> nodes;  // the nodes concerned, in graph order
  std::string reason;              // a sentence: why, and what would make it work
};

enum class FoldDirection { ConvThenBn, BnThenConv };
const char* fold_direction_name(FoldDirection d);

// A batch norm to fold, as discovered or as given by the user.
struct FoldRequest {
  std::string layer;
  std::string bn;
  FoldDirection direction = FoldDirection::ConvThenBn;
};

// The statistics high-bias absorption needs from a BN folded after a layer: the layer's
// output after folding is gamma·x̂ + beta per channel.
struct FoldedBnStats {
  std::vector<double> gamma;
  std::vector<double> beta;
};

struct FoldedPair {
  FoldRequest request;
  bool bias_added = false;     // the layer had no bias; the engine created one in the arena
  FoldedBnStats bn_stats;      // the BN's gamma and beta (ConvThenBn only)
};

struct FoldResult {
  std::vector<FoldedPair> folded;
  std::vector<Declined> declined;
};

// A clip activation changed by the ReLU6 policy, or a gated activation (x·g(x)) scaling passed
// through.
struct ActivationEdit {
  enum class Kind { ReplacedWithRelu, BoundedPerChannel, GateScaled };
  std::string node;
  Kind kind = Kind::ReplacedWithRelu;
  std::vector<double> upper_bound;  // BoundedPerChannel: clip at upper_bound[c]
  std::vector<double> gate_scale;   // GateScaled: y = x·g(gate_scale[c]·x), cumulative
  double clip_max = 0.0;            // BoundedPerChannel: the clip before the bound, Clip(0, clip_max)
                                    // (ReLU6: 6; every upper_bound[c] ≤ it; inf: no outer clip)

  ActivationEdit() = default;
  ActivationEdit(std::string node_, Kind kind_, std::vector<double> upper_bound_ = {},
                 std::vector<double> gate_scale_ = {}, double clip_max_ = 0.0)
      : node(std::move(node_)), kind(kind_), upper_bound(std::move(upper_bound_)),
        gate_scale(std::move(gate_scale_)), clip_max(clip_max_) {}
};

// One scaled pair of a CLS set: layer1's output channel c was divided by scale[c] and
// layer2's input channel c multiplied by it.
struct ClsPairResult {
  std::string layer1;
  std::string layer2;
  std::vector<double> scale;
  bool relu_between = false;                     // a ReLU-like activation sits between
  std::vector<std::string> activations_between;  // node names of what sits between
  // Why the pair used the weight criterion although another was asked for (empty: it did not).
  std::string criterion_fallback;
};

// A CLS set as discovered or given: 2 layers (a pair) or 3 (conv → depthwise → conv).
struct ClsSetSpec {
  std::vector<std::string> layers;
};

struct ClsCandidates {
  std::vector<ClsSetSpec> sets;
  std::vector<Declined> declined;
};

// A scaled set: one pair, or two for conv → depthwise → conv. Scales are cumulative over
// all iterations.
struct ClsSetResult {
  std::vector<ClsPairResult> pairs;
};

struct ClsResult {
  std::vector<ClsSetResult> sets;
  std::vector<ActivationEdit> activation_edits;  // clips replaced or bounded (ReLU6 policy)
  std::vector<Declined> declined;
  int iterations = 0;               // sweeps over the sets
  double last_max_log_scale = 0.0;  // max |ln s| applied in the last sweep
  bool converged = false;           // no set moved by tolerance or more in the last sweep
};

// An equalization region: source layers whose output channels meet in one tensor (through Add,
// Concat, Split, fan-out and per-channel nodes) and the sink layers that read it. Channel j of
// the region is one channel of every tensor in it; each source's output channel mapped to j was
// divided by scale[j] and each sink's input channel mapped to j multiplied by it.
struct ClsRegionSpec {
  std::vector<std::string> sources;  // graph order
  std::vector<std::string> sinks;    // graph order
};

struct ClsRegionCandidates {
  std::vector<ClsRegionSpec> regions;
  std::vector<Declined> declined;
};

struct ClsRegionResult {
  std::vector<std::string> sources, sinks;
  std::vector<std::string> nodes;  // the channel nodes joining them, graph order
  std::vector<double> scale;       // per region channel, cumulative over iterations
  // Why the region used the weight criterion although scale_criterion asked for another (empty:
  // it did not): the reason names the layer or node the activation ranges cannot pass.
  std::string criterion_fallback;
};

struct ClsRegionsResult {
  std::vector<ClsRegionResult> regions;
  std::vector<ActivationEdit> activation_edits;  // clips inside regions replaced or bounded
  std::vector<Declined> declined;
  int iterations = 0;
  double last_max_log_scale = 0.0;
  bool converged = false;
};

// Bias moved from layer1 to layer2 by high-bias absorption.
struct BiasAbsorption {
  std::string layer1;
  std::string layer2;
  std::vector<double> amount;  // c, per channel of layer1's output
  bool bias_added = false;     // layer2 had no bias; the engine created one
};

struct HighBiasResult {
  std::vector<BiasAbsorption> absorbed;
  std::vector<Declined> declined;
};

struct ActivationResult {
  std::vector<ActivationEdit> edits;
  std::vector<Declined> declined;
};

// A weight that several nodes shared, copied so each node owns one.
struct UnrolledParameter {
  std::string node;
  std::string original_name;
  std::string new_name;
};

struct UnrollResult {
  std::vector<UnrolledParameter> copies;
};

// Analytic bias correction of one layer: `correction` (per output channel) was subtracted from
// its bias, the expected output shift its weight quantization error causes.
struct BiasCorrection {
  std::string layer;
  std::string statistics_from;           // the layer with a folded BN, or the BN, giving E[x]
  std::vector<std::string> activations;  // what sits between, in order
  std::vector<double> correction;        // Σ_i (Σ_k ε[o, i, k])·E[x_i]
  bool bias_added = false;               // the layer had no bias; the engine created one
};

struct BiasCorrectionResult {
  std::vector<BiasCorrection> corrected;
  std::vector<Declined> declined;
};

struct EqualizeResult {
  UnrollResult unroll;
  FoldResult fold;
  ActivationResult activations;
  ClsResult cls;
  ClsRegionsResult regions;  // EqualizeOptions::regions only
  HighBiasResult high_bias;
  BiasCorrectionResult bias_correction;  // changes the FP32 function on purpose (see correct_bias)
};

}  // namespace prequant
