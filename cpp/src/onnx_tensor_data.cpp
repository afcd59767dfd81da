// onnx_tensor_data.cpp — decoding ONNX TensorProto contents, and the small tables (type names,
// parameter roles) the reader and writer share.
#include <cmath>
#include <cstring>
#include <limits>

#include "onnx_model_impl.h"
#include "prequant/errors.h"

namespace prequant {
namespace onnx_detail {

const char* onnx_type_name(int32_t type) {
  switch (type) {
    case kUndefined: return "undefined";
    case kFloat: return "float32";
    case kUint8: return "uint8";
    case kInt8: return "int8";
    case kUint16: return "uint16";
    case kInt16: return "int16";
    case kInt32: return "int32";
    case kInt64: return "int64";
    case kString: return "string";
    case kBool: return "bool";
    case kFloat16: return "float16";
    case kDouble: return "float64";
    case kUint32: return "uint32";
    case kUint64: return "uint64";
    case 14: return "complex64";
    case 15: return "complex128";
    case kBfloat16: return "bfloat16";
    default: return "an 8-bit/4-bit float or int type";
  }
}

TensorView& param_field(Node& node, ParamRole role) {
  switch (role) {
    case ParamRole::Weight: return node.weight.tensor;
    case ParamRole::Bias: return node.bias;
    case ParamRole::Gamma: return node.gamma;
    case ParamRole::Beta: return node.beta;
    case ParamRole::Mean: return node.mean;
    case ParamRole::Var: return node.var;
    case ParamRole::Slope: return node.slope;
  }
  return node.weight.tensor;
}

const TensorView& param_field(const Node& node, ParamRole role) {
  return param_field(const_cast<Node&>(node), role);
}

const char* param_role_name(ParamRole role) {
  switch (role) {
    case ParamRole::Weight: return "weight";
    case ParamRole::Bias: return "bias";
    case ParamRole::Gamma: return "scale";
    case ParamRole::Beta: return "B";
    case ParamRole::Mean: return "mean";
    case ParamRole::Var: return "var";
    case ParamRole::Slope: return "slope";
  }
  return "?";
}

int64_t dims_numel(const google::protobuf::RepeatedField<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) return -1;
    if (d != 0 && n > (int64_t{1} << 40) / d) return -1;
    n *= d;
  }
  return n;
}

namespace {

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float value;
  if (exp == 0) {
    value = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    value = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    value = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -value : value;
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename T>
std::vector<double> from_raw(const std::string& raw, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, raw.data() + i * sizeof(T), sizeof(T));
    out[static_cast<size_t>(i)] = static_cast<double>(v);
  }
  return out;
}

size_t element_size(int32_t type) {
  switch (type) {
    case kFloat: case kInt32: case kUint32: return 4;
    case kDouble: case kInt64: case kUint64: return 8;
    case kUint8: case kInt8: case kBool: return 1;
    case kUint16: case kInt16: case kFloat16: case kBfloat16: return 2;
    default: return 0;
  }
}

}  // namespace

std::vector<double> decode_numeric(const pb::TensorProto& t, const std::string& what) {
  const int64_t n = dims_numel(t.dims());
  if (n < 0) throw ModelFormatError(what + " has invalid dimensions");
  const int32_t type = t.data_type();
  const size_t es = element_size(type);
  if (es == 0)
    throw UnsupportedError(what + " has data type " + onnx_type_name(type) +
                           ", which the engine cannot read here");
  if (t.has_raw_data()) {
    const std::string& raw = t.raw_data();
    if (raw.size() != static_cast<size_t>(n) * es)
      throw ModelFormatError(what + " holds " + std::to_string(raw.size()) + " bytes but its shape (" +
                             std::to_string(n) + " " + onnx_type_name(type) + " values) needs " +
                             std::to_string(static_cast<size_t>(n) * es) +
                             "; the file is damaged — re-export the model");
    switch (type) {
      case kFloat: return from_raw<float>(raw, n);
      case kDouble: return from_raw<double>(raw, n);
      case kInt32: return from_raw<int32_t>(raw, n);
      case kUint32: return from_raw<uint32_t>(raw, n);
      case kInt64: return from_raw<int64_t>(raw, n);
      case kUint64: return from_raw<uint64_t>(raw, n);
      case kUint8: case kBool: return from_raw<uint8_t>(raw, n);
      case kInt8: return from_raw<int8_t>(raw, n);
      case kInt16: return from_raw<int16_t>(raw, n);
      case kUint16: return from_raw<uint16_t>(raw, n);
      case kFloat16: case kBfloat16: {
        std::vector<double> out(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, raw.data() + i * 2, 2);
          out[static_cast<size_t>(i)] = type == kFloat16 ? half_to_float(h) : bf16_to_float(h);
        }
        return out;
      }
      default: break;
    }
  }
  auto short_data = [&](int64_t have) {
    return ModelFormatError(what + " holds " + std::to_string(have) + " values but its shape needs " +
                            std::to_string(n) + "; the file is damaged — re-export the model");
  };
  // Reserve only once the value count matches the shape: the shape alone may claim up to 2^40
  // values (terabytes) for a tensor that holds none.
  std::vector<double> out;
  auto reserve_checked = [&](int64_t have) {
    if (have != n) throw short_data(have);
    out.reserve(static_cast<size_t>(n));
  };
  switch (type) {
    case kFloat:
      reserve_checked(t.float_data_size());
      for (float v : t.float_data()) out.push_back(v);
      return out;
    case kDouble:
      reserve_checked(t.double_data_size());
      for (double v : t.double_data()) out.push_back(v);
      return out;
    case kInt64:
      reserve_checked(t.int64_data_size());
      for (int64_t v : t.int64_data()) out.push_back(static_cast<double>(v));
      return out;
    case kUint32: case kUint64:
      reserve_checked(t.uint64_data_size());
      for (uint64_t v : t.uint64_data()) out.push_back(static_cast<double>(v));
      return out;
    case kFloat16: case kBfloat16:
      reserve_checked(t.int32_data_size());
      for (int32_t v : t.int32_data())
        out.push_back(type == kFloat16 ? half_to_float(static_cast<uint16_t>(v))
                                       : bf16_to_float(static_cast<uint16_t>(v)));
      return out;
    default:
      reserve_checked(t.int32_data_size());
      for (int32_t v : t.int32_data()) out.push_back(v);
      return out;
  }
}

}  // namespace onnx_detail
}  // namespace prequant
