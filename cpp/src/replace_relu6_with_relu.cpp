// replace_relu6_with_relu.cpp — turn every ReLU6 (Clip(0, m), m finite) into ReLU.
//
// Before: Clip(0, 6) activations, which cross-layer scaling cannot scale across exactly.
// After:  Relu nodes (the FP32 output changes where activations exceeded m). This is AIMET's
//         policy; prequant's default keeps ReLU6 and bounds it per channel instead.
// Clips with min ≠ 0 stay, each with a reason.
#include <cmath>

#include "prequant/passes.h"
#include "transaction.h"

namespace prequant {

ActivationResult replace_relu6_with_relu(Graph& graph) {
  Transaction tx(graph);
  ActivationResult result;
  for (Node& n : graph.nodes) {
    if (n.removed || n.kind != OpKind::Clip) continue;
    if (n.clip_min != 0.0) {
      result.declined.push_back({"replace_relu6_with_relu", {n.name},
                                 "Clip min is " + std::to_string(n.clip_min) + ", not 0: not a ReLU6"});
      continue;
    }
    if (!std::isfinite(n.clip_max) && n.clip_max_per_channel.empty()) {
      n.kind = OpKind::Relu;  // Clip(0, inf) is a ReLU already
      continue;
    }
    n.kind = OpKind::Relu;
    n.clip_max_per_channel.clear();
    result.edits.push_back({n.name, ActivationEdit::Kind::ReplacedWithRelu, {}});
  }
  tx.commit();
  return result;
}

}  // namespace prequant
