// propagate_channel_stats.h (internal) — per-channel input statistics of every activation tensor,
// carried forward from batch norms through the channel-wise nodes (propagate_channel_stats.cpp).
// Analytic bias correction (correct_bias.cpp) reads E[x] of each layer's input from it.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "prequant/graph.h"
#include "prequant/results.h"

namespace prequant {

// What the engine knows of one tensor's channels.
struct ChannelStats {
  std::vector<double> mean;        // E[x_c]
  std::vector<double> std;         // x_c ~ N(mean[c], std[c]) when `gaussian`; empty otherwise
  bool gaussian = false;
  std::string not_gaussian;        // why not (naming the node), when !gaussian
  std::vector<std::string> from;   // the BNs / layers with a folded BN the statistics start at
  std::vector<size_t> between;     // node indices passed since, ascending (= topological order)
};

struct ChannelStatsMap {
  std::unordered_map<std::string, ChannelStats> known;   // by tensor name
  std::unordered_map<std::string, std::string> unknown;  // by tensor name: why, naming the node that stops it
};

// `folded` maps a layer to the BN folded after it, as its output is now (track_folded_bn_stats).
ChannelStatsMap propagate_channel_stats(const Graph& graph,
                                        const std::unordered_map<std::string, FoldedBnStats>& folded);

// Why `tensor`'s statistics are unknown (it is in neither map: a graph input or a constant).
std::string why_unknown(const Graph& graph, const ChannelStatsMap& stats, const std::string& tensor);

}  // namespace prequant
