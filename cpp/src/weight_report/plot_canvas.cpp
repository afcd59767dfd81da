// plot_canvas.cpp — cairo drawing primitives and value axes for the weight report.
//
// Axes: Linear maps v; Log maps log10(v); SymLog maps sign(v)·log10(1 + |v|/c), which is linear
// (slope 1/(c·ln 10)) near 0 and logarithmic beyond c, so signed weights spanning several
// decades fit one axis. Text uses cairo's toy font API with "DejaVu Sans" (fontconfig picks a
// fallback when it is missing); nothing here needs more than that.
#include "plot_canvas.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <cairo.h>

#include "prequant/errors.h"

namespace prequant::plot {

double Axis::transform(double v) const {
  switch (scale) {
    case Scale::Linear: return v;
    case Scale::Log: return std::log10(v);
    case Scale::SymLog: return std::copysign(std::log10(1.0 + std::abs(v) / linthresh), v);
  }
  return v;
}

double Axis::to_pixel(double v) const {
  const double a = transform(lo), b = transform(hi);
  double t = b > a ? (transform(v) - a) / (b - a) : 0.5;
  if (!std::isfinite(t)) t = transform(v) > 0 ? 1.0 : 0.0;  // log of 0, or ±inf
  t = std::clamp(t, 0.0, 1.0);
  return pixel_lo + t * (pixel_hi - pixel_lo);
}

std::string format_number(double v) {
  if (v == 0) return "0";
  char buf[32];
  const double a = std::abs(v);
  if (a >= 1e-3 && a < 1e4) {
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
  }
  const int e = static_cast<int>(std::floor(std::log10(a) + 1e-9));
  const double m = v / std::pow(10.0, e);
  if (std::abs(std::abs(m) - 1.0) < 1e-6)
    std::snprintf(buf, sizeof buf, "%se%d", m < 0 ? "-1" : "1", e);
  else
    std::snprintf(buf, sizeof buf, "%.2ge%d", m, e);
  return buf;
}

namespace {

// Powers of ten 10^k in [lo, hi], thinned to at most ~8 ticks.
std::vector<double> decades(double lo, double hi) {
  std::vector<double> out;
  if (!(lo > 0) || !(hi >= lo)) return out;
  const int k0 = static_cast<int>(std::ceil(std::log10(lo) - 1e-9));
  const int k1 = static_cast<int>(std::floor(std::log10(hi) + 1e-9));
  const int step = std::max(1, (k1 - k0 + 8) / 8);
  for (int k = k1; k >= k0; k -= step) out.push_back(std::pow(10.0, k));  // anchored at the top
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace

std::vector<std::pair<double, std::string>> Axis::ticks() const {
  std::vector<std::pair<double, std::string>> out;
  if (scale == Scale::Log) {
    for (double d : decades(lo, hi)) out.emplace_back(d, format_number(d));
    return out;
  }
  if (scale == Scale::SymLog) {
    const double top = std::max(std::abs(lo), std::abs(hi));
    // Decades from about the linear threshold up; labelled on both signs where the axis reaches.
    for (double d : decades(std::max(linthresh, top * 1e-9), top)) {
      if (-d >= lo) out.emplace_back(-d, format_number(-d));
      if (d <= hi) out.emplace_back(d, format_number(d));
    }
    if (lo <= 0 && hi >= 0) out.emplace_back(0.0, "0");
    std::sort(out.begin(), out.end());
    return out;
  }
  const double span = hi - lo;
  if (!(span > 0)) return {{lo, format_number(lo)}};
  const double raw = span / 6.0;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double f : {1.0, 2.0, 5.0, 10.0})
    if (f * mag >= raw) {
      step = f * mag;
      break;
    }
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    out.emplace_back(std::abs(v) < step * 1e-9 ? 0.0 : v, format_number(std::abs(v) < step * 1e-9 ? 0.0 : v));
  return out;
}

Canvas::Canvas(double width, double height, double pixel_scale) : width_(width), height_(height) {
  const int pw = static_cast<int>(std::ceil(width * pixel_scale));
  const int ph = static_cast<int>(std::ceil(height * pixel_scale));
  surface_ = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, pw, ph);
  cr_ = cairo_create(surface_);
  cairo_scale(cr_, pixel_scale, pixel_scale);
  rect(0, 0, width, height, {1, 1, 1});
}

Canvas::~Canvas() {
  cairo_destroy(cr_);
  cairo_surface_destroy(surface_);
}

void Canvas::set_color(const Color& c) const { cairo_set_source_rgba(cr_, c.r, c.g, c.b, c.a); }

namespace {
void select_font(cairo_t* cr, double size, bool bold) {
  cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}
}  // namespace

double Canvas::text_width(const std::string& s, double size, bool bold) const {
  select_font(cr_, size, bold);
  cairo_text_extents_t e;
  cairo_text_extents(cr_, s.c_str(), &e);
  return e.x_advance;
}

void Canvas::text(double x, double y, const std::string& s, double size, Align align, double angle_deg,
                  bool bold, const Color& color) const {
  const double w = text_width(s, size, bold);
  set_color(color);
  const double dx = align == Align::Left ? 0 : align == Align::Center ? -w / 2 : -w;
  cairo_save(cr_);
  cairo_translate(cr_, x, y);
  cairo_rotate(cr_, angle_deg * M_PI / 180.0);
  cairo_move_to(cr_, dx, 0);
  cairo_show_text(cr_, s.c_str());
  cairo_restore(cr_);
}

void Canvas::line(double x0, double y0, double x1, double y1, const Color& c, double width, bool dashed) const {
  cairo_save(cr_);
  set_color(c);
  cairo_set_line_width(cr_, width);
  if (dashed) {
    const double dash[] = {4.0, 3.0};
    cairo_set_dash(cr_, dash, 2, 0);
  }
  cairo_move_to(cr_, x0, y0);
  cairo_line_to(cr_, x1, y1);
  cairo_stroke(cr_);
  cairo_restore(cr_);
}

void Canvas::rect(double x, double y, double w, double h, const Color& fill) const {
  set_color(fill);
  cairo_rectangle(cr_, x, y, w, h);
  cairo_fill(cr_);
}

void Canvas::frame(double x, double y, double w, double h, const Color& c, double width) const {
  set_color(c);
  cairo_set_line_width(cr_, width);
  cairo_rectangle(cr_, x, y, w, h);
  cairo_stroke(cr_);
}

void Canvas::box(double x, double half_width, double y_min, double y_q1, double y_median, double y_q3,
                 double y_max, const Color& c) const {
  const double lw = std::clamp(half_width / 4, 0.5, 1.2);
  line(x, y_min, x, y_max, c, lw);
  if (half_width >= 2) {
    line(x - half_width / 2, y_min, x + half_width / 2, y_min, c, lw);
    line(x - half_width / 2, y_max, x + half_width / 2, y_max, c, lw);
  }
  const double top = std::min(y_q1, y_q3), height = std::max(std::abs(y_q3 - y_q1), 0.8);
  rect(x - half_width, top, 2 * half_width, height, {c.r, c.g, c.b, 0.35});
  frame(x - half_width, top, 2 * half_width, height, c, lw);
  line(x - half_width, y_median, x + half_width, y_median, kInk, std::max(lw, 1.0));
}

void Canvas::marker(double x, double y, double radius, const Color& c) const {
  set_color(c);
  cairo_arc(cr_, x, y, radius, 0, 2 * M_PI);
  cairo_fill(cr_);
}

void Canvas::legend(double x, double y, const std::vector<LegendEntry>& entries) const {
  const double size = 11, row = 16;
  double w = 0;
  for (const auto& e : entries) w = std::max(w, text_width(e.label, size));
  rect(x, y, w + 34, row * static_cast<double>(entries.size()) + 6, {1, 1, 1, 0.85});
  frame(x, y, w + 34, row * static_cast<double>(entries.size()) + 6, kGrid);
  for (size_t k = 0; k < entries.size(); ++k) {
    const double cy = y + 3 + row * (static_cast<double>(k) + 0.5);
    const auto& e = entries[k];
    if (e.swatch != Swatch::Box) {
      line(x + 6, cy, x + 24, cy, e.color, 1.5, e.swatch == Swatch::Dashed);
      if (e.swatch == Swatch::Line) marker(x + 15, cy, 3, e.color);
    } else {
      rect(x + 8, cy - 5, 14, 10, {e.color.r, e.color.g, e.color.b, 0.35});
      frame(x + 8, cy - 5, 14, 10, e.color);
    }
    text(x + 30, cy + 4, e.label, size);
  }
}

std::string Canvas::to_png() const {
  cairo_surface_flush(surface_);
  if (cairo_status(cr_) != CAIRO_STATUS_SUCCESS)
    throw Error(std::string("drawing the report failed: ") + cairo_status_to_string(cairo_status(cr_)));
  std::string bytes;
  auto append = [](void* closure, const unsigned char* data, unsigned int length) -> cairo_status_t {
    static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
    return CAIRO_STATUS_SUCCESS;
  };
  const cairo_status_t s = cairo_surface_write_to_png_stream(surface_, append, &bytes);
  if (s != CAIRO_STATUS_SUCCESS)
    throw Error(std::string("encoding a report image as PNG failed: ") + cairo_status_to_string(s));
  return bytes;
}

Panel make_panel(double x, double y, double w, double h, int count, Axis value) {
  value.pixel_lo = y + h;  // values grow upwards
  value.pixel_hi = y;
  return Panel{x, y, w, h, std::max(count, 1), value};
}

void draw_value_axis(const Canvas& c, const Panel& p, const std::string& title) {
  for (const auto& [v, label] : p.value.ticks()) {
    const double y = p.value.to_pixel(v);
    c.line(p.x, y, p.x + p.w, y, v == 0 && p.value.scale != Scale::Log ? kReference : kGrid, 1);
    c.line(p.x - 4, y, p.x, y, kInk, 1);
    c.text(p.x - 6, y + 4, label, 10, Align::Right);
  }
  c.frame(p.x, p.y, p.w, p.h, kInk, 1);
  c.text(p.x - 48, p.y + p.h / 2, title, 11, Align::Center, -90);
}

}  // namespace prequant::plot
