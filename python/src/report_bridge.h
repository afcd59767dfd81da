// Results as plain Python data, JSON text and explanations.
//
// For the results report.h covers (the passes' top-level results and Declined), to_json() and
// explain() are the engine's own: the same JSON and text the CLI prints with --json and
// --explain, and to_dict() is that JSON as Python data. The parts of a result (FoldedPair,
// ClsPairResult, ...) are built here from their fields, in the same shapes. Without report.h
// every result falls back to the field-built data: JSON via the json module, and an indented
// listing of the same fields.
#pragma once

#include <string>

#include "bindings.h"
#include "prequant/results.h"

#if __has_include("prequant/report.h")
#include <nlohmann/json.hpp>

#include "prequant/report.h"
#define PREQUANT_HAVE_REPORT 1
#else
#define PREQUANT_HAVE_REPORT 0
#endif

namespace prequant::python {

nb::dict to_dict(const Declined& d);
nb::dict to_dict(const FoldRequest& r);
nb::dict to_dict(const FoldedBnStats& s);
nb::dict to_dict(const FoldedPair& p);
nb::dict to_dict(const FoldResult& r);
nb::dict to_dict(const ClsPairResult& p);
nb::dict to_dict(const ClsSetSpec& s);
nb::dict to_dict(const ClsCandidates& c);
nb::dict to_dict(const ClsSetResult& s);
nb::dict to_dict(const ClsResult& r);
nb::dict to_dict(const ClsRegionSpec& s);
nb::dict to_dict(const ClsRegionCandidates& c);
nb::dict to_dict(const ClsRegionResult& r);
nb::dict to_dict(const ClsRegionsResult& r);
nb::dict to_dict(const BiasAbsorption& a);
nb::dict to_dict(const HighBiasResult& r);
nb::dict to_dict(const BiasCorrection& c);
nb::dict to_dict(const BiasCorrectionResult& r);
nb::dict to_dict(const ActivationEdit& e);
nb::dict to_dict(const ActivationResult& r);
nb::dict to_dict(const UnrolledParameter& u);
nb::dict to_dict(const UnrollResult& r);
nb::dict to_dict(const EqualizeResult& r);

// JSON text of plain Python data.
std::string json_of(nb::handle data, int indent);
// An indented "key: value" listing of plain Python data.
std::string listing_of(nb::handle data);

// Whether the engine's report.h serializes T.
#if PREQUANT_HAVE_REPORT
template <class T>
concept EngineReport = requires(const T& r) {
  ::prequant::to_json(r);
  ::prequant::explain(r);
};
#else
template <class T>
concept EngineReport = false;
#endif

template <class T>
std::string report_json(const T& r, int indent) {
#if PREQUANT_HAVE_REPORT
  if constexpr (EngineReport<T>)
    return ::prequant::to_json(r).dump(indent > 0 ? indent : -1, ' ', false,
                                       nlohmann::json::error_handler_t::replace);
#endif
  return json_of(to_dict(r), indent);
}

template <class T>
nb::object report_dict(const T& r) {
  if constexpr (EngineReport<T>)
    return nb::module_::import_("json").attr("loads")(report_json(r, 0));
  else
    return to_dict(r);
}

template <class T>
std::string report_explain(const T& r) {
#if PREQUANT_HAVE_REPORT
  if constexpr (EngineReport<T>) return ::prequant::explain(r);
#endif
  return listing_of(to_dict(r));
}

}  // namespace prequant::python
