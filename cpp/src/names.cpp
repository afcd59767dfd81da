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

}  // namespace prequant
