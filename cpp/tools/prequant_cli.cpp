// prequant — make an ONNX model quantization-ready from the command line (no Python needed).
//
//   prequant inspect  MODEL.onnx [--json] [--explain]
//   prequant fold     MODEL.onnx -o OUT.onnx [--explain] [--json] [--overwrite]
//   prequant equalize MODEL.onnx -o OUT.onnx [--relu6 replace|bound|skip] [--high-bias] [--regions]
//                     [--gated-activations] [--scale-criterion weights|weights_and_activations|activations]
//                     [--iterations N] [--explain] [--json] [--overwrite]
//   prequant report   MODEL.onnx -o OUT_DIR [--relu6 ...] [--high-bias] [--iterations N]
//                     [--before folded|original] [--bits B] [--max-layer-plots N] [--max-channels N]
//   prequant --version
//
// fold     = unroll_shared_weights + fold_batch_norms
// equalize = equalize_model (unroll, fold, ReLU6 policy, cross-layer scaling, optional high-bias absorption)
// report   = per-layer and per-channel weight statistics before and after equalize, as PNGs and a
//            self-contained report.html in OUT_DIR (weight_report.h); the model is never written
// Output files are written atomically (temporary file, then rename); the input is never
// overwritten unless --overwrite is given. Any error: one line "prequant: error: ..." on stderr
// and exit status 1 (2 for a command-line usage error).
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "prequant/errors.h"
#include "prequant/onnx_io.h"
#include "prequant/passes.h"
#include "prequant/report.h"
#include "prequant/weight_report.h"
#include "prequant/weight_stats.h"

#ifndef PREQUANT_VERSION
#define PREQUANT_VERSION "0.1.0"
#endif

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Options {
  std::string input;
  std::string output;
  bool json_out = false;
  bool explain = false;
  bool overwrite = false;
  std::string relu6 = "bound";
  bool high_bias = false;
  bool bias_correction = false;
  int bias_correction_bits = 8;
  bool bias_correction_per_channel = false;
  bool bias_correction_asymmetric = false;
  bool regions = false;
  bool gated_activations = false;
  std::string scale_criterion = "weights_and_activations";
  std::string weight_quantization = "per_tensor";
  int iterations = prequant::kDefaultMaxIterations;
  std::string before = "folded";  // report: the baseline
  int bits = 8;
  int max_layer_plots = 24;
  int max_channels = 128;
};

// One printable line: control characters become spaces, bytes that are not valid UTF-8 (a
// damaged model's names) become '?', and very long messages are cut.
std::string one_line(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool valid = len > 0 && i + len <= s.size();
    for (size_t k = 1; valid && k < len; ++k)
      valid = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
    if (!valid) {
      out += '?';
      ++i;
      continue;
    }
    if (len == 1 && (c < 0x20 || c == 0x7f)) out += ' ';
    else out.append(s, i, len);
    i += len;
  }
  if (out.size() > 2000) {
    size_t cut = 2000;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
    out = out.substr(0, cut) + " ...";
  }
  return out;
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(b, ec) && fs::equivalent(a, b, ec)) return true;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

void check_output(const Options& o) {
  if (o.output.empty())
    throw prequant::InvalidRequestError("no output file; give one with -o OUT.onnx");
  if (same_file(o.input, o.output) && !o.overwrite)
    throw prequant::InvalidRequestError("the output '" + o.output +
                                        "' is the input model; choose another -o or add --overwrite");
}

// Human text goes to stdout, or to stderr when stdout carries JSON.
std::ostream& text_stream(const Options& o) { return o.json_out ? std::cerr : std::cout; }

int count_bounded_clips(const prequant::Graph& g) {
  int n = 0;
  for (const auto& node : g.nodes)
    if (!node.removed && node.kind == prequant::OpKind::Clip && !node.clip_max_per_channel.empty()) ++n;
  return n;
}

// Nodes the reader kept as they are, with the reason (a weight that is no initializer, an
// unsupported form): no pass looks into them, so --explain says why they were skipped.
std::string explain_opaque(const prequant::Graph& g) {
  std::string out;
  for (const prequant::Node& n : g.nodes)
    if (n.kind == prequant::OpKind::Opaque && !n.opaque_reason.empty()) out += "  " + n.opaque_reason + "\n";
  return out.empty() ? out : "Opaque nodes (folding and scaling stop at them):\n" + out;
}

int run_inspect(const Options& o) {
  prequant::OnnxModel model = prequant::OnnxModel::load(o.input);
  const prequant::FoldResult folds = prequant::find_batch_norm_folds(model.graph());
  // CLS sets as they will be once the batch norms are folded: fold a second copy in memory.
  // If folding fails (say a BN with negative variance), show the sets of the unfolded graph.
  prequant::ClsCandidates cls;
  std::string fold_error;
  try {
    prequant::OnnxModel folded = prequant::OnnxModel::load(o.input);
    prequant::unroll_shared_weights(folded.graph());
    prequant::fold_batch_norms(folded.graph());
    cls = prequant::find_cls_sets(folded.graph(), prequant::Relu6Policy::Bound);
  } catch (const prequant::Error& e) {
    fold_error = one_line(e.what());
    cls = prequant::find_cls_sets(model.graph(), prequant::Relu6Policy::Bound);
  }
  if (o.json_out) {
    json j = prequant::inspect_json(model.graph(), folds, cls);
    j["model"] = o.input;
    j["opset"] = model.opset();
    if (!fold_error.empty()) j["fold_error"] = fold_error;
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "Model: " << o.input << " (opset " << model.opset() << ")\n"
              << prequant::inspect(model.graph(), folds, cls);
    if (!fold_error.empty())
      std::cout << "Folding would fail: " << fold_error << "\n(CLS candidates above are for the unfolded graph.)\n";
  }
  return 0;
}

int run_fold(const Options& o) {
  check_output(o);
  prequant::OnnxModel model = prequant::OnnxModel::load(o.input);
  const prequant::UnrollResult unroll = prequant::unroll_shared_weights(model.graph());
  const prequant::FoldResult fold = prequant::fold_batch_norms(model.graph());
  model.save(o.output);
  const bool nothing = fold.folded.empty() && unroll.copies.empty();
  std::ostream& text = text_stream(o);
  if (o.explain) text << explain_opaque(model.graph()) << prequant::explain(unroll) << prequant::explain(fold);
  if (nothing)
    text << "prequant fold: nothing to do: no batch norm can be folded"
         << (fold.declined.empty() ? " (the model has none)" : " (see --explain for why)")
         << "; wrote an unchanged copy to " << o.output << "\n";
  else
    text << "prequant fold: folded " << fold.folded.size() << " batch norm(s), kept "
         << fold.declined.size() << (unroll.copies.empty() ? "" : ", unrolled " + std::to_string(unroll.copies.size()) + " shared weight(s)")
         << "; wrote " << o.output << "\n";
  if (o.json_out) {
    json j{{"command", "fold"}, {"input", o.input}, {"output", o.output}, {"nothing_to_do", nothing},
           {"unroll", prequant::to_json(unroll)}, {"fold", prequant::to_json(fold)}};
    std::cout << j.dump(2) << "\n";
  }
  return 0;
}

prequant::EqualizeOptions equalize_options(const Options& o) {
  prequant::EqualizeOptions options;  // the engine validates it (check_options)
  options.cls.relu6 = prequant::parse_relu6_policy(o.relu6);
  options.cls.max_iterations = o.iterations;
  options.absorb_high_bias = o.high_bias;
  options.bias_correction = o.bias_correction;
  options.bias_quantizer.bits = o.bias_correction_bits;
  options.bias_quantizer.per_channel = o.bias_correction_per_channel;
  options.bias_quantizer.symmetric = !o.bias_correction_asymmetric;
  options.regions = o.regions;
  options.cls.gated_activations = o.gated_activations;
  options.cls.scale_criterion = prequant::parse_scale_criterion(o.scale_criterion);
  options.cls.weight_quantization = prequant::parse_weight_quantization(o.weight_quantization);
  return options;
}

int run_equalize(const Options& o) {
  check_output(o);
  const prequant::EqualizeOptions options = equalize_options(o);
  prequant::OnnxModel model = prequant::OnnxModel::load(o.input);
  const prequant::EqualizeResult r = prequant::equalize_model(model.graph(), options);
  model.save(o.output);
  const int bounded = count_bounded_clips(model.graph());
  const bool nothing = r.fold.folded.empty() && r.cls.sets.empty() && r.unroll.copies.empty() &&
                       r.activations.edits.empty() && r.high_bias.absorbed.empty() &&
                       r.bias_correction.corrected.empty();
  std::ostream& text = text_stream(o);
  if (o.explain) text << explain_opaque(model.graph()) << prequant::explain(r);
  if (nothing) {
    text << "prequant equalize: nothing to do: no batch norm to fold and no layer set to scale"
         << (o.explain ? "" : " (see --explain for why)") << "; wrote an unchanged copy to "
         << o.output << "\n";
  } else {
    size_t moved = 0;
    for (const auto& a : r.high_bias.absorbed)
      moved += std::any_of(a.amount.begin(), a.amount.end(), [](double c) { return c != 0.0; });
    text << "prequant equalize: folded " << r.fold.folded.size() << " batch norm(s), scaled "
         << r.cls.sets.size() << " CLS set(s) in " << r.cls.iterations << " iteration(s)"
         << (o.regions ? ", " + std::to_string(r.regions.regions.size()) + " region(s)" : std::string())
         << ", moved high bias in "
         << moved << " pair(s)";
    if (!r.activations.edits.empty()) text << ", replaced " << r.activations.edits.size() << " ReLU6 with ReLU";
    if (bounded) text << ", bounded " << bounded << " ReLU6 per channel";
    if (o.bias_correction)
      text << ", corrected the bias of " << r.bias_correction.corrected.size()
           << " layer(s) (the FP32 output changes on purpose)";
    text << "; " << prequant::all_declined(r).size() << " candidate(s) declined; wrote " << o.output << "\n";
  }
  if (o.json_out) {
    json j = prequant::to_json(r);
    j["command"] = "equalize";
    j["input"] = o.input;
    j["output"] = o.output;
    j["relu6"] = o.relu6;
    j["nothing_to_do"] = nothing;
    std::cout << j.dump(2) << "\n";
  }
  return 0;
}

// Statistics of the model as it is ("original") or with its batch norms folded ("folded": the
// weights a quantizer sees without equalization), and of the equalized model; files in -o.
int run_report(const Options& o) {
  if (o.output.empty()) throw prequant::InvalidRequestError("no output directory; give one with -o OUT_DIR");
  std::error_code ec;
  if (same_file(o.input, o.output) || fs::is_regular_file(o.output, ec))
    throw prequant::InvalidRequestError("the output '" + o.output + "' is a file; -o names a directory for the report");
  const prequant::EqualizeOptions options = equalize_options(o);
  prequant::WeightStats before;
  {
    prequant::OnnxModel model = prequant::OnnxModel::load(o.input);
    if (o.before == "folded") {
      prequant::unroll_shared_weights(model.graph());
      prequant::fold_batch_norms(model.graph());
    }
    before = prequant::collect_weight_stats(model.graph(), o.bits);
  }
  prequant::OnnxModel model = prequant::OnnxModel::load(o.input);
  const prequant::EqualizeResult r = prequant::equalize_model(model.graph(), options);
  const prequant::WeightStats after = prequant::collect_weight_stats(model.graph(), o.bits);

  prequant::ReportOptions ro;
  ro.title = "prequant weight report: " + fs::path(o.input).filename().string();
  ro.model = o.input;
  ro.before_label = o.before == "folded" ? "before (batch norms folded)" : "before (original)";
  ro.max_layer_plots = o.max_layer_plots;
  ro.max_channels = o.max_channels;
  ro.notes.push_back("equalize (--relu6 " + o.relu6 + (o.high_bias ? ", --high-bias" : "") + "): folded " +
                     std::to_string(r.fold.folded.size()) + " batch norm(s), scaled " +
                     std::to_string(r.cls.sets.size()) + " CLS set(s) in " + std::to_string(r.cls.iterations) +
                     " iteration(s), absorbed high bias in " + std::to_string(r.high_bias.absorbed.size()) +
                     " pair(s); " + std::to_string(prequant::all_declined(r).size()) +
                     " candidate(s) declined (prequant equalize --explain says why).");
  const prequant::ReportFiles files = prequant::write_report(before, after, o.output, ro);
  std::cout << "prequant report: " << std::max(before.layers.size(), after.layers.size())
            << " conv/linear layer(s), " << files.images.size() - 1 << " per-channel plot(s); wrote " << files.html
            << " (and " << files.images.size() << " PNG(s), " << fs::path(files.json).filename().string() << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prequant: make ONNX models quantization-ready (batch-norm folding, cross-layer "
               "equalization, high-bias absorption)",
               "prequant"};
  app.set_version_flag("--version", std::string("prequant ") + PREQUANT_VERSION);
  app.require_subcommand(1);
  Options o;

  auto* inspect = app.add_subcommand("inspect", "Summarize a model: layers, foldable batch norms, CLS sets");
  inspect->add_option("model", o.input, "Input .onnx model")->required();
  inspect->add_flag("--json", o.json_out, "Print the summary as JSON");
  inspect->add_flag("--explain", o.explain, "Accepted for symmetry: inspect always gives every reason");

  auto* fold = app.add_subcommand("fold", "Fold batch norms into neighbouring conv/linear layers");
  auto* equalize = app.add_subcommand(
      "equalize", "Fold batch norms, then cross-layer scaling (and, with --high-bias, high-bias absorption)");
  for (auto* sub : {fold, equalize}) {
    sub->add_option("model", o.input, "Input .onnx model")->required();
    sub->add_option("-o,--output", o.output, "Output .onnx model (written atomically)")->required();
    sub->add_flag("--explain", o.explain, "Print every decision and every declined candidate with its reason");
    sub->add_flag("--json", o.json_out, "Print the pass results as JSON on stdout");
    sub->add_flag("--overwrite", o.overwrite, "Allow the output to replace the input model");
  }

  auto* report = app.add_subcommand(
      "report", "Write per-layer and per-channel weight ranges and weight SQNR before and after equalization "
                "(PNGs and a self-contained report.html); the model is not written");
  report->add_option("model", o.input, "Input .onnx model")->required();
  report->add_option("-o,--output", o.output, "Output directory (created if missing)")->required();
  report->add_option("--before", o.before,
                     "Baseline: folded (batch norms folded, what a quantizer sees without equalization; "
                     "default) or original (the weights as stored)")
      ->check(CLI::IsMember({"folded", "original"}));
  report->add_option("--bits", o.bits, "Weight bit width for the SQNR columns (default 8)")->check(CLI::Range(2, 16));
  report->add_option("--max-layer-plots", o.max_layer_plots,
                     "Per-channel plots for at most this many layers, those with the widest ranges (default 24)")
      ->check(CLI::Range(0, 100000));
  report->add_option("--max-channels", o.max_channels, "Channels drawn per plot (default 128)")
      ->check(CLI::Range(1, 100000));
  equalize->add_flag("--bias-correction,!--no-bias-correction", o.bias_correction,
                     "Analytic bias correction (DFQ 4.2; AIMET's data-driven one is correct_bias): subtract "
                     "the mean output shift weight quantization causes, from the batch norm statistics. "
                     "Changes the FP32 output on purpose; off by default (docs/BENCHMARKS.md)");
  equalize->add_option("--bias-correction-bits", o.bias_correction_bits,
                       "Weight bit width bias correction assumes (default 8)")
      ->check(CLI::Range(2, 16));
  equalize->add_flag("--bias-correction-per-channel", o.bias_correction_per_channel,
                     "Bias correction assumes per-channel weight scales (default: per tensor)");
  equalize->add_flag("--bias-correction-asymmetric", o.bias_correction_asymmetric,
                     "Bias correction assumes min/max weight quantization with a zero point (default: symmetric)");
  for (auto* sub : {equalize, report}) {
    sub->add_option("--relu6", o.relu6,
                    "ReLU6/Clip between scaled layers: bound (exact per-channel clip, default), "
                    "replace (with ReLU, as AIMET), skip (leave such pairs unscaled)")
        ->check(CLI::IsMember({"replace", "bound", "skip"}));
    sub->add_flag("--high-bias,!--no-high-bias", o.high_bias,
                  "Also absorb high bias (the 3σ rule; approximate, off by default as measured in "
                  "docs/BENCHMARKS.md)");
    sub->add_flag("--regions,!--no-regions", o.regions,
                  "Also equalize regions beyond chains: layers meeting in residual Adds, Concats, "
                  "Splits and fan-out (off by default)");
    sub->add_flag("--gated-activations,!--no-gated-activations", o.gated_activations,
                  "Also scale through x·g(x) activations (SiLU, HardSwish, GELU), rewriting each as "
                  "x·g(s·x) with a per-channel gate scale: exact in FP32 (off by default)");
    sub->add_option("--scale-criterion", o.scale_criterion,
                    "What each CLS scale balances: weights_and_activations (default: the weight ranges "
                    "and the activation range from the folded BN statistics), weights (DFQ: weight "
                    "ranges only), activations (activation against the next layer's columns: for "
                    "per-channel weight quantization), quantization_noise (minimise the modelled INT8 output noise "
                    "for --weight-quantization)")
        ->check(CLI::IsMember({"weights", "weights_and_activations", "activations", "quantization_noise"}));
    sub->add_option("--weight-quantization", o.weight_quantization,
                    "The INT8 weights the model will be quantized with, for --scale-criterion "
                    "quantization_noise: per_tensor (default) or per_channel")
        ->check(CLI::IsMember({"per_tensor", "per_channel", "per-tensor", "per-channel"}));
    sub->add_option("--iterations", o.iterations,
                    "Maximum CLS iterations over overlapping sets (1 = one pass, as AIMET)")
        ->check(CLI::Range(1, 1000000));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "prequant: error: " << one_line(e.what()) << " (see prequant --help)\n";
    return 2;
  }

  try {
    if (*inspect) return run_inspect(o);
    if (*fold) return run_fold(o);
    if (*equalize) return run_equalize(o);
    if (*report) return run_report(o);
  } catch (const prequant::Error& e) {
    std::cerr << "prequant: error: " << one_line(e.what()) << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "prequant: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "prequant: error: internal error: " << one_line(e.what())
              << " (please report this with the model)\n";
    return 3;
  }
  return 0;
}
