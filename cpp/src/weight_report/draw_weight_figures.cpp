// draw_weight_figures.cpp — the overview and per-layer per-channel box plots of the weight report.
//
// Overview: per layer, a box over its per-channel ranges r[c] = max|W[c]| (min, quartiles,
// median, max of the non-zero ranges) before and after, on a log axis — a tall box is a layer
// whose channels per-tensor quantization serves badly; and below, the per-tensor weight SQNR
// before and after, with the per-channel SQNR (before) as the reference per-tensor cannot beat.
//
// Per layer: one box per output channel (the DFQ paper's Fig. 2), before above after on one
// shared value axis, so the boxes that span orders of magnitude before are seen to line up after.
// The axis is linear when all channel ranges are within a factor 20 of each other, otherwise
// symmetric-log (linear within ±c, c about half the smallest channel range) so that small
// channels stay visible. A shaded band marks ±Δ/2 of per-tensor quantization: weights inside it
// round to zero.
#include "draw_weight_figures.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "plot_canvas.h"

namespace prequant::report_detail {
namespace {

using namespace prequant::plot;

constexpr double kLeft = 78, kRight = 250, kLegendGap = 14;

double quantile_sorted(const std::vector<double>& v, double p) {
  const double h = static_cast<double>(v.size() - 1) * p;
  const auto lo = static_cast<size_t>(std::floor(h));
  const double frac = h - static_cast<double>(lo);
  return lo + 1 < v.size() ? v[lo] + frac * (v[lo + 1] - v[lo]) : v[lo];
}

bool continuation(const std::string& s, size_t k) { return (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80; }

// At most about n bytes: the end of a label is cut ("before (batch no…").
std::string truncate(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t cut = n - 1;
  while (cut > 0 && continuation(s, cut)) --cut;  // keep UTF-8 characters whole
  return s.substr(0, cut) + "…";
}

// The last ~n bytes of a layer name ("…conv.1/conv.1.0/Conv"): exported names share long
// prefixes and differ at the end.
std::string tail_of(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t tail = s.size() - n;
  while (tail < s.size() && continuation(s, tail)) ++tail;
  return "…" + s.substr(tail);
}

// At most about n bytes of a layer name: its middle is cut, since exported names share long
// prefixes and differ at the end ("/features/fea…/conv.1.0/Conv").
std::string shorten_name(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t head = n / 3, tail = s.size() - (n - head - 1);
  while (head > 0 && continuation(s, head)) --head;
  while (tail < s.size() && continuation(s, tail)) ++tail;
  return s.substr(0, head) + "…" + s.substr(tail);
}

std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "n/a";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

double max_range(const LayerWeightStats& l) {
  double m = 0;
  for (const auto& c : l.channels) m = std::max(m, c.range);
  return m;
}

void no_data(const Canvas& c, const Panel& p, const std::string& what) {
  c.frame(p.x, p.y, p.w, p.h, kGrid);
  c.text(p.x + p.w / 2, p.y + p.h / 2, what, 12, Align::Center, 0, false, kReference);
}

// Channel ranges of a layer's non-zero channels.
std::vector<double> ranges_of(const LayerWeightStats& l) {
  std::vector<double> r;
  for (const auto& c : l.channels)
    if (c.range > 0) r.push_back(c.range);
  return r;
}

// ---- overview -------------------------------------------------------------------------------

void draw_range_panel(const Canvas& c, const std::vector<LayerRow>& rows, const Panel& p) {
  draw_value_axis(c, p, "per-channel range max|W[c]|");
  const double half = std::max(1.0, p.slot() * 0.17);
  for (size_t i = 0; i < rows.size(); ++i) {
    const double x = p.x_of(static_cast<double>(i));
    for (const auto& [stats, dx, color] :
         {std::tuple{rows[i].before, -0.2, kBefore}, std::tuple{rows[i].after, 0.2, kAfter}}) {
      if (!stats) continue;
      const FiveNumbers f = summarize_positive(ranges_of(*stats));
      if (f.empty) continue;
      const Axis& a = p.value;
      c.box(x + dx * p.slot(), half, a.to_pixel(f.min), a.to_pixel(f.q1), a.to_pixel(f.median), a.to_pixel(f.q3),
            a.to_pixel(f.max), color);
    }
  }
}

void draw_sqnr_series(const Canvas& c, const Panel& p, const std::vector<double>& ys, const Color& color,
                      bool dashed) {
  double px = 0, py = 0;
  bool have = false;
  for (size_t i = 0; i < ys.size(); ++i) {
    if (std::isnan(ys[i])) {
      have = false;
      continue;
    }
    const double x = p.x_of(static_cast<double>(i)), y = p.value.to_pixel(ys[i]);
    if (have) c.line(px, py, x, y, color, 1.2, dashed);
    if (!dashed) c.marker(x, y, std::clamp(p.slot() * 0.18, 1.5, 3.0), color);
    px = x, py = y, have = true;
  }
}

}  // namespace

std::string int_name(int bits) { return "INT" + std::to_string(bits); }

FiveNumbers summarize_positive(std::vector<double> values) {
  std::erase_if(values, [](double v) { return !(v > 0) || !std::isfinite(v); });
  FiveNumbers f;
  if (values.empty()) return f;
  std::sort(values.begin(), values.end());
  f = {values.front(), quantile_sorted(values, 0.25), quantile_sorted(values, 0.5), quantile_sorted(values, 0.75),
       values.back(), false};
  return f;
}

std::string draw_overview_png(const std::vector<LayerRow>& rows, int bits, const ReportOptions& o) {
  const int n = std::max<int>(1, static_cast<int>(rows.size()));
  const double slot = n <= 40 ? 22 : n <= 100 ? 14 : std::max(5.0, 1400.0 / n);
  const double w = std::max(520.0, slot * n);
  const bool names = slot >= 9;
  const double label_h = names ? 150 : 30;
  Canvas c(kLeft + w + kRight, 76 + 300 + 50 + 200 + label_h + 10, o.pixel_scale);
  c.text(kLeft, 24, "Weight ranges and " + int_name(bits) + " weight SQNR per layer", 16, Align::Left, 0, true);
  c.text(kLeft, 44, truncate(o.model, 120), 11, Align::Left, 0, false, kReference);

  // Range axis: every non-zero channel range of either side, padded a little in log space.
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  std::vector<double> sq_before, sq_after, sq_channel;
  for (const auto& r : rows) {
    for (const auto* s : {r.before, r.after})
      if (s)
        for (const auto& ch : s->channels)
          if (ch.range > 0) lo = std::min(lo, ch.range), hi = std::max(hi, ch.range);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    sq_before.push_back(r.before ? r.before->sqnr_per_tensor_db : nan);
    sq_after.push_back(r.after ? r.after->sqnr_per_tensor_db : nan);
    sq_channel.push_back(r.before ? r.before->sqnr_per_channel_db : nan);
  }
  if (!(hi > 0)) lo = 0.1, hi = 1;
  Panel ranges = make_panel(kLeft, 76, w, 300, n, Axis{Scale::Log, lo / 1.6, hi * 1.6});
  c.text(kLeft, 69, "Per-channel weight ranges (box: quartiles over a layer's channels; whiskers: min, max; log scale)",
         11);
  draw_range_panel(c, rows, ranges);
  c.legend(kLeft + w + kLegendGap, ranges.y,
           {{truncate(o.before_label, 30), kBefore}, {truncate(o.after_label, 30), kAfter}});

  // SQNR axis: the finite values, with room above for +inf (exact) points.
  double s_lo = std::numeric_limits<double>::infinity(), s_hi = -s_lo;
  for (const auto* v : {&sq_before, &sq_after, &sq_channel})
    for (double x : *v)
      if (std::isfinite(x)) s_lo = std::min(s_lo, x), s_hi = std::max(s_hi, x);
  if (!(s_hi >= s_lo)) s_lo = 0, s_hi = 60;
  const double pad = std::max(2.0, (s_hi - s_lo) * 0.08);
  Panel sqnr = make_panel(kLeft, 426, w, 200, n, Axis{Scale::Linear, std::floor(s_lo - pad), std::ceil(s_hi + pad)});
  c.text(kLeft, 419, "Weight SQNR under symmetric " + int_name(bits) + " quantization, one scale per tensor (dB; higher is better)", 11);
  draw_value_axis(c, sqnr, "SQNR (dB)");
  draw_sqnr_series(c, sqnr, sq_channel, kReference, true);
  draw_sqnr_series(c, sqnr, sq_before, kBefore, false);
  draw_sqnr_series(c, sqnr, sq_after, kAfter, false);
  c.legend(kLeft + w + kLegendGap, sqnr.y,
           {{truncate(o.before_label, 30), kBefore, Canvas::Swatch::Line},
            {truncate(o.after_label, 30), kAfter, Canvas::Swatch::Line},
            {"per-channel scales (reference)", kReference, Canvas::Swatch::Dashed}});

  // Layer names under the SQNR panel (or every k-th row number when they would not fit).
  const double base = sqnr.y + sqnr.h + 8;
  if (names) {
    for (size_t i = 0; i < rows.size(); ++i)
      c.text(sqnr.x_of(static_cast<double>(i)) + 3, base, std::to_string(i + 1) + "  " + tail_of(rows[i].name, 24), 9,
             Align::Right, -60);
  } else {
    const int every = std::max(1, static_cast<int>(std::ceil(40.0 / slot)));
    for (int i = 0; i < n; i += every)
      c.text(sqnr.x_of(i), base + 10, std::to_string(i + 1), 9, Align::Center);
    c.text(kLeft + w / 2, base + 24, "layer (row in the table of the report)", 10, Align::Center);
  }
  return c.to_png();
}

// ---- per-layer channel boxes ----------------------------------------------------------------

std::string draw_channel_boxes_png(const LayerRow& row, int bits, const ReportOptions& o) {
  const LayerWeightStats* any = row.before ? row.before : row.after;
  const int64_t channels = any ? static_cast<int64_t>(any->channels.size()) : 0;
  const int shown = static_cast<int>(std::min<int64_t>(channels, std::max(1, o.max_channels)));
  const double slot = std::clamp(900.0 / std::max(shown, 1), 5.0, 18.0);
  const double w = std::max(640.0, slot * std::max(shown, 1));
  constexpr double kPanelH = 230, kPanelStep = 300;  // room for the channel axis and the next header
  Canvas c(kLeft + w + kRight, 75 + kPanelStep + kPanelH + 40, o.pixel_scale);

  std::string title = "Layer " + shorten_name(row.name, 70) + " (" + (any ? any->op_type : std::string("?")) + ", " +
                      std::to_string(channels) + " output channels" +
                      (any && any->depthwise ? ", depthwise" : "") + (any && any->transposed ? ", transposed" : "") + ")";
  c.text(kLeft, 22, title, 14, Align::Left, 0, true);
  std::string sub = "Weights per output channel: box q1–q3, line median, whiskers min–max";
  if (shown < channels) sub += "; channels 0–" + std::to_string(shown - 1) + " of " + std::to_string(channels) + " shown";

  // One value axis for both panels: the largest |w| of the channels shown.
  double top = 0, smallest = std::numeric_limits<double>::infinity();
  for (const auto* s : {row.before, row.after}) {
    if (!s) continue;
    for (int k = 0; k < shown && k < static_cast<int>(s->channels.size()); ++k) {
      top = std::max(top, s->channels[k].range);
      if (s->channels[k].range > 0) smallest = std::min(smallest, s->channels[k].range);
    }
  }
  if (!(top > 0)) top = 1, smallest = 1;
  Axis axis{Scale::Linear, -top * 1.08, top * 1.08};
  if (top / smallest > 20) {
    axis = Axis{Scale::SymLog, -top * 1.25, top * 1.25, std::clamp(smallest / 2, top * 1e-5, top * 0.1)};
    sub += "; symmetric log scale, linear within ±" + format_number(axis.linthresh);
  }
  c.text(kLeft, 40, sub, 11, Align::Left, 0, false, kReference);

  const int every = std::max(1, static_cast<int>(std::ceil(32.0 / slot)));
  for (int side = 0; side < 2; ++side) {
    const LayerWeightStats* s = side == 0 ? row.before : row.after;
    const std::string& label = side == 0 ? o.before_label : o.after_label;
    const Color color = side == 0 ? kBefore : kAfter;
    Panel p = make_panel(kLeft, 75 + side * kPanelStep, w, kPanelH, std::max(shown, 1), axis);
    if (!s) {
      c.text(kLeft, p.y - 8, label, 11, Align::Left, 0, true, color);
      no_data(c, p, "layer not present " + std::string(side == 0 ? "before" : "after"));
      continue;
    }
    const std::string head = truncate(label, 40) + ":";
    c.text(kLeft, p.y - 8, head, 11, Align::Left, 0, true, color);
    c.text(kLeft + c.text_width(head, 11, true) + 6, p.y - 8,
           "range ratio max/min " + fixed(range_ratio(*s), 1) + ";  " + int_name(bits) + " SQNR " +
               fixed(s->sqnr_per_tensor_db, 1) + " dB per tensor, " + fixed(s->sqnr_per_channel_db, 1) +
               " dB per channel",
           11, Align::Left, 0, false, color);
    // Per-tensor quantization: weights within ±Δ/2 round to zero.
    const double half_step = max_range(*s) / (std::ldexp(1.0, bits - 1) - 1) / 2;
    const Axis& a = p.value;
    const double y0 = a.to_pixel(half_step), y1 = a.to_pixel(-half_step);
    c.rect(p.x, y0, p.w, std::max(y1 - y0, 0.6), {color.r, color.g, color.b, 0.15});
    draw_value_axis(c, p, "weight value");
    const double half = std::max(1.0, p.slot() * 0.32);
    for (int k = 0; k < shown && k < static_cast<int>(s->channels.size()); ++k) {
      const ChannelSummary& ch = s->channels[k];
      c.box(p.x_of(k), half, a.to_pixel(ch.min), a.to_pixel(ch.q1), a.to_pixel(ch.median), a.to_pixel(ch.q3),
            a.to_pixel(ch.max), color);
    }
    for (int k = 0; k < shown; k += every) c.text(p.x_of(k), p.y + p.h + 13, std::to_string(k), 9, Align::Center);
    c.text(p.x + p.w, p.y + p.h + 28, "output channel", 10, Align::Right);
    c.legend(kLeft + w + kLegendGap, p.y,
             {{truncate(label, 28), color},
              {"rounds to 0 (per-tensor " + int_name(bits) + ")", {color.r, color.g, color.b, 0.4}}});
  }
  return c.to_png();
}

}  // namespace prequant::report_detail
