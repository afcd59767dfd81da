// weight_stats_json.cpp — WeightStats as JSON (the shape is documented in weight_stats.h).
// Per-channel numbers are column arrays (one per statistic), which keeps the JSON of a model
// with thousands of channels compact; numbers that are not finite (an SQNR of +inf) become null.
#include <cmath>

#include <nlohmann/json.hpp>

#include "prequant/weight_stats.h"

namespace prequant {
namespace {

nlohmann::json number(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

template <class F>
nlohmann::json column(const LayerWeightStats& layer, F&& field) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& c : layer.channels) a.push_back(number(field(c)));
  return a;
}

}  // namespace

nlohmann::json to_json(const WeightStats& stats) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : stats.layers) {
    layers.push_back({
        {"name", l.name},
        {"kind", l.kind == OpKind::Linear ? "linear" : "conv"},
        {"op_type", l.op_type},
        {"shape", l.shape},
        {"groups", l.groups},
        {"depthwise", l.depthwise},
        {"transposed", l.transposed},
        {"channels", l.channels.size()},
        {"range_ratio", number(range_ratio(l))},
        {"zero_channels", count_zero_channels(l)},
        {"sqnr_per_tensor_db", number(l.sqnr_per_tensor_db)},
        {"sqnr_per_channel_db", number(l.sqnr_per_channel_db)},
        {"min", column(l, [](const ChannelSummary& c) { return c.min; })},
        {"q1", column(l, [](const ChannelSummary& c) { return c.q1; })},
        {"median", column(l, [](const ChannelSummary& c) { return c.median; })},
        {"q3", column(l, [](const ChannelSummary& c) { return c.q3; })},
        {"max", column(l, [](const ChannelSummary& c) { return c.max; })},
        {"range", column(l, [](const ChannelSummary& c) { return c.range; })},
    });
  }
  return {{"bits", stats.bits}, {"layers", std::move(layers)}};
}

}  // namespace prequant
