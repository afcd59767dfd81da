// estimate_region_activation_ranges.h (internal) — the data-free activation range of each
// channel of an equalization region, over the region tensors a quantizer sees
// (estimate_region_activation_ranges.cpp). scale_cls_regions.cpp weighs it into a region's scale
// under an activation-aware scale_criterion.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cls_region.h"
#include "propagate_channel_stats.h"

namespace prequant {

// act[j] per region channel j: the largest per-channel range max(|lo|, |hi|) over the region's
// quantized tensors, in the units the graph has now. Nullopt with `why` (naming the layer or node)
// when a tensor's range cannot be estimated.
std::optional<std::vector<double>> estimate_region_activation_ranges(const Graph& graph, const PlannedRegion& region,
                                                                     const ChannelStatsMap& stats, double sigmas,
                                                                     std::string& why);

}  // namespace prequant
