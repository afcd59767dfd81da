// solve_cls_chains.h (internal) — the depth-wise correction that makes iterated cross-layer
// scaling converge in a number of sweeps independent of depth (see solve_cls_chains.cpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace prequant {

// One scaled link of a CLS set: `producer`'s output channels / `consumer`'s input channels.
struct ClsLinkEnds {
  size_t producer = 0;
  size_t consumer = 0;
};

// For links whose layers chain up (a layer feeds at most one link and is fed by at most one),
// returns δ per link solving, along each chain,  2·δ[ℓ] − δ[pred ℓ] − δ[succ ℓ] = residual[ℓ]
// (a missing neighbour counts as 0). Empty if a layer sits on the same side of two links.
std::vector<double> solve_cls_chains(const std::vector<ClsLinkEnds>& links,
                                     const std::vector<double>& residual);

// For the chain correction's residuals: Σ ln(out/in) over a link's channels as the ln of their
// product, one logarithm per link instead of one per channel (with the per-set logs, a sixth of
// the engine's time on MobileNetV2, 32 sweeps). The product is mantissa · 2^exponent, renormalized whenever it leaves [2^-500, 2^500]; a ratio
// outside that range (or one that overflowed) adds its own ln(out) − ln(in), so nothing
// overflows. Equal to the sum of logs up to rounding (relative 1e-16 per channel): the
// correction's size changes in its last bits, not the fixed point the sweeps converge to.
struct LogSum {
  double mantissa = 1.0;
  int64_t exponent = 0;
  double rest = 0.0;
  void add(double out, double in) {  // out, in finite and > 0
    const double ratio = out / in;
    if (!(ratio >= 0x1p-500 && ratio <= 0x1p500)) {
      rest += std::log(out) - std::log(in);
      return;
    }
    mantissa *= ratio;  // within [2^-1000, 2^1000]: no overflow, no subnormal
    if (!(mantissa >= 0x1p-500 && mantissa <= 0x1p500)) {
      int e = 0;
      mantissa = std::frexp(mantissa, &e);
      exponent += e;
    }
  }
  double value() const { return std::log(mantissa) + static_cast<double>(exponent) * std::log(2.0) + rest; }
};

}  // namespace prequant
