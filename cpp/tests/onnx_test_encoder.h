// onnx_test_encoder.h — a minimal protobuf writer for the ONNX messages the reader tests need.
//
// The generated ONNX classes are private to the engine (compiled under prequant_onnx), so the
// tests write the wire format themselves: enough of ModelProto, GraphProto, NodeProto,
// TensorProto, AttributeProto and ValueInfoProto to build small models, including damaged ones
// that onnx.helper would refuse to make. read_and_process() does what the fuzz target does.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "prequant/errors.h"
#include "prequant/onnx_io.h"
#include "prequant/passes.h"

namespace pqtest {

class Msg {
 public:
  Msg& varint(int field, uint64_t v) {
    key(field, 0);
    put_varint(v);
    return *this;
  }
  Msg& bytes(int field, const std::string& b) {
    key(field, 2);
    put_varint(b.size());
    out_ += b;
    return *this;
  }
  Msg& msg(int field, const Msg& m) { return bytes(field, m.out_); }
  Msg& fixed32(int field, float f) {
    key(field, 5);
    char b[4];
    std::memcpy(b, &f, 4);
    out_.append(b, 4);
    return *this;
  }
  const std::string& str() const { return out_; }

 private:
  void key(int field, int wire) { put_varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire)); }
  void put_varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string out_;
};

// TensorProto: dims 1, data_type 2, name 8, raw_data 9.
inline constexpr int kFloat = 1, kInt64 = 7;
inline Msg tensor(const std::string& name, int type, const std::vector<int64_t>& dims,
                  const std::string& raw = {}, bool with_raw = true) {
  Msg t;
  for (int64_t d : dims) t.varint(1, static_cast<uint64_t>(d));
  t.varint(2, static_cast<uint64_t>(type)).bytes(8, name);
  if (with_raw) t.bytes(9, raw);
  return t;
}
template <typename T>
inline std::string raw_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
// AttributeProto: name 1, i 3, type 20 (INT = 2).
inline Msg int_attr(const std::string& name, int64_t v) {
  return Msg().bytes(1, name).varint(3, static_cast<uint64_t>(v)).varint(20, 2);
}
// NodeProto: input 1, output 2, name 3, op_type 4, attribute 5.
inline Msg node(const std::string& op, const std::vector<std::string>& in, const std::string& out,
                const std::vector<Msg>& attrs = {}) {
  Msg n;
  for (const auto& i : in) n.bytes(1, i);
  n.bytes(2, out).bytes(3, op + "_node").bytes(4, op);
  for (const auto& a : attrs) n.msg(5, a);
  return n;
}
// ValueInfoProto { name 1, type 2 { tensor_type 1 { elem_type 1, shape 2 { dim 1 { dim_value 1 } } } } }.
inline Msg value_info(const std::string& name, int rank) {
  Msg shape;
  for (int k = 0; k < rank; ++k) shape.msg(1, Msg().varint(1, 4));
  Msg tt;
  tt.varint(1, kFloat);
  if (rank >= 0) tt.msg(2, shape);
  return Msg().bytes(1, name).msg(2, Msg().msg(1, tt));
}
// AttributeProto: name 1, t 5, type 20 (TENSOR = 4).
inline Msg tensor_attr(const std::string& name, const Msg& t) {
  return Msg().bytes(1, name).msg(5, t).varint(20, 4);
}
// ModelProto { ir_version 1, opset_import 8 { version 2 }, graph 7 { node 1, name 2,
// initializer 5, input 11, output 12 } } with graph input "x" (rank 4), `more_inputs` after it,
// and output "y".
inline std::string model(const std::vector<Msg>& nodes, const std::vector<Msg>& inits,
                         const std::vector<Msg>& more_inputs = {}) {
  Msg g;
  for (const auto& n : nodes) g.msg(1, n);
  g.bytes(2, "g");
  for (const auto& t : inits) g.msg(5, t);
  g.msg(11, value_info("x", 4));
  for (const auto& v : more_inputs) g.msg(11, v);
  g.msg(12, value_info("y", -1));
  return Msg().varint(1, 8).msg(8, Msg().varint(2, 17)).msg(7, g).str();
}

// What the fuzz target does: read; on success analyse, equalize and write. Returns whether the
// reader accepted the model; a prequant::Error from the reader is a clean refusal.
inline bool read_and_process(const std::string& bytes) {
  try {
    prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
    (void)prequant::find_batch_norm_folds(m.graph());
    (void)prequant::find_cls_sets(m.graph());
    try {
      (void)prequant::equalize_model(m.graph());
    } catch (const prequant::Error&) {
    }
    (void)m.to_bytes();
    return true;
  } catch (const prequant::Error&) {
    return false;
  }
}

}  // namespace pqtest
