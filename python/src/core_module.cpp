// prequant._core — the engine as a Python extension. The Python package `prequant` owns the
// public API and re-exports what users need from here.
#include "bindings.h"

NB_MODULE(_core, m) {
  using namespace prequant::python;
  m.doc() =
      "prequant's C++ engine: the graph IR with zero-copy parameter views, the passes "
      "(batch-norm folding, cross-layer scaling, high-bias absorption, ReLU6 handling), "
      "their results, and ONNX models as bytes.";
  bind_errors(m);
  bind_graph(m);
  bind_results(m);
  bind_passes(m);
  bind_onnx(m);
}
