// draw_weight_figures.h — the weight report's two figures, as PNG bytes. Internal to
// prequant_report; write_report (write_weight_report.cpp) lays them out on the page.
#pragma once

#include <string>
#include <vector>

#include "prequant/weight_report.h"
#include "prequant/weight_stats.h"

namespace prequant::report_detail {

// One row of the report: a layer's statistics before and after (nullptr: absent on that side).
struct LayerRow {
  std::string name;
  const LayerWeightStats* before = nullptr;
  const LayerWeightStats* after = nullptr;
};

// "INT8", "INT4", ...
std::string int_name(int bits);
// The five-number summary (numpy.quantile's linear interpolation) of the positive values.
struct FiveNumbers {
  double min = 0, q1 = 0, median = 0, q3 = 0, max = 0;
  bool empty = true;
};
FiveNumbers summarize_positive(std::vector<double> values);

// Per layer: a box of the per-channel ranges before and after (log scale), and the per-tensor
// weight SQNR before and after with the per-channel SQNR before as a reference.
std::string draw_overview_png(const std::vector<LayerRow>& rows, int bits, const ReportOptions& options);

// One box per output channel (min, quartiles, median, max), before above after on one value
// axis, for the first options.max_channels channels.
std::string draw_channel_boxes_png(const LayerRow& row, int bits, const ReportOptions& options);

}  // namespace prequant::report_detail
