// fold_batch_norms.cpp — fold batch norms into the neighbouring conv or linear layer.
//
// Before: layer → BN (conv→BN), or BN → layer (BN→conv).
// After:  the layer alone computes the same function; the BN node is removed (the layer takes
//         over the BN's output tensor, or reads the BN's input). A layer without bias gets one.
// Preconditions: find_batch_norm_folds' rules (exactness); finite parameters; var + eps > 0.
// Formula (σ = sqrt(var + eps), s = γ/σ, per BN channel):
//   conv→BN  W'[o] = W[o]·s[o];        b'[o] = β[o] + (b[o] − μ[o])·s[o]
//   BN→conv  W'[o,i] = W[o,i]·s[i];    b'[o] = b[o] + Σ_i (Σ_k W[o,i,k])·(β[i] − μ[i]·s[i])
// Sums accumulate in double; weights keep their dtype. The weight factors are deferred to the
// transaction's commit (see transaction.h), so a later pass in the same pipeline reads the weight
// as folded and every weight is written once.
#include <cmath>

#include "fold_checks.h"
#include "pass_util.h"
#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

namespace {

std::vector<double> bn_scale(const Node& bn) {
  std::vector<double> s(static_cast<size_t>(bn.gamma.numel()));
  for (size_t c = 0; c < s.size(); ++c)
    s[c] = bn.gamma.get(c) / std::sqrt(bn.var.get(c) + bn.eps);
  return s;
}

void fold_conv_then_bn(Transaction& tx, Graph& graph, Node& layer, Node& bn, FoldedPair& pair) {
  const auto s = bn_scale(bn);
  pair.bias_added = ensure_bias(graph, layer);
  detail::note_write();
  for (size_t o = 0; o < s.size(); ++o)
    layer.bias.set(o, bn.beta.get(o) + (layer.bias.get(o) - bn.mean.get(o)) * s[o]);
  tx.defer_scale(layer.weight, s, {});
  pair.bn_stats = {bn.gamma.to_doubles(), bn.beta.to_doubles()};
  layer.outputs[0] = bn.outputs[0];
  bn.removed = true;
}

void fold_bn_then_conv(Transaction& tx, Graph& graph, Node& layer, Node& bn, FoldedPair& pair) {
  const auto s = bn_scale(bn);
  std::vector<double> shift(s.size());
  for (size_t i = 0; i < s.size(); ++i) shift[i] = bn.beta.get(i) - bn.mean.get(i) * s[i];
  const auto added = contract_in_channels_pending(tx, layer.weight, shift);  // W before this fold's scaling
  pair.bias_added = ensure_bias(graph, layer);
  detail::note_write();
  for (size_t o = 0; o < added.size(); ++o) layer.bias.set(o, layer.bias.get(o) + added[o]);
  tx.defer_scale(layer.weight, {}, s);
  layer.inputs[0] = bn.inputs[0];
  bn.removed = true;
}

FoldResult apply_folds(Graph& graph, std::vector<FoldRequest> requests, std::vector<Declined> declined) {
  Transaction tx(graph);
  // Validate everything before the first write.
  for (const auto& r : requests) {
    require_valid_batch_norm(tx, graph.at(r.bn));
    require_finite_layer(tx, graph.at(r.layer));
  }
  FoldResult result;
  result.declined = std::move(declined);
  for (const auto& r : requests) {
    Node& layer = graph.at(r.layer);
    Node& bn = graph.at(r.bn);
    protect_node(tx, layer);
    FoldedPair pair{r, false, {}};
    if (r.direction == FoldDirection::ConvThenBn)
      fold_conv_then_bn(tx, graph, layer, bn, pair);
    else
      fold_bn_then_conv(tx, graph, layer, bn, pair);
    result.folded.push_back(std::move(pair));
  }
  graph.reindex();
  tx.commit();
  return result;
}

}  // namespace

FoldResult fold_batch_norms(Graph& graph) {
  FoldResult plan = find_batch_norm_folds(graph);
  std::vector<FoldRequest> requests;
  for (const auto& p : plan.folded) requests.push_back(p.request);
  return apply_folds(graph, std::move(requests), std::move(plan.declined));
}

FoldResult fold_given_batch_norms(Graph& graph, const std::vector<FoldRequest>& requests) {
  std::unordered_map<std::string, std::string> bn_used;
  for (const auto& r : requests) {
    const auto layer = graph.find(r.layer);
    const auto bn = graph.find(r.bn);
    if (!layer) throw InvalidRequestError("fold pair names layer '" + r.layer + "', which is not in the graph (or was removed)", r.layer);
    if (!bn) throw InvalidRequestError("fold pair names batch norm '" + r.bn + "', which is not in the graph (or was already folded)", r.bn);
    if (!bn_used.emplace(r.bn, r.layer).second)
      throw InvalidRequestError("batch norm '" + r.bn + "' appears in two fold pairs; fold it once", r.bn);
    const std::string why = why_not_foldable(graph, *layer, *bn, r.direction);
    if (!why.empty())
      throw InvalidRequestError("cannot fold '" + r.bn + "' into '" + r.layer + "' (" +
                                    fold_direction_name(r.direction) + "): " + why,
                                r.bn);
  }
  return apply_folds(graph, requests, {});
}

}  // namespace prequant
