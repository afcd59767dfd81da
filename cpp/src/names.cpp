// names.cpp — the names enums have in messages, the CLI and Python.
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

const char* fold_direction_name(FoldDirection d) {
  return d == FoldDirection::ConvThenBn ? "conv_then_bn" : "bn_then_conv";
}

const char* relu6_policy_name(Relu6Policy p) {
  switch (p) {
    case Relu6Policy::Replace: return "replace";
    case Relu6Policy::Bound: return "bound";
    case Relu6Policy::Skip: return "skip";
  }
  return "?";
}

Relu6Policy parse_relu6_policy(const std::string& name) {
  if (name == "replace") return Relu6Policy::Replace;
  if (name == "bound") return Relu6Policy::Bound;
  if (name == "skip") return Relu6Policy::Skip;
  throw InvalidRequestError("unknown ReLU6 policy '" + name +
                            "'; use 'replace', 'bound' or 'skip'");
}

const char* scale_criterion_name(ScaleCriterion c) {
  switch (c) {
    case ScaleCriterion::Weights: return "weights";
    case ScaleCriterion::WeightsAndActivations: return "weights_and_activations";
    case ScaleCriterion::Activations: return "activations";
    case ScaleCriterion::QuantizationNoise: return "quantization_noise";
  }
  return "?";
}

ScaleCriterion parse_scale_criterion(const std::string& name) {
  if (name == "weights") return ScaleCriterion::Weights;
  if (name == "weights_and_activations") return ScaleCriterion::WeightsAndActivations;
  if (name == "activations") return ScaleCriterion::Activations;
  if (name == "quantization_noise") return ScaleCriterion::QuantizationNoise;
  throw InvalidRequestError("unknown scale criterion '" + name +
                            "'; use 'weights' (DFQ), 'weights_and_activations' (for per-tensor weight "
                            "quantization) 'activations' (for per-channel weight quantization) or 'quantization_noise' (the modelled "
                            "INT8 output noise for weight_quantization)");
}

WeightQuantizer parse_weight_quantization(const std::string& name) {
  WeightQuantizer q;
  if (name == "per_tensor" || name == "per-tensor") return q;
  q.per_channel = true;
  if (name == "per_channel" || name == "per-channel") return q;
  throw InvalidRequestError("unknown weight quantization '" + name +
                            "'; use 'per_tensor' or 'per_channel' (the INT8 weights the model will be quantized with)");
}

}  // namespace prequant
