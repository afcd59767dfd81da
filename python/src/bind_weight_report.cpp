// The weight report: collect_weight_stats (weight_stats.h) and write_report (weight_report.h).
//
// WeightStats and LayerWeightStats are read-only classes; each per-channel statistic of a layer
// (min, q1, median, q3, max, range) is a numpy float64 copy. to_dict()/to_json() give the
// engine's JSON (weight_stats.h). Both functions run without the GIL.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <nlohmann/json.hpp>

#include "bindings.h"
#include "prequant/errors.h"
#include "prequant/weight_report.h"
#include "prequant/weight_stats.h"

namespace prequant::python {
namespace {

using namespace nb::literals;

template <class F>
nb::object column(const LayerWeightStats& l, F&& field) {
  std::vector<double> v;
  v.reserve(l.channels.size());
  for (const auto& c : l.channels) v.push_back(field(c));
  return numpy_of(v);
}

std::string json_text(const WeightStats& s, int indent) {
  return to_json(s).dump(indent > 0 ? indent : -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

void bind_weight_report(nb::module_& m) {
  nb::class_<LayerWeightStats>(m, "LayerWeightStats",
                               "One conv/linear layer's weight statistics: per output channel a five-number "
                               "summary and range, and the weight SQNR per tensor and per channel.")
      .def_ro("name", &LayerWeightStats::name)
      .def_prop_ro("kind", [](const LayerWeightStats& l) { return l.kind == OpKind::Linear ? "linear" : "conv"; })
      .def_ro("op_type", &LayerWeightStats::op_type)
      .def_ro("shape", &LayerWeightStats::shape)
      .def_ro("groups", &LayerWeightStats::groups)
      .def_ro("depthwise", &LayerWeightStats::depthwise)
      .def_ro("transposed", &LayerWeightStats::transposed)
      .def_prop_ro("channels", [](const LayerWeightStats& l) { return l.channels.size(); },
                   "number of output channels")
      .def_ro("sqnr_per_tensor_db", &LayerWeightStats::sqnr_per_tensor_db,
              "10·log10(Σw²/Σ(w−q(w))²) under symmetric per-tensor quantization (inf: exact; nan: all zero)")
      .def_ro("sqnr_per_channel_db", &LayerWeightStats::sqnr_per_channel_db,
              "the same with one scale per output channel")
      .def_prop_ro("range_ratio", [](const LayerWeightStats& l) { return range_ratio(l); },
                   "largest over smallest non-zero per-channel range max|W[c]|")
      .def_prop_ro("zero_channels", [](const LayerWeightStats& l) { return count_zero_channels(l); })
      .def_prop_ro("min", [](const LayerWeightStats& l) { return column(l, [](const ChannelSummary& c) { return c.min; }); })
      .def_prop_ro("q1", [](const LayerWeightStats& l) { return column(l, [](const ChannelSummary& c) { return c.q1; }); })
      .def_prop_ro("median",
                   [](const LayerWeightStats& l) { return column(l, [](const ChannelSummary& c) { return c.median; }); })
      .def_prop_ro("q3", [](const LayerWeightStats& l) { return column(l, [](const ChannelSummary& c) { return c.q3; }); })
      .def_prop_ro("max", [](const LayerWeightStats& l) { return column(l, [](const ChannelSummary& c) { return c.max; }); })
      .def_prop_ro("range",
                   [](const LayerWeightStats& l) { return column(l, [](const ChannelSummary& c) { return c.range; }); },
                   "per-channel max|W[c]|")
      .def("__repr__", [](const LayerWeightStats& l) {
        return "LayerWeightStats(name='" + l.name + "', channels=" + std::to_string(l.channels.size()) +
               ", range_ratio=" + std::to_string(range_ratio(l)) +
               ", sqnr_per_tensor_db=" + std::to_string(l.sqnr_per_tensor_db) + ")";
      });

  nb::class_<WeightStats>(m, "WeightStats", "collect_weight_stats's result: one LayerWeightStats per layer.")
      .def_ro("bits", &WeightStats::bits)
      .def_ro("layers", &WeightStats::layers)
      .def(
          "layer",
          [](const WeightStats& s, const std::string& name) -> const LayerWeightStats& {
            for (const auto& l : s.layers)
              if (l.name == name) return l;
            throw InvalidRequestError("no conv/linear layer named '" + name + "' in these statistics", name);
          },
          "name"_a, nb::rv_policy::copy, "The statistics of the layer named `name`.")
      .def("to_json", &json_text, "indent"_a = 2, "The statistics as JSON text (non-finite numbers are null).")
      .def("to_dict", [](const WeightStats& s) { return nb::module_::import_("json").attr("loads")(json_text(s, 0)); },
           "The statistics as plain Python data.")
      .def("__len__", [](const WeightStats& s) { return s.layers.size(); })
      .def("__repr__", [](const WeightStats& s) {
        return "WeightStats(bits=" + std::to_string(s.bits) + ", layers=" + std::to_string(s.layers.size()) + ")";
      });

  m.def(
      "collect_weight_stats",
      [](const PyGraph& g, int bits) {
        return run_without_gil(g, [&](Graph& graph) { return collect_weight_stats(graph, bits); });
      },
      "graph"_a, "bits"_a = 8,
      "Per-layer, per-output-channel weight statistics and weight SQNR of every conv/linear node; changes nothing.");

  m.def(
      "write_report",
      [](const WeightStats& before, const WeightStats& after, nb::handle out_dir, const std::string& title,
         const std::string& model, const std::string& before_label, const std::string& after_label,
         const std::vector<std::string>& notes, int max_layer_plots, int max_channels, double pixel_scale) {
        ReportOptions o;
        o.title = title;
        o.model = model;
        o.before_label = before_label;
        o.after_label = after_label;
        o.notes = notes;
        o.max_layer_plots = max_layer_plots;
        o.max_channels = max_channels;
        o.pixel_scale = pixel_scale;
        const std::string dir = nb::cast<std::string>(nb::module_::import_("os").attr("fspath")(out_dir));
        ReportFiles files;
        {
          nb::gil_scoped_release release;
          files = write_report(before, after, dir, o);
        }
        nb::dict d;
        d["html"] = files.html;
        d["json"] = files.json;
        d["images"] = files.images;
        return d;
      },
      "before"_a, "after"_a, "out_dir"_a, "title"_a = ReportOptions{}.title, "model"_a = "",
      "before_label"_a = ReportOptions{}.before_label, "after_label"_a = ReportOptions{}.after_label,
      "notes"_a = std::vector<std::string>{}, "max_layer_plots"_a = ReportOptions{}.max_layer_plots,
      "max_channels"_a = ReportOptions{}.max_channels, "pixel_scale"_a = ReportOptions{}.pixel_scale,
      "Writes report.html (self-contained), overview.png, per-layer PNGs and weight_stats.json into out_dir; "
      "returns {'html', 'json', 'images'}.");
}

}  // namespace prequant::python
