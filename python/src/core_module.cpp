// prequant._core — the engine as a Python extension. The Python package `prequant` owns the
// public API and re-exports what users need from here.
#include "bindings.h"
#include "prequant/passes.h"
#include "prequant/testing.h"

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
  bind_weight_report(m);
  // The one default for CLS iterations; the front ends import it from here.
  m.attr("DEFAULT_MAX_ITERATIONS") = prequant::kDefaultMaxIterations;
  // Fault injection for atomicity tests: the (n+1)-th parameter write of any pass raises Error.
  m.def("_set_fail_after_writes", &prequant::testing::set_fail_after_writes, nanobind::arg("n"),
        "Tests only: make the (n+1)-th parameter write of any pass fail (n < 0 disables).");
  m.def("_writes_seen", &prequant::testing::writes_seen,
        "Tests only: parameter writes since the last _set_fail_after_writes.");
}
