// find_cls_regions.cpp — discover equalization regions: the layer groups cross-layer scaling can
// equalize beyond straight chains.
//
// Before: a graph (batch norms folded).
// After:  unchanged; the result lists regions and, for every region that cannot be scaled, a
//         reason naming the node that stops it.
// Rules:
//   A region is a set of tensors whose channels are tied together: every channel c of every
//   tensor in it is one region channel j, and s[j] may divide them all at once. Tensors join
//   through per-channel positively homogeneous nodes (ReLU, LeakyReLU, PReLU, identity, zero
//   padding, max/average pooling and spatial means, resize, Clip(0, m) unless the ReLU6 policy is
//   'skip'), through Add (all inputs and the output share channels), Concat (input k is a slice of
//   the output) and Split (output k is a slice of the input), both forwards and backwards.
//   Every producer of a region tensor must be such a node or a conv/linear layer (a *source*:
//   its output channel c is divided by s[j]); every reader must be such a node or a layer
//   reading it as its data input (a *sink*: input channel c multiplied by s[j]). A graph input,
//   a graph output, an opaque or batch-norm reader or producer, a channel-count mismatch or a
//   shared weight declines the whole region, naming that node.
//   Region channels are found with union-find over tensor channels, so a residual stream
//   through several Adds, a Concat fed by a pooled copy of another source's output and a
//   Split feeding back into an Add all end as one region. A region that is a plain chain (one
//   source, one sink, single readers) is left to find_cls_sets, which also finds depthwise
//   triples; its declines are find_cls_sets' too.
//   Iterative worklist over tensors; no recursion on graph depth.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <unordered_set>

#include "cls_region.h"
#include "pass_util.h"

namespace prequant {

namespace {

bool is_unary_channel_node(OpKind k) {
  switch (k) {
    case OpKind::Relu: case OpKind::Clip: case OpKind::LeakyRelu: case OpKind::PRelu:
    case OpKind::Identity: case OpKind::ZeroPad: case OpKind::Pool: case OpKind::Resize:
    case OpKind::GatedActivation:  // passes only with gated_activations (Grower::handle_node)
      return true;
    default:
      return false;
  }
}

bool is_channel_node(OpKind k) {
  return is_unary_channel_node(k) || k == OpKind::Add || k == OpKind::Concat || k == OpKind::Split;
}

std::string label(const Node& n) {
  return "'" + n.name + "' (" + (n.op_type.empty() ? op_kind_name(n.kind) : n.op_type) + ")";
}

class Grower {
 public:
  Grower(const Graph& g, const std::unordered_map<std::string, int64_t>& counts, Relu6Policy relu6, bool gated)
      : g_(g), counts_(counts), relu6_(relu6), gated_(gated) {}

  bool run(size_t start);
  PlannedRegion finish();

  std::string why, blocker;
  std::set<size_t> sources, sinks, nodes;
  bool chain = true;

 private:
  const Graph& g_;
  const std::unordered_map<std::string, int64_t>& counts_;
  Relu6Policy relu6_;
  bool gated_;
  std::vector<int64_t> parent_;  // union-find over region channel ids
  std::unordered_map<std::string, std::vector<int64_t>> ids_;
  std::vector<std::string> work_;

  bool fail(const std::string& reason, const std::string& node) {
    why = reason;
    blocker = node;
    return false;
  }
  int64_t root(int64_t x) {
    while (parent_[x] != x) x = parent_[x] = parent_[parent_[x]];
    return x;
  }
  std::string origin(const std::string& t) const {
    const auto p = g_.producer(t);
    if (!p) return "it is a graph input";
    return "it is produced by " + label(g_.nodes[*p]);
  }
  // Gives tensor t fresh region channels the first time it is met, and queues it.
  bool assign(const std::string& t) {
    if (ids_.count(t)) return true;
    const auto it = counts_.find(t);
    const auto p = g_.producer(t);
    if ((it == counts_.end() || it->second < 0) && p && !is_channel_node(g_.nodes[*p].kind) &&
        !g_.nodes[*p].is_layer()) {
      const Node& n = g_.nodes[*p];
      return fail("'" + t + "' is produced by " + label(n) + ", which is not known to be positively "
                      "homogeneous per channel" + (n.opaque_reason.empty() ? "" : " (" + n.opaque_reason + ")"),
                  n.name);
    }
    if (it == counts_.end() || it->second < 0)
      return fail("the channel count of '" + t + "' is unknown (" + origin(t) +
                      "), so its channels cannot be matched across the region",
                  g_.producer(t) ? g_.nodes[*g_.producer(t)].name : t);
    auto& v = ids_[t];
    v.resize(static_cast<size_t>(it->second));
    for (auto& id : v) {
      id = static_cast<int64_t>(parent_.size());
      parent_.push_back(id);
    }
    work_.push_back(t);
    return true;
  }
  // Channels [a0, a0 + n) of a are channels [b0, b0 + n) of b.
  void unify(const std::string& a, size_t a0, const std::string& b, size_t b0, size_t n) {
    const auto& va = ids_.at(a);
    const auto& vb = ids_.at(b);
    for (size_t c = 0; c < n; ++c) {
      const int64_t x = root(va[a0 + c]), y = root(vb[b0 + c]);
      if (x != y) parent_[std::max(x, y)] = std::min(x, y);
    }
  }
  size_t size(const std::string& t) const { return ids_.at(t).size(); }
  bool same_size(const Node& n, const std::string& a, const std::string& b) {
    if (size(a) == size(b)) return true;
    return fail(label(n) + " joins '" + a + "' (" + std::to_string(size(a)) + " channels) and '" + b +
                    "' (" + std::to_string(size(b)) + " channels); a region needs them channel for channel",
                n.name);
  }
  bool handle_node(size_t index);
  bool visit(const std::string& t);
  bool check_layer(const Node& layer);
};

bool Grower::check_layer(const Node& layer) {
  if (const Node* s = weight_sharer(g_, layer); s)
    return fail("'" + layer.name + "' shares its weight with '" + s->name + "'; run unroll_shared_weights first",
                layer.name);
  return true;
}

// Ties all data tensors of a channel node together as the node relates them.
bool Grower::handle_node(size_t index) {
  if (!nodes.insert(index).second) return true;
  const Node& n = g_.nodes[index];
  for (const auto& t : n.inputs)
    if (!assign(t)) return false;
  for (const auto& t : n.outputs)
    if (!assign(t)) return false;
  if (is_unary_channel_node(n.kind)) {
    if (n.inputs.size() != 1 || n.outputs.size() != 1)
      return fail(label(n) + " has " + std::to_string(n.inputs.size()) + " inputs and " +
                      std::to_string(n.outputs.size()) + " outputs; a per-channel node has one of each",
                  n.name);
    if (n.kind == OpKind::Clip) {
      if (n.clip_min != 0.0)
        return fail("Clip " + label(n) + " has min " + std::to_string(n.clip_min) +
                        " ≠ 0, so it is not positively homogeneous",
                    n.name);
      if (relu6_ == Relu6Policy::Skip && (std::isfinite(n.clip_max) || !n.clip_max_per_channel.empty()))
        return fail("ReLU6/Clip " + label(n) + " is in the region and the ReLU6 policy is 'skip' "
                        "(use 'bound' to keep FP32 output exact, or 'replace')",
                    n.name);
      if (!n.clip_max_per_channel.empty() && n.clip_max_per_channel.size() != size(n.inputs[0]))
        return fail("Clip " + label(n) + " has " + std::to_string(n.clip_max_per_channel.size()) +
                        " per-channel bounds but its input has " + std::to_string(size(n.inputs[0])) + " channels",
                    n.name);
    }
    if (n.kind == OpKind::GatedActivation && !gated_)
      return fail(label(n) + " is in the region and is x·g(x), not positively homogeneous; scaling through it "
                      "is exact with gated_activations=True (--gated-activations)",
                  n.name);
    if (n.kind == OpKind::GatedActivation && !n.gate_scale.empty() && n.gate_scale.size() != size(n.inputs[0]))
      return fail(label(n) + " has " + std::to_string(n.gate_scale.size()) + " gate scales but its input has " +
                      std::to_string(size(n.inputs[0])) + " channels",
                  n.name);
    if (n.kind == OpKind::PRelu && n.slope.numel() != 1 && n.slope.numel() != static_cast<int64_t>(size(n.inputs[0])))
      return fail("PReLU " + label(n) + " has " + std::to_string(n.slope.numel()) + " slopes for " +
                      std::to_string(size(n.inputs[0])) + " channels",
                  n.name);
    if (!same_size(n, n.inputs[0], n.outputs[0])) return false;
    unify(n.inputs[0], 0, n.outputs[0], 0, size(n.inputs[0]));
    return true;
  }
  chain = false;
  if (n.kind == OpKind::Add) {
    for (const auto& t : n.inputs) {
      if (!same_size(n, t, n.outputs[0])) return false;
      unify(t, 0, n.outputs[0], 0, size(t));
    }
    return true;
  }
  if (n.kind == OpKind::Concat) {
    size_t offset = 0;
    for (const auto& t : n.inputs) offset += size(t);
    if (offset != size(n.outputs[0]))
      return fail(label(n) + " concatenates " + std::to_string(offset) + " channels into '" + n.outputs[0] +
                      "', which has " + std::to_string(size(n.outputs[0])),
                  n.name);
    offset = 0;
    for (const auto& t : n.inputs) {
      unify(t, 0, n.outputs[0], offset, size(t));
      offset += size(t);
    }
    return true;
  }
  // Split
  const size_t c = size(n.inputs[0]);
  for (size_t k = 0; k < n.outputs.size(); ++k) {
    const size_t b = static_cast<size_t>(n.slice_begin[k]);
    const size_t e = std::min(c, static_cast<size_t>(n.slice_end[k]));
    if (b >= e || size(n.outputs[k]) != e - b)
      return fail(label(n) + ": output '" + n.outputs[k] + "' has " + std::to_string(size(n.outputs[k])) +
                      " channels, not the slice [" + std::to_string(b) + ", " + std::to_string(e) + ") of '" +
                      n.inputs[0] + "'",
                  n.name);
    unify(n.inputs[0], b, n.outputs[k], 0, e - b);
  }
  return true;
}

// Looks at the producer and every reader of region tensor t.
bool Grower::visit(const std::string& t) {
  if (const auto p = g_.producer(t); !p) {
    return fail("'" + t + "' is a graph input; its channels cannot be scaled", t);
  } else if (g_.nodes[*p].is_layer()) {
    const Node& l = g_.nodes[*p];
    if (l.outputs.size() != 1 || l.outputs[0] != t)
      return fail(label(l) + " has several outputs", l.name);
    if (!check_layer(l)) return false;
    sources.insert(*p);
  } else if (is_channel_node(g_.nodes[*p].kind)) {
    if (!handle_node(*p)) return false;
  } else {
    const Node& n = g_.nodes[*p];
    return fail("'" + t + "' is produced by " + label(n) +
                    (n.kind == OpKind::BatchNorm ? ", a batch norm; fold batch norms first"
                                                 : ", which is not known to be positively homogeneous per channel") +
                    (n.opaque_reason.empty() ? "" : " (" + n.opaque_reason + ")"),
                n.name);
  }
  if (g_.is_graph_output(t)) return fail("'" + t + "' is a graph output; scaling would change the model's output", t);
  const auto& readers = g_.consumers(t);
  if (readers.size() > 1) chain = false;
  for (size_t u : readers) {
    const Node& n = g_.nodes[u];
    if (n.is_layer()) {
      if (n.inputs.empty() || n.inputs[0] != t)
        return fail(label(n) + " reads '" + t + "' as a parameter, not as its data input", n.name);
      if (n.in_channels() != static_cast<int64_t>(size(t)))
        return fail("'" + t + "' has " + std::to_string(size(t)) + " channels but " + label(n) + " takes " +
                        std::to_string(n.in_channels()),
                    n.name);
      if (!check_layer(n)) return false;
      sinks.insert(u);
    } else if (is_channel_node(n.kind)) {
      if (!handle_node(u)) return false;
    } else {
      return fail(label(n) + " reads '" + t + "' and is " +
                      (n.kind == OpKind::BatchNorm ? "a batch norm (fold batch norms first)"
                                                   : "not known to be positively homogeneous per channel") +
                      (n.opaque_reason.empty() ? "" : " (" + n.opaque_reason + ")"),
                  n.name);
    }
  }
  return true;
}

bool Grower::run(size_t start) {
  const Node& l = g_.nodes[start];
  if (!assign(l.outputs.at(0))) return false;
  while (!work_.empty()) {
    const std::string t = std::move(work_.back());
    work_.pop_back();
    if (!visit(t)) return false;
  }
  if (sinks.empty()) return fail("no layer reads the output of '" + l.name + "'", l.name);
  if (sources.size() != 1 || sinks.size() != 1 || *sources.begin() == *sinks.begin()) chain = false;
  return true;
}

PlannedRegion Grower::finish() {
  PlannedRegion r;
  r.sources.assign(sources.begin(), sources.end());
  r.sinks.assign(sinks.begin(), sinks.end());
  r.nodes.assign(nodes.begin(), nodes.end());
  for (size_t i : r.nodes)
    if (g_.nodes[i].kind == OpKind::Clip) r.clips.push_back(i);
    else if (g_.nodes[i].kind == OpKind::GatedActivation) r.gates.push_back(i);
  r.chain = chain;
  std::unordered_map<int64_t, int64_t> compact;  // root → 0..channels-1, in first-seen order
  // Number region channels in the order of the first source's output channels.
  std::vector<std::string> order, rest;
  for (size_t s : r.sources) order.push_back(g_.nodes[s].outputs[0]);
  for (auto& [t, v] : ids_) rest.push_back(t);
  std::sort(rest.begin(), rest.end());
  order.insert(order.end(), rest.begin(), rest.end());
  for (const auto& t : order)
    for (int64_t id : ids_.at(t)) compact.emplace(root(id), static_cast<int64_t>(compact.size()));
  r.channels = static_cast<int64_t>(compact.size());
  for (auto& [t, v] : ids_) {
    std::vector<int64_t> m(v.size());
    for (size_t c = 0; c < v.size(); ++c) m[c] = compact.at(root(v[c]));
    r.channel_of.emplace(t, std::move(m));
  }
  return r;
}

}  // namespace

std::unordered_map<std::string, int64_t> tensor_channel_counts(const Graph& graph) {
  std::unordered_map<std::string, int64_t> count;
  auto of = [&](const std::string& t) {
    const auto it = count.find(t);
    return it == count.end() ? int64_t{-1} : it->second;
  };
  for (const Node& n : graph.nodes) {
    if (n.removed) continue;
    if (n.is_layer()) {
      for (const auto& t : n.outputs) count[t] = n.out_channels();
    } else if (n.kind == OpKind::BatchNorm) {
      for (const auto& t : n.outputs) count[t] = n.gamma.numel();
    } else if (is_unary_channel_node(n.kind) || n.kind == OpKind::Add) {
      int64_t c = -1;
      for (const auto& t : n.inputs) c = std::max(c, of(t));
      for (const auto& t : n.outputs) count[t] = c;
    } else if (n.kind == OpKind::Concat) {
      int64_t c = 0;
      for (const auto& t : n.inputs) c = of(t) < 0 || c < 0 ? -1 : c + of(t);
      for (const auto& t : n.outputs) count[t] = c;
    } else if (n.kind == OpKind::Split && n.inputs.size() == 1) {
      const int64_t c = of(n.inputs[0]);
      for (size_t k = 0; k < n.outputs.size() && k < n.slice_begin.size() && k < n.slice_end.size(); ++k)
        count[n.outputs[k]] = c < 0 ? -1 : std::max<int64_t>(0, std::min(c, n.slice_end[k]) - n.slice_begin[k]);
    }
  }
  return count;
}

std::optional<PlannedRegion> grow_region(const Graph& graph, size_t start,
                                         const std::unordered_map<std::string, int64_t>& counts,
                                         Relu6Policy relu6, std::string& why, std::string& blocker,
                                         PlannedRegion& partial, bool gated_activations) {
  Grower grower(graph, counts, relu6, gated_activations);
  if (grower.run(start)) return grower.finish();
  why = grower.why;
  blocker = grower.blocker;
  partial = PlannedRegion{};
  partial.sources.assign(grower.sources.begin(), grower.sources.end());
  if (std::find(partial.sources.begin(), partial.sources.end(), start) == partial.sources.end())
    partial.sources.insert(partial.sources.begin(), start);
  partial.chain = grower.chain && grower.sources.size() <= 1 && grower.sinks.size() <= 1;
  return std::nullopt;
}

ClsRegionCandidates find_cls_regions(const Graph& graph, Relu6Policy relu6, bool gated_activations) {
  ClsRegionCandidates result;
  const auto counts = tensor_channel_counts(graph);
  std::vector<bool> claimed(graph.nodes.size(), false);
  std::unordered_set<std::string> reported;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& l = graph.nodes[i];
    if (l.removed || !l.is_layer() || claimed[i] || l.outputs.size() != 1) continue;
    std::string why, blocker;
    PlannedRegion partial;
    const auto region = grow_region(graph, i, counts, relu6, why, blocker, partial, gated_activations);
    const PlannedRegion& seen = region ? *region : partial;
    for (size_t s : seen.sources) claimed[s] = true;
    claimed[i] = true;
    if (region && region->chain) continue;
    ClsRegionSpec spec;
    for (size_t s : seen.sources) spec.sources.push_back(graph.nodes[s].name);
    if (region) {
      for (size_t s : region->sinks) spec.sinks.push_back(graph.nodes[s].name);
      result.regions.push_back(std::move(spec));
      continue;
    }
    // A chain's decline is find_cls_sets'; a region's is reported once per reason.
    if (partial.chain || !reported.insert(why).second) continue;
    std::vector<std::string> names = spec.sources;
    if (!blocker.empty() && std::find(names.begin(), names.end(), blocker) == names.end()) names.push_back(blocker);
    std::string who;
    for (size_t k = 0; k < spec.sources.size(); ++k)
      who += (k ? (k + 1 == spec.sources.size() ? " and '" : ", '") : "'") + spec.sources[k] + "'";
    result.declined.push_back({"scale_cls_regions", names, "the region of " + who + " cannot be scaled: " + why});
  }
  return result;
}

}  // namespace prequant
