// solve_cls_chains.cpp — a coarse, depth-wise correction for iterated cross-layer scaling.
//
// Before: CLS links (producer out-channels ↔ consumer in-channels) that chain up through shared
//         layers (pairs L1→L2, L2→L3, …; a conv→dw→conv triple is two links), and per link the
//         mean over active channels of the log-range mismatch d[ℓ] = ln r_out(producer) − ln
//         r_in(consumer) left after a Gauss-Seidel sweep.
// After:  δ[ℓ] per link, the uniform ln-scale that zeroes every link's mean mismatch at once.
// Why:    a sweep equalizes one link given its neighbours, so a mismatch travels one link per
//         sweep and the sweeps needed grow ~N² on an N-layer chain (8 layers: 75, 125: 8393).
//         The slow modes are smooth along depth and almost uniform across channels, and for a
//         uniform shift the coupling is exact and linear: multiplying every in-channel of a
//         layer by e^δ multiplies every one of its out-ranges by e^δ (a max of products), so
//         dividing link ℓ by e^δℓ moves d[ℓ] by −2δ[ℓ] + δ[pred] + δ[succ]. Zeroing the means
//         is a tridiagonal system per chain (diagonal 2, off-diagonals −1, strictly dominant
//         at the chain's ends), solved exactly by the Thomas algorithm in O(links). The sweeps
//         remain the smoother and define the fixed point; this only removes the slow part
//         (two-level multigrid with one coarse unknown per link).
// Preconditions: residual.size() == links.size(); finite residuals.
#include "solve_cls_chains.h"

#include <unordered_map>

namespace prequant {

std::vector<double> solve_cls_chains(const std::vector<ClsLinkEnds>& links,
                                     const std::vector<double>& residual) {
  const size_t n = links.size();
  std::unordered_map<size_t, size_t> out_link, in_link;  // layer → link on that side
  for (size_t l = 0; l < n; ++l) {
    if (!out_link.emplace(links[l].producer, l).second) return {};
    if (!in_link.emplace(links[l].consumer, l).second) return {};
  }
  constexpr size_t kNone = static_cast<size_t>(-1);
  std::vector<size_t> pred(n, kNone), succ(n, kNone);
  for (size_t l = 0; l < n; ++l) {
    if (auto it = in_link.find(links[l].producer); it != in_link.end()) pred[l] = it->second;
    if (auto it = out_link.find(links[l].consumer); it != out_link.end()) succ[l] = it->second;
  }
  std::vector<double> delta(n, 0.0), c_prime(n, 0.0), d_prime(n, 0.0);
  std::vector<size_t> chain;
  for (size_t head = 0; head < n; ++head) {
    if (pred[head] != kNone) continue;  // start each chain at its first link
    chain.clear();
    for (size_t l = head; l != kNone; l = succ[l]) chain.push_back(l);  // links in a cycle have no head: δ = 0
    // Thomas with a = c = −1, b = 2: m = b − a·c'[i−1], c'[i] = c/m, d'[i] = (r − a·d'[i−1])/m.
    for (size_t i = 0; i < chain.size(); ++i) {
      const double m = i ? 2.0 + c_prime[i - 1] : 2.0;
      c_prime[i] = -1.0 / m;
      d_prime[i] = (residual[chain[i]] + (i ? d_prime[i - 1] : 0.0)) / m;
    }
    for (size_t i = chain.size(); i-- > 0;) {
      const double next = i + 1 < chain.size() ? delta[chain[i + 1]] : 0.0;
      delta[chain[i]] = d_prime[i] - c_prime[i] * next;
    }
  }
  return delta;
}

}  // namespace prequant
