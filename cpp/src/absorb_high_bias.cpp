// absorb_high_bias.cpp — high-bias absorption: move the part of a layer's bias that the next
// activation never clips from layer1 into layer2's bias.
//
// Before: scaled CLS pairs L1 → act → L2, where L1 had a BN folded after it (its output is
//         γ·x̂ + β per channel before scaling).
// After:  L1's bias lowered by c, L2's bias raised by W2·c; the output is unchanged wherever L1's
//         pre-activation stays ≥ c (3σ: ~99.9% of a Gaussian), and exactly when no activation
//         sits between. A padded L2 (or a zero pad between) is declined whatever sits between:
//         its border taps read the pad's zeros, not the shifted activation, so the correction
//         W2·c is wrong at every border pixel — a systematic error, not a tail one. AIMET absorbs
//         there anyway; on EfficientNet-Lite0 that took the FP32 output to 15 dB SQNR, against
//         23 dB with the 3σ rule alone (docs/BENCHMARKS.md).
// Preconditions: bn_stats holds the BN folded after L1 (never one that sat before it). A pair
//   without activations_between takes them from the graph's path from L1 to L2.
// Formula (s = the pair's cumulative CLS scale; γ' = γ/s, β' = β/s):
//   c = max(0, β' − k·|γ'|) with a ReLU-like activation between, else c = β'   (k = 3)
//   a per-channel clip bound B (ReLU6 'bound' policy) caps c at B and becomes B − c;
//   b1 −= c;  b2 += Σ_i (Σ_k W2[:, i, k])·c[i]   (elementwise for a depthwise L2).
// Declined: no folded BN for L1, a transposed L2 (a constant input does not give a constant
//   output), statistics of the wrong size, a padding L2 or a zero pad between (see above), an
//   average pool between that counts its padding (same border error; max pools and averages of
//   real values only are exact: max(x − c) = max(x) − c, mean(x − c) = mean(x) − c), a ReLU6
//   with no per-channel bound to lower.
#include <algorithm>
#include <cmath>

#include "cls_chain.h"
#include "pass_util.h"
#include "prequant/passes.h"

namespace prequant {

HighBiasResult absorb_high_bias(Graph& graph, const std::vector<ClsSetResult>& sets,
                                const std::unordered_map<std::string, FoldedBnStats>& bn_stats,
                                double sigmas) {
  EqualizeOptions checked;
  checked.high_bias_sigmas = sigmas;
  check_options(checked);
  Transaction tx(graph);
  HighBiasResult result;
  for (const auto& set : sets)
    for (const auto& pair : set.pairs) {
      const auto i1 = graph.find(pair.layer1);
      const auto i2 = graph.find(pair.layer2);
      const auto stats = bn_stats.find(pair.layer1);
      auto decline = [&](std::string why) {
        result.declined.push_back({"absorb_high_bias", {pair.layer1, pair.layer2}, std::move(why)});
      };
      if (!i1 || !i2) {
        decline("a layer of the pair is not in the graph");
        continue;
      }
      Node& l1 = graph.nodes[*i1];
      Node& l2 = graph.nodes[*i2];
      const size_t channels = static_cast<size_t>(l1.out_channels());
      if (stats == bn_stats.end()) {
        decline("no batch norm was folded after '" + l1.name + "', so its output statistics are unknown");
        continue;
      }
      if (stats->second.gamma.size() != channels || stats->second.beta.size() != channels ||
          pair.scale.size() != channels) {
        decline("the batch norm statistics or scales for '" + l1.name + "' do not have " +
                std::to_string(channels) + " channels");
        continue;
      }
      if (l2.is_transposed()) {
        decline("'" + l2.name + "' is a transposed conv: a constant input does not give a constant output");
        continue;
      }
      if (l1.bias.empty()) {
        decline("'" + l1.name + "' has no bias to absorb");
        continue;
      }
      // What sits between: as the pair says, or, for a pair scaled elsewhere (a user's manual
      // sets), the graph's own path when layer2 is the next layer after layer1.
      std::vector<std::string> between = pair.activations_between;
      if (between.empty()) {
        std::string why;
        if (auto link = follow_to_next_layer(graph, *i1, Relu6Policy::Bound, why); link && link->next == *i2)
          for (size_t b : link->between) between.push_back(graph.nodes[b].name);
      }
      std::string blocked;
      for (const auto& name : between) {
        const auto b = graph.find(name);
        if (!b) continue;
        const Node& n = graph.nodes[*b];
        if (n.kind == OpKind::Clip && n.clip_max_per_channel.empty() && std::isfinite(n.clip_max))
          blocked = "ReLU6/Clip '" + n.name + "' between has no per-channel bound to lower with the bias; use "
                    "the 'bound' ReLU6 policy, or replace ReLU6 with ReLU first";
        if (n.kind == OpKind::Pool && n.has_padding)
          blocked = "pool '" + n.name + "' sits between and counts its padded zeros in its average: a shift "
                    "of its input is not a shift of its output at the borders, so the bias moved into '" +
                    l2.name + "' would be wrong there";
        if (n.kind == OpKind::GatedActivation)
          blocked = "gated activation '" + n.name + "' (x·g(x)) sits between: it is not shift-equivariant on any "
                    "range (x·g(x) − c ≠ (x − c)·g(x − c)), so no bias can move through it";
        if (n.kind == OpKind::ZeroPad)
          blocked = "zero padding '" + n.name + "' sits between: its border zeros would not be shifted, so "
                    "the bias moved into '" + l2.name + "' would be wrong at every border pixel";
      }
      if (l2.has_padding)
        blocked = "'" + l2.name + "' pads its input: its border taps read zeros, not the shifted "
                  "activation, so the moved bias would be wrong at every border pixel";
      if (!blocked.empty()) {
        decline(blocked);
        continue;
      }
      require_finite_layer(tx, l1);
      require_finite_layer(tx, l2);

      std::vector<Node*> clips;
      for (const auto& name : between)
        if (auto b = graph.find(name); b && graph.nodes[*b].kind == OpKind::Clip &&
                                       !graph.nodes[*b].clip_max_per_channel.empty())
          clips.push_back(&graph.nodes[*b]);

      std::vector<double> c(channels);
      for (size_t k = 0; k < channels; ++k) {
        const double gamma = stats->second.gamma[k] / pair.scale[k];
        const double beta = stats->second.beta[k] / pair.scale[k];
        c[k] = pair.relu_between ? std::max(0.0, beta - sigmas * std::abs(gamma)) : beta;
        for (Node* clip : clips) c[k] = std::min(c[k], clip->clip_max_per_channel[k]);
      }
      const auto moved = contract_in_channels_pending(tx, l2.weight, c);
      tx.protect(l1.bias);
      tx.protect(l2.bias);
      BiasAbsorption absorbed{l1.name, l2.name, c, ensure_bias(graph, l2)};
      detail::note_write();
      for (size_t k = 0; k < channels; ++k) l1.bias.set(k, l1.bias.get(k) - c[k]);
      detail::note_write();
      for (size_t o = 0; o < moved.size(); ++o) l2.bias.set(o, l2.bias.get(o) + moved[o]);
      for (Node* clip : clips)
        for (size_t k = 0; k < channels; ++k) clip->clip_max_per_channel[k] -= c[k];
      result.absorbed.push_back(std::move(absorbed));
    }
  tx.commit();
  return result;
}

}  // namespace prequant
