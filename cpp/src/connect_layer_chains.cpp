// connect_layer_chains.cpp — the graph of a user's CLS sets when no model is given (AIMET's
// manual CrossLayerScaling.scale_cls_sets / HighBiasFold.bias_fold): only the given layers, each
// chain's layers connected in order. Adjacency is then the caller's promise, as in AIMET.
//
// Before: layer nodes as a front end added them, each reading a tensor of its own (no node reads
//         another node's output).
// After:  in each chain [l0, l1, ...] node l(k+1) reads l(k)'s output; the nodes in topological
//         order (a layer after the one feeding it, otherwise in the order they were added); graph
//         inputs are the inputs of the layers nothing feeds, graph outputs the outputs of the
//         layers that feed nothing. A chain of one layer, or a link given twice, adds nothing.
// Preconditions: every node has one input and one output.
// Refused (InvalidRequestError naming the layer; the graph unchanged): a name that is not a
//   node; a layer that would feed two different layers, or be fed by two (a layer's output is
//   scaled for one consumer only); chains that connect their layers in a cycle.
#include <deque>
#include <optional>

#include "prequant/errors.h"
#include "prequant/passes.h"

namespace prequant {

namespace {

std::string describe(const Node& n) {
  return (n.op_type.empty() ? std::string(op_kind_name(n.kind)) : n.op_type) + " '" + n.name + "'";
}

}  // namespace

void connect_layer_chains(Graph& graph, const std::vector<std::vector<std::string>>& chains) {
  const size_t count = graph.nodes.size();
  for (const Node& n : graph.nodes)
    if (n.inputs.size() != 1 || n.outputs.size() != 1)
      throw InvalidRequestError(describe(n) + " must read one tensor and write one to be chained", n.name);
  std::vector<std::optional<size_t>> successor(count), predecessor(count);
  for (const auto& chain : chains) {
    std::optional<size_t> previous;
    for (const auto& name : chain) {
      const auto i = graph.find(name);
      if (!i)
        throw InvalidRequestError("'" + name + "' is not a layer of the given CLS sets' graph", name);
      if (previous) {
        const size_t a = *previous, b = *i;
        if (successor[a].value_or(b) != b)
          throw InvalidRequestError(describe(graph.nodes[a]) +
                                        " feeds two different layers in the given CLS sets; a layer's output can be "
                                        "scaled for one consumer only",
                                    graph.nodes[a].name);
        if (predecessor[b].value_or(a) != a)
          throw InvalidRequestError(describe(graph.nodes[b]) +
                                        " is fed by two different layers in the given CLS sets; a layer's output can "
                                        "be scaled for one consumer only",
                                    graph.nodes[b].name);
        successor[a] = b;
        predecessor[b] = a;
      }
      previous = *i;
    }
  }
  // Kahn's order over chains (every node has at most one successor): heads in the order added.
  std::vector<size_t> order;
  std::deque<size_t> ready;
  for (size_t i = 0; i < count; ++i)
    if (!predecessor[i]) ready.push_back(i);
  while (!ready.empty()) {
    const size_t i = ready.front();
    ready.pop_front();
    order.push_back(i);
    if (successor[i]) ready.push_back(*successor[i]);
  }
  if (order.size() != count)
    throw InvalidRequestError("the given CLS sets connect their layers in a cycle");

  std::vector<std::string> output_of(count);
  for (size_t i = 0; i < count; ++i) output_of[i] = graph.nodes[i].outputs[0];
  std::vector<Node> nodes;
  nodes.reserve(count);
  graph.graph_inputs.clear();
  graph.graph_outputs.clear();
  for (size_t i : order) {
    Node n = std::move(graph.nodes[i]);
    if (predecessor[i])
      n.inputs[0] = output_of[*predecessor[i]];
    else
      graph.graph_inputs.push_back(n.inputs[0]);
    if (!successor[i]) graph.graph_outputs.push_back(n.outputs[0]);
    nodes.push_back(std::move(n));
  }
  graph.nodes = std::move(nodes);
  graph.reindex();
}

}  // namespace prequant
