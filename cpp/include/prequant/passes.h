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
  Bound,    // scale, and clip channel c at max/s[c] (FP32 output unchanged)
  Skip,     // leave such pairs unscaled
};
const char* relu6_policy_name(Relu6Policy p);
Relu6Policy parse_relu6_policy(const std::string& name);  // "replace" | "bound" | "skip"

struct ClsOptions {
  Relu6Policy relu6 = Relu6Policy::Bound;
  int max_iterations = 1;      // 1 = one pass over the sets (AIMET); more iterate overlapping sets
  double tolerance = 1e-6;     // stop when every |ln s| of an iteration is below this
  double min_scale = 1e-6;     // clamp for s
  double max_scale = 1e6;
};

struct EqualizeOptions {
  ClsOptions cls{Relu6Policy::Bound, 100, 1e-6, 1e-6, 1e6};
  bool fold = true;
  // Also scale equalization regions (residual Adds, Concats, fan-out) the chains decline,
  // alternating region sweeps with the chain sweeps until neither moves (scale_cls_regions.cpp).
  bool regions = false;
  // Off by default: high-bias absorption only approximates the function (the 3σ rule), and on
  // EfficientNet-Lite0 it did not improve INT8 accuracy (docs/BENCHMARKS.md). AIMET runs it.
  bool absorb_high_bias = false;
  double high_bias_sigmas = 3.0;
};

// unroll_shared_weights.cpp — give every node its own copy of a weight shared by several.
UnrollResult unroll_shared_weights(Graph& graph);

// find_batch_norm_folds.cpp / fold_batch_norms.cpp
FoldResult find_batch_norm_folds(const Graph& graph);
FoldResult fold_batch_norms(Graph& graph);
FoldResult fold_given_batch_norms(Graph& graph, const std::vector<FoldRequest>& requests);

// replace_relu6_with_relu.cpp — every Clip(0, m) becomes Relu.
ActivationResult replace_relu6_with_relu(Graph& graph);

// find_cls_sets.cpp / scale_cls_sets.cpp
ClsCandidates find_cls_sets(const Graph& graph, Relu6Policy relu6 = Relu6Policy::Bound);
ClsResult scale_cls_sets(Graph& graph, const std::vector<ClsSetSpec>& sets,
                         const ClsOptions& options = {});
ClsResult scale_model(Graph& graph, const ClsOptions& options = {});

// find_cls_regions.cpp / scale_cls_regions.cpp — regions beyond chains: sources meeting in one
// tensor through Add / Concat / Split / fan-out / per-channel nodes, and the sinks reading it.
// A region that is a plain chain (one source, one sink) is left to find_cls_sets.
ClsRegionCandidates find_cls_regions(const Graph& graph, Relu6Policy relu6 = Relu6Policy::Bound);
ClsRegionsResult scale_cls_regions(Graph& graph, const std::vector<ClsRegionSpec>& regions,
                                   const ClsOptions& options = {});

// absorb_high_bias.cpp — bn_stats maps layer name to the BN folded after it.
HighBiasResult absorb_high_bias(Graph& graph, const std::vector<ClsSetResult>& sets,
                                const std::unordered_map<std::string, FoldedBnStats>& bn_stats,
                                double sigmas = 3.0);

// equalize_model.cpp — unroll, fold, ReLU6 policy, CLS, high-bias absorption.
EqualizeResult equalize_model(Graph& graph, const EqualizeOptions& options = {});

}  // namespace prequant
