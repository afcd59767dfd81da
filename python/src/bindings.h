// Shared declarations of the prequant._core bindings: the Python-side graph handle, the
// array-to-view conversion and one bind_* entry point per area.
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "prequant/graph.h"
#include "prequant/onnx_io.h"
#include "prequant/results.h"

namespace prequant::python {

namespace nb = nanobind;

// A graph as Python sees it. The engine's Graph holds raw views; this state holds what those
// views point into: every array handed to add_* stays referenced here for the graph's life.
// The mutex serializes passes (which run without the GIL) against edits from other threads.
struct GraphState {
  std::unique_ptr<Graph> owned;                    // a graph built from Python
  Graph* graph = nullptr;                          // owned.get(), or an OnnxModel's graph
  std::vector<nb::ndarray<>> arrays;               // keeps the viewed memory alive
  std::mutex mutex;
};

// The Python class `Graph`. `owner` keeps an OnnxModel alive when the graph is borrowed from it.
struct PyGraph {
  std::shared_ptr<GraphState> state;
  nb::object owner;

  PyGraph();
  PyGraph(std::shared_ptr<GraphState> s, nb::object o) : state(std::move(s)), owner(std::move(o)) {}
  Graph& graph() const { return *state->graph; }
  // Held (with the GIL) while reading or editing the graph from Python.
  std::unique_lock<std::mutex> lock() const { return std::unique_lock<std::mutex>(state->mutex); }
};

// The Python class `OnnxModel`.
struct PyOnnxModel {
  OnnxModel model;
  std::shared_ptr<GraphState> state;

  explicit PyOnnxModel(OnnxModel&& m);
};

// Runs `f(graph)` without the GIL and with the graph's mutex held.
template <class F>
decltype(auto) run_without_gil(const PyGraph& g, F&& f) {
  nb::gil_scoped_release release;
  std::lock_guard<std::mutex> lock(g.state->mutex);
  return f(g.graph());
}

// A Python array (numpy, torch tensor, anything with __dlpack__ or the buffer protocol) as a
// writable, C-contiguous, CPU, float32/float64 view; UnsupportedError naming `what` and the fix
// otherwise. The returned ndarray must be kept alive as long as the view is used.
std::pair<TensorView, nb::ndarray<>> view_of(nb::handle array, const std::string& what);

// Copies of engine data as numpy arrays.
nb::object numpy_of(std::span<const double> values);
nb::object numpy_of(const TensorView& view);

// Any sequence of numbers (list, numpy array, tensor) as doubles.
std::vector<double> doubles_of(nb::handle values, const std::string& what);

// The name of a Python object's type, for messages.
std::string python_type_name(nb::handle h);

// 'conv_then_bn' | 'bn_then_conv'; InvalidRequestError naming `node` otherwise.
FoldDirection parse_fold_direction(const std::string& text, const std::string& node);

void bind_errors(nb::module_& m);
void bind_graph(nb::module_& m);
void bind_results(nb::module_& m);
void bind_passes(nb::module_& m);
void bind_onnx(nb::module_& m);
void bind_weight_report(nb::module_& m);

}  // namespace prequant::python
