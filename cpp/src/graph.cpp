// graph.cpp — Graph bookkeeping: name and tensor indices, lint, the arena.
#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "prequant/errors.h"
#include "prequant/graph.h"

namespace prequant {

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::Conv: return "Conv";
    case OpKind::Linear: return "Linear";
    case OpKind::BatchNorm: return "BatchNorm";
    case OpKind::Relu: return "Relu";
    case OpKind::Clip: return "Clip";
    case OpKind::LeakyRelu: return "LeakyRelu";
    case OpKind::PRelu: return "PRelu";
    case OpKind::Identity: return "Identity";
    case OpKind::ZeroPad: return "ZeroPad";
    case OpKind::Pool: return "Pool";
    case OpKind::Add: return "Add";
    case OpKind::Concat: return "Concat";
    case OpKind::Split: return "Split";
    case OpKind::Resize: return "Resize";
    case OpKind::Opaque: return "Opaque";
    case OpKind::GatedActivation: return "GatedActivation";
  }
  return "?";
}

const char* gate_name(Gate gate) {
  switch (gate) {
    case Gate::Sigmoid: return "sigmoid";
    case Gate::HardSigmoid: return "hard_sigmoid";
    case Gate::GeluErf: return "gelu_erf";
    case Gate::GeluTanh: return "gelu_tanh";
  }
  return "?";
}

double gate_value(Gate gate, double z) {
  switch (gate) {
    case Gate::Sigmoid: return 1.0 / (1.0 + std::exp(-z));
    case Gate::HardSigmoid: return std::clamp(z + 3.0, 0.0, 6.0) / 6.0;
    case Gate::GeluErf: return 0.5 * (1.0 + std::erf(z / std::sqrt(2.0)));
    case Gate::GeluTanh: return 0.5 * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
  }
  return 1.0;
}

bool Node::is_depthwise() const {
  if (!is_layer() || weight.tensor.empty()) return false;
  const int64_t g = groups();
  return g > 1 && g == in_channels() && g == out_channels();
}

Node& Graph::add(Node node) {
  if (node.name.empty()) node.name = "node_" + std::to_string(nodes.size());
  if (by_name_.count(node.name))
    throw GraphError("two nodes are named '" + node.name + "'; give every node a unique name",
                     node.name);
  const size_t index = nodes.size();
  by_name_[node.name] = index;
  for (const auto& t : node.outputs) producer_[t] = index;
  for (const auto& t : node.inputs) {
    auto& c = consumers_[t];
    if (c.empty() || c.back() != index) c.push_back(index);
  }
  nodes.push_back(std::move(node));
  return nodes.back();
}

std::optional<size_t> Graph::find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end() || nodes[it->second].removed) return std::nullopt;
  return it->second;
}

Node& Graph::at(const std::string& name) {
  auto index = find(name);
  if (!index) throw GraphError("no node named '" + name + "' in the graph", name);
  return nodes[*index];
}

std::optional<size_t> Graph::producer(const std::string& tensor) const {
  auto it = producer_.find(tensor);
  if (it == producer_.end()) return std::nullopt;
  return it->second;
}

const std::vector<size_t>& Graph::consumers(const std::string& tensor) const {
  static const std::vector<size_t> none;
  auto it = consumers_.find(tensor);
  return it == consumers_.end() ? none : it->second;
}

bool Graph::is_graph_output(const std::string& tensor) const {
  return std::find(graph_outputs.begin(), graph_outputs.end(), tensor) != graph_outputs.end();
}

void Graph::reindex() {
  by_name_.clear();
  producer_.clear();
  consumers_.clear();
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    by_name_[n.name] = i;
    if (n.removed) continue;
    for (const auto& t : n.outputs) producer_[t] = i;
    for (const auto& t : n.inputs) {
      auto& c = consumers_[t];
      if (c.empty() || c.back() != i) c.push_back(i);
    }
  }
}

namespace {

void check_vector(const Node& n, const TensorView& t, const char* role, int64_t channels) {
  if (t.empty()) return;
  if (t.numel() != channels)
    throw GraphError("node '" + n.name + "': " + role + " '" + t.name + "' has " +
                         std::to_string(t.numel()) + " values but the node has " +
                         std::to_string(channels) + " channels",
                     n.name);
}

// Add: ≥ 2 inputs; Concat: ≥ 1; Resize: 1; all one output. Split: a valid range per output.
void lint_channel_node(const Node& n) {
  const auto fail = [&](const std::string& what) {
    throw GraphError(std::string(op_kind_name(n.kind)) + " node '" + n.name + "' " + what, n.name);
  };
  switch (n.kind) {
    case OpKind::Add:
      if (n.inputs.size() < 2 || n.outputs.size() != 1) fail("needs two or more inputs and one output");
      break;
    case OpKind::Concat:
      if (n.inputs.empty() || n.outputs.size() != 1) fail("needs one or more inputs and one output");
      break;
    case OpKind::Resize:
      if (n.inputs.size() != 1 || n.outputs.size() != 1) fail("needs one data input and one output");
      break;
    case OpKind::GatedActivation:
      if (n.inputs.size() != 1 || n.outputs.size() != 1) fail("needs one data input and one output");
      for (double v : n.gate_scale)
        if (!(v > 0) || !std::isfinite(v)) fail("has a gate scale that is not positive and finite");
      break;
    case OpKind::Split:
      if (n.inputs.size() != 1 || n.outputs.empty()) fail("needs one data input and one or more outputs");
      if (n.slice_begin.size() != n.outputs.size() || n.slice_end.size() != n.outputs.size())
        fail("needs one channel range (slice_begin, slice_end) per output");
      for (size_t k = 0; k < n.outputs.size(); ++k)
        if (n.slice_begin[k] < 0 || n.slice_end[k] <= n.slice_begin[k])
          fail("has an empty or negative channel range for output '" + n.outputs[k] + "'");
      break;
    default: break;
  }
}

}  // namespace

void Graph::lint() const {
  std::unordered_set<std::string> names, produced(graph_inputs.begin(), graph_inputs.end());
  std::unordered_set<std::string> all_outputs;
  for (const Node& n : nodes)
    if (!n.removed) all_outputs.insert(n.outputs.begin(), n.outputs.end());
  for (const Node& n : nodes) {
    if (!names.insert(n.name).second)
      throw GraphError("two nodes are named '" + n.name + "'; give every node a unique name",
                       n.name);
    if (n.removed) continue;
    for (const auto& t : n.inputs)
      if (!produced.count(t) && all_outputs.count(t))
        throw GraphError("node '" + n.name + "' reads '" + t +
                             "' before the node that produces it; list nodes in topological order",
                         n.name);
    for (const auto& t : n.outputs)
      if (!produced.insert(t).second)
        throw GraphError("tensor '" + t + "' is produced twice (again by node '" + n.name +
                             "'); every tensor needs exactly one producer",
                         n.name);
    if (n.is_layer()) {
      if (n.weight.tensor.empty())
        throw GraphError("layer '" + n.name + "' has no weight", n.name);
      const auto& l = n.weight.layout;
      const int rank = static_cast<int>(n.weight.tensor.shape.size());
      if (l.out_axis < 0 || l.out_axis >= rank || l.in_axis < 0 || l.in_axis >= rank ||
          l.out_axis == l.in_axis)
        throw GraphError("layer '" + n.name + "': weight layout axes (out " +
                             std::to_string(l.out_axis) + ", in " + std::to_string(l.in_axis) +
                             ") do not fit a rank-" + std::to_string(rank) + " weight",
                         n.name);
      const int64_t per_group_axis = l.transposed ? l.out_axis : l.in_axis;
      const int64_t full_axis = l.transposed ? l.in_axis : l.out_axis;
      if (l.groups < 1 || n.weight.tensor.shape[full_axis] % l.groups != 0)
        throw GraphError("layer '" + n.name + "': " + std::to_string(l.groups) +
                             " groups do not divide the " +
                             std::to_string(n.weight.tensor.shape[full_axis]) + " channels of axis " +
                             std::to_string(full_axis),
                         n.name);
      (void)per_group_axis;
      check_vector(n, n.bias, "bias", n.out_channels());
    }
    if (n.kind == OpKind::BatchNorm) {
      const int64_t c = n.gamma.numel();
      if (n.gamma.empty() || n.beta.empty() || n.mean.empty() || n.var.empty())
        throw GraphError("batch norm '" + n.name + "' lacks one of gamma, beta, mean, var", n.name);
      check_vector(n, n.beta, "beta", c);
      check_vector(n, n.mean, "mean", c);
      check_vector(n, n.var, "var", c);
    }
    if ((n.is_layer() || n.kind == OpKind::BatchNorm) && (n.inputs.empty() || n.outputs.empty()))
      throw GraphError("node '" + n.name + "' needs one data input and one output", n.name);
    lint_channel_node(n);
  }
}

TensorView Graph::allocate(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  TensorView view;
  view.dtype = dtype;
  view.shape = std::move(shape);
  view.name = name;
  arena_.emplace_back(static_cast<size_t>(std::max<int64_t>(view.numel(), 1)), 0.0);
  view.data = arena_.back().data();
  return view;
}

}  // namespace prequant
