// write_weight_report.cpp — write_report: the weight report's files (weight_report.h).
//
// Matches layers by name (before order, then any only after), draws the overview and the
// per-channel plots of the layers whose per-channel ranges differ most before (at most
// max_layer_plots, shown in table order), and writes report.html with every image inlined as a
// base64 PNG data URI and no external reference, so the page can be mailed or attached as is.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "draw_weight_figures.h"
#include "prequant/errors.h"
#include "prequant/weight_report.h"

namespace prequant {
namespace {

namespace fs = std::filesystem;
using report_detail::LayerRow;

std::vector<LayerRow> match_layers(const WeightStats& before, const WeightStats& after) {
  std::vector<LayerRow> rows;
  std::unordered_map<std::string, size_t> row_of;
  for (const auto& l : before.layers) {
    row_of.emplace(l.name, rows.size());
    rows.push_back({l.name, &l, nullptr});
  }
  for (const auto& l : after.layers) {
    auto it = row_of.find(l.name);
    if (it != row_of.end() && !rows[it->second].after) rows[it->second].after = &l;
    else rows.push_back({l.name, nullptr, &l});
  }
  return rows;
}

// Rows to draw per-channel plots for: the widest range ratios first, then back in table order.
std::vector<size_t> choose_plotted(const std::vector<LayerRow>& rows, int max_plots) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  auto spread = [&](size_t i) { return range_ratio(rows[i].before ? *rows[i].before : *rows[i].after); };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spread(a) > spread(b); });
  order.resize(std::min(order.size(), static_cast<size_t>(std::max(max_plots, 0))));
  std::sort(order.begin(), order.end());
  return order;
}

std::string base64(const std::string& bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s : {18, 12, 6, 0}) out += table[(v >> s) & 63];
  }
  if (const size_t rest = bytes.size() - i; rest > 0) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (rest == 2 ? uint8_t(bytes[i + 1]) << 8 : 0);
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
    out += rest == 2 ? table[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string escape_html(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += ch;
    }
  }
  return out;
}

std::string file_safe(const std::string& name) {
  std::string out;
  for (char ch : name.substr(0, 60))
    out += std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.' ? ch : '_';
  return out.empty() ? "layer" : out;
}

std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "n/a";
  if (std::isinf(v)) return v > 0 ? "∞" : "−∞";
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

// "a → b" of a statistic over both sides of a row, "—" for a missing side.
template <class F>
std::string before_after(const LayerRow& r, F&& stat, int digits) {
  auto one = [&](const LayerWeightStats* s) { return s ? fixed(stat(*s), digits) : std::string("—"); };
  return one(r.before) + " → " + one(r.after);
}

double median_of(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (f) f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (f) f.close();
  if (!f)
    throw InvalidRequestError("cannot write '" + path.string() + "': " + std::strerror(errno) +
                              "; choose another output directory");
}

// Width of a PNG in layout units (the IHDR width over the pixel scale).
double png_width(const std::string& png, double pixel_scale) {
  if (png.size() < 24) return 0;
  const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(png[k])); };
  return ((b(16) << 24) | (b(17) << 16) | (b(18) << 8) | b(19)) / pixel_scale;
}

std::string img_tag(const std::string& png, double pixel_scale, const std::string& alt) {
  return "<img alt=\"" + escape_html(alt) + "\" width=\"" + std::to_string(std::lround(png_width(png, pixel_scale))) +
         "\" src=\"data:image/png;base64," + base64(png) + "\">";
}

const char* kStyle = R"(
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:none}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
.sub{color:#666;margin-top:0}img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4;position:sticky;top:0}td.name{text-align:left;font-family:monospace}
tr.better td.delta{color:#0072b2}tr.worse td.delta{color:#d55e00}.note{color:#555;font-size:13px;max-width:70em}
)";

}  // namespace

ReportFiles write_report(const WeightStats& before, const WeightStats& after, const std::string& out_dir,
                         const ReportOptions& o) {
  if (o.max_layer_plots < 0 || o.max_channels < 1 || !(o.pixel_scale >= 0.5 && o.pixel_scale <= 4))
    throw InvalidRequestError("report options out of range: max_layer_plots >= 0, max_channels >= 1 and "
                              "pixel_scale in [0.5, 4] (got " + std::to_string(o.max_layer_plots) + ", " +
                              std::to_string(o.max_channels) + ", " + std::to_string(o.pixel_scale) + ")");
  if (before.bits != after.bits)
    throw InvalidRequestError("the before and after statistics were collected for different bit widths (" +
                              std::to_string(before.bits) + " and " + std::to_string(after.bits) +
                              "); collect both with the same bits");
  const fs::path dir(out_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw InvalidRequestError("cannot create the report directory '" + out_dir + "'" +
                              (ec ? ": " + ec.message() : std::string(": a file of that name exists")) +
                              "; choose another output directory");
  const int bits = before.bits;
  const std::vector<LayerRow> rows = match_layers(before, after);
  const std::vector<size_t> plotted = choose_plotted(rows, o.max_layer_plots);
  ReportFiles files;

  const std::string overview = report_detail::draw_overview_png(rows, bits, o);
  files.images.push_back((dir / "overview.png").string());
  write_file(files.images.back(), overview);

  std::ostringstream plots;
  std::unordered_map<size_t, std::string> anchor;
  for (size_t i : plotted) {
    char num[16];
    std::snprintf(num, sizeof num, "%03zu", i + 1);
    const std::string png = report_detail::draw_channel_boxes_png(rows[i], bits, o);
    files.images.push_back((dir / ("layer_" + std::string(num) + "_" + file_safe(rows[i].name) + ".png")).string());
    write_file(files.images.back(), png);
    anchor[i] = "layer-" + std::to_string(i + 1);
    plots << "<section id=\"" << anchor[i] << "\"><h3>" << (i + 1) << ". " << escape_html(rows[i].name) << "</h3>"
          << img_tag(png, o.pixel_scale, "per-channel weights of " + rows[i].name) << "</section>\n";
  }

  // Summary numbers over the layers present on both sides.
  std::vector<double> ratio_before, ratio_after;
  int better = 0, worse = 0, both = 0;
  for (const auto& r : rows) {
    if (!r.before || !r.after) continue;
    ++both;
    ratio_before.push_back(range_ratio(*r.before));
    ratio_after.push_back(range_ratio(*r.after));
    const double d = r.after->sqnr_per_tensor_db - r.before->sqnr_per_tensor_db;
    better += d > 0.1;
    worse += d < -0.1;
  }
  const std::string q = report_detail::int_name(bits);

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape_html(o.title)
    << "</title><style>" << kStyle << "</style></head><body>\n<h1>" << escape_html(o.title) << "</h1>\n";
  if (!o.model.empty()) h << "<p class=\"sub\">" << escape_html(o.model) << "</p>\n";
  h << "<h2>Summary</h2><ul>\n<li>" << rows.size() << " conv/linear layers; columns compare <b>"
    << escape_html(o.before_label) << "</b> with <b>" << escape_html(o.after_label) << "</b>.</li>\n"
    << "<li>Median range ratio (max/min per-channel range of a layer): " << fixed(median_of(ratio_before), 1)
    << " → " << fixed(median_of(ratio_after), 1) << ".</li>\n"
    << "<li>Per-tensor " << q << " weight SQNR: higher in " << better << ", lower in " << worse << ", about the same in "
    << both - better - worse << " of " << both << " layers (±0.1 dB).</li>\n";
  for (const auto& note : o.notes) h << "<li>" << escape_html(note) << "</li>\n";
  h << "</ul>\n<h2>Overview</h2>\n" << img_tag(overview, o.pixel_scale, "per-layer weight ranges and SQNR") << "\n";

  h << "<h2>Layers</h2>\n<p class=\"note\">Range ratio: the largest over the smallest non-zero per-channel range "
       "max|W[c]| of a layer (1 = every output channel uses the full quantization grid). SQNR = "
       "10·log10(Σw²/Σ(w−q(w))²) of the weights under symmetric "
    << q << " quantization (levels ±" << (1 << (bits - 1)) - 1
    << "), one scale per tensor; the per-channel column (one scale per output channel) is the reference a per-tensor "
       "scheme can at best reach. Each cell reads before → after.</p>\n"
    << "<table><thead><tr><th>#</th><th>layer</th><th>op</th><th>out channels</th><th>zero channels</th>"
       "<th>range ratio</th><th>per-tensor SQNR (dB)</th><th>Δ (dB)</th><th>per-channel SQNR (dB)</th>"
       "<th>plot</th></tr></thead><tbody>\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const LayerRow& r = rows[i];
    const LayerWeightStats& any = r.before ? *r.before : *r.after;
    const double delta = r.before && r.after ? r.after->sqnr_per_tensor_db - r.before->sqnr_per_tensor_db : std::nan("");
    const char* cls = delta > 0.1 ? "better" : delta < -0.1 ? "worse" : "same";
    std::string op = escape_html(any.op_type.empty() ? (any.kind == OpKind::Linear ? "linear" : "conv") : any.op_type);
    if (any.depthwise) op += " (depthwise)";
    else if (any.groups > 1) op += " (groups " + std::to_string(any.groups) + ")";
    if (any.transposed) op += " (transposed)";
    h << "<tr class=\"" << cls << "\"><td>" << (i + 1) << "</td><td class=\"name\">" << escape_html(r.name) << "</td><td>"
      << op << "</td><td>" << any.channels.size() << "</td><td>"
      << before_after(r, [](const LayerWeightStats& s) { return static_cast<double>(count_zero_channels(s)); }, 0)
      << "</td><td>" << before_after(r, [](const LayerWeightStats& s) { return range_ratio(s); }, 1) << "</td><td>"
      << before_after(r, [](const LayerWeightStats& s) { return s.sqnr_per_tensor_db; }, 1) << "</td><td class=\"delta\">"
      << (delta > 0 ? "+" : "") << (std::isnan(delta) ? "—" : fixed(delta, 1)) << "</td><td>"
      << before_after(r, [](const LayerWeightStats& s) { return s.sqnr_per_channel_db; }, 1) << "</td><td>"
      << (anchor.count(i) ? "<a href=\"#" + anchor[i] + "\">plot</a>" : std::string()) << "</td></tr>\n";
  }
  h << "</tbody></table>\n<h2>Per-channel weights</h2>\n<p class=\"note\">One box per output channel (the DFQ "
       "paper's Fig. 2): box from the first to the third quartile, a line at the median, whiskers from the minimum "
       "to the maximum weight of the channel. The shaded band holds the weights that round to zero under "
       "per-tensor "
    << q << " quantization. ";
  if (plotted.size() < rows.size())
    h << "Plots are drawn for " << plotted.size() << " of " << rows.size()
      << " layers: those whose per-channel ranges differ most before (largest range ratio). ";
  h << "Each plot shows at most the first " << o.max_channels << " output channels.</p>\n"
    << plots.str() << "</body></html>\n";

  files.html = (dir / "report.html").string();
  write_file(files.html, h.str());
  nlohmann::json j{{"before", to_json(before)}, {"after", to_json(after)}};
  files.json = (dir / "weight_stats.json").string();
  write_file(files.json, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  return files;
}

}  // namespace prequant
