// prequant/weight_report.h — the weight report: per-layer and per-channel weight ranges before
// and after equalization (the box plots of the DFQ paper's Fig. 2) and per-layer weight SQNR, as
// PNG images and one self-contained HTML page (images inlined, no external references).
//
// Built as the library prequant_report (it draws with cairo); the engine library does not
// depend on it. The statistics themselves come from collect_weight_stats (weight_stats.h).
//
// Files written into out_dir (created if missing; existing files of these names are replaced):
//   report.html         summary, overview, per-layer table, per-channel plots (PNG inlined)
//   overview.png        per layer: box of the per-channel ranges before vs after (log scale),
//                       and per-tensor weight SQNR before vs after (per-channel SQNR for reference)
//   layer_NNN_NAME.png  per-channel box plots of one layer, before above after (NNN = the
//                       layer's row in the table); drawn for at most max_layer_plots layers (those
//                       whose per-channel ranges differ most before), at most max_channels each
//   weight_stats.json   {"before": WeightStats, "after": WeightStats} (weight_stats.h's to_json)
#pragma once

#include <string>
#include <vector>

#include "prequant/weight_stats.h"

namespace prequant {

struct ReportOptions {
  std::string title = "prequant weight report";
  std::string model;                         // shown under the title (a path or a model name)
  std::string before_label = "before (batch norms folded)";
  std::string after_label = "after equalization";
  std::vector<std::string> notes;            // extra lines for the summary (e.g. what equalize did)
  int max_layer_plots = 24;                  // per-channel plots for at most this many layers
  int max_channels = 128;                    // channels drawn per plot (the first ones)
  double pixel_scale = 2.0;                  // PNG pixels per layout unit (2: sharp on HiDPI)
};

struct ReportFiles {
  std::string html;
  std::string json;
  std::vector<std::string> images;  // overview first, then the per-layer plots in table order
};

// Writes the report. Layers are matched by name; a layer present on one side only gets a table
// row with the other side empty. InvalidRequestError if out_dir cannot be created or written,
// or an option is out of range.
ReportFiles write_report(const WeightStats& before, const WeightStats& after, const std::string& out_dir,
                         const ReportOptions& options = {});

}  // namespace prequant
