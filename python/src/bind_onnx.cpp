// ONNX models. ONNX crosses the Python boundary as bytes (or a path), never as a protobuf
// object: prequant's schema is compiled under its own package name, so it shares nothing with
// the onnx, onnxruntime or tensorflow modules loaded in the same process.
#include <nanobind/stl/string.h>

#include "bindings.h"

namespace prequant::python {
namespace {

using namespace nb::literals;

std::string path_of(nb::handle path) {
  return nb::cast<std::string>(nb::module_::import_("os").attr("fspath")(path));
}

}  // namespace

PyOnnxModel::PyOnnxModel(OnnxModel&& m) : model(std::move(m)), state(std::make_shared<GraphState>()) {
  state->graph = &model.graph();
}

void bind_onnx(nb::module_& m) {
  nb::class_<PyOnnxModel>(m, "OnnxModel",
                          "An ONNX model parsed by the engine. `graph` views its initializers; save() and "
                          "to_bytes() write every change the passes made.")
      .def_static(
          "from_bytes",
          [](nb::handle data, const std::string& base_dir) {
            nb::bytes b = nb::isinstance<nb::bytes>(data) ? nb::borrow<nb::bytes>(data)
                                                         : nb::borrow<nb::bytes>(nb::module_::import_("builtins").attr("bytes")(data));
            std::string_view view(b.c_str(), b.size());
            OnnxModel parsed = [&] {
              nb::gil_scoped_release release;
              return OnnxModel::from_bytes(view, base_dir);
            }();
            return PyOnnxModel(std::move(parsed));
          },
          "data"_a, "base_dir"_a = "",
          "Parses a serialized ModelProto (e.g. model.SerializeToString()). `base_dir` resolves external data.")
      .def_static(
          "load",
          [](nb::handle path) {
            std::string p = path_of(path);
            OnnxModel parsed = [&] {
              nb::gil_scoped_release release;
              return OnnxModel::load(p);
            }();
            return PyOnnxModel(std::move(parsed));
          },
          "path"_a, "Reads an .onnx file (with its external data, if any).")
      .def_prop_ro(
          "graph", [](nb::handle self) { return PyGraph(nb::cast<PyOnnxModel&>(self).state, nb::borrow(self)); },
          "The engine's graph of this model; run passes on it, then save().")
      .def_prop_ro("opset", [](const PyOnnxModel& self) { return self.model.opset(); },
                   "Opset of the default ONNX domain.")
      .def(
          "to_bytes",
          [](const PyOnnxModel& self) {
            std::string data;
            {
              nb::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(self.state->mutex);
              data = self.model.to_bytes();
            }
            return nb::bytes(data.data(), data.size());
          },
          "The model with every change applied, serialized (onnx.load_from_string reads it).")
      .def(
          "save",
          [](const PyOnnxModel& self, nb::handle path, int64_t external_data_threshold_bytes) {
            std::string p = path_of(path);
            OnnxSaveOptions options;
            options.external_data_threshold_bytes = external_data_threshold_bytes;
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(self.state->mutex);
            self.model.save(p, options);
          },
          "path"_a, "external_data_threshold_bytes"_a = 0,
          "Writes the model atomically. Initializers of at least `external_data_threshold_bytes` go to an "
          "external data file (0: only when needed).");
}

}  // namespace prequant::python
