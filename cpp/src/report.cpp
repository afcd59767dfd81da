// report.cpp — pass results as JSON and as readable text (see report.h for the JSON shapes).
#include "prequant/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

namespace prequant {

using nlohmann::json;

namespace {

json numbers(const std::vector<double>& v) {
  json a = json::array();
  for (double x : v) a.push_back(std::isfinite(x) ? json(x) : json(nullptr));
  return a;
}

json declined_list(const std::vector<Declined>& v) {
  json a = json::array();
  for (const auto& d : v) a.push_back(to_json(d));
  return a;
}

std::string num(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::string plural(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// "min a, median b, max c over n channels".
std::string spread(const std::vector<double>& v) {
  if (v.empty()) return "no channels";
  std::vector<double> s(v);
  std::sort(s.begin(), s.end());
  return "min " + num(s.front()) + ", median " + num(s[s.size() / 2]) + ", max " + num(s.back()) +
         " over " + plural(s.size(), "channel", "channels");
}

void explain_declined(std::ostringstream& out, const std::vector<Declined>& v, const char* indent = "  ") {
  for (const auto& d : v) out << indent << explain(d) << "\n";
}

const char* edit_kind_name(ActivationEdit::Kind k) {
  switch (k) {
    case ActivationEdit::Kind::ReplacedWithRelu: return "replaced_with_relu";
    case ActivationEdit::Kind::BoundedPerChannel: return "bounded_per_channel";
    case ActivationEdit::Kind::GateScaled: return "gate_scaled";
  }
  return "?";
}

// One line per gated activation scaling passed through.
void explain_gates(std::ostringstream& out, const std::vector<ActivationEdit>& edits) {
  for (const auto& e : edits)
    if (e.kind == ActivationEdit::Kind::GateScaled)
      out << "  " << e.node << ": x·g(s·x), gate scale s " << spread(e.gate_scale) << " (FP32 output unchanged)\n";
}

}  // namespace

// ---- JSON -------------------------------------------------------------------------------

json to_json(const Declined& d) {
  return json{{"pass", d.pass}, {"nodes", d.nodes}, {"reason", d.reason}};
}

json to_json(const FoldResult& r) {
  json folded = json::array();
  for (const auto& p : r.folded)
    folded.push_back({{"layer", p.request.layer},
                      {"bn", p.request.bn},
                      {"direction", fold_direction_name(p.request.direction)},
                      {"bias_added", p.bias_added},
                      {"bn_gamma", numbers(p.bn_stats.gamma)},
                      {"bn_beta", numbers(p.bn_stats.beta)}});
  return json{{"folded", folded}, {"declined", declined_list(r.declined)}};
}

json to_json(const ClsCandidates& r) {
  json sets = json::array();
  for (const auto& s : r.sets) sets.push_back({{"layers", s.layers}});
  return json{{"sets", sets}, {"declined", declined_list(r.declined)}};
}

// The declines and the convergence of an iterated scaling pass (ClsResult, ClsRegionsResult).
template <class SweepResult>
static json with_sweep_stats(json out, const SweepResult& r) {
  out["declined"] = declined_list(r.declined);
  out["iterations"] = r.iterations;
  out["converged"] = r.converged;
  out["last_max_log_scale"] = std::isfinite(r.last_max_log_scale) ? json(r.last_max_log_scale) : json(nullptr);
  return out;
}

// ", after Clip(0, 6)": the fusable clip a bounded ReLU6 keeps before its per-channel Min.
static std::string after_clip(const ActivationEdit& e) {
  if (!std::isfinite(e.clip_max) || e.clip_max <= 0) return "";
  std::ostringstream s;
  s << ", after Clip(0, " << e.clip_max << ")";
  return s.str();
}

static json edits_json(const std::vector<ActivationEdit>& edits) {
  json out = json::array();
  for (const auto& e : edits)
    if (e.kind == ActivationEdit::Kind::GateScaled)
      out.push_back({{"node", e.node}, {"kind", edit_kind_name(e.kind)}, {"gate_scale", numbers(e.gate_scale)}});
    else
      out.push_back({{"node", e.node}, {"kind", edit_kind_name(e.kind)}, {"upper_bound", numbers(e.upper_bound)},
                     {"clip_max", e.clip_max}});
  return out;
}

json to_json(const ClsResult& r) {
  json sets = json::array();
  for (const auto& s : r.sets) {
    json pairs = json::array();
    std::vector<std::string> layers;
    for (const auto& p : s.pairs) {
      if (layers.empty()) layers.push_back(p.layer1);
      layers.push_back(p.layer2);
      pairs.push_back({{"layer1", p.layer1},
                       {"layer2", p.layer2},
                       {"scale", numbers(p.scale)},
                       {"relu_between", p.relu_between},
                       {"activations_between", p.activations_between},
                       {"criterion_fallback", p.criterion_fallback}});
    }
    sets.push_back({{"layers", layers}, {"pairs", pairs}});
  }
  return with_sweep_stats(json{{"sets", sets}, {"activation_edits", edits_json(r.activation_edits)}}, r);
}

json to_json(const ClsRegionCandidates& r) {
  json regions = json::array();
  for (const auto& g : r.regions) regions.push_back({{"sources", g.sources}, {"sinks", g.sinks}});
  return json{{"regions", regions}, {"declined", declined_list(r.declined)}};
}

json to_json(const ClsRegionsResult& r) {
  json regions = json::array();
  for (const auto& g : r.regions)
    regions.push_back({{"sources", g.sources}, {"sinks", g.sinks}, {"nodes", g.nodes}, {"scale", numbers(g.scale)},
                       {"criterion_fallback", g.criterion_fallback}});
  return with_sweep_stats(json{{"regions", regions}, {"activation_edits", edits_json(r.activation_edits)}}, r);
}

json to_json(const HighBiasResult& r) {
  json absorbed = json::array();
  for (const auto& a : r.absorbed)
    absorbed.push_back({{"layer1", a.layer1},
                        {"layer2", a.layer2},
                        {"amount", numbers(a.amount)},
                        {"bias_added", a.bias_added}});
  return json{{"absorbed", absorbed}, {"declined", declined_list(r.declined)}};
}

json to_json(const BiasCorrectionResult& r) {
  json corrected = json::array();
  for (const auto& c : r.corrected)
    corrected.push_back({{"layer", c.layer},
                         {"statistics_from", c.statistics_from},
                         {"activations", c.activations},
                         {"correction", numbers(c.correction)},
                         {"bias_added", c.bias_added}});
  return json{{"corrected", corrected}, {"changes_fp32_output", !r.corrected.empty()},
              {"declined", declined_list(r.declined)}};
}

json to_json(const ActivationResult& r) {
  return json{{"edits", edits_json(r.edits)}, {"declined", declined_list(r.declined)}};
}

json to_json(const UnrollResult& r) {
  json copies = json::array();
  for (const auto& c : r.copies)
    copies.push_back({{"node", c.node}, {"original_name", c.original_name}, {"new_name", c.new_name}});
  return json{{"copies", copies}};
}

std::vector<Declined> all_declined(const EqualizeResult& r) {
  std::vector<Declined> all;
  for (const auto* v : {&r.fold.declined, &r.activations.declined, &r.cls.declined, &r.regions.declined,
                        &r.high_bias.declined, &r.bias_correction.declined})
    all.insert(all.end(), v->begin(), v->end());
  return all;
}

json to_json(const EqualizeResult& r) {
  return json{{"unroll", to_json(r.unroll)},
              {"fold", to_json(r.fold)},
              {"activations", to_json(r.activations)},
              {"cls", to_json(r.cls)},
              {"regions", to_json(r.regions)},
              {"high_bias", to_json(r.high_bias)},
              {"bias_correction", to_json(r.bias_correction)},
              {"declined", declined_list(all_declined(r))}};
}

// ---- Text -------------------------------------------------------------------------------

std::string explain(const Declined& d) {
  std::string who = d.nodes.empty() ? std::string("(graph)") : join(d.nodes, " → ");
  return "declined " + who + ": " + d.reason;
}

std::string explain(const FoldResult& r) {
  std::ostringstream out;
  out << "Batch-norm folding: " << plural(r.folded.size(), "batch norm folded", "batch norms folded")
      << ", " << r.declined.size() << " kept\n";
  for (const auto& p : r.folded) {
    const bool after = p.request.direction == FoldDirection::ConvThenBn;
    out << "  folded " << p.request.bn << " into " << p.request.layer << " ("
        << (after ? "conv→BN: " + p.request.layer + " → " + p.request.bn
                  : "BN→conv: " + p.request.bn + " → " + p.request.layer)
        << ")" << (p.bias_added ? ", bias added" : "") << "\n";
  }
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const ClsCandidates& r) {
  std::ostringstream out;
  out << "Cross-layer scaling candidates: " << plural(r.sets.size(), "set", "sets") << ", "
      << r.declined.size() << " layers start none\n";
  for (const auto& s : r.sets) out << "  set " << join(s.layers, " → ") << "\n";
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const ClsResult& r) {
  std::ostringstream out;
  out << "Cross-layer scaling: " << plural(r.sets.size(), "set", "sets") << " scaled in "
      << plural(static_cast<size_t>(r.iterations), "iteration", "iterations")
      << (r.converged ? std::string(", converged")
                      : " (not converged: largest |ln s| in the last iteration " + num(r.last_max_log_scale) + ")")
      << ", "
      << r.declined.size() << " declined\n";
  for (const auto& s : r.sets) {
    std::vector<std::string> layers;
    for (const auto& p : s.pairs) {
      if (layers.empty()) layers.push_back(p.layer1);
      layers.push_back(p.layer2);
    }
    out << "  set " << join(layers, " → ") << "\n";
    for (const auto& p : s.pairs) {
      out << "    " << p.layer1 << " → " << p.layer2;
      if (!p.activations_between.empty())
        out << " (through " << join(p.activations_between, ", ")
            << (p.relu_between ? "" : "; no ReLU-like activation") << ")";
      out << ": scale " << spread(p.scale) << "\n";
      if (!p.criterion_fallback.empty())
        out << "      weight criterion (DFQ) for this pair: " << p.criterion_fallback << "\n";
    }
  }
  explain_gates(out, r.activation_edits);
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const ClsRegionCandidates& r) {
  std::ostringstream out;
  out << "Equalization regions: " << plural(r.regions.size(), "region", "regions") << " found, "
      << r.declined.size() << " declined\n";
  for (const auto& g : r.regions)
    out << "  region " << join(g.sources, ", ") << " ⇒ " << join(g.sinks, ", ") << "\n";
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const ClsRegionsResult& r) {
  std::ostringstream out;
  out << "Equalization regions: " << plural(r.regions.size(), "region", "regions") << " scaled in "
      << plural(static_cast<size_t>(r.iterations), "sweep", "sweeps")
      << (r.converged ? std::string(", converged")
                      : " (not converged: largest |ln s| in the last sweep " + num(r.last_max_log_scale) + ")")
      << ", " << r.declined.size() << " declined\n";
  for (const auto& g : r.regions) {
    out << "  region: sources " << join(g.sources, ", ") << "; sinks " << join(g.sinks, ", ") << "\n";
    if (!g.nodes.empty()) out << "    through " << join(g.nodes, ", ") << "\n";
    out << "    scale " << spread(g.scale) << "\n";
    if (!g.criterion_fallback.empty()) out << "    weight criterion (DFQ) for this region: " << g.criterion_fallback << "\n";
  }
  for (const auto& e : r.activation_edits)
    if (e.kind != ActivationEdit::Kind::GateScaled)
      out << "  " << e.node
          << (e.kind == ActivationEdit::Kind::ReplacedWithRelu ? ": replaced with ReLU\n"
                                                               : ": clipped per channel (bound " + spread(e.upper_bound) + after_clip(e) + ")\n");
  explain_gates(out, r.activation_edits);
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const HighBiasResult& r) {
  std::ostringstream out;
  size_t moved_pairs = 0, moved_channels = 0;
  for (const auto& a : r.absorbed) {
    const auto n = static_cast<size_t>(std::count_if(a.amount.begin(), a.amount.end(), [](double c) { return c != 0.0; }));
    moved_channels += n;
    moved_pairs += n > 0;
  }
  out << "High-bias absorption: " << plural(r.absorbed.size(), "pair", "pairs") << " examined, bias moved on "
      << plural(moved_channels, "channel", "channels") << " in " << plural(moved_pairs, "pair", "pairs") << ", "
      << r.declined.size() << " declined\n";
  for (const auto& a : r.absorbed) {
    size_t moved = 0;
    double largest = 0.0;
    for (double c : a.amount)
      if (c != 0.0) ++moved, largest = std::max(largest, std::fabs(c));
    out << "  " << a.layer1 << " → " << a.layer2 << ": bias moved on " << moved << " of "
        << plural(a.amount.size(), "channel", "channels") << " (largest " << num(largest) << ")"
        << (a.bias_added ? ", bias added to " + a.layer2 : "") << "\n";
  }
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const BiasCorrectionResult& r) {
  std::ostringstream out;
  out << "Bias correction: " << plural(r.corrected.size(), "layer", "layers") << " corrected, " << r.declined.size()
      << " declined" << (r.corrected.empty() ? "" : " (the FP32 output changes on purpose)") << "\n";
  for (const auto& c : r.corrected) {
    double largest = 0.0;
    for (double v : c.correction) largest = std::max(largest, std::fabs(v));
    out << "  " << c.layer << ": bias −= ε·E[x] (largest " << num(largest) << "), E[x] from " << c.statistics_from
        << (c.activations.empty() ? std::string() : " through " + join(c.activations, ", "))
        << (c.bias_added ? ", bias added" : "") << "\n";
  }
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const ActivationResult& r) {
  std::ostringstream out;
  out << "ReLU6 handling: " << plural(r.edits.size(), "activation", "activations") << " changed, "
      << r.declined.size() << " declined\n";
  for (const auto& e : r.edits) {
    if (e.kind == ActivationEdit::Kind::ReplacedWithRelu)
      out << "  " << e.node << ": replaced with ReLU (FP32 output changes where it exceeded the clip)\n";
    else
      out << "  " << e.node << ": clipped per channel (bound " << spread(e.upper_bound) << after_clip(e)
          << "; FP32 output unchanged)\n";
  }
  explain_declined(out, r.declined);
  return out.str();
}

std::string explain(const UnrollResult& r) {
  std::ostringstream out;
  out << "Shared weights: " << plural(r.copies.size(), "copy", "copies") << " made\n";
  for (const auto& c : r.copies)
    out << "  " << c.node << ": '" << c.original_name << "' copied to '" << c.new_name << "'\n";
  return out.str();
}

std::string explain(const EqualizeResult& r) {
  std::string out;
  if (!r.unroll.copies.empty()) out += explain(r.unroll);
  out += explain(r.fold);
  if (!r.activations.edits.empty() || !r.activations.declined.empty()) out += explain(r.activations);
  // ReLU6 bounds set by CLS under the 'bound' policy show up in the scaled pairs.
  out += explain(r.cls);
  if (!r.regions.regions.empty() || !r.regions.declined.empty() || r.regions.iterations > 0)
    out += explain(r.regions);
  out += explain(r.high_bias);
  if (!r.bias_correction.corrected.empty() || !r.bias_correction.declined.empty()) out += explain(r.bias_correction);
  return out;
}

// ---- Inspect ----------------------------------------------------------------------------

json inspect_json(const Graph& graph, const FoldResult& folds, const ClsCandidates& cls) {
  std::map<std::string, int> kinds, opaque_by_op;
  int live = 0, conv = 0, linear = 0, depthwise = 0, grouped = 0, transposed = 0;
  int by_rank[4] = {0, 0, 0, 0};
  json opaque = json::array();
  for (const Node& n : graph.nodes) {
    if (n.removed) continue;
    ++live;
    ++kinds[op_kind_name(n.kind)];
    if (n.kind == OpKind::Conv) {
      ++conv;
      if (n.is_depthwise()) ++depthwise;
      else if (n.groups() > 1) ++grouped;
      if (n.is_transposed()) ++transposed;
      if (n.spatial_rank >= 1 && n.spatial_rank <= 3) ++by_rank[n.spatial_rank];
    }
    if (n.kind == OpKind::Linear) ++linear;
    if (n.kind == OpKind::Opaque) {
      ++opaque_by_op[n.op_type];
      opaque.push_back({{"name", n.name}, {"op_type", n.op_type}, {"reason", n.opaque_reason}});
    }
  }
  return json{{"nodes", live},
              {"inputs", graph.graph_inputs},
              {"outputs", graph.graph_outputs},
              {"kinds", kinds},
              {"layers",
               {{"conv", conv}, {"linear", linear}, {"depthwise", depthwise}, {"grouped", grouped},
                {"transposed", transposed}, {"conv1d", by_rank[1]}, {"conv2d", by_rank[2]},
                {"conv3d", by_rank[3]}}},
              {"opaque", opaque},
              {"opaque_by_op", opaque_by_op},
              {"fold", to_json(folds)},
              {"cls", to_json(cls)}};
}

std::string inspect(const Graph& graph, const FoldResult& folds, const ClsCandidates& cls) {
  const json j = inspect_json(graph, folds, cls);
  std::ostringstream out;
  out << "Graph: " << j["nodes"].get<int>() << " nodes, inputs "
      << join(j["inputs"].get<std::vector<std::string>>(), ", ") << "; outputs "
      << join(j["outputs"].get<std::vector<std::string>>(), ", ") << "\n";
  std::vector<std::string> counts;
  for (const auto& [k, v] : j["kinds"].items()) counts.push_back(k + " " + std::to_string(v.get<int>()));
  out << "Node kinds: " << join(counts, ", ") << "\n";
  const json& l = j["layers"];
  out << "Layers: " << l["conv"].get<int>() << " conv (" << l["conv1d"].get<int>() << " 1-d, "
      << l["conv2d"].get<int>() << " 2-d, " << l["conv3d"].get<int>() << " 3-d; "
      << l["depthwise"].get<int>() << " depthwise, " << l["grouped"].get<int>() << " grouped, "
      << l["transposed"].get<int>() << " transposed), " << l["linear"].get<int>() << " linear\n";
  if (!j["opaque"].empty()) {
    counts.clear();
    for (const auto& [k, v] : j["opaque_by_op"].items()) counts.push_back(k + " " + std::to_string(v.get<int>()));
    out << "Opaque nodes (folding and scaling stop at them): " << join(counts, ", ") << "\n";
    for (const auto& o : j["opaque"])
      if (!o["reason"].get<std::string>().empty()) out << "  " << o["reason"].get<std::string>() << "\n";
  }
  out << explain(folds);
  out << explain(cls);
  if (folds.folded.empty() && cls.sets.empty())
    out << "Nothing to do: no batch norm can be folded and no layer set can be scaled.\n";
  return out.str();
}

json inspect_json(const Graph& graph, Relu6Policy relu6) {
  return inspect_json(graph, find_batch_norm_folds(graph), find_cls_sets(graph, relu6));
}

std::string inspect(const Graph& graph, Relu6Policy relu6) {
  return inspect(graph, find_batch_norm_folds(graph), find_cls_sets(graph, relu6));
}

}  // namespace prequant
