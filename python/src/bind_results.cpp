// The pass results of results.h as read-only Python classes.
//
// Every per-channel vector (scales, absorbed bias, BN statistics, bounds) is a numpy float64
// copy; lists of results are Python lists of copies. Each result also has to_dict(),
// to_json() and explain().
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "prequant/results.h"
#include "report_bridge.h"

namespace prequant::python {
namespace {

using namespace nb::literals;

const char* edit_kind_name(ActivationEdit::Kind k) {
  switch (k) {
    case ActivationEdit::Kind::ReplacedWithRelu: return "replaced_with_relu";
    case ActivationEdit::Kind::BoundedPerChannel: return "bounded_per_channel";
    case ActivationEdit::Kind::GateScaled: return "gate_scaled";
  }
  return "?";
}

template <class T>
nb::list list_of(const std::vector<T>& items) {
  nb::list l;
  for (const T& item : items) l.append(nb::cast(item));
  return l;
}

template <class T>
nb::list dicts_of(const std::vector<T>& items) {
  nb::list l;
  for (const T& item : items) l.append(to_dict(item));
  return l;
}

nb::list strings_of(const std::vector<std::string>& items) {
  nb::list l;
  for (const auto& s : items) l.append(nb::str(s.c_str()));
  return l;
}

nb::list floats_of(const std::vector<double>& v) {
  nb::list l;
  for (double x : v) l.append(nb::float_(x));
  return l;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// The layers of a scaled set, in order: conv1, conv2 (pair) or conv1, dw, conv3 (triple).
std::vector<std::string> set_layers(const ClsSetResult& s) {
  std::vector<std::string> layers;
  for (const auto& p : s.pairs) {
    if (layers.empty() || layers.back() != p.layer1) layers.push_back(p.layer1);
    layers.push_back(p.layer2);
  }
  return layers;
}

// Adds to_dict / to_json / explain / __repr__ to a result class.
template <class T, class Cls>
void add_report(Cls& cls) {
  cls.def("to_dict", [](const T& r) { return report_dict(r); },
          "The result as plain Python data (lists, dicts, floats, strings).")
      .def("to_json", [](const T& r, int indent) { return report_json(r, indent); }, "indent"_a = 2,
           "The result as JSON text, as `prequant --json` prints it.")
      .def("explain", [](const T& r) { return report_explain(r); },
           "A human-readable account of what the pass did and declined, as `prequant --explain` prints it.");
}

}  // namespace

// ---- plain data --------------------------------------------------------------------------

nb::dict to_dict(const Declined& d) {
  nb::dict o;
  o["pass"] = d.pass;
  o["nodes"] = strings_of(d.nodes);
  o["reason"] = d.reason;
  return o;
}

nb::dict to_dict(const FoldRequest& r) {
  nb::dict o;
  o["layer"] = r.layer;
  o["bn"] = r.bn;
  o["direction"] = fold_direction_name(r.direction);
  return o;
}

nb::dict to_dict(const FoldedBnStats& s) {
  nb::dict o;
  o["gamma"] = floats_of(s.gamma);
  o["beta"] = floats_of(s.beta);
  return o;
}

nb::dict to_dict(const FoldedPair& p) {
  nb::dict o = to_dict(p.request);
  o["bias_added"] = p.bias_added;
  o["bn_gamma"] = floats_of(p.bn_stats.gamma);
  o["bn_beta"] = floats_of(p.bn_stats.beta);
  return o;
}

nb::dict to_dict(const FoldResult& r) {
  nb::dict o;
  o["folded"] = dicts_of(r.folded);
  o["declined"] = dicts_of(r.declined);
  return o;
}

nb::dict to_dict(const ClsPairResult& p) {
  nb::dict o;
  o["layer1"] = p.layer1;
  o["layer2"] = p.layer2;
  o["scale"] = floats_of(p.scale);
  o["relu_between"] = p.relu_between;
  o["activations_between"] = strings_of(p.activations_between);
  o["criterion_fallback"] = p.criterion_fallback;
  return o;
}

nb::dict to_dict(const ClsSetSpec& s) {
  nb::dict o;
  o["layers"] = strings_of(s.layers);
  return o;
}

nb::dict to_dict(const ClsCandidates& c) {
  nb::dict o;
  o["sets"] = dicts_of(c.sets);
  o["declined"] = dicts_of(c.declined);
  return o;
}

nb::dict to_dict(const ClsSetResult& s) {
  nb::dict o;
  o["layers"] = strings_of(set_layers(s));
  o["pairs"] = dicts_of(s.pairs);
  return o;
}

nb::dict to_dict(const ClsResult& r) {
  nb::dict o;
  o["sets"] = dicts_of(r.sets);
  o["declined"] = dicts_of(r.declined);
  o["iterations"] = r.iterations;
  o["last_max_log_scale"] = r.last_max_log_scale;
  o["converged"] = r.converged;
  return o;
}

nb::dict to_dict(const ClsRegionSpec& s) {
  nb::dict o;
  o["sources"] = strings_of(s.sources);
  o["sinks"] = strings_of(s.sinks);
  return o;
}

nb::dict to_dict(const ClsRegionCandidates& c) {
  nb::dict o;
  o["regions"] = dicts_of(c.regions);
  o["declined"] = dicts_of(c.declined);
  return o;
}

nb::dict to_dict(const ClsRegionResult& r) {
  nb::dict o;
  o["sources"] = strings_of(r.sources);
  o["sinks"] = strings_of(r.sinks);
  o["nodes"] = strings_of(r.nodes);
  o["scale"] = floats_of(r.scale);
  o["criterion_fallback"] = r.criterion_fallback;
  return o;
}

nb::dict to_dict(const ClsRegionsResult& r) {
  nb::dict o;
  o["regions"] = dicts_of(r.regions);
  o["activation_edits"] = dicts_of(r.activation_edits);
  o["declined"] = dicts_of(r.declined);
  o["iterations"] = r.iterations;
  o["last_max_log_scale"] = r.last_max_log_scale;
  o["converged"] = r.converged;
  return o;
}

nb::dict to_dict(const BiasAbsorption& a) {
  nb::dict o;
  o["layer1"] = a.layer1;
  o["layer2"] = a.layer2;
  o["amount"] = floats_of(a.amount);
  o["bias_added"] = a.bias_added;
  return o;
}

nb::dict to_dict(const HighBiasResult& r) {
  nb::dict o;
  o["absorbed"] = dicts_of(r.absorbed);
  o["declined"] = dicts_of(r.declined);
  return o;
}

nb::dict to_dict(const BiasCorrection& c) {
  nb::dict o;
  o["layer"] = c.layer;
  o["statistics_from"] = c.statistics_from;
  o["activations"] = c.activations;
  o["correction"] = floats_of(c.correction);
  o["bias_added"] = c.bias_added;
  return o;
}

nb::dict to_dict(const BiasCorrectionResult& r) {
  nb::dict o;
  o["corrected"] = dicts_of(r.corrected);
  o["changes_fp32_output"] = !r.corrected.empty();
  o["declined"] = dicts_of(r.declined);
  return o;
}

nb::dict to_dict(const ActivationEdit& e) {
  nb::dict o;
  o["node"] = e.node;
  o["kind"] = edit_kind_name(e.kind);
  o["upper_bound"] = floats_of(e.upper_bound);
  o["gate_scale"] = floats_of(e.gate_scale);
  o["clip_max"] = e.clip_max;
  return o;
}

nb::dict to_dict(const ActivationResult& r) {
  nb::dict o;
  o["edits"] = dicts_of(r.edits);
  o["declined"] = dicts_of(r.declined);
  return o;
}

nb::dict to_dict(const UnrolledParameter& u) {
  nb::dict o;
  o["node"] = u.node;
  o["original_name"] = u.original_name;
  o["new_name"] = u.new_name;
  return o;
}

nb::dict to_dict(const UnrollResult& r) {
  nb::dict o;
  o["copies"] = dicts_of(r.copies);
  return o;
}

nb::dict to_dict(const EqualizeResult& r) {
  nb::dict o;
  o["unroll"] = to_dict(r.unroll);
  o["fold"] = to_dict(r.fold);
  o["activations"] = to_dict(r.activations);
  o["cls"] = to_dict(r.cls);
  o["regions"] = to_dict(r.regions);
  o["high_bias"] = to_dict(r.high_bias);
  o["bias_correction"] = to_dict(r.bias_correction);
  std::vector<Declined> all;
  for (const auto* v : {&r.fold.declined, &r.activations.declined, &r.cls.declined, &r.regions.declined,
                        &r.high_bias.declined, &r.bias_correction.declined})
    all.insert(all.end(), v->begin(), v->end());
  o["declined"] = dicts_of(all);
  return o;
}

void bind_results(nb::module_& m) {
  auto declined = nb::class_<Declined>(m, "Declined", "A candidate a pass looked at and did not transform, with the reason.");
  declined.def_ro("pass_name", &Declined::pass, "the pass that declined ('fold_batch_norms', ...)")
      .def_prop_ro("nodes", [](const Declined& d) { return d.nodes; })
      .def_ro("reason", &Declined::reason)
      .def("__repr__", [](const Declined& d) {
        std::string nodes;
        for (const auto& n : d.nodes) nodes += (nodes.empty() ? "" : ", ") + quote(n);
        return "Declined(pass_name=" + quote(d.pass) + ", nodes=[" + nodes + "], reason=" + quote(d.reason) + ")";
      });
  add_report<Declined>(declined);

  auto fold_request = nb::class_<FoldRequest>(m, "FoldRequest", "A batch norm to fold into a layer.");
  fold_request
      .def("__init__",
           [](FoldRequest* self, const std::string& layer, const std::string& bn, const std::string& direction) {
             new (self) FoldRequest{layer, bn, parse_fold_direction(direction, layer)};
           },
           "layer"_a, "bn"_a, "direction"_a = "conv_then_bn")
      .def_ro("layer", &FoldRequest::layer)
      .def_ro("bn", &FoldRequest::bn)
      .def_prop_ro("direction", [](const FoldRequest& r) { return fold_direction_name(r.direction); },
                   "'conv_then_bn' (the BN follows the layer) or 'bn_then_conv'")
      .def("__repr__", [](const FoldRequest& r) {
        return "FoldRequest(" + quote(r.layer) + ", " + quote(r.bn) + ", " + quote(fold_direction_name(r.direction)) +
               ")";
      });
  add_report<FoldRequest>(fold_request);

  nb::class_<FoldedBnStats>(m, "FoldedBnStats",
                            "gamma and beta of a BN folded after a layer (what high-bias absorption needs).")
      .def("__init__",
           [](FoldedBnStats* self, nb::handle gamma, nb::handle beta) {
             new (self) FoldedBnStats{doubles_of(gamma, "gamma"), doubles_of(beta, "beta")};
           },
           "gamma"_a, "beta"_a)
      .def_prop_ro("gamma", [](const FoldedBnStats& s) { return numpy_of(s.gamma); })
      .def_prop_ro("beta", [](const FoldedBnStats& s) { return numpy_of(s.beta); })
      .def("__repr__", [](const FoldedBnStats& s) {
        return "FoldedBnStats(<" + std::to_string(s.gamma.size()) + " channels>)";
      });

  auto folded_pair = nb::class_<FoldedPair>(m, "FoldedPair", "A batch norm folded into a layer.");
  folded_pair.def_prop_ro("request", [](const FoldedPair& p) { return p.request; })
      .def_prop_ro("layer", [](const FoldedPair& p) { return p.request.layer; })
      .def_prop_ro("bn", [](const FoldedPair& p) { return p.request.bn; })
      .def_prop_ro("direction", [](const FoldedPair& p) { return fold_direction_name(p.request.direction); })
      .def_ro("bias_added", &FoldedPair::bias_added,
              "the layer had no bias; the engine created one (Graph.added_bias(layer))")
      .def_prop_ro("bn_stats", [](const FoldedPair& p) { return p.bn_stats; })
      .def("__repr__", [](const FoldedPair& p) {
        return "FoldedPair(" + quote(p.request.layer) + ", " + quote(p.request.bn) + ", " +
               quote(fold_direction_name(p.request.direction)) + (p.bias_added ? ", bias_added" : "") + ")";
      });
  add_report<FoldedPair>(folded_pair);

  auto fold_result = nb::class_<FoldResult>(m, "FoldResult", "Batch norms folded (or found) and declined.");
  fold_result.def_prop_ro("folded", [](const FoldResult& r) { return list_of(r.folded); })
      .def_prop_ro("declined", [](const FoldResult& r) { return list_of(r.declined); })
      .def(
          "bn_stats",
          [](const FoldResult& r) {
            nb::dict out;
            for (const auto& p : r.folded)
              if (p.request.direction == FoldDirection::ConvThenBn) out[nb::str(p.request.layer.c_str())] = nb::cast(p.bn_stats);
            return out;
          },
          "{layer: FoldedBnStats} for every BN folded after its layer: absorb_high_bias's input.")
      .def("__repr__", [](const FoldResult& r) {
        return "FoldResult(folded=" + std::to_string(r.folded.size()) +
               ", declined=" + std::to_string(r.declined.size()) + ")";
      });
  add_report<FoldResult>(fold_result);

  auto cls_pair = nb::class_<ClsPairResult>(
      m, "ClsPairResult", "One scaled pair: layer1's output channel c divided by scale[c], layer2's input multiplied.");
  cls_pair
      .def("__init__",
           [](ClsPairResult* self, std::string layer1, std::string layer2, std::vector<double> scale,
              bool relu_between, std::vector<std::string> activations_between) {
             new (self) ClsPairResult{std::move(layer1), std::move(layer2), std::move(scale), relu_between,
                                      std::move(activations_between), {}};
           },
           "layer1"_a, "layer2"_a, "scale"_a, "relu_between"_a,
           "activations_between"_a = std::vector<std::string>{},
           "A pair scaled elsewhere (e.g. by the user), for absorb_high_bias.")
      .def_ro("layer1", &ClsPairResult::layer1)
      .def_ro("layer2", &ClsPairResult::layer2)
      .def_prop_ro("scale", [](const ClsPairResult& p) { return numpy_of(p.scale); })
      .def_ro("relu_between", &ClsPairResult::relu_between)
      .def_prop_ro("activations_between", [](const ClsPairResult& p) { return p.activations_between; })
      .def_ro("criterion_fallback", &ClsPairResult::criterion_fallback,
              "Why the pair used the weight criterion although scale_criterion asked for another ('' if not).")
      .def("__repr__", [](const ClsPairResult& p) {
        return "ClsPairResult(" + quote(p.layer1) + ", " + quote(p.layer2) + ", <" + std::to_string(p.scale.size()) +
               " scales>)";
      });
  add_report<ClsPairResult>(cls_pair);

  auto cls_spec = nb::class_<ClsSetSpec>(m, "ClsSetSpec", "A CLS set: 2 layers, or 3 (conv → depthwise → conv).");
  cls_spec
      .def("__init__",
           [](ClsSetSpec* self, std::vector<std::string> layers) { new (self) ClsSetSpec{std::move(layers)}; },
           "layers"_a)
      .def_prop_ro("layers", [](const ClsSetSpec& s) { return s.layers; })
      .def("__len__", [](const ClsSetSpec& s) { return s.layers.size(); })
      .def("__repr__", [](const ClsSetSpec& s) {
        std::string l;
        for (const auto& n : s.layers) l += (l.empty() ? "" : ", ") + quote(n);
        return "ClsSetSpec([" + l + "])";
      });
  add_report<ClsSetSpec>(cls_spec);

  auto cls_candidates = nb::class_<ClsCandidates>(m, "ClsCandidates", "CLS sets found, and candidates declined.");
  cls_candidates.def_prop_ro("sets", [](const ClsCandidates& c) { return list_of(c.sets); })
      .def_prop_ro("declined", [](const ClsCandidates& c) { return list_of(c.declined); })
      .def("__repr__", [](const ClsCandidates& c) {
        return "ClsCandidates(sets=" + std::to_string(c.sets.size()) +
               ", declined=" + std::to_string(c.declined.size()) + ")";
      });
  add_report<ClsCandidates>(cls_candidates);

  auto cls_set = nb::class_<ClsSetResult>(m, "ClsSetResult", "A scaled set: one pair, or two for conv → depthwise → conv.");
  cls_set
      .def("__init__",
           [](ClsSetResult* self, std::vector<ClsPairResult> pairs) { new (self) ClsSetResult{std::move(pairs)}; },
           "pairs"_a)
      .def_prop_ro("pairs", [](const ClsSetResult& s) { return list_of(s.pairs); })
      .def_prop_ro("layers", [](const ClsSetResult& s) { return set_layers(s); }, "the set's layers in order")
      .def("__repr__", [](const ClsSetResult& s) {
        std::string l;
        for (const auto& p : s.pairs) l += (l.empty() ? quote(p.layer1) : std::string()) + " -> " + quote(p.layer2);
        return "ClsSetResult(" + l + ")";
      });
  add_report<ClsSetResult>(cls_set);

  auto cls_result = nb::class_<ClsResult>(m, "ClsResult", "What cross-layer scaling did; scales are cumulative.");
  cls_result.def_prop_ro("sets", [](const ClsResult& r) { return list_of(r.sets); })
      .def_prop_ro("activation_edits", [](const ClsResult& r) { return list_of(r.activation_edits); },
                   "clips replaced by ReLU or bounded per channel by the ReLU6 policy")
      .def_prop_ro("declined", [](const ClsResult& r) { return list_of(r.declined); })
      .def_ro("iterations", &ClsResult::iterations)
      .def_ro("converged", &ClsResult::converged, "no set moved by the tolerance or more in the last sweep")
      .def_ro("last_max_log_scale", &ClsResult::last_max_log_scale,
              "max |ln s| in the last iteration (0 at convergence)")
      .def("__repr__", [](const ClsResult& r) {
        return "ClsResult(sets=" + std::to_string(r.sets.size()) + ", declined=" + std::to_string(r.declined.size()) +
               ", iterations=" + std::to_string(r.iterations) + ")";
      });
  add_report<ClsResult>(cls_result);

  auto region_spec = nb::class_<ClsRegionSpec>(m, "ClsRegionSpec",
                                                "An equalization region: source layers and the sink layers reading them.");
  region_spec
      .def("__init__",
           [](ClsRegionSpec* self, std::vector<std::string> sources, std::vector<std::string> sinks) {
             new (self) ClsRegionSpec{std::move(sources), std::move(sinks)};
           },
           "sources"_a, "sinks"_a)
      .def_ro("sources", &ClsRegionSpec::sources)
      .def_ro("sinks", &ClsRegionSpec::sinks)
      .def("__repr__", [](const ClsRegionSpec& s) {
        return "ClsRegionSpec(sources=" + std::to_string(s.sources.size()) + ", sinks=" + std::to_string(s.sinks.size()) + ")";
      });
  add_report<ClsRegionSpec>(region_spec);

  auto region_candidates = nb::class_<ClsRegionCandidates>(m, "ClsRegionCandidates",
                                                           "Equalization regions found, and regions declined.");
  region_candidates.def_prop_ro("regions", [](const ClsRegionCandidates& c) { return list_of(c.regions); })
      .def_prop_ro("declined", [](const ClsRegionCandidates& c) { return list_of(c.declined); })
      .def("__repr__", [](const ClsRegionCandidates& c) {
        return "ClsRegionCandidates(regions=" + std::to_string(c.regions.size()) +
               ", declined=" + std::to_string(c.declined.size()) + ")";
      });
  add_report<ClsRegionCandidates>(region_candidates);

  auto region_result = nb::class_<ClsRegionResult>(m, "ClsRegionResult",
                                                   "A scaled region; scale[j] per region channel, cumulative.");
  region_result.def_ro("sources", &ClsRegionResult::sources)
      .def_ro("sinks", &ClsRegionResult::sinks)
      .def_ro("nodes", &ClsRegionResult::nodes, "the channel nodes joining sources and sinks")
      .def_prop_ro("scale", [](const ClsRegionResult& r) { return numpy_of(r.scale); })
      .def_ro("criterion_fallback", &ClsRegionResult::criterion_fallback,
              "Why the region used the weight criterion although scale_criterion asked for another ('' if not).")
      .def("__repr__", [](const ClsRegionResult& r) {
        return "ClsRegionResult(sources=" + std::to_string(r.sources.size()) + ", sinks=" + std::to_string(r.sinks.size()) +
               ", channels=" + std::to_string(r.scale.size()) + ")";
      });
  add_report<ClsRegionResult>(region_result);

  auto regions_result = nb::class_<ClsRegionsResult>(m, "ClsRegionsResult", "What region scaling did.");
  regions_result.def_prop_ro("regions", [](const ClsRegionsResult& r) { return list_of(r.regions); })
      .def_prop_ro("activation_edits", [](const ClsRegionsResult& r) { return list_of(r.activation_edits); })
      .def_prop_ro("declined", [](const ClsRegionsResult& r) { return list_of(r.declined); })
      .def_ro("iterations", &ClsRegionsResult::iterations)
      .def_ro("converged", &ClsRegionsResult::converged)
      .def_ro("last_max_log_scale", &ClsRegionsResult::last_max_log_scale)
      .def("__repr__", [](const ClsRegionsResult& r) {
        return "ClsRegionsResult(regions=" + std::to_string(r.regions.size()) +
               ", declined=" + std::to_string(r.declined.size()) + ")";
      });
  add_report<ClsRegionsResult>(regions_result);

  auto absorption = nb::class_<BiasAbsorption>(m, "BiasAbsorption", "Bias moved from layer1 to layer2.");
  absorption.def_ro("layer1", &BiasAbsorption::layer1)
      .def_ro("layer2", &BiasAbsorption::layer2)
      .def_prop_ro("amount", [](const BiasAbsorption& a) { return numpy_of(a.amount); },
                   "c, per channel of layer1's output")
      .def_ro("bias_added", &BiasAbsorption::bias_added,
              "layer2 had no bias; the engine created one (Graph.added_bias(layer2))")
      .def("__repr__", [](const BiasAbsorption& a) {
        return "BiasAbsorption(" + quote(a.layer1) + ", " + quote(a.layer2) + (a.bias_added ? ", bias_added" : "") + ")";
      });
  add_report<BiasAbsorption>(absorption);

  auto high_bias = nb::class_<HighBiasResult>(m, "HighBiasResult", "What high-bias absorption moved and declined.");
  high_bias.def_prop_ro("absorbed", [](const HighBiasResult& r) { return list_of(r.absorbed); })
      .def_prop_ro("declined", [](const HighBiasResult& r) { return list_of(r.declined); })
      .def("__repr__", [](const HighBiasResult& r) {
        return "HighBiasResult(absorbed=" + std::to_string(r.absorbed.size()) +
               ", declined=" + std::to_string(r.declined.size()) + ")";
      });
  add_report<HighBiasResult>(high_bias);

  auto correction = nb::class_<BiasCorrection>(
      m, "BiasCorrection", "One layer's analytic bias correction: correction[o] was subtracted from its bias.");
  correction.def_ro("layer", &BiasCorrection::layer)
      .def_ro("statistics_from", &BiasCorrection::statistics_from,
              "the BN, or the layer with a BN folded after it, whose statistics gave E[x]")
      .def_prop_ro("activations", [](const BiasCorrection& c) { return c.activations; })
      .def_prop_ro("correction", [](const BiasCorrection& c) { return numpy_of(c.correction); },
                   "sum_i (sum_k eps[o, i, k]) * E[x_i], per output channel")
      .def_ro("bias_added", &BiasCorrection::bias_added,
              "the layer had no bias; the engine created one (Graph.added_bias(layer))")
      .def("__repr__", [](const BiasCorrection& c) {
        return "BiasCorrection(" + quote(c.layer) + ", from " + quote(c.statistics_from) +
               (c.bias_added ? ", bias_added" : "") + ")";
      });
  add_report<BiasCorrection>(correction);

  auto bias_correction = nb::class_<BiasCorrectionResult>(
      m, "BiasCorrectionResult",
      "What analytic bias correction changed and declined. It changes the FP32 function on purpose.");
  bias_correction.def_prop_ro("corrected", [](const BiasCorrectionResult& r) { return list_of(r.corrected); })
      .def_prop_ro("declined", [](const BiasCorrectionResult& r) { return list_of(r.declined); })
      .def_prop_ro("changes_fp32_output", [](const BiasCorrectionResult& r) { return !r.corrected.empty(); })
      .def("__repr__", [](const BiasCorrectionResult& r) {
        return "BiasCorrectionResult(corrected=" + std::to_string(r.corrected.size()) +
               ", declined=" + std::to_string(r.declined.size()) + ")";
      });
  add_report<BiasCorrectionResult>(bias_correction);

  auto edit = nb::class_<ActivationEdit>(m, "ActivationEdit", "A clip activation changed by the ReLU6 policy.");
  edit.def_ro("node", &ActivationEdit::node)
      .def_prop_ro("kind", [](const ActivationEdit& e) { return edit_kind_name(e.kind); },
                   "'replaced_with_relu', 'bounded_per_channel' or 'gate_scaled'")
      .def_prop_ro("upper_bound", [](const ActivationEdit& e) { return numpy_of(e.upper_bound); },
                   "bounded_per_channel: channel c is clipped at upper_bound[c]")
      .def_prop_ro("gate_scale", [](const ActivationEdit& e) { return numpy_of(e.gate_scale); },
                   "gate_scaled: the activation is now x·g(gate_scale[c]·x)")
      .def_ro("clip_max", &ActivationEdit::clip_max,
              "bounded_per_channel: the clip before the bound, Clip(0, clip_max) (ReLU6: 6); every "
              "upper_bound[c] <= clip_max")
      .def("__repr__", [](const ActivationEdit& e) {
        return "ActivationEdit(" + quote(e.node) + ", " + quote(edit_kind_name(e.kind)) + ")";
      });
  add_report<ActivationEdit>(edit);

  auto activations = nb::class_<ActivationResult>(m, "ActivationResult", "Activations edited and declined.");
  activations.def_prop_ro("edits", [](const ActivationResult& r) { return list_of(r.edits); })
      .def_prop_ro("declined", [](const ActivationResult& r) { return list_of(r.declined); })
      .def("__repr__", [](const ActivationResult& r) {
        return "ActivationResult(edits=" + std::to_string(r.edits.size()) +
               ", declined=" + std::to_string(r.declined.size()) + ")";
      });
  add_report<ActivationResult>(activations);

  auto unrolled = nb::class_<UnrolledParameter>(m, "UnrolledParameter", "A shared weight copied for one node.");
  unrolled.def_ro("node", &UnrolledParameter::node)
      .def_ro("original_name", &UnrolledParameter::original_name)
      .def_ro("new_name", &UnrolledParameter::new_name)
      .def("__repr__", [](const UnrolledParameter& u) {
        return "UnrolledParameter(" + quote(u.node) + ", " + quote(u.original_name) + " -> " + quote(u.new_name) + ")";
      });
  add_report<UnrolledParameter>(unrolled);

  auto unroll = nb::class_<UnrollResult>(m, "UnrollResult", "Shared weights copied so each node owns one.");
  unroll.def_prop_ro("copies", [](const UnrollResult& r) { return list_of(r.copies); })
      .def("__repr__", [](const UnrollResult& r) { return "UnrollResult(copies=" + std::to_string(r.copies.size()) + ")"; });
  add_report<UnrollResult>(unroll);

  auto equalize = nb::class_<EqualizeResult>(m, "EqualizeResult", "Everything equalize_model did, step by step.");
  equalize.def_prop_ro("unroll", [](const EqualizeResult& r) { return r.unroll; })
      .def_prop_ro("fold", [](const EqualizeResult& r) { return r.fold; })
      .def_prop_ro("activations", [](const EqualizeResult& r) { return r.activations; })
      .def_prop_ro("cls", [](const EqualizeResult& r) { return r.cls; })
      .def_prop_ro("regions", [](const EqualizeResult& r) { return r.regions; },
                   "equalization regions (empty unless equalize_model(regions=True))")
      .def_prop_ro("high_bias", [](const EqualizeResult& r) { return r.high_bias; })
      .def_prop_ro("bias_correction", [](const EqualizeResult& r) { return r.bias_correction; })
      .def("__repr__", [](const EqualizeResult& r) {
        return "EqualizeResult(folded=" + std::to_string(r.fold.folded.size()) +
               ", cls_sets=" + std::to_string(r.cls.sets.size()) +
               ", absorbed=" + std::to_string(r.high_bias.absorbed.size()) + ")";
      });
  add_report<EqualizeResult>(equalize);
}

}  // namespace prequant::python
