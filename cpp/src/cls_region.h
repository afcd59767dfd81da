// cls_region.h (internal) — an equalization region as find_cls_regions grows it and
// scale_cls_regions scales it.
#pragma once

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "prequant/graph.h"
#include "prequant/passes.h"

namespace prequant {

struct PlannedRegion {
  std::vector<size_t> sources, sinks, nodes;  // node indices, graph order
  std::vector<size_t> clips;                  // Clip nodes among `nodes`
  std::vector<size_t> gates;                  // GatedActivation nodes among `nodes`
  int64_t channels = 0;                       // region channels
  // Per tensor of the region: the region channel of each of its channels.
  std::unordered_map<std::string, std::vector<int64_t>> channel_of;
  // One source, one sink, only single-reader per-channel nodes between: a chain, which
  // find_cls_sets finds (as a pair or as part of a depthwise triple).
  bool chain = true;
};

// Channel count of every activation tensor the graph determines (-1: unknown), in one forward
// pass over the nodes in topological order.
std::unordered_map<std::string, int64_t> tensor_channel_counts(const Graph& graph);

// Grows the region holding the output of layer `start` with a worklist over tensors. On decline
// returns nullopt and sets `why` (a sentence naming the node that stops it), `blocker` (that
// node's name, or empty), `partial` (what was found so far: sources, and whether the part seen
// is already more than a chain).
std::optional<PlannedRegion> grow_region(const Graph& graph, size_t start,
                                         const std::unordered_map<std::string, int64_t>& counts,
                                         Relu6Policy relu6, std::string& why, std::string& blocker,
                                         PlannedRegion& partial, bool gated_activations = false);

}  // namespace prequant

namespace prequant {

// Chains and regions together (scale_model_with_regions.cpp): find_cls_sets' sets and
// find_cls_regions' regions, swept alternately until neither moves. Returns the sets' result
// (scales cumulative over all rounds); `regions` receives the regions' result.
ClsResult scale_model_with_regions(Graph& graph, const ClsOptions& options, ClsRegionsResult& regions);

}  // namespace prequant
