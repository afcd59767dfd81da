// reference_model.h — test support: owned tensors, a graph builder, and a naive reference
// forward pass in double.
//
// Everything here is written from the layer definitions and is independent of the engine's
// channel routines (out_channel_ranges, scale_*, contract_in_channels): weight elements are
// located by explicit per-framework index formulas (weight_flat_index), and the forward pass
// is plain index loops. Tests compare the engine's transforms against it.
//
// Attributes the IR does not carry (padding amounts, strides, pool kind, zero-pad widths, the
// framework layout of a weight, what an opaque node computes) live in RefModel::attrs, keyed
// by node name. The IR only gets has_padding.
//
// Activations are channel-first: (N, C) for linear layers, (N, C, d0[, d1[, d2]]) for convs,
// whatever the weight layout is.
//
// Definitions: reference_model.cpp (layouts, ranges, builder, snapshots), reference_forward.cpp
// (the forward pass and error measures).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <ostream>
#include <string>
#include <vector>

#include "prequant/graph.h"
#include "prequant/results.h"
#include "prequant/tensor.h"

namespace pqtest {

using prequant::DType;

// How a framework stores a conv/linear weight.
enum class FrameworkLayout {
  TorchConv,           // (O, I/g, k...)
  TorchConvTranspose,  // (I, O/g, k...)
  TorchLinear,         // (O, I)
  KerasConv,           // (k..., I/g, O)   (DepthwiseConv2D reshaped: (kh, kw, 1, C*M), g = C)
  KerasConvTranspose,  // (k..., O/g, I)
  KerasDense,          // (I, O)
};

// One parameterized case of the per-layout tests: a weight of this layout, channels, groups, kernel.
struct LayoutCase {
  std::string label;
  FrameworkLayout layout;
  int64_t in, out, groups;
  std::vector<int64_t> kernel;
  DType dtype = DType::Float32;
};

inline std::ostream& operator<<(std::ostream& os, const LayoutCase& c) { return os << c.label; }

const char* layout_name(FrameworkLayout fl);
bool is_transposed(FrameworkLayout fl);
// The weight's shape for the given channel counts, groups and kernel (empty kernel: linear).
std::vector<int64_t> weight_shape(FrameworkLayout fl, int64_t in, int64_t out, int64_t groups,
                                  const std::vector<int64_t>& kernel);
// The engine's ChannelLayout for it (the table in tensor.h).
prequant::ChannelLayout channel_layout(FrameworkLayout fl, int rank, int groups);
// Channel counts and kernel read back from a shape.
int64_t weight_in_channels(FrameworkLayout fl, const std::vector<int64_t>& shape, int64_t groups);
int64_t weight_out_channels(FrameworkLayout fl, const std::vector<int64_t>& shape, int64_t groups);
std::vector<int64_t> weight_kernel(FrameworkLayout fl, const std::vector<int64_t>& shape);
// Flat (row-major) index of the element connecting full output channel o and full input
// channel i at kernel position k; -1 if i is not in o's group.
int64_t weight_flat_index(FrameworkLayout fl, const std::vector<int64_t>& shape, int64_t groups,
                          int64_t o, int64_t i, const std::vector<int64_t>& k);
// Calls f(o, i, flat_index) once per weight element.
void for_each_weight_element(FrameworkLayout fl, const std::vector<int64_t>& shape,
                             int64_t groups,
                             const std::function<void(int64_t, int64_t, int64_t)>& f);

// Raw element access (not via the engine).
double read(const prequant::TensorView& t, int64_t i);
void write(const prequant::TensorView& t, int64_t i, double v);
std::vector<double> read_all(const prequant::TensorView& t);

// Reference per-channel ranges: max |W| over elements of output (input) channel c.
std::vector<double> ref_out_ranges(FrameworkLayout fl, const prequant::TensorView& w, int64_t groups);
std::vector<double> ref_in_ranges(FrameworkLayout fl, const prequant::TensorView& w, int64_t groups);

// A dense channel-first activation in double.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<double> data;
  int64_t numel() const;
};

// Max |a − b| over all elements, divided by max |a| (1e-300 floor).
double max_rel_error(const std::vector<Tensor>& a, const std::vector<Tensor>& b);
double max_rel_error(const Tensor& a, const Tensor& b);
double max_abs_value(const std::vector<Tensor>& a);

// Test-side attributes of a node.
struct NodeAttrs {
  FrameworkLayout layout = FrameworkLayout::TorchConv;
  std::vector<int64_t> stride, pad_begin, pad_end, output_padding;  // per spatial axis
  // Pool
  bool pool_max = true;
  bool pool_global = false;  // global average pool: (N, C, ...) → (N, C)
  int64_t pool_window = 2;   // window = stride
  // ZeroPad: pad_begin / pad_end
  // Opaque: "tanh" (elementwise tanh of input 0), "add" (sum of inputs), "flatten" ((N, ...) → (N, rest))
  std::string opaque_fn = "tanh";
};

struct ConvSpec {
  int64_t in = 0, out = 0;
  std::vector<int64_t> kernel{3, 3};      // its size is the spatial rank (1..3)
  std::vector<int64_t> stride;            // default 1
  std::vector<int64_t> pad;               // symmetric, default 0
  std::vector<int64_t> output_padding;    // transposed only, default 0
  int64_t groups = 1;
  bool bias = true;
  bool transposed = false;
  bool keras = false;                     // Keras layout instead of torch
  DType dtype = DType::Float32;
  double weight_scale = 0.0;              // 0: 1/sqrt(fan_in)
};

// Owned tensors + a Graph whose nodes point at them + the test-side attribute table.
class RefModel {
 public:
  explicit RefModel(uint32_t seed = 1);
  RefModel(const RefModel&) = delete;
  RefModel& operator=(const RefModel&) = delete;

  prequant::Graph graph;
  std::map<std::string, NodeAttrs> attrs;
  std::map<std::string, std::vector<int64_t>> input_shapes;  // per graph input, without batch
  std::mt19937 rng;

  // ---- owned tensors ----
  prequant::TensorView make_tensor(const std::string& name, std::vector<int64_t> shape,
                                   DType dtype, const std::vector<double>& values);
  std::vector<double> uniform(int64_t n, double lo, double hi);
  // Uniform magnitude in [lo, hi] with a random sign.
  std::vector<double> signed_uniform(int64_t n, double lo, double hi);

  // ---- builder: each returns the output tensor name (node name + ":out") ----
  std::string input(const std::string& name, std::vector<int64_t> shape_without_batch);
  void output(const std::string& tensor);
  std::string conv(const std::string& name, const std::string& x, const ConvSpec& spec);
  std::string linear(const std::string& name, const std::string& x, int64_t in, int64_t out,
                     bool bias = true, bool keras = false, DType dtype = DType::Float32);
  // Realistic random statistics: var in [1e-2, 10], non-zero means, gamma with negative
  // entries, non-zero beta.
  std::string batch_norm(const std::string& name, const std::string& x, int64_t channels,
                         DType dtype = DType::Float32, double eps = 1e-5);
  std::string relu(const std::string& name, const std::string& x);
  std::string clip(const std::string& name, const std::string& x, double lo, double hi);
  std::string leaky_relu(const std::string& name, const std::string& x, double alpha);
  std::string prelu(const std::string& name, const std::string& x, int64_t channels);  // 1: shared
  std::string identity(const std::string& name, const std::string& x);
  std::string zero_pad(const std::string& name, const std::string& x, std::vector<int64_t> begin,
                       std::vector<int64_t> end);
  std::string pool(const std::string& name, const std::string& x, bool max);
  std::string global_avg_pool(const std::string& name, const std::string& x);
  std::string opaque(const std::string& name, const std::vector<std::string>& xs,
                     const std::string& fn = "tanh");
  // Channel nodes (equalization regions). split returns one tensor per [begin, end) range;
  // resize is nearest-neighbour ×2 on every spatial axis.
  std::string add(const std::string& name, const std::vector<std::string>& xs);
  std::string concat(const std::string& name, const std::vector<std::string>& xs);
  std::vector<std::string> split(const std::string& name, const std::string& x,
                                 const std::vector<std::pair<int64_t, int64_t>>& ranges);
  std::string resize(const std::string& name, const std::string& x);
  // x·g(x): SiLU (Sigmoid), HardSwish (HardSigmoid), GELU (GeluErf / GeluTanh).
  std::string gated(const std::string& name, const std::string& x, prequant::Gate gate);

  prequant::Node& node(const std::string& name) { return graph.at(name); }
  const NodeAttrs& attr(const std::string& name) const { return attrs.at(name); }
  FrameworkLayout layout_of(const std::string& name) const { return attrs.at(name).layout; }

  // Reference ranges of a layer's current weight.
  std::vector<double> out_ranges(const std::string& layer);
  std::vector<double> in_ranges(const std::string& layer);

  // ---- reference forward ----
  std::vector<Tensor> random_inputs(int64_t batch, uint32_t seed, double scale = 1.0) const;
  // Every activation tensor by name.
  std::map<std::string, Tensor> forward_all(const std::vector<Tensor>& inputs) const;
  // The graph outputs, in order.
  std::vector<Tensor> forward(const std::vector<Tensor>& inputs) const;

 private:
  std::deque<std::vector<double>> storage_;  // double storage: aligned for float and double
  int tensor_counter_ = 0;
};

// A snapshot of every parameter's bytes and of the graph structure, to prove atomicity.
struct GraphSnapshot {
  struct NodeState {
    std::string name;
    prequant::OpKind kind;
    bool removed;
    std::vector<std::string> inputs, outputs;
    const void* weight;
    const void* bias;
    bool has_bias;
    double clip_min, clip_max;
    std::vector<double> clip_max_per_channel;
  };
  std::vector<NodeState> nodes;
  std::vector<std::string> graph_inputs, graph_outputs;
  std::map<const void*, std::vector<unsigned char>> bytes;
  std::map<const void*, std::string> names;

  static GraphSnapshot take(const prequant::Graph& g);
  // Empty if equal, else a description of the first difference.
  std::string diff(const GraphSnapshot& other) const;
};

// The first Declined entry whose nodes include `node`, or nullptr.
const prequant::Declined* find_declined(const std::vector<prequant::Declined>& declined,
                                        const std::string& node);
bool contains(const std::string& text, const std::string& part);

// Fault injection for one scope; always disabled again on exit.
struct FaultInjection {
  explicit FaultInjection(int n);
  ~FaultInjection();
};

}  // namespace pqtest
