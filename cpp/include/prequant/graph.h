// prequant/graph.h — the engine's graph IR, shared by the PyTorch, Keras and ONNX front ends.
//
// A Graph is a list of Nodes in topological order. Nodes connect through named activation
// tensors (`inputs`, `outputs`); parameters are TensorViews into memory the front end owns,
// or into the graph's arena for tensors the engine creates (a bias added by folding, a copy
// made by unrolling a shared weight).
//
// Node kinds are deliberately few: what cross-layer equalization must understand, and Opaque
// for everything else (an opaque node is never looked into; it only blocks).
//
//   Conv       weight (+ bias); 1d/2d/3d, grouped, depthwise, transposed; Linear is a Conv
//              with no spatial axes, kept as its own kind for messages and front ends.
//   BatchNorm  gamma, beta, mean, var, eps  (y = gamma·(x − mean)/sqrt(var + eps) + beta)
//   Relu, Clip (clip_min, clip_max, or a per-channel upper bound), LeakyRelu (alpha),
//   PRelu (slope), Identity, ZeroPad (constant-zero padding), Pool (max/average pooling, and a
//   mean over spatial axes: per-channel and positively homogeneous, so scaling passes through it),
//   Opaque.
// Channel nodes, which equalization regions pass through (find_cls_regions.cpp):
//   Add        elementwise sum of ≥ 2 activations with the same channels (Add, Sum, x + y)
//   Concat     concatenation on the channel axis; input k owns the next slice of channels
//   Split      output k is channels [slice_begin[k], min(slice_end[k], C)) of the input
//              (Split, Slice and Chunk on the channel axis)
//   Resize     per-channel spatial resampling (nearest, linear): linear in each channel
// Gated activations, y = x·g(gate_scale[c]·x) (SiLU, HardSwish, GELU): not positively homogeneous,
// but with ClsOptions::gated_activations scaling passes through them exactly, by multiplying
// gate_scale[c] by the s[c] the producer's channel c was divided by (x·g(x) = s·x'·g(s·x')):
//   GatedActivation  gate: Sigmoid (SiLU), HardSigmoid (HardSwish: relu6(z + 3)/6),
//                    GeluErf (Φ(z)), GeluTanh (GELU's tanh approximation); empty gate_scale = 1
#pragma once

#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "prequant/tensor.h"

namespace prequant {

class Transaction;
struct TransactionJournal;

enum class OpKind {
  Conv, Linear, BatchNorm, Relu, Clip, LeakyRelu, PRelu, Identity, ZeroPad, Pool,
  Add, Concat, Split, Resize, Opaque,
  GatedActivation
};

// The gate g of a GatedActivation y = x·g(gate_scale[c]·x).
enum class Gate { Sigmoid, HardSigmoid, GeluErf, GeluTanh };
const char* gate_name(Gate gate);  // "sigmoid", "hard_sigmoid", "gelu_erf", "gelu_tanh"
// g(z) in double (the definition the reference tests and the front ends follow).
double gate_value(Gate gate, double z);

const char* op_kind_name(OpKind kind);

// What a Pool computes per window. Unknown: the front end did not say (bias correction then
// declines to carry statistics through it; scaling does not care, both kinds are homogeneous).
enum class PoolKind { Unknown, Max, Average };

struct Node {
  std::string name;
  OpKind kind = OpKind::Opaque;
  std::string op_type;               // the framework's op or class name, for messages
  std::string opaque_reason;         // Opaque: why the front end could not map the node to a
                                     // kind the engine models (empty: an op it does not model)
  std::vector<std::string> inputs;   // activation tensors read (parameters excluded)
  std::vector<std::string> outputs;  // activation tensors written

  // Conv / Linear
  Weight weight;
  TensorView bias;                   // empty: the layer has no bias
  bool has_padding = false;          // Conv: pads its input (BN→conv fold would be inexact).
                                     // Pool: padded zeros enter its output (an average pool
                                     // counting its padding), so a shift of its input is not
                                     // a shift of its output at the borders. Max-pool padding
                                     // (−inf) does not count.
  int spatial_rank = 0;              // 0 for Linear, 1..3 for ConvNd
  // Linear in a channels-first graph (PyTorch nn.Linear): it contracts the LAST axis, while conv
  // and batch-norm channels sit on axis 1; the two agree only on 2-D tensors. `input_rank` is the
  // rank of its data input (0: unknown). False where channel axes agree by construction (Keras:
  // last everywhere; ONNX: the reader tracks axes itself).
  bool channels_last = false;
  int input_rank = 0;

  // BatchNorm
  TensorView gamma, beta, mean, var;
  double eps = 1e-5;

  // Activations
  double clip_min = 0.0, clip_max = 6.0;   // Clip
  std::vector<double> clip_max_per_channel; // Clip after the exact ReLU6 policy scaled it
  double alpha = 0.01;                      // LeakyRelu
  TensorView slope;                         // PRelu (one value, or one per channel)

  // GatedActivation: y = x·g(gate_scale[c]·x); empty gate_scale means 1 for every channel
  Gate gate = Gate::Sigmoid;
  std::vector<double> gate_scale;

  // Split: one [begin, end) channel range per output (end may exceed the channel count: to the end)
  std::vector<int64_t> slice_begin, slice_end;

  // Pool: max or average (a spatial mean is an average)
  PoolKind pool_kind = PoolKind::Unknown;

  bool removed = false;              // set by passes that take the node out of the graph

  bool is_layer() const { return kind == OpKind::Conv || kind == OpKind::Linear; }
  bool is_transposed() const { return weight.layout.transposed; }
  int64_t groups() const { return weight.layout.groups; }
  int64_t out_channels() const { return weight.out_channels(); }
  int64_t in_channels() const { return weight.in_channels(); }
  // groups == in == out channels: one filter per channel.
  bool is_depthwise() const;
};

class Graph {
 public:
  // Nodes, in topological order. Indices stay valid: removal only marks `removed`.
  std::vector<Node> nodes;
  std::vector<std::string> graph_inputs;
  std::vector<std::string> graph_outputs;

  Node& add(Node node);
  // Index of the live node named `name`, or nullopt.
  std::optional<size_t> find(const std::string& name) const;
  Node& at(const std::string& name);  // throws GraphError naming the node when absent

  // Producer / live consumers of an activation tensor (call reindex() after edits).
  std::optional<size_t> producer(const std::string& tensor) const;
  const std::vector<size_t>& consumers(const std::string& tensor) const;
  bool is_graph_output(const std::string& tensor) const;
  void reindex();

  // Checks the invariants the passes rely on and throws GraphError saying how to fix the
  // first violation: unique names, each tensor produced once, topological order, parameter
  // shapes agree with the layout and with each other.
  void lint() const;

  // Engine-owned storage for tensors created by passes; views stay valid for the graph's life.
  TensorView allocate(const std::string& name, DType dtype, std::vector<int64_t> shape);

 private:
  friend class Transaction;
  TransactionJournal* journal_ = nullptr;  // the open transaction, if any (src/transaction.h)
  std::unordered_map<std::string, size_t> by_name_;
  std::unordered_map<std::string, size_t> producer_;
  std::unordered_map<std::string, std::vector<size_t>> consumers_;
  std::deque<std::vector<double>> arena_;  // double storage is aligned for either dtype
};

}  // namespace prequant
