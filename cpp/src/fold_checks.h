// fold_checks.h (internal) — when a batch norm can be folded into a layer, shared by
// discovery (find_batch_norm_folds) and validation of user-given pairs (fold_given_batch_norms).
#pragma once

#include <string>

#include "prequant/graph.h"
#include "prequant/results.h"

namespace prequant {

// Empty if `bn` can be folded into `layer` in `direction` exactly; else why not.
std::string why_not_foldable(const Graph& graph, size_t layer, size_t bn, FoldDirection direction);

}  // namespace prequant
