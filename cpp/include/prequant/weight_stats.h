// prequant/weight_stats.h — per-layer, per-output-channel weight statistics and the weights'
// quantization SQNR: the evidence of the DFQ paper's Fig. 2 (one box per output channel), as data.
//
// collect_weight_stats reads every live conv/linear node of a graph (changing nothing) and
// returns, per layer:
//   - per output channel o: the five-number summary (min, q1, median, q3, max) of the elements
//     whose output channel is o, and its range r[o] = max |W[o, ...]| (the range CLS equalizes);
//     quartiles interpolate linearly between order statistics (numpy.quantile's default);
//   - the weight SQNR under symmetric b-bit quantization, per tensor and per output channel:
//       SQNR = 10·log10(Σ w² / Σ (w − q(w))²),  q(w) = clamp(rint(w/Δ), −L, L)·Δ,
//       L = 2^(b−1) − 1,  Δ = max|W| / L (per tensor) or r[o] / L (per channel o).
//     +inf when quantization is exact; NaN when the weight is all zeros.
// to_json gives the same data (non-finite numbers become null).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "prequant/graph.h"

namespace prequant {

// The five-number summary of one output channel's weights, and its max |w|.
struct ChannelSummary {
  double min = 0, q1 = 0, median = 0, q3 = 0, max = 0;
  double range = 0;  // max(|min|, |max|)
};

struct LayerWeightStats {
  std::string name;
  OpKind kind = OpKind::Conv;  // Conv or Linear
  std::string op_type;
  std::vector<int64_t> shape;  // the weight's shape as the graph views it
  int64_t groups = 1;
  bool depthwise = false;
  bool transposed = false;
  std::vector<ChannelSummary> channels;  // one per output channel (full count, across groups)
  double sqnr_per_tensor_db = 0;         // symmetric per-tensor quantization
  double sqnr_per_channel_db = 0;        // symmetric per-output-channel quantization (reference)
};

struct WeightStats {
  int bits = 8;
  std::vector<LayerWeightStats> layers;  // graph order
};

// Statistics of every live Conv/Linear node's weight. bits in [2, 16]; InvalidRequestError
// otherwise. A weight with NaN/Inf raises InvalidParameterError naming the layer.
WeightStats collect_weight_stats(const Graph& graph, int bits = 8);

// max r / min r over the channels whose range is not zero (1 for fewer than two such channels):
// how far apart the per-channel ranges are, the number CLS drives towards 1.
double range_ratio(const LayerWeightStats& layer);
// Channels whose weights are all zero.
int64_t count_zero_channels(const LayerWeightStats& layer);

// {"bits", "layers": [{"name", "kind", "op_type", "shape", "groups", "depthwise", "transposed",
//   "channels": n, "range_ratio", "zero_channels", "sqnr_per_tensor_db", "sqnr_per_channel_db",
//   "min": [..], "q1": [..], "median": [..], "q3": [..], "max": [..], "range": [..]}]}
nlohmann::json to_json(const WeightStats& stats);

}  // namespace prequant
