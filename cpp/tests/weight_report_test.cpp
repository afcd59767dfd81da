// weight_report_test.cpp — write_report: valid PNGs (signature, decoded by cairo, both series
// actually drawn), a self-contained HTML page (every image inlined byte for byte, no external
// reference, names escaped), the plot caps, and typed errors.
#include <gtest/gtest.h>

#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "prequant/errors.h"
#include "prequant/passes.h"
#include "prequant/weight_report.h"
#include "reference_model.h"

namespace pqtest {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string decode_base64(const std::string& text) {
  const std::string table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char ch : text) {
    if (ch == '=') break;
    acc = (acc << 6) | static_cast<uint32_t>(table.find(ch));
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

int count_of(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

// Pixels of a PNG close to an RGB colour (cairo decodes to premultiplied ARGB32; opaque here).
struct PngInfo {
  int width = 0, height = 0;
  int64_t near_before = 0, near_after = 0, non_white = 0;
};
PngInfo inspect_png(const std::string& path) {
  PngInfo info;
  cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
  EXPECT_EQ(cairo_surface_status(s), CAIRO_STATUS_SUCCESS) << path;
  if (cairo_surface_status(s) == CAIRO_STATUS_SUCCESS) {
    info.width = cairo_image_surface_get_width(s);
    info.height = cairo_image_surface_get_height(s);
    const int stride = cairo_image_surface_get_stride(s);
    const unsigned char* data = cairo_image_surface_get_data(s);
    for (int y = 0; y < info.height; ++y)
      for (int x = 0; x < info.width; ++x) {
        uint32_t px;
        std::memcpy(&px, data + y * stride + x * 4, 4);
        const int r = (px >> 16) & 0xFF, g = (px >> 8) & 0xFF, b = px & 0xFF;
        info.non_white += r < 245 || g < 245 || b < 245;
        info.near_before += std::abs(r - 214) < 20 && std::abs(g - 94) < 20 && b < 30;   // (0.84, 0.37, 0)
        info.near_after += r < 30 && std::abs(g - 115) < 20 && std::abs(b - 178) < 20;   // (0, 0.45, 0.70)
      }
  }
  cairo_surface_destroy(s);
  return info;
}

// conv_a (8 channels spread over three decades) → relu → conv_b, and a last layer "odd<name>&".
struct ReportModel {
  RefModel m{21};
  prequant::WeightStats before, after;

  ReportModel() {
    auto x = m.input("x", {3, 6, 6});
    ConvSpec spec;
    spec.in = 3;
    spec.out = 8;
    x = m.conv("conv_a", x, spec);
    x = m.relu("relu", x);
    spec.in = 8;
    spec.out = 5;
    x = m.conv("conv_b", x, spec);
    x = m.global_avg_pool("pool", x);
    x = m.linear("odd<name>&\"", x, 5, 3);
    m.output(x);
    // Channel o of conv_a scaled by 10^(-3·o/8): a layer CLS has work to do on.
    std::vector<double> down(8), up(8);
    for (int o = 0; o < 8; ++o) down[o] = std::pow(10.0, -3.0 * o / 8), up[o] = 1 / down[o];
    prequant::scale_out_channels(m.node("conv_a").weight, down);
    if (!m.node("conv_a").bias.empty())
      for (int o = 0; o < 8; ++o) m.node("conv_a").bias.set(o, m.node("conv_a").bias.get(o) * down[o]);
    prequant::scale_in_channels(m.node("conv_b").weight, up);
    before = prequant::collect_weight_stats(m.graph);
    prequant::equalize_model(m.graph);
    after = prequant::collect_weight_stats(m.graph);
  }
};

// cairo (and the fontconfig patterns of its toy font faces) keep process-wide caches; release
// them at exit so that LeakSanitizer (scripts/sanitize.sh) sees only real leaks.
class ReleaseCairoCaches : public ::testing::Environment {
 public:
  void TearDown() override {
    cairo_debug_reset_static_data();
    FcFini();
  }
};
const auto* const kReleaseCairoCaches = ::testing::AddGlobalTestEnvironment(new ReleaseCairoCaches);

class WeightReport : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "pq_report_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(WeightReport, WritesValidPngsAndSelfContainedHtml) {
  ReportModel rm;
  // CLS narrowed conv_a's channel spread: the report has something to show.
  EXPECT_GT(prequant::range_ratio(rm.before.layers[0]), 100.0);
  EXPECT_LT(prequant::range_ratio(rm.after.layers[0]), 10.0);
  prequant::ReportOptions o;
  o.model = "test <model>";
  const fs::path out = dir_ / "new" / "report";  // created, with its parent
  const auto files = prequant::write_report(rm.before, rm.after, out.string(), o);

  ASSERT_EQ(files.images.size(), 4u);  // overview + one per layer (3 layers ≤ max_layer_plots)
  EXPECT_EQ(fs::path(files.images[0]).filename(), "overview.png");
  EXPECT_EQ(fs::path(files.images[1]).filename(), "layer_001_conv_a.png");
  for (const auto& img : files.images) {
    SCOPED_TRACE(img);
    const std::string bytes = slurp(img);
    ASSERT_GE(bytes.size(), 8u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    const PngInfo info = inspect_png(img);
    EXPECT_GT(info.width, 800);
    EXPECT_GT(info.height, 600);
    EXPECT_GT(info.non_white, info.width * info.height / 50);
    EXPECT_GT(info.near_before, 200);  // the before series was drawn
    EXPECT_GT(info.near_after, 200);   // and the after series
  }

  const std::string html = slurp(files.html);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count_of(html, "<img "), 4);
  EXPECT_EQ(count_of(html, "src=\"data:image/png;base64,"), 4);
  EXPECT_EQ(count_of(html, "src="), 4);
  for (const char* external : {"http:", "https:", "<link", "<script", "@import", "url(", "file:"})
    EXPECT_EQ(html.find(external), std::string::npos) << external;
  // The first inlined image is overview.png, byte for byte.
  const size_t start = html.find("base64,") + 7;
  EXPECT_EQ(decode_base64(html.substr(start, html.find('"', start) - start)), slurp(files.images[0]));
  // Names and the model string are escaped.
  EXPECT_NE(html.find("odd&lt;name&gt;&amp;&quot;"), std::string::npos);
  EXPECT_EQ(html.find("odd<name>"), std::string::npos);
  EXPECT_NE(html.find("test &lt;model&gt;"), std::string::npos);

  const auto j = nlohmann::json::parse(slurp(files.json));
  EXPECT_EQ(j["before"]["layers"].size(), 3u);
  EXPECT_EQ(j["after"]["layers"][0]["name"], "conv_a");
  EXPECT_LT(j["after"]["layers"][0]["range_ratio"].get<double>(), 10.0);
}

TEST_F(WeightReport, CapsLayersAndChannelsAndSaysSo) {
  ReportModel rm;
  prequant::ReportOptions o;
  o.max_layer_plots = 1;
  o.max_channels = 4;
  o.pixel_scale = 1.0;
  const auto files = prequant::write_report(rm.before, rm.after, dir_.string(), o);
  ASSERT_EQ(files.images.size(), 2u);
  // The layer whose channels differ most before is the one drawn.
  EXPECT_EQ(fs::path(files.images[1]).filename(), "layer_001_conv_a.png");
  const std::string html = slurp(files.html);
  EXPECT_NE(html.find("Plots are drawn for 1 of 3 layers"), std::string::npos);
  EXPECT_NE(html.find("at most the first 4 output channels"), std::string::npos);
  EXPECT_EQ(count_of(html, "<img "), 2);

  o.max_layer_plots = 0;
  EXPECT_EQ(prequant::write_report(rm.before, rm.after, dir_.string(), o).images.size(), 1u);
}

TEST_F(WeightReport, LayerOnOneSideOnly) {
  ReportModel rm;
  auto after = rm.after;
  after.layers.erase(after.layers.begin() + 1);  // conv_b missing after
  const auto files = prequant::write_report(rm.before, after, dir_.string());
  EXPECT_EQ(files.images.size(), 4u);
  const std::string html = slurp(files.html);
  EXPECT_NE(html.find("→ —"), std::string::npos);
  EXPECT_EQ(inspect_png(files.images[2]).width > 0, true);
}

TEST_F(WeightReport, TypedErrors) {
  ReportModel rm;
  const fs::path file = dir_ / "a_file";
  std::ofstream(file) << "x";
  EXPECT_THROW(prequant::write_report(rm.before, rm.after, file.string()), prequant::InvalidRequestError);
  auto four_bit = rm.after;
  four_bit.bits = 4;
  EXPECT_THROW(prequant::write_report(rm.before, four_bit, dir_.string()), prequant::InvalidRequestError);
  prequant::ReportOptions bad;
  bad.max_channels = 0;
  EXPECT_THROW(prequant::write_report(rm.before, rm.after, dir_.string(), bad), prequant::InvalidRequestError);
  EXPECT_FALSE(fs::exists(dir_ / "report.html"));
}

}  // namespace
}  // namespace pqtest
