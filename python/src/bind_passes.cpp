// Every pass of passes.h under the same name. Arguments are converted with the GIL held; the
// pass itself runs without it (and with the graph's mutex held), so other Python threads keep
// running while a large model is folded or equalized.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant::python {
namespace {

using namespace nb::literals;

std::vector<nb::handle> items_of(nb::handle seq, const std::string& what) {
  std::vector<nb::handle> items;
  if (nb::isinstance<nb::str>(seq) || !nb::hasattr(seq, "__iter__"))
    throw InvalidRequestError(what + " must be a list, got " + python_type_name(seq) + ".");
  for (nb::handle item : seq) items.push_back(item);
  return items;
}

std::vector<FoldRequest> fold_requests_of(nb::handle requests) {
  std::vector<FoldRequest> out;
  for (nb::handle item : items_of(requests, "requests")) {
    if (nb::isinstance<FoldRequest>(item)) {
      out.push_back(nb::cast<FoldRequest>(item));
      continue;
    }
    if (nb::isinstance<nb::str>(item))
      throw InvalidRequestError("each fold request is a FoldRequest or a tuple (layer, bn[, direction]), got '" +
                                nb::cast<std::string>(item) + "'.");
    std::vector<nb::handle> parts = items_of(item, "a fold request");
    if (parts.size() < 2 || parts.size() > 3 || !nb::isinstance<nb::str>(parts[0]) || !nb::isinstance<nb::str>(parts[1]))
      throw InvalidRequestError("each fold request is a FoldRequest or a tuple (layer, bn[, direction]) of "
                                "strings, e.g. ('conv1', 'bn1', 'conv_then_bn').");
    FoldRequest r;
    r.layer = nb::cast<std::string>(parts[0]);
    r.bn = nb::cast<std::string>(parts[1]);
    if (parts.size() == 3) r.direction = parse_fold_direction(nb::cast<std::string>(parts[2]), r.layer);
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<ClsSetSpec> cls_sets_of(nb::handle sets) {
  if (nb::isinstance<ClsCandidates>(sets)) return nb::cast<const ClsCandidates&>(sets).sets;
  std::vector<ClsSetSpec> out;
  for (nb::handle item : items_of(sets, "sets")) {
    if (nb::isinstance<ClsSetSpec>(item)) {
      out.push_back(nb::cast<ClsSetSpec>(item));
    } else {
      ClsSetSpec spec;
      for (nb::handle layer : items_of(item, "a CLS set")) {
        if (!nb::isinstance<nb::str>(layer))
          throw InvalidRequestError("a CLS set is a list of 2 or 3 layer names, got an item of type " +
                                    python_type_name(layer) + ".");
        spec.layers.push_back(nb::cast<std::string>(layer));
      }
      out.push_back(std::move(spec));
    }
  }
  return out;
}

std::vector<ClsSetResult> cls_results_of(nb::handle sets) {
  if (nb::isinstance<ClsResult>(sets)) return nb::cast<const ClsResult&>(sets).sets;
  if (nb::isinstance<EqualizeResult>(sets)) return nb::cast<const EqualizeResult&>(sets).cls.sets;
  std::vector<ClsSetResult> out;
  for (nb::handle item : items_of(sets, "cls_sets")) {
    if (!nb::isinstance<ClsSetResult>(item))
      throw InvalidRequestError("cls_sets must be a ClsResult or a list of ClsSetResult (from scale_cls_sets), got "
                                "an item of type " + python_type_name(item) + ".");
    out.push_back(nb::cast<ClsSetResult>(item));
  }
  return out;
}

std::unordered_map<std::string, FoldedBnStats> bn_stats_of(nb::handle stats) {
  std::unordered_map<std::string, FoldedBnStats> out;
  if (nb::isinstance<FoldResult>(stats)) return folded_bn_stats(nb::cast<const FoldResult&>(stats));
  if (!nb::isinstance<nb::dict>(stats))
    throw InvalidRequestError("bn_stats must be a FoldResult or a dict {layer: (gamma, beta) or FoldedBnStats}, got " +
                              python_type_name(stats) + ".");
  for (auto [key, value] : nb::borrow<nb::dict>(stats)) {
    const std::string layer = nb::cast<std::string>(key);
    if (nb::isinstance<FoldedBnStats>(value)) {
      out[layer] = nb::cast<FoldedBnStats>(value);
      continue;
    }
    std::vector<nb::handle> parts = items_of(value, "bn_stats['" + layer + "']");
    if (parts.size() != 2)
      throw InvalidRequestError("bn_stats['" + layer + "'] must be (gamma, beta) or a FoldedBnStats.", layer);
    out[layer] = FoldedBnStats{doubles_of(parts[0], "gamma of '" + layer + "'"),
                               doubles_of(parts[1], "beta of '" + layer + "'")};
  }
  return out;
}

ClsOptions cls_options(const std::string& relu6, int max_iterations, double tolerance, double min_scale,
                       double max_scale) {
  ClsOptions o;
  o.relu6 = parse_relu6_policy(relu6);  // the values are checked by the pass (check_options)
  o.max_iterations = max_iterations;
  o.tolerance = tolerance;
  o.min_scale = min_scale;
  o.max_scale = max_scale;
  return o;
}

}  // namespace

FoldDirection parse_fold_direction(const std::string& text, const std::string& node) {
  if (text == fold_direction_name(FoldDirection::ConvThenBn)) return FoldDirection::ConvThenBn;
  if (text == fold_direction_name(FoldDirection::BnThenConv)) return FoldDirection::BnThenConv;
  throw InvalidRequestError("unknown fold direction '" + text + "' for '" + node +
                                "'; use 'conv_then_bn' (the BN follows the layer) or 'bn_then_conv'.",
                            node);
}

void bind_passes(nb::module_& m) {
  m.def(
      "unroll_shared_weights",
      [](const PyGraph& g) { return run_without_gil(g, [](Graph& graph) { return unroll_shared_weights(graph); }); },
      "graph"_a, "Gives every node its own copy of a weight shared by several (copies live in the graph's arena).");

  m.def(
      "find_batch_norm_folds",
      [](const PyGraph& g) { return run_without_gil(g, [](Graph& graph) { return find_batch_norm_folds(graph); }); },
      "graph"_a, "The batch norms fold_batch_norms would fold, and the candidates it would decline; changes nothing.");

  m.def(
      "fold_batch_norms",
      [](const PyGraph& g) { return run_without_gil(g, [](Graph& graph) { return fold_batch_norms(graph); }); },
      "graph"_a, "Folds every foldable batch norm into its neighbouring layer (conv→BN, else BN→conv).");

  m.def(
      "fold_given_batch_norms",
      [](const PyGraph& g, nb::handle requests) {
        auto r = fold_requests_of(requests);
        return run_without_gil(g, [&](Graph& graph) { return fold_given_batch_norms(graph, r); });
      },
      "graph"_a, "requests"_a,
      "Folds the given pairs: FoldRequest or (layer, bn, 'conv_then_bn' | 'bn_then_conv') tuples. Raises "
      "InvalidRequestError for a pair that cannot be folded, changing nothing.");

  m.def(
      "replace_relu6_with_relu",
      [](const PyGraph& g) { return run_without_gil(g, [](Graph& graph) { return replace_relu6_with_relu(graph); }); },
      "graph"_a, "Turns every Clip(0, m) into ReLU.");

  m.def(
      "find_cls_sets",
      [](const PyGraph& g, const std::string& relu6, bool gated) {
        Relu6Policy policy = parse_relu6_policy(relu6);
        return run_without_gil(g, [&](Graph& graph) { return find_cls_sets(graph, policy, gated); });
      },
      "graph"_a, "relu6"_a = "bound", "gated_activations"_a = false,
      "The CLS sets (pairs and conv → depthwise → conv triples) scale_model would scale, and the candidates declined.");

  m.def(
      "scale_cls_sets",
      [](const PyGraph& g, nb::handle sets, const std::string& relu6, int max_iterations, double tolerance,
         double min_scale, double max_scale, bool gated) {
        auto specs = cls_sets_of(sets);
        ClsOptions o = cls_options(relu6, max_iterations, tolerance, min_scale, max_scale);
        o.gated_activations = gated;
        return run_without_gil(g, [&](Graph& graph) { return scale_cls_sets(graph, specs, o); });
      },
      "graph"_a, "sets"_a, "relu6"_a = "bound", "max_iterations"_a = kDefaultMaxIterations, "tolerance"_a = 1e-6, "min_scale"_a = 1e-6,
      "max_scale"_a = 1e6, "gated_activations"_a = false,
      "Scales the given sets (ClsCandidates, or lists of 2 or 3 layer names / ClsSetSpec). relu6: 'replace', "
      "'bound' or 'skip'.");

  m.def(
      "scale_model",
      [](const PyGraph& g, const std::string& relu6, int max_iterations, double tolerance, double min_scale,
         double max_scale, bool solve_chains, bool gated) {
        ClsOptions o = cls_options(relu6, max_iterations, tolerance, min_scale, max_scale);
        o.solve_chains = solve_chains;
        o.gated_activations = gated;
        return run_without_gil(g, [&](Graph& graph) { return scale_model(graph, o); });
      },
      "graph"_a, "relu6"_a = "bound", "max_iterations"_a = kDefaultMaxIterations, "tolerance"_a = 1e-6, "min_scale"_a = 1e-6,
      "max_scale"_a = 1e6, "solve_chains"_a = true, "gated_activations"_a = false,
      "Finds the CLS sets and scales them. solve_chains=False: plain Gauss-Seidel sweeps (the reference; "
      "the sweeps needed then grow ~N² on an N-layer chain).");

  m.def(
      "find_cls_regions",
      [](const PyGraph& g, const std::string& relu6, bool gated) {
        Relu6Policy policy = parse_relu6_policy(relu6);
        return run_without_gil(g, [&](Graph& graph) { return find_cls_regions(graph, policy, gated); });
      },
      "graph"_a, "relu6"_a = "bound", "gated_activations"_a = false,
      "The equalization regions beyond chains (residual Adds, Concats, Splits, fan-out) and the regions "
      "declined, each with the node that stops it.");

  m.def(
      "scale_cls_regions",
      [](const PyGraph& g, nb::handle regions, const std::string& relu6, int max_iterations, double tolerance,
         double min_scale, double max_scale, bool gated) {
        std::vector<ClsRegionSpec> specs;
        if (nb::isinstance<ClsRegionCandidates>(regions)) {
          specs = nb::cast<const ClsRegionCandidates&>(regions).regions;
        } else {
          for (nb::handle item : items_of(regions, "regions")) {
            if (!nb::isinstance<ClsRegionSpec>(item))
              throw InvalidRequestError("regions must be ClsRegionCandidates or a list of ClsRegionSpec, got " +
                                        python_type_name(item));
            specs.push_back(nb::cast<ClsRegionSpec>(item));
          }
        }
        ClsOptions o = cls_options(relu6, max_iterations, tolerance, min_scale, max_scale);
        o.gated_activations = gated;
        return run_without_gil(g, [&](Graph& graph) { return scale_cls_regions(graph, specs, o); });
      },
      "graph"_a, "regions"_a, "relu6"_a = "bound", "max_iterations"_a = 1, "tolerance"_a = 1e-6,
      "min_scale"_a = 1e-6, "max_scale"_a = 1e6, "gated_activations"_a = false,
      "Scales the given regions (ClsRegionCandidates or [ClsRegionSpec]): per region channel, the largest "
      "source range is balanced against the largest sink range.");

  m.def(
      "connect_layer_chains",
      [](const PyGraph& g, nb::handle chains) {
        std::vector<std::vector<std::string>> names;
        for (nb::handle chain : items_of(chains, "chains")) {
          auto& out = names.emplace_back();
          for (nb::handle layer : items_of(chain, "a chain")) {
            if (!nb::isinstance<nb::str>(layer))
              throw InvalidRequestError("each chain is a list of layer names, got " + python_type_name(layer) + ".");
            out.push_back(nb::cast<std::string>(layer));
          }
        }
        run_without_gil(g, [&](Graph& graph) { connect_layer_chains(graph, names); });
      },
      "graph"_a, "chains"_a,
      "Connects the graph's layers (each reading a tensor of its own) along the given chains of layer names, in "
      "order: the graph of a user's CLS sets when no model is given.");

  m.def(
      "absorb_high_bias",
      [](const PyGraph& g, nb::handle cls_sets, nb::handle bn_stats, double sigmas) {
        auto sets = cls_results_of(cls_sets);
        auto stats = bn_stats_of(bn_stats);
        return run_without_gil(g, [&](Graph& graph) { return absorb_high_bias(graph, sets, stats, sigmas); });
      },
      "graph"_a, "cls_sets"_a, "bn_stats"_a, "sigmas"_a = 3.0,
      "Moves bias from layer1 to layer2 of scaled pairs. cls_sets: ClsResult or [ClsSetResult]; bn_stats: the "
      "FoldResult of the fold, or {layer: (gamma, beta) | FoldedBnStats} for BNs folded after each layer.");

  m.def(
      "correct_bias",
      [](const PyGraph& g, nb::handle bn_stats, int bits, bool per_channel, bool symmetric) {
        auto stats = bn_stats.is_none() ? std::unordered_map<std::string, FoldedBnStats>{} : bn_stats_of(bn_stats);
        const WeightQuantizer q{bits, per_channel, symmetric};
        return run_without_gil(g, [&](Graph& graph) { return correct_bias(graph, stats, q); });
      },
      "graph"_a, "bn_stats"_a = nb::none(), "bits"_a = 8, "per_channel"_a = false, "symmetric"_a = true,
      "Analytic bias correction (DFQ 4.2): b -= (Q(W) - W) E[x], E[x] from the BNs before each layer carried "
      "through activations, Adds, Concats, Splits, average pools and Resizes (BNs in the graph, "
      "or bn_stats: the FoldResult, or {layer: (gamma, beta) | FoldedBnStats} for BNs folded after layers, as "
      "their outputs are now). Changes the FP32 function on purpose.");

  m.def(
      "equalize_model",
      [](const PyGraph& g, const std::string& relu6, int max_iterations, double tolerance, double min_scale,
         double max_scale, bool fold, bool absorb, double sigmas, bool bias_correction, int bits, bool per_channel,
         bool symmetric, bool regions, bool gated, const std::string& scale_criterion, double activation_sigmas,
         const std::string& weight_quantization) {
        EqualizeOptions o;
        o.regions = regions;
        o.cls = cls_options(relu6, max_iterations, tolerance, min_scale, max_scale);
        o.cls.gated_activations = gated;
        o.cls.scale_criterion = parse_scale_criterion(scale_criterion);
        o.cls.activation_sigmas = activation_sigmas;
        o.cls.weight_quantization = parse_weight_quantization(weight_quantization);
        o.fold = fold;
        o.absorb_high_bias = absorb;
        o.high_bias_sigmas = sigmas;
        o.bias_correction = bias_correction;
        o.bias_quantizer = WeightQuantizer{bits, per_channel, symmetric};
        return run_without_gil(g, [&](Graph& graph) { return equalize_model(graph, o); });
      },
      "graph"_a, "relu6"_a = "bound", "max_iterations"_a = kDefaultMaxIterations, "tolerance"_a = 1e-6, "min_scale"_a = 1e-6,
      "max_scale"_a = 1e6, "fold"_a = true, "absorb_high_bias"_a = false, "high_bias_sigmas"_a = 3.0,
      "bias_correction"_a = false, "bias_correction_bits"_a = 8, "bias_correction_per_channel"_a = false,
      "bias_correction_symmetric"_a = true, "regions"_a = false, "gated_activations"_a = false,
      "scale_criterion"_a = "weights_and_activations", "activation_sigmas"_a = 3.0, "weight_quantization"_a = "per_tensor",
      "Unroll, fold, ReLU6 policy, cross-layer scaling (with regions=True also equalization regions: "
      "residual Adds, Concats, fan-out; with gated_activations=True also through SiLU / HardSwish / "
      "GELU, rewriting their gate scales), high-bias absorption and (optionally) analytic bias "
      "correction for the given weight quantizer, in one call. scale_criterion: 'weights_and_activations' (default) "
      "or 'activations' (for per-channel weight quantization) also balance the activation ranges, from the "
      "statistics of the folded BNs (β ± activation_sigmas·|γ|); 'weights' is DFQ's weight-only balance; "
      "'quantization_noise' minimises the modelled INT8 output noise of each link for weight_quantization "
      "('per_tensor' or 'per_channel').");
}

}  // namespace prequant::python
