// solve_cls_chains.h (internal) — the depth-wise correction that makes iterated cross-layer
// scaling converge in a number of sweeps independent of depth (see solve_cls_chains.cpp).
#pragma once

#include <cstddef>
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

}  // namespace prequant
