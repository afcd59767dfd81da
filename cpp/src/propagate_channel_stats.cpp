// propagate_channel_stats.cpp — the per-channel mean (and, while the tensor is Gaussian, the
// standard deviation) of every activation tensor, carried forward from the batch norms through
// the channel-wise nodes, data-free. Analytic bias correction needs E[x] of each layer's input.
//
// Before: a graph; `folded` holds the statistics of each BN folded after a layer, as the layer's
//         output is now (after CLS and high-bias absorption; track_folded_bn_stats).
// After:  the graph is unchanged; each tensor is either known (mean, std if Gaussian, the nodes
//         the statistics start at and pass through) or unknown with a reason naming the node
//         that stops it. One forward sweep in topological order: no recursion on depth.
// Model and formulas, per channel c:
//   BN (in the graph, or folded after a layer): x ~ N(β, |γ|) — the DFQ assumption that the BN's
//     input follows its running statistics (a negative γ flips x̂, not the distribution).
//   ReLU / clip [lo, hi] (or a per-channel bound): E[x] = E[clip(z, lo, hi)], the clipped-normal
//     mean (clipped_normal_mean); leaky ReLU / PReLU with slope a: E[relu(z)] − a·E[relu(−z)].
//     Needs a Gaussian z; the output is not Gaussian (only its mean is kept).
//   Add / Sum: E[Σ a] = Σ E[a]. If every input is Gaussian the sum is too, with
//     var = Σ var — ASSUMING THE INPUTS ARE INDEPENDENT (a residual stream and the block output
//     added to it are correlated in reality; only a later activation's mean depends on this).
//   Concat on channels: input k's statistics become channels [off_k, off_k + C_k). Split/Slice:
//     output k is channels [begin_k, min(end_k, C)).
//   Average pooling / spatial mean (no counted padding): mean kept; not Gaussian any more as far
//     as the engine knows (the variance of an average depends on how pixels correlate).
//   Resize: mean kept (nearest and linear weights sum to 1); the variance is not (linear mixes
//     pixels, and the IR does not record the mode), so not Gaussian.
//   Identity (also a channel-keeping Flatten/Reshape) and zero Pad: passed through. A zero pad
//     lowers the mean at the border pixels only; ignored, as DFQ ignores a conv's own padding.
// Unknown, with the node named: graph inputs and constants, a layer with no BN folded after it,
//   max pooling (it raises the mean by an amount that depends on the pixels' correlation),
//   a pool the front end did not say is max or average, an average pool counting zero padding,
//   an activation reading a non-Gaussian tensor, a gated activation (x·g(x)), opaque nodes,
//   channel counts that disagree.
#include "propagate_channel_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "prequant/passes.h"

namespace prequant {

namespace {

void merge_unique(std::vector<std::string>& into, const std::vector<std::string>& add) {
  for (const auto& s : add)
    if (std::find(into.begin(), into.end(), s) == into.end()) into.push_back(s);
}

std::vector<size_t> merge_sorted(const std::vector<size_t>& a, const std::vector<size_t>& b) {
  std::vector<size_t> out;
  out.reserve(a.size() + b.size());
  std::set_union(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

// One more input of an Add or Concat: the result stays Gaussian only if every input is (the first
// non-Gaussian input's reason is kept), and it remembers every input's sources and path.
void join_input(ChannelStats& s, const ChannelStats& in) {
  if (!in.gaussian && s.gaussian) {
    s.gaussian = false;
    s.not_gaussian = in.not_gaussian;
  }
  merge_unique(s.from, in.from);
  s.between = merge_sorted(s.between, in.between);
}

ChannelStats from_batch_norm(const std::string& name, const std::vector<double>& gamma,
                             const std::vector<double>& beta) {
  ChannelStats s;
  s.mean = beta;
  for (double g : gamma) s.std.push_back(std::abs(g));
  s.gaussian = true;
  s.from = {name};
  return s;
}

// E[act(z)] per channel for z ~ N(in.mean, in.std); the activation's parameters already checked.
std::vector<double> activation_mean(const Node& a, const ChannelStats& in) {
  const size_t c = in.mean.size();
  const double inf = std::numeric_limits<double>::infinity();
  const auto slope = a.kind == OpKind::PRelu ? a.slope.to_doubles() : std::vector<double>{};
  std::vector<double> e(c);
  for (size_t k = 0; k < c; ++k) {
    const double m = in.mean[k], s = in.std[k];
    if (a.kind == OpKind::Relu) {
      e[k] = clipped_normal_mean(m, s, 0.0, inf);
    } else if (a.kind == OpKind::Clip) {
      const double hi = a.clip_max_per_channel.empty() ? a.clip_max : a.clip_max_per_channel[k];
      e[k] = clipped_normal_mean(m, s, a.clip_min, hi);
    } else {
      const double alpha = a.kind == OpKind::LeakyRelu ? a.alpha : slope[slope.size() == 1 ? 0 : k];
      e[k] = clipped_normal_mean(m, s, 0.0, inf) - alpha * clipped_normal_mean(-m, s, 0.0, inf);
    }
  }
  return e;
}

class Propagation {
 public:
  Propagation(const Graph& graph, const std::unordered_map<std::string, FoldedBnStats>& folded)
      : graph_(graph), folded_(folded) {}

  ChannelStatsMap run() {
    for (size_t idx = 0; idx < graph_.nodes.size(); ++idx) {
      const Node& n = graph_.nodes[idx];
      if (!n.removed) visit(idx, n);
    }
    return std::move(map_);
  }

 private:
  void unknown(const Node& n, const std::string& why) {
    for (const auto& t : n.outputs) map_.unknown[t] = why;
  }
  void known(const Node& n, const ChannelStats& s) {
    for (const auto& t : n.outputs) map_.known[t] = s;
  }
  // The statistics of input `k`, or null after recording `n`'s outputs as unknown.
  const ChannelStats* input(const Node& n, size_t k) {
    if (k >= n.inputs.size()) {
      unknown(n, "'" + n.name + "' has no input");
      return nullptr;
    }
    const auto it = map_.known.find(n.inputs[k]);
    if (it != map_.known.end()) return &it->second;
    unknown(n, why_unknown(graph_, map_, n.inputs[k]));
    return nullptr;
  }
  // `in` passed through node idx: same origins, one more node between.
  static ChannelStats passed(const ChannelStats& in, size_t idx) {
    ChannelStats s = in;
    s.between = merge_sorted(in.between, {idx});
    return s;
  }
  static void lose_gaussian(ChannelStats& s, std::string why) {
    if (!s.gaussian) return;
    s.gaussian = false;
    s.std.clear();
    s.not_gaussian = std::move(why);
  }

  void visit(size_t idx, const Node& n) {
    switch (n.kind) {
      case OpKind::Conv:
      case OpKind::Linear: {
        const auto f = folded_.find(n.name);
        if (f == folded_.end()) {
          unknown(n, "no batch norm follows '" + n.name + "' (none was folded after it), so the statistics of its "
                     "output are unknown");
          return;
        }
        if (f->second.gamma.size() != static_cast<size_t>(n.out_channels()) ||
            f->second.beta.size() != f->second.gamma.size()) {
          unknown(n, "the statistics of the batch norm folded after '" + n.name + "' have " +
                         std::to_string(f->second.gamma.size()) + " channels, the layer outputs " +
                         std::to_string(n.out_channels()));
          return;
        }
        known(n, from_batch_norm(n.name, f->second.gamma, f->second.beta));
        return;
      }
      case OpKind::BatchNorm:
        known(n, from_batch_norm(n.name, n.gamma.to_doubles(), n.beta.to_doubles()));
        return;
      case OpKind::Relu:
      case OpKind::Clip:
      case OpKind::LeakyRelu:
      case OpKind::PRelu: {
        const ChannelStats* in = input(n, 0);
        if (!in) return;
        if (!in->gaussian) {
          unknown(n, "activation '" + n.name + "' reads a tensor that is not Gaussian (" + in->not_gaussian +
                         "); the engine models E[act(z)] only for a Gaussian z (a batch norm's output, or a sum "
                         "of them)");
          return;
        }
        const size_t c = in->mean.size();
        if (n.kind == OpKind::PRelu && n.slope.numel() != 1 && static_cast<size_t>(n.slope.numel()) != c) {
          unknown(n, "PReLU '" + n.name + "' has " + std::to_string(n.slope.numel()) + " slopes for " +
                         std::to_string(c) + " channels");
          return;
        }
        if (n.kind == OpKind::Clip && !n.clip_max_per_channel.empty() && n.clip_max_per_channel.size() != c) {
          unknown(n, "clip '" + n.name + "' has " + std::to_string(n.clip_max_per_channel.size()) +
                         " per-channel bounds for " + std::to_string(c) + " channels");
          return;
        }
        ChannelStats s = passed(*in, idx);
        s.mean = activation_mean(n, *in);
        lose_gaussian(s, "activation '" + n.name + "' reshapes the distribution");
        known(n, s);
        return;
      }
      case OpKind::Identity:
      case OpKind::ZeroPad: {
        const ChannelStats* in = input(n, 0);
        if (in) known(n, passed(*in, idx));
        return;
      }
      case OpKind::Pool: {
        if (n.pool_kind == PoolKind::Max) {
          unknown(n, "max pooling '" + n.name + "' raises the mean by an amount that depends on how the pixels "
                     "of a window correlate, which the statistics do not say");
          return;
        }
        if (n.pool_kind == PoolKind::Unknown) {
          unknown(n, "pooling '" + n.name + "' (" + n.op_type + "): the front end did not say whether it is max or "
                     "average pooling (max pooling changes the mean)");
          return;
        }
        if (n.has_padding) {
          unknown(n, "average pooling '" + n.name + "' counts its zero padding, which lowers the mean at the "
                     "borders by an amount the graph does not record");
          return;
        }
        const ChannelStats* in = input(n, 0);
        if (!in) return;
        ChannelStats s = passed(*in, idx);
        lose_gaussian(s, "average pooling '" + n.name + "' mixes pixels whose correlation is unknown");
        known(n, s);
        return;
      }
      case OpKind::Resize: {
        const ChannelStats* in = input(n, 0);
        if (!in) return;
        ChannelStats s = passed(*in, idx);
        lose_gaussian(s, "resize '" + n.name + "' may interpolate, which changes the variance");
        known(n, s);
        return;
      }
      case OpKind::Add: {
        ChannelStats s;
        s.gaussian = true;
        for (size_t k = 0; k < n.inputs.size(); ++k) {
          const ChannelStats* in = input(n, k);
          if (!in) return;
          if (k == 0) {
            s.mean.assign(in->mean.size(), 0.0);
            s.std.assign(in->mean.size(), 0.0);
          } else if (in->mean.size() != s.mean.size()) {
            unknown(n, "add '" + n.name + "' sums inputs of " + std::to_string(s.mean.size()) + " and " +
                           std::to_string(in->mean.size()) + " channels");
            return;
          }
          for (size_t c = 0; c < s.mean.size(); ++c) {
            s.mean[c] += in->mean[c];
            if (in->gaussian) s.std[c] += in->std[c] * in->std[c];  // a variance until the end
          }
          join_input(s, *in);
        }
        if (n.inputs.empty()) {
          unknown(n, "'" + n.name + "' has no input");
          return;
        }
        if (s.gaussian)
          for (double& v : s.std) v = std::sqrt(v);  // independent inputs: variances add
        else
          s.std.clear();
        s.between = merge_sorted(s.between, {idx});
        known(n, s);
        return;
      }
      case OpKind::Concat: {
        ChannelStats s;
        s.gaussian = true;
        for (size_t k = 0; k < n.inputs.size(); ++k) {
          const ChannelStats* in = input(n, k);
          if (!in) return;
          s.mean.insert(s.mean.end(), in->mean.begin(), in->mean.end());
          if (in->gaussian) s.std.insert(s.std.end(), in->std.begin(), in->std.end());
          join_input(s, *in);
        }
        if (n.inputs.empty()) {
          unknown(n, "'" + n.name + "' has no input");
          return;
        }
        if (!s.gaussian) s.std.clear();
        s.between = merge_sorted(s.between, {idx});
        known(n, s);
        return;
      }
      case OpKind::Split: {
        const ChannelStats* in = input(n, 0);
        if (!in) return;
        const auto c = static_cast<int64_t>(in->mean.size());
        for (size_t k = 0; k < n.outputs.size(); ++k) {
          const int64_t b = k < n.slice_begin.size() ? n.slice_begin[k] : -1;
          const int64_t e = k < n.slice_end.size() ? std::min(n.slice_end[k], c) : -1;
          if (b < 0 || b >= e) {
            map_.unknown[n.outputs[k]] = "split '" + n.name + "' output " + std::to_string(k) +
                                         " has no channel range within the input's " + std::to_string(c);
            continue;
          }
          ChannelStats s = passed(*in, idx);
          s.mean.assign(in->mean.begin() + b, in->mean.begin() + e);
          if (s.gaussian) s.std.assign(in->std.begin() + b, in->std.begin() + e);
          map_.known[n.outputs[k]] = std::move(s);
        }
        return;
      }
      case OpKind::GatedActivation:
        unknown(n, "gated activation '" + n.name + "' (x·g(x)) sits between: the engine models means only "
                   "through ReLU-like activations (clipped normal means)");
        return;
      case OpKind::Opaque:
        unknown(n, "'" + n.name + "' (" + n.op_type + ") sits between: its effect on the statistics is unknown");
        return;
    }
  }

  const Graph& graph_;
  const std::unordered_map<std::string, FoldedBnStats>& folded_;
  ChannelStatsMap map_;
};

}  // namespace

ChannelStatsMap propagate_channel_stats(const Graph& graph,
                                        const std::unordered_map<std::string, FoldedBnStats>& folded) {
  return Propagation(graph, folded).run();
}

std::string why_unknown(const Graph& graph, const ChannelStatsMap& stats, const std::string& tensor) {
  const auto it = stats.unknown.find(tensor);
  if (it != stats.unknown.end()) return it->second;
  if (std::find(graph.graph_inputs.begin(), graph.graph_inputs.end(), tensor) != graph.graph_inputs.end() ||
      !graph.producer(tensor))
    return "'" + tensor + "' is a graph input: no batch norm gives its statistics";
  return "the statistics of '" + tensor + "' are unknown";
}

}  // namespace prequant
