// check_options.cpp — validate ClsOptions / EqualizeOptions where a pass is entered, so the CLI,
// C++ callers and Python get the same typed error (InvalidRequestError) with the fix.
//
// Why at the pass entry: std::clamp(s, lo, hi) is undefined behaviour when hi < lo, a scale
// bound ≤ 0 breaks the positivity every CLS identity relies on, and a NaN bound or tolerance
// compares false everywhere (a silent no-op or a silent clamp to nothing).
#include <cmath>
#include <sstream>

#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

namespace {
std::string text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace

void check_options(const ClsOptions& o) {
  if (!std::isfinite(o.min_scale) || !(o.min_scale > 0))
    throw InvalidRequestError("min_scale must be a finite number > 0 (scales must stay positive), got " +
                              text(o.min_scale) + "; the default is 1e-6");
  if (!std::isfinite(o.max_scale) || !(o.max_scale >= o.min_scale))
    throw InvalidRequestError("max_scale must be finite and >= min_scale (" + text(o.min_scale) + "), got " +
                              text(o.max_scale) + "; the default is 1e6");
  if (!std::isfinite(o.tolerance) || !(o.tolerance >= 0))
    throw InvalidRequestError("tolerance must be a finite number >= 0, got " + text(o.tolerance) +
                              "; the default is 1e-6");
  if (o.max_iterations < 1)
    throw InvalidRequestError("max_iterations (the CLI's --iterations) must be at least 1 (1 = one pass over the sets, as AIMET), got " +
                              std::to_string(o.max_iterations) + "; equalize_model's default is " +
                              std::to_string(kDefaultMaxIterations));
  if (!std::isfinite(o.activation_sigmas) || !(o.activation_sigmas > 0))
    throw InvalidRequestError("activation_sigmas must be a finite number > 0 (the k of the activation range "
                              "β ± k·|γ|), got " + text(o.activation_sigmas) + "; the default is 3");
  if (o.weight_quantization.bits < 2 || o.weight_quantization.bits > 16)
    throw InvalidRequestError("weight_quantization.bits must be 2..16 (the weight quantizer the quantization_noise "
                              "criterion models), got " + std::to_string(o.weight_quantization.bits) + "; the default is 8");
}

void check_options(const EqualizeOptions& o) {
  check_options(o.cls);
  if (!std::isfinite(o.high_bias_sigmas) || !(o.high_bias_sigmas >= 0))
    throw InvalidRequestError("high_bias_sigmas must be a finite number >= 0 (the k of the k·σ rule), got " +
                              text(o.high_bias_sigmas) + "; the default is 3");
}

}  // namespace prequant
