// minimize_link_noise.cpp — the quantization_noise criterion's objective and its minimiser.
//
// Before: one CLS link L1 → (activation) → L2, described by its noise model (model_link_noise.cpp).
// After:  the step u = ln s that minimises the modelled INT8 noise at L2's outputs; nothing in the
//         graph changes here (scale_cls_sets.cpp applies s: L1's row c and the activation / s[c],
//         L2's column c · s[c]).
// Formula (noise variances summed over L2's outputs; Lw = 2^(bits−1)−1, La = 255):
//   activation, per tensor:  Na = (max_c act_c/s_c)²/12/La² · Σ_c s_c² q_c
//   L1's weights, per tensor: N1 = (max_c r1_c/s_c)²/12/Lw² · Σ_c P1_c κ_c s_c² q_c   (per channel: constant)
//   L2's weights, per tensor: N2 = (max_c r2_c s_c)²/12/Lw² · Σ_c n2_c m_c / s_c²
//                 per channel: Σ_o (max_c M_oc s_c)²/12/Lw² · Σ_c n_oc m_c / s_c²
//   with q_c = Σ W2[:,c]², m_c = E[a_c²], κ_c = E[g'(z_c)²], P1_c = Σ_fan-in E[x²] of L1's row c,
//   M_oc = max |W2[o,c,·]|, n = taps. Every term is (max of exp-affine)² · (sum of exp-affine) in
//   u = ln s: log-convex, so ln J is convex in u, and J(u + α) = J(u) (one free factor per link).
// Method: the maxes are smoothed, max_τ(x) = τ·ln Σ exp(x/τ) (an upper bound within τ·ln n, still
//   convex), and ln J_τ is minimised by L-BFGS with Armijo backtracking, for τ = 0.1, 0.03, 0.01,
//   0.003, 0.001 in turn (each from the last); the iterate with the lowest EXACT ln J wins, and the
//   start wins unless beaten, so a step never increases the modelled noise.
// Preconditions: finite a, b or −inf (a channel that does not count); fixed channels are held.
#include "minimize_link_noise.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>

namespace prequant {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// max_τ of x (τ = 0: the max) and, into w, its derivative in x (softmax weights; the argmax at τ = 0).
double smooth_max(const std::vector<double>& x, double tau, std::vector<double>* w) {
  double mx = kNegInf;
  size_t arg = 0;
  for (size_t k = 0; k < x.size(); ++k)
    if (x[k] > mx) mx = x[k], arg = k;
  if (w) w->assign(x.size(), 0.0);
  if (mx == kNegInf) return kNegInf;
  if (!(tau > 0)) {
    if (w) (*w)[arg] = 1.0;
    return mx;
  }
  // Terms below e^−40 of the largest change nothing in double precision but cost exp()'s slow
  // underflow path: skipped.
  double z = 0.0;
  for (size_t k = 0; k < x.size(); ++k) {
    const double e = (x[k] - mx) / tau;
    const double v = e > -40.0 ? std::exp(e) : 0.0;
    if (w) (*w)[k] = v;
    z += v;
  }
  if (w)
    for (double& v : *w) v /= z;
  return mx + tau * std::log(z);
}

}  // namespace

double log_link_noise(const LinkNoise& noise, std::span<const double> u, double tau, std::vector<double>* grad) {
  std::vector<double> max_value(noise.maxes.size()), sum_value(noise.sums.size());
  std::vector<std::vector<double>> max_w(noise.maxes.size()), sum_w(noise.sums.size());
  std::vector<double> x;
  for (size_t k = 0; k < noise.maxes.size(); ++k) {
    const NoiseMax& m = noise.maxes[k];
    x.resize(m.index.size());
    for (size_t j = 0; j < x.size(); ++j) x[j] = m.a[j] + m.sign * u[m.index[j]];
    max_value[k] = smooth_max(x, tau, grad ? &max_w[k] : nullptr);
  }
  for (size_t k = 0; k < noise.sums.size(); ++k) {
    const NoiseSum& s = noise.sums[k];
    x.resize(s.index.size());
    for (size_t j = 0; j < x.size(); ++j) x[j] = s.b[j] + 2.0 * s.sign * u[s.index[j]];
    sum_value[k] = smooth_max(x, 1.0, grad ? &sum_w[k] : nullptr);  // log-sum-exp
  }
  std::vector<double> log_term(noise.terms.size());
  double top = kNegInf;
  for (size_t t = 0; t < noise.terms.size(); ++t) {
    const NoiseTerm& term = noise.terms[t];
    const double mv = max_value[term.max_part], sv = sum_value[term.sum_part];
    log_term[t] = (mv == kNegInf || sv == kNegInf) ? kNegInf : term.log_coef + 2.0 * mv + sv;
    top = std::max(top, log_term[t]);
  }
  if (grad) grad->assign(noise.channels, 0.0);
  if (top == kNegInf) return kNegInf;
  double z = 0.0;
  for (double l : log_term) z += std::exp(l - top);
  const double value = top + std::log(z);
  if (grad) {  // ∂ ln J = Σ_t p_t (2·∂max_t + ∂sum_t), p_t = J_t / J
    std::vector<double> max_p(noise.maxes.size(), 0.0), sum_p(noise.sums.size(), 0.0);
    for (size_t t = 0; t < noise.terms.size(); ++t) {
      const double p = std::exp(log_term[t] - value);
      max_p[noise.terms[t].max_part] += p;
      sum_p[noise.terms[t].sum_part] += p;
    }
    for (size_t k = 0; k < noise.maxes.size(); ++k) {
      if (max_p[k] == 0.0) continue;
      const NoiseMax& m = noise.maxes[k];
      for (size_t j = 0; j < m.index.size(); ++j) (*grad)[m.index[j]] += 2.0 * m.sign * max_p[k] * max_w[k][j];
    }
    for (size_t k = 0; k < noise.sums.size(); ++k) {
      if (sum_p[k] == 0.0) continue;
      const NoiseSum& s = noise.sums[k];
      for (size_t j = 0; j < s.index.size(); ++j) (*grad)[s.index[j]] += 2.0 * s.sign * sum_p[k] * sum_w[k][j];
    }
  }
  return value;
}

namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

// L-BFGS on ln J_τ from u (in place), free channels only, iterates projected into [lo, hi].
// `best`/`best_value` track the lowest exact ln J seen.
void run_lbfgs(const LinkNoise& noise, std::vector<double>& u, const std::vector<bool>& fixed, double lo, double hi,
               double tau, std::vector<double>& best, double& best_value) {
  constexpr size_t kMemory = 8;
  constexpr int kIterations = 200;
  std::vector<double> g, g_new, d(u.size()), u_new(u.size());
  auto evaluate = [&](const std::vector<double>& at, std::vector<double>& gradient) {
    const double v = log_link_noise(noise, at, tau, &gradient);
    for (size_t c = 0; c < gradient.size(); ++c)
      if (fixed[c]) gradient[c] = 0.0;
    return v;
  };
  double f = evaluate(u, g);
  std::deque<std::pair<std::vector<double>, std::vector<double>>> memory;  // (step, gradient change)
  for (int it = 0; it < kIterations; ++it) {
    double g_max = 0.0;
    for (double v : g) g_max = std::max(g_max, std::abs(v));
    if (!(g_max > 1e-10) || !std::isfinite(f)) break;
    // Two-loop recursion: d = −H·g.
    d = g;
    std::vector<double> alpha(memory.size());
    for (size_t k = memory.size(); k-- > 0;) {
      alpha[k] = dot(memory[k].first, d) / dot(memory[k].second, memory[k].first);
      for (size_t c = 0; c < d.size(); ++c) d[c] -= alpha[k] * memory[k].second[c];
    }
    const double gamma = memory.empty() ? 1.0 / g_max
                                        : dot(memory.back().first, memory.back().second) /
                                              dot(memory.back().second, memory.back().second);
    for (double& v : d) v *= gamma;
    for (size_t k = 0; k < memory.size(); ++k) {
      const double beta = dot(memory[k].second, d) / dot(memory[k].second, memory[k].first);
      for (size_t c = 0; c < d.size(); ++c) d[c] += memory[k].first[c] * (alpha[k] - beta);
    }
    for (double& v : d) v = -v;
    double slope = dot(g, d);
    if (!(slope < 0)) {  // not a descent direction: steepest descent, memory dropped
      memory.clear();
      for (size_t c = 0; c < d.size(); ++c) d[c] = -g[c] / g_max;
      slope = dot(g, d);
    }
    double step = 1.0, f_new = f;
    bool moved = false;
    for (int halving = 0; halving < 50; ++halving, step *= 0.5) {
      for (size_t c = 0; c < u.size(); ++c) u_new[c] = std::clamp(u[c] + step * d[c], lo, hi);
      f_new = evaluate(u_new, g_new);
      if (f_new <= f + 1e-4 * step * slope) {
        moved = true;
        break;
      }
    }
    if (!moved) break;
    std::vector<double> s(u.size()), y(u.size());
    for (size_t c = 0; c < u.size(); ++c) s[c] = u_new[c] - u[c], y[c] = g_new[c] - g[c];
    if (dot(s, y) > 1e-12) {
      memory.emplace_back(std::move(s), std::move(y));
      if (memory.size() > kMemory) memory.pop_front();
    }
    const double decrease = f - f_new;
    u = u_new;
    g = g_new;
    f = f_new;
    const double exact = log_link_noise(noise, u);
    if (exact < best_value) best_value = exact, best = u;
    if (decrease < 1e-12 * (1.0 + std::abs(f))) break;
  }
}

}  // namespace

std::vector<double> minimize_link_noise(const LinkNoise& noise, std::vector<double> u0, const std::vector<bool>& fixed,
                                        double lo, double hi) {
  std::vector<double> best = u0;
  double best_value = log_link_noise(noise, u0);
  if (!std::isfinite(best_value)) return best;
  const double start = best_value;
  std::vector<double> u = u0;
  for (double tau : {0.1, 0.03, 0.01, 0.003, 0.001}) run_lbfgs(noise, u, fixed, lo, hi, tau, best, best_value);
  // A step must lower ln J by 1e-6 (4e-6 dB): smaller moves are below the model's precision and
  // would only keep the sweep going.
  return best_value < start - 1e-6 ? best : u0;
}

}  // namespace prequant
