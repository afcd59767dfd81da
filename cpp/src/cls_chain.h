// cls_chain.h (internal) — the path from one layer to the next that cross-layer scaling may
// scale across, shared by find_cls_sets and the validation in scale_cls_sets.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "prequant/graph.h"
#include "prequant/passes.h"

namespace prequant {

struct ClsLink {
  size_t next = 0;             // the next layer
  std::vector<size_t> between; // activations, padding, pooling between, in order
  bool relu_like = false;      // a ReLU, LeakyReLU, PReLU or clip sits between
  bool gated = false;          // a gated activation (SiLU, HardSwish, GELU) sits between
};

// Follows the output of `layer` through positively homogeneous single-consumer nodes to the
// next conv/linear layer. On failure returns nullopt and sets `why`.
// Gated activations pass only with `gated_activations`.
std::optional<ClsLink> follow_to_next_layer(const Graph& graph, size_t layer, Relu6Policy relu6,
                                            std::string& why, bool gated_activations = false);

}  // namespace prequant
