// collect_weight_stats.cpp — per-output-channel five-number summaries and weight SQNR of every
// conv/linear layer (see weight_stats.h for the definitions).
//
// Before: any graph (read only).  After: unchanged; a WeightStats per live Conv/Linear node.
// Two passes over each weight: out_channel_ranges for the quantization steps, then one walk
// (visit_out_channels, so every layout and group count is handled by tensor.cpp) that sums
// signal and both quantization errors in double and gathers each channel's elements (in the
// weight's own dtype) for its quartiles: peak extra memory is one copy of the largest weight.
#include <algorithm>
#include <cmath>
#include <limits>

#include "prequant/errors.h"
#include "prequant/tensor.h"
#include "prequant/weight_stats.h"

namespace prequant {
namespace {

// numpy.quantile(v, p) with the default linear interpolation; reorders v.
template <class T>
double quantile(std::vector<T>& v, double p) {
  const double h = static_cast<double>(v.size() - 1) * p;
  const auto lo = static_cast<size_t>(std::floor(h));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(lo), v.end());
  const double a = v[lo];
  const double frac = h - static_cast<double>(lo);
  if (frac == 0.0 || lo + 1 >= v.size()) return a;
  const double b = *std::min_element(v.begin() + static_cast<std::ptrdiff_t>(lo) + 1, v.end());
  return a + frac * (b - a);
}

// Squared error of symmetric quantization with step `step` and levels ±levels.
double quantization_error2(double w, double step, double levels) {
  if (step == 0.0) return w * w;  // only reached for w == 0 (a zero range): exact
  const double q = std::clamp(std::nearbyint(w / step), -levels, levels) * step;
  return (w - q) * (w - q);
}

double sqnr_db(double signal, double noise) {
  if (signal == 0.0) return std::numeric_limits<double>::quiet_NaN();
  if (noise == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

// Sums signal and quantization noise over the weight, and fills per-channel min, max and
// quartiles (channels[o].range already set).
template <class T>
void summarize_channels(const Weight& w, double levels, LayerWeightStats& s) {
  const size_t channels = s.channels.size();
  double tensor_range = 0;
  for (const auto& c : s.channels) tensor_range = std::max(tensor_range, c.range);
  const double tensor_step = tensor_range / levels;
  std::vector<std::vector<T>> values(channels);
  const auto per_channel = static_cast<size_t>(channels ? w.tensor.numel() / static_cast<int64_t>(channels) : 0);
  for (auto& v : values) v.reserve(per_channel);
  double signal = 0, tensor_noise = 0, channel_noise = 0;
  visit_out_channels(w, [&](int64_t o, std::span<const double> run) {
    const double channel_step = s.channels[static_cast<size_t>(o)].range / levels;
    auto& vo = values[static_cast<size_t>(o)];
    for (double x : run) {
      signal += x * x;
      tensor_noise += quantization_error2(x, tensor_step, levels);
      channel_noise += quantization_error2(x, channel_step, levels);
      vo.push_back(static_cast<T>(x));  // exact: x came from a T
    }
  });
  s.sqnr_per_tensor_db = sqnr_db(signal, tensor_noise);
  s.sqnr_per_channel_db = sqnr_db(signal, channel_noise);
  for (size_t o = 0; o < channels; ++o) {
    std::vector<T>& v = values[o];
    if (v.empty()) continue;  // a weight with a zero-sized kernel axis
    ChannelSummary& c = s.channels[o];
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    c.min = *lo;
    c.max = *hi;
    c.q1 = quantile(v, 0.25);
    c.median = quantile(v, 0.5);
    c.q3 = quantile(v, 0.75);
    std::vector<T>().swap(v);  // free as we go
  }
}

LayerWeightStats collect_layer(const Node& node, int bits) {
  const Weight& w = node.weight;
  if (const int64_t bad = find_non_finite(w.tensor); bad >= 0)
    throw InvalidParameterError("layer '" + node.name + "' has a non-finite weight (element " + std::to_string(bad) +
                                    " of '" + w.tensor.name + "'); repair or retrain the weights first",
                                node.name);
  LayerWeightStats s;
  s.name = node.name;
  s.kind = node.kind;
  s.op_type = node.op_type;
  s.shape = w.tensor.shape;
  s.groups = w.layout.groups;
  s.depthwise = node.is_depthwise();
  s.transposed = w.layout.transposed;

  const std::vector<double> ranges = out_channel_ranges(w);
  s.channels.resize(ranges.size());
  for (size_t o = 0; o < ranges.size(); ++o) s.channels[o].range = ranges[o];
  const double levels = std::ldexp(1.0, bits - 1) - 1.0;
  if (w.tensor.dtype == DType::Float32)
    summarize_channels<float>(w, levels, s);
  else
    summarize_channels<double>(w, levels, s);
  return s;
}

}  // namespace

WeightStats collect_weight_stats(const Graph& graph, int bits) {
  if (bits < 2 || bits > 16)
    throw InvalidRequestError("bits must be between 2 and 16 for weight statistics, got " + std::to_string(bits));
  WeightStats stats;
  stats.bits = bits;
  for (const Node& node : graph.nodes)
    if (!node.removed && node.is_layer()) stats.layers.push_back(collect_layer(node, bits));
  return stats;
}

double range_ratio(const LayerWeightStats& layer) {
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  int nonzero = 0;
  for (const auto& c : layer.channels)
    if (c.range > 0) {
      lo = std::min(lo, c.range);
      hi = std::max(hi, c.range);
      ++nonzero;
    }
  return nonzero < 2 ? 1.0 : hi / lo;
}

int64_t count_zero_channels(const LayerWeightStats& layer) {
  return std::count_if(layer.channels.begin(), layer.channels.end(), [](const ChannelSummary& c) { return c.range == 0; });
}

}  // namespace prequant
