// bn_sampling.h — inputs drawn so that each batch norm reading a graph input sees its own
// running statistics (x ~ N(mean, sqrt(var + eps)), hence BN(x) ~ N(β, |γ|)): the Monte-Carlo
// side of the bias-correction and statistics-propagation tests. Every element is independent.
#pragma once

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "reference_model.h"

namespace pqtest {

// One tensor per graph input, in the graph's input order; `bn_of_input` names the BN reading it.
inline std::vector<Tensor> draw_bn_inputs(RefModel& m, const std::map<std::string, std::string>& bn_of_input,
                                          int64_t samples, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n01(0.0, 1.0);
  std::vector<Tensor> xs;
  for (const auto& input : m.graph.graph_inputs) {
    const std::string& name = input;
    const auto& shape = m.input_shapes.at(name);
    const auto& bn = m.node(bn_of_input.at(name));
    const auto mean = read_all(bn.mean), var = read_all(bn.var);
    Tensor x;
    x.shape = {samples};
    x.shape.insert(x.shape.end(), shape.begin(), shape.end());
    x.data.resize(static_cast<size_t>(x.numel()));
    const int64_t c = shape[0], per_channel = x.numel() / samples / c;
    for (int64_t s = 0; s < samples; ++s)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t k = 0; k < per_channel; ++k)
          x.data[(s * c + ch) * per_channel + k] = mean[ch] + std::sqrt(var[ch] + bn.eps) * n01(rng);
    xs.push_back(std::move(x));
  }
  return xs;
}

// Per channel: the mean over samples of the per-sample pixel average, and its standard error
// (samples are independent; pixels within a sample may not be).
inline std::pair<std::vector<double>, std::vector<double>> channel_mean_and_se(const Tensor& t) {
  const int64_t n = t.shape[0], c = t.shape[1], pixels = t.numel() / n / c;
  std::vector<double> mean(c, 0.0), sq(c, 0.0), se(c, 0.0);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t ch = 0; ch < c; ++ch) {
      double avg = 0.0;
      for (int64_t k = 0; k < pixels; ++k) avg += t.data[(s * c + ch) * pixels + k];
      avg /= pixels;
      mean[ch] += avg;
      sq[ch] += avg * avg;
    }
  for (int64_t ch = 0; ch < c; ++ch) {
    mean[ch] /= n;
    se[ch] = std::sqrt(std::max(0.0, sq[ch] / n - mean[ch] * mean[ch]) / n);
  }
  return {mean, se};
}

}  // namespace pqtest
