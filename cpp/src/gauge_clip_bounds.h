// gauge_clip_bounds.h (internal) — the ReLU6 'bound' policy's last step (gauge_clip_bounds.cpp),
// and the scaling passes without it, for pipelines that alternate them and gauge once at the end.
#pragma once

#include "prequant/graph.h"
#include "prequant/passes.h"

namespace prequant {

// Rescales each scaled pair / region holding a bounded clip by a uniform factor so that every
// per-channel bound is ≤ the clip's own clip_max (6 for ReLU6): see gauge_clip_bounds.cpp.
// `regions` may be null. Updates the scales and the activation edits in the results.
void gauge_clip_bounds(Graph& graph, ClsResult& sets, ClsRegionsResult* regions, const ClsOptions& options);

// b[c] = min(b[c], clip_max) on every bounded clip: the function min(clip(x, 0, m), b) as the
// bounds alone, which is what the scaling passes read (a user may have raised a bound above m).
void clamp_clip_bounds(Graph& graph);

namespace detail {
// scale_cls_sets / scale_cls_regions without the final gauge: a bounded clip's per-channel
// bounds may exceed its clip_max until gauge_clip_bounds runs (until then the bounds alone
// define the clip).
ClsResult scale_cls_sets_ungauged(Graph& graph, const std::vector<ClsSetSpec>& sets, const ClsOptions& options);
// `statistics` (may be null: options.output_statistics, read only): the BN statistics of the
// layers' outputs as the graph is now, read by an activation-aware criterion and carried through
// this call's scales (each region source's entry divided by the scale its output channels took).
ClsRegionsResult scale_cls_regions_ungauged(Graph& graph, const std::vector<ClsRegionSpec>& regions,
                                            const ClsOptions& options,
                                            std::unordered_map<std::string, FoldedBnStats>* statistics = nullptr);
}  // namespace detail

}  // namespace prequant
