// prequant/report.h — pass results as JSON and as text a user can read.
//
// to_json(result) gives the machine-readable form (`prequant ... --json`, Python); explain(result)
// gives every decision and every declined candidate with its reason (`--explain`). inspect_*
// summarize a graph: node counts by kind, layers, opaque nodes with the reason the front end
// gave, the batch norms that can be folded and the CLS sets that can be scaled.
//
// JSON shapes (field names are stable; numbers that are not finite become null):
//   Declined        {"pass", "nodes": [..], "reason"}
//   FoldResult      {"folded": [{"layer", "bn", "direction": "conv_then_bn"|"bn_then_conv",
//                                "bias_added", "bn_gamma": [..], "bn_beta": [..]}], "declined"}
//   ClsCandidates   {"sets": [{"layers": [..]}], "declined"}
//   ClsResult       {"sets": [{"layers": [..], "pairs": [{"layer1", "layer2", "scale": [..],
//                    "relu_between", "activations_between": [..]}]}], "activation_edits", "declined",
//                    "iterations", "last_max_log_scale"}
//   ClsRegionCandidates {"regions": [{"sources": [..], "sinks": [..]}], "declined"}
//   ClsRegionsResult {"regions": [{"sources", "sinks", "nodes", "scale": [..]}], "activation_edits",
//                    "declined", "iterations", "last_max_log_scale", "converged"}
//   HighBiasResult  {"absorbed": [{"layer1", "layer2", "amount": [..], "bias_added"}], "declined"}
//   BiasCorrectionResult {"corrected": [{"layer", "statistics_from", "activations": [..],
//                    "correction": [..], "bias_added"}], "changes_fp32_output", "declined"}
//   ActivationResult {"edits": [{"node", "kind": "replaced_with_relu"|"bounded_per_channel",
//                     "upper_bound": [..]}], "declined"}
//   UnrollResult    {"copies": [{"node", "original_name", "new_name"}]}
//   EqualizeResult  {"unroll", "fold", "activations", "cls", "regions", "high_bias", "bias_correction",
//                    "declined": [all]}
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

#include "prequant/graph.h"
#include "prequant/passes.h"
#include "prequant/results.h"

namespace prequant {

nlohmann::json to_json(const Declined& d);
nlohmann::json to_json(const FoldResult& r);
nlohmann::json to_json(const ClsCandidates& r);
nlohmann::json to_json(const ClsResult& r);
nlohmann::json to_json(const ClsRegionCandidates& r);
nlohmann::json to_json(const ClsRegionsResult& r);
nlohmann::json to_json(const HighBiasResult& r);
nlohmann::json to_json(const BiasCorrectionResult& r);
nlohmann::json to_json(const ActivationResult& r);
nlohmann::json to_json(const UnrollResult& r);
nlohmann::json to_json(const EqualizeResult& r);

std::string explain(const Declined& d);
std::string explain(const FoldResult& r);
std::string explain(const ClsCandidates& r);
std::string explain(const ClsResult& r);
std::string explain(const ClsRegionCandidates& r);
std::string explain(const ClsRegionsResult& r);
std::string explain(const HighBiasResult& r);
std::string explain(const BiasCorrectionResult& r);
std::string explain(const ActivationResult& r);
std::string explain(const UnrollResult& r);
std::string explain(const EqualizeResult& r);

// Every candidate any part of `r` declined, in pass order.
std::vector<Declined> all_declined(const EqualizeResult& r);

// A graph summary. `folds` are the batch norms find_batch_norm_folds would fold (and keep) on
// `graph`; `cls` the CLS sets find_cls_sets finds once they are folded (a front end computes it
// on a folded copy, since folding edits weights). The one-argument forms compute both on
// `graph` as it is (CLS sets are then blocked by unfolded batch norms).
//   JSON: {"nodes", "inputs", "outputs", "kinds": {"Conv": n, ..}, "layers": {"conv", "linear",
//          "depthwise", "grouped", "transposed", "conv1d", "conv2d", "conv3d"},
//          "opaque": [{"name", "op_type", "reason"}], "opaque_by_op": {op: n},
//          "fold": FoldResult, "cls": ClsCandidates}
nlohmann::json inspect_json(const Graph& graph, const FoldResult& folds, const ClsCandidates& cls);
std::string inspect(const Graph& graph, const FoldResult& folds, const ClsCandidates& cls);
nlohmann::json inspect_json(const Graph& graph, Relu6Policy relu6 = Relu6Policy::Bound);
std::string inspect(const Graph& graph, Relu6Policy relu6 = Relu6Policy::Bound);

}  // namespace prequant
