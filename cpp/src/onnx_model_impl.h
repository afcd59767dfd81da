// onnx_model_impl.h (internal) — what an OnnxModel keeps between load and save.
//
// The parsed ModelProto is never modified after load: save() builds a new proto from it, the
// IR and the float buffers. Each IR node has a Binding that says where its activation tensors
// and parameters sit in the ONNX node(s) it came from, so the writer can mirror every edit a
// pass made (rewired inputs/outputs, renamed or added parameters, changed activations).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "prequant/graph.h"
#include "prequant/onnx_io.h"
#include "prequant_onnx/onnx.pb.h"

namespace prequant {
namespace onnx_detail {

namespace pb = ::prequant_onnx;

// ONNX TensorProto.DataType values the engine cares about.
enum OnnxType : int32_t {
  kUndefined = 0, kFloat = 1, kUint8 = 2, kInt8 = 3, kUint16 = 4, kInt16 = 5, kInt32 = 6,
  kInt64 = 7, kString = 8, kBool = 9, kFloat16 = 10, kDouble = 11, kUint32 = 12, kUint64 = 13,
  kBfloat16 = 16,
};
const char* onnx_type_name(int32_t type);

// Which field of a Node a parameter slot fills.
enum class ParamRole { Weight, Bias, Gamma, Beta, Mean, Var, Slope };
TensorView& param_field(Node& node, ParamRole role);
const TensorView& param_field(const Node& node, ParamRole role);
const char* param_role_name(ParamRole role);

// An activation tensor of an IR node: ONNX node `onnx_node`, input/output position `index`.
// index -1: an outer-scope name a subgraph reads implicitly (must not change).
struct ActSlot {
  int onnx_node = -1;
  int index = -1;
  std::string name;  // the tensor at load
};

// A parameter of an IR node: which ONNX input carries it and what it was at load.
struct ParamSlot {
  ParamRole role = ParamRole::Weight;
  int onnx_node = -1;
  int index = -1;               // input position in onnx_node (may be past the end: absent)
  std::string original;         // initializer name at load; empty if the node had none
  std::vector<int64_t> dims;    // the initializer's ONNX dims (the view may be flattened)
};

// Where the channels of an activation tensor are, as far as the reader can tell.
enum class ChannelAxis {
  Free,    // no layer produced it (graph input, opaque output): no constraint
  Second,  // axis 1 (conv activations, N C ...)
  Last,    // the last axis, rank > 2 or unknown (MatMul on a rank-3 tensor)
  Both,    // rank 2: axis 1 is the last axis
};

enum class LinearForm { None, Gemm, MatMulAdd, MatMulOnly };

struct Binding {
  int onnx_node = -1;     // the ONNX node (MatMul for the MatMul forms)
  int onnx_add = -1;      // LinearForm::MatMulAdd: the Add
  int add_bias_index = -1;  // which input of the Add is the bias
  LinearForm linear = LinearForm::None;
  OpKind kind = OpKind::Opaque;  // at load
  std::vector<ActSlot> inputs;   // parallel to Node::inputs at load
  std::vector<ActSlot> outputs;  // parallel to Node::outputs at load
  std::vector<ParamSlot> params;
  // Clip at load (to see whether a pass changed the scalars) and its input's channel layout.
  double clip_min = 0.0, clip_max = 0.0;
  int input_rank = -1;
  ChannelAxis input_axis = ChannelAxis::Free;
  DType act_dtype = DType::Float32;
  double alpha = 0.01;  // LeakyRelu at load
  // GatedActivation read from Mul(x, Sigmoid|HardSigmoid([Mul(x, s)])): the gate node and the
  // inner Mul it absorbed (the IR node's onnx_node is the outer Mul); empty for HardSwish, Gelu.
  std::vector<int> gate_parts;
};

// A float or double copy of an initializer that the IR views (and the passes edit).
struct Buffer {
  DType dtype = DType::Float32;
  std::vector<int64_t> dims;
  int64_t numel = 0;
  std::vector<double> storage;  // double storage is aligned for either dtype
  void* data() { return storage.data(); }
};

// Numeric contents of a tensor as doubles (float, double, float16, bfloat16, integer types),
// or throws ModelFormatError naming `what` when the data is short or the type is not numeric.
std::vector<double> decode_numeric(const pb::TensorProto& t, const std::string& what);
int64_t dims_numel(const google::protobuf::RepeatedField<int64_t>& dims);

// Resolves every EXTERNAL tensor of the model (initializers, Constant attributes, subgraphs)
// into raw_data read from files under base_dir. Returns the files read (canonical paths).
std::vector<std::string> load_external_data(pb::ModelProto& model, const std::string& base_dir);

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
void write_file_atomically(const std::string& path, const std::string& bytes);
// Moves initializers of at least `threshold` bytes of `model` into `data_name` (relative to the
// model's directory), filling their external_data fields; returns the data file's bytes.
std::string externalize_initializers(pb::ModelProto& model, const std::string& data_name,
                                     int64_t threshold);

// Everything an OnnxModel holds (OnnxModel::Impl is this; the reader and writer work on it).
struct ModelState {
  pb::ModelProto model;
  std::string base_dir;
  bool used_external_data = false;
  std::vector<std::string> external_files;  // data files the model was read from
  int64_t opset = 0;
  Graph graph;
  std::unordered_map<std::string, std::unique_ptr<Buffer>> buffers;
  std::vector<Binding> bindings;  // by IR node index at load
  // ONNX node index -> IR node index (the IR node that owns it), -1 if none.
  std::vector<int> owner;
  // Initializers read by something the IR does not own as a parameter (an opaque node, a
  // subgraph, a graph output): they must keep their values, so an edited copy gets a new name.
  std::unordered_set<std::string> initializer_read_elsewhere;

  void parse(std::string_view bytes);
  void build_graph();
  pb::ModelProto write_proto() const;
};

}  // namespace onnx_detail

struct OnnxModel::Impl : onnx_detail::ModelState {};

}  // namespace prequant
