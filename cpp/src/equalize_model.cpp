// equalize_model.cpp — the whole data-free equalization pipeline, atomic as one transform.
//
// Before: a trained graph.
// After:  shared weights unrolled; batch norms folded; ReLU6 handled by the policy; CLS sets
//         scaled (iterated to convergence by default; 'replace' turns into ReLU only the clips
//         between scaled layers; with `regions`, equalization regions too, alternating with the
//         chains; the scale criterion reads the statistics of the BNs just folded); high bias absorbed using the statistics
//         of the BNs folded after each layer, scaled by that layer's CLS scale; optionally,
//         analytic bias correction for the given weight quantizer, using those statistics carried
//         through the CLS scales and the absorbed bias (correct_bias.cpp; changes the FP32 output).
// If any step fails, the graph and every parameter are as they were before the call.
#include "cls_region.h"
#include "prequant/passes.h"
#include "transaction.h"

namespace prequant {

EqualizeResult equalize_model(Graph& graph, const EqualizeOptions& options) {
  check_options(options);
  Transaction tx(graph);
  EqualizeResult result;
  result.unroll = unroll_shared_weights(graph);
  if (options.fold) result.fold = fold_batch_norms(graph);
  // ReLU6 'replace' is applied by scale_cls_sets (and scale_cls_regions) to the clips between
  // the layers they scale (as aimet-onnx does), not to every clip: an output clamp or a ReLU6 in
  // no scaled pair keeps its function.
  // An activation-aware scale criterion reads the BNs this call folded after each layer
  // (choose_cls_scales.cpp); statistics the caller gave win.
  ClsOptions cls = options.cls;
  if (cls.scale_criterion != ScaleCriterion::Weights)
    for (const auto& pair : result.fold.folded)
      if (pair.request.direction == FoldDirection::ConvThenBn) cls.output_statistics.emplace(pair.request.layer, pair.bn_stats);
  result.cls = options.regions ? scale_model_with_regions(graph, cls, result.regions) : scale_model(graph, cls);
  if (options.absorb_high_bias) {
    result.high_bias = absorb_high_bias(graph, result.cls.sets, folded_bn_stats(result.fold), options.high_bias_sigmas);
  }
  if (options.bias_correction)
    result.bias_correction =
        correct_bias(graph, track_folded_bn_stats(result.fold, result.cls, result.high_bias, result.regions), options.bias_quantizer);
  tx.commit();
  return result;
}

}  // namespace prequant
