// unroll_shared_weights.cpp — give every layer its own copy of a weight or bias that several
// layers share.
//
// Before: layers A and B point at the same weight (an ONNX initializer read by two Convs,
//         a module called twice). Folding a BN into A would silently change B.
// After:  the first layer keeps the original tensor; each later one points at a copy in the
//         graph's arena, named "<original>__<layer>". The result lists every copy so a front end
//         can create the new parameters.
// Preconditions: none. Formula: none (a copy).
#include <cstring>
#include <unordered_map>

#include "pass_util.h"
#include "prequant/passes.h"

namespace prequant {

UnrollResult unroll_shared_weights(Graph& graph) {
  Transaction tx(graph);
  UnrollResult result;
  std::unordered_map<const void*, size_t> first_user;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    Node& n = graph.nodes[i];
    if (n.removed || !n.is_layer()) continue;
    for (TensorView* t : {&n.weight.tensor, &n.bias}) {
      if (t->empty()) continue;
      if (first_user.emplace(t->data, i).second) continue;
      TensorView copy = graph.allocate(t->name + "__" + n.name, t->dtype, t->shape);
      std::memcpy(copy.data, t->data, static_cast<size_t>(t->bytes()));
      result.copies.push_back({n.name, t->name, copy.name});
      *t = copy;
    }
  }
  tx.commit();
  return result;
}

}  // namespace prequant
