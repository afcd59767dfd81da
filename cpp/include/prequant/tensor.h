// prequant/tensor.h — non-owning tensor views and the channel layout of a weight.
//
// The engine never owns a framework's weights: a TensorView points at memory that the front
// end (PyTorch parameter, NumPy array behind a Keras variable, ONNX initializer buffer) owns,
// and the passes read and write it in place. A ChannelLayout says which axis of a weight holds
// output channels and which holds input channels, so one routine serves every framework:
//
//   layer                                   out axis  in axis  per-group axis
//   torch ConvNd, ONNX Conv (O, I/g, k...)       0        1        in
//   torch/ONNX ConvTranspose (I, O/g, k...)      1        0        out  (transposed = true)
//   torch Linear, Gemm transB=1 (O, I)           0        1        -
//   Keras ConvND (k..., I/g, O)                last    last-1      in
//   Keras DepthwiseConv2D (kh, kw, C, M)     front end reshapes to (kh, kw, 1, C*M): out 3, in 2
//   Keras Conv2DTranspose (kh, kw, O, I)         2        3        out  (transposed = true)
//   Keras Dense (I, O)                           1        0        -
//
// Views are dense, row-major (C-contiguous); front ends make them so or refuse.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace prequant {

enum class DType { Float32, Float64 };

const char* dtype_name(DType dtype);

// A dense row-major view of a tensor owned by somebody else (or by a Graph's arena).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  std::string name;  // framework name of the parameter (ONNX initializer, module path, variable)

  bool empty() const { return data == nullptr; }
  int64_t numel() const;
  int64_t bytes() const;

  // Element i as double / set element i from double (converted to the view's dtype).
  double get(int64_t i) const;
  void set(int64_t i, double value);
  // All elements as doubles (a copy): handy for small per-channel vectors.
  std::vector<double> to_doubles() const;
  void assign(std::span<const double> values);
};

// Where the channels of a weight are. See the table in the file header.
struct ChannelLayout {
  int out_axis = 0;
  int in_axis = 1;          // -1: no input-channel axis (never for conv/linear weights)
  int groups = 1;
  bool transposed = false;  // the per-group axis is the out axis (ConvTranspose)
};

// A weight together with its layout; the unit the channel routines work on.
struct Weight {
  TensorView tensor;
  ChannelLayout layout;

  int64_t out_channels() const;  // full count, across groups
  int64_t in_channels() const;   // full count, across groups
};

// ---- Channel routines: the only code that walks weight elements -------------------------
// For every element, `out` and `in` are full (not per-group) channel indices.

// r[o] = max |W| over every element whose output channel is o.
std::vector<double> out_channel_ranges(const Weight& w);
// r[i] = max |W| over every element whose input channel is i.
std::vector<double> in_channel_ranges(const Weight& w);
// W[o, ...] *= factor[o].
void scale_out_channels(const Weight& w, std::span<const double> factor);
// W[:, i, ...] *= factor[i].
void scale_in_channels(const Weight& w, std::span<const double> factor);
// Both per-channel range vectors, in one pass over the weight.
struct ChannelRanges {
  std::vector<double> out, in;
};
ChannelRanges channel_ranges(const Weight& w);
// The ranges of W·diag(out_factor)·diag(in_factor) (by magnitude; empty = ones), in one read
// pass and without writing W: what a weight will measure once factors deferred to a commit apply.
// Precondition: W and the factors finite (the passes check first; find_non_finite). Unlike the
// routines above, a NaN here is not guaranteed to show in the result: the kernel trades that
// for vector code.
ChannelRanges channel_ranges(const Weight& w, std::span<const double> out_factor, std::span<const double> in_factor);
// W[o, i, ...] *= out_factor[o] · in_factor[i] (an empty span stands for all ones), returning the
// ranges of the result: one pass where scaling and re-measuring would take two.
ChannelRanges scale_channels(const Weight& w, std::span<const double> out_factor,
                             std::span<const double> in_factor);
// max |W| per (out, in) channel pair (over kernel and other axes): enough to know a weight's
// ranges under any per-channel rescaling W·diag(out_factor)·diag(in_factor) without touching
// it, so cross-layer scaling iterates on these small matrices and writes each weight once.
class RangeMatrix {
 public:
  explicit RangeMatrix(const Weight& w);  // one read pass over w
  // The ranges of W·diag(out_factor)·diag(in_factor); factors full length and ≥ 0.
  ChannelRanges ranges(std::span<const double> out_factor, std::span<const double> in_factor) const;

 private:
  struct Tables;
  std::shared_ptr<const Tables> tables_;
  std::vector<float> m_;
  int64_t out_channels_, in_channels_;
};

// Calls visit(o, run) for every contiguous run of W's elements whose output channel is o, in
// memory order; `run` holds them as doubles (valid only during the call). Read-only: for
// statistics over each output channel's elements (weight_stats.h).
void visit_out_channels(const Weight& w, const std::function<void(int64_t, std::span<const double>)>& visit);
// Calls visit(o, i, run) for every contiguous run of W's elements that share output channel o and
// input channel i (full indices), in memory order; read-only, `run` valid only during the call.
void visit_channel_pairs(const Weight& w,
                         const std::function<void(int64_t, int64_t, std::span<const double>)>& visit);
// W[o, i, ...] *= out_factor[o] · in_factor[i], prepared now and applied later: the constructor
// checks the layout and sizes and allocates; apply() cannot fail, so a caller can prepare every
// write before making the first (what lets a transaction skip backing weights up).
class ChannelScaling {
 public:
  ChannelScaling(const Weight& w, std::span<const double> out_factor, std::span<const double> in_factor);
  void apply() const noexcept;

 private:
  struct Tables;
  std::shared_ptr<const Tables> tables_;
  TensorView tensor_;
  std::vector<double> out_, in_;
};

// result[o] = Σ_i Σ_k W[o, i, k] · v[i]  (v indexed by full input channel); in double.
std::vector<double> contract_in_channels(const Weight& w, std::span<const double> v);
// First element that is NaN or ±Inf, or -1.
int64_t find_non_finite(const TensorView& t);

}  // namespace prequant
