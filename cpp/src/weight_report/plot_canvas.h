// plot_canvas.h — the little plotting layer the weight report draws with, on cairo: a canvas
// (an image surface in layout units, encoded to PNG bytes), value axes (linear, log10 or
// symmetric log) with readable tick labels, and the marks the report needs (boxes, lines,
// markers, legends). Internal to prequant_report.
#pragma once

#include <string>
#include <utility>
#include <vector>

typedef struct _cairo cairo_t;
typedef struct _cairo_surface cairo_surface_t;

namespace prequant::plot {

struct Color {
  double r, g, b, a = 1.0;
};
// Okabe–Ito colours (distinguishable with colour-blindness).
inline constexpr Color kBefore{0.84, 0.37, 0.0};
inline constexpr Color kAfter{0.0, 0.45, 0.70};
inline constexpr Color kReference{0.45, 0.45, 0.45};
inline constexpr Color kInk{0.15, 0.15, 0.15};
inline constexpr Color kGrid{0.88, 0.88, 0.88};

enum class Scale {
  Linear,
  Log,     // log10; values ≤ 0 are not drawn
  SymLog,  // sign(v)·log10(1 + |v|/c): linear near 0, logarithmic beyond c
};

// A value axis: data range [lo, hi] under a scale, mapped to pixels [pixel_lo, pixel_hi].
struct Axis {
  Scale scale = Scale::Linear;
  double lo = 0, hi = 1;
  double linthresh = 1;  // SymLog's c
  double pixel_lo = 0, pixel_hi = 1;

  double transform(double v) const;
  double to_pixel(double v) const;  // clamped to the axis
  // Tick values and their labels: powers of ten for Log/SymLog, "nice" steps for Linear.
  std::vector<std::pair<double, std::string>> ticks() const;
};

// A compact tick label: 0.001, 0.5, 20, 1e-05, 3e+04.
std::string format_number(double v);

enum class Align { Left, Center, Right };

class Canvas {
 public:
  Canvas(double width, double height, double pixel_scale);
  ~Canvas();
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  cairo_t* cr() const { return cr_; }
  double width() const { return width_; }
  double height() const { return height_; }

  void set_color(const Color& c) const;
  void text(double x, double y, const std::string& s, double size, Align align = Align::Left,
            double angle_deg = 0, bool bold = false, const Color& color = kInk) const;
  double text_width(const std::string& s, double size, bool bold = false) const;
  void line(double x0, double y0, double x1, double y1, const Color& c, double width = 1,
            bool dashed = false) const;
  void rect(double x, double y, double w, double h, const Color& fill) const;
  void frame(double x, double y, double w, double h, const Color& c, double width = 1) const;
  // A box plot mark centred at x: whiskers from y_min to y_max, box from y_q1 to y_q3, a median
  // line (pixel coordinates).
  void box(double x, double half_width, double y_min, double y_q1, double y_median, double y_q3,
           double y_max, const Color& c) const;
  void marker(double x, double y, double radius, const Color& c) const;
  // A legend: one coloured swatch and label per entry, from (x, y) down.
  enum class Swatch { Box, Line, Dashed };  // a box plot mark, a line with a marker, a dashed line
  struct LegendEntry {
    std::string label;
    Color color;
    Swatch swatch = Swatch::Box;
  };
  void legend(double x, double y, const std::vector<LegendEntry>& entries) const;

  // PNG bytes of the canvas; Error if cairo failed anywhere while drawing.
  std::string to_png() const;

 private:
  double width_, height_;
  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
};

// A plot area: a rectangle with a horizontal category axis (positions 0..n-1) and a value axis.
struct Panel {
  double x, y, w, h;  // layout units
  int count = 1;      // categories along x
  Axis value;         // pixel range set by make_panel

  double x_of(double position) const { return x + (position + 0.5) * w / count; }
  double slot() const { return w / count; }
};
Panel make_panel(double x, double y, double w, double h, int count, Axis value);
// Grid lines, tick labels and the value axis title (rotated, left of the panel), and a frame.
void draw_value_axis(const Canvas& c, const Panel& p, const std::string& title);

}  // namespace prequant::plot
