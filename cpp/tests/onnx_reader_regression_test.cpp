// onnx_reader_regression_test.cpp — inputs the ONNX reader fuzzer (cpp/fuzz/fuzz_onnx_reader.cpp,
// run by scripts/sanitize.sh) or a review for it showed to crash the reader or to reach undefined
// behaviour. Each test builds its model's bytes with a small protobuf encoder (the generated
// ONNX classes are private to the engine) and checks that the reader refuses the model with a
// prequant::Error or keeps the offending node opaque — and, under ASan/UBSan, that nothing is
// reported on the way.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "prequant/errors.h"
#include "prequant/onnx_io.h"
#include "prequant/passes.h"

namespace pqtest {
namespace {

// ---- a minimal protobuf writer for the ONNX messages the tests need -----------------------

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
constexpr int kFloat = 1, kInt64 = 7;
Msg tensor(const std::string& name, int type, const std::vector<int64_t>& dims, const std::string& raw = {},
           bool with_raw = true) {
  Msg t;
  for (int64_t d : dims) t.varint(1, static_cast<uint64_t>(d));
  t.varint(2, static_cast<uint64_t>(type)).bytes(8, name);
  if (with_raw) t.bytes(9, raw);
  return t;
}
template <typename T>
std::string raw_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
// AttributeProto: name 1, i 3, type 20 (INT = 2).
Msg int_attr(const std::string& name, int64_t v) {
  return Msg().bytes(1, name).varint(3, static_cast<uint64_t>(v)).varint(20, 2);
}
// NodeProto: input 1, output 2, name 3, op_type 4, attribute 5.
Msg node(const std::string& op, const std::vector<std::string>& in, const std::string& out,
         const std::vector<Msg>& attrs = {}) {
  Msg n;
  for (const auto& i : in) n.bytes(1, i);
  n.bytes(2, out).bytes(3, op + "_node").bytes(4, op);
  for (const auto& a : attrs) n.msg(5, a);
  return n;
}
// ValueInfoProto { name 1, type 2 { tensor_type 1 { elem_type 1, shape 2 { dim 1 { dim_value 1 } } } } }.
Msg value_info(const std::string& name, int rank) {
  Msg shape;
  for (int k = 0; k < rank; ++k) shape.msg(1, Msg().varint(1, 4));
  Msg tt;
  tt.varint(1, kFloat);
  if (rank >= 0) tt.msg(2, shape);
  return Msg().bytes(1, name).msg(2, Msg().msg(1, tt));
}
// ModelProto { ir_version 1, opset_import 8 { version 2 }, graph 7 { node 1, name 2,
// initializer 5, input 11, output 12 } } with graph input "x" (rank 4) and output "y".
std::string model(const std::vector<Msg>& nodes, const std::vector<Msg>& inits) {
  Msg g;
  for (const auto& n : nodes) g.msg(1, n);
  g.bytes(2, "g");
  for (const auto& t : inits) g.msg(5, t);
  g.msg(11, value_info("x", 4)).msg(12, value_info("y", -1));
  return Msg().varint(1, 8).msg(8, Msg().varint(2, 17)).msg(7, g).str();
}

// What the fuzz target does: read; on success analyse, equalize and write. Returns whether the
// reader accepted the model; a prequant::Error from the reader is a clean refusal.
bool read_and_process(const std::string& bytes) {
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

const prequant::Node* find(const prequant::Graph& g, prequant::OpKind kind, const std::string& op) {
  for (const auto& n : g.nodes)
    if (n.op_type == op && n.kind == kind) return &n;
  return nullptr;
}

std::string conv_weight_raw(size_t n) { return raw_of(std::vector<float>(n, 0.5f)); }

TEST(OnnxReaderRegression, EncoderBuildsAReadableModel) {
  // The encoder itself: Conv(x, W[2,4,1,1], B[2]) reads as one Conv layer.
  const std::string bytes = model(
      {node("Conv", {"x", "W", "B"}, "y")},
      {tensor("W", kFloat, {2, 4, 1, 1}, conv_weight_raw(8)), tensor("B", kFloat, {2}, conv_weight_raw(2))});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  ASSERT_NE(find(m.graph(), prequant::OpKind::Conv, "Conv"), nullptr);
  EXPECT_TRUE(read_and_process(bytes));
}

// Finding 1 (decode_numeric): a float initializer whose dims claim 2^39 values but that holds
// no data made the reader reserve 4 TB before comparing the value count with the shape
// (std::bad_alloc / ASan "requested allocation size exceeds maximum supported size").
TEST(OnnxReaderRegression, ShapeClaimingTerabytesWithoutDataIsRefused) {
  const std::string bytes = model({node("Conv", {"x", "W"}, "y")},
                                  {tensor("W", kFloat, {int64_t{1} << 20, int64_t{1} << 19, 1, 1}, {}, false)});
  try {
    (void)prequant::OnnxModel::from_bytes(bytes);
    ADD_FAILURE() << "the reader accepted a weight without data";
  } catch (const prequant::ModelFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("holds 0 values"), std::string::npos) << e.what();
  }
}

// Finding 2 (map_conv): ConvTranspose's output channel count dims(1) · group was computed
// before group was validated; a damaged shape/group overflowed int64 (UBSan: signed integer
// overflow). A group larger than the channel count (or than an int) is now refused too.
TEST(OnnxReaderRegression, ConvTransposeGroupOverflowKeepsNodeOpaque) {
  const std::string bytes = model(
      {node("ConvTranspose", {"x", "W", "B"}, "y", {int_attr("group", int64_t{1} << 62)})},
      {tensor("W", kFloat, {4, int64_t{1} << 62, 1, 1}, {}, false), tensor("B", kFloat, {4}, conv_weight_raw(4))});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node* n = find(m.graph(), prequant::OpKind::Opaque, "ConvTranspose");
  ASSERT_NE(n, nullptr);
  EXPECT_NE(n->opaque_reason.find("group"), std::string::npos) << n->opaque_reason;
  EXPECT_TRUE(read_and_process(bytes));
}

TEST(OnnxReaderRegression, GroupBeyondIntIsNotTruncated) {
  // group = 2^32 + 1 used to become 1 in the layout (int truncation) and the conv was scaled as
  // an ordinary one.
  const std::string bytes = model(
      {node("Conv", {"x", "W"}, "y", {int_attr("group", (int64_t{1} << 32) + 1)})},
      {tensor("W", kFloat, {2, 4, 1, 1}, conv_weight_raw(8))});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node* n = find(m.graph(), prequant::OpKind::Opaque, "Conv");
  ASSERT_NE(n, nullptr);
  EXPECT_NE(n->opaque_reason.find("group"), std::string::npos) << n->opaque_reason;
  EXPECT_TRUE(read_and_process(bytes));
}

// Finding 3 (map_pad): Pad's axes were converted from double to int64 unchecked; an axis of
// INT64_MAX (9.2e18 as a double rounds up to 2^63) is outside int64 (UBSan: float-cast-overflow).
TEST(OnnxReaderRegression, PadAxisOutsideInt64KeepsNodeOpaque) {
  const std::string bytes = model(
      {node("Relu", {"x"}, "r"), node("Pad", {"r", "pads", "", "axes"}, "y")},
      {tensor("pads", kInt64, {2}, raw_of(std::vector<int64_t>{1, 1})),
       tensor("axes", kInt64, {1}, raw_of(std::vector<int64_t>{std::numeric_limits<int64_t>::max()}))});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  const prequant::Node* n = find(m.graph(), prequant::OpKind::Opaque, "Pad");
  ASSERT_NE(n, nullptr);
  EXPECT_NE(n->opaque_reason.find("axes"), std::string::npos) << n->opaque_reason;
  EXPECT_TRUE(read_and_process(bytes));
}

TEST(OnnxReaderRegression, PadWithValidAxesIsStillZeroPadding) {
  const std::string bytes = model(
      {node("Relu", {"x"}, "r"), node("Pad", {"r", "pads", "", "axes"}, "y")},
      {tensor("pads", kInt64, {4}, raw_of(std::vector<int64_t>{1, 1, 1, 1})),
       tensor("axes", kInt64, {2}, raw_of(std::vector<int64_t>{2, -1}))});
  prequant::OnnxModel m = prequant::OnnxModel::from_bytes(bytes);
  EXPECT_NE(find(m.graph(), prequant::OpKind::ZeroPad, "Pad"), nullptr);
}

// Finding 4 (external data, found by review while fuzzing): the bounds check computed
// offset + length, which overflows int64 for a damaged length near INT64_MAX (UBSan: signed
// integer overflow) — and the wrapped sum then passed the check.
TEST(OnnxReaderRegression, ExternalDataLengthNearInt64MaxIsRefused) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("prequant_regression_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "w.bin", std::ios::binary) << std::string(64, '\0');
  // TensorProto: external_data 13 { key 1, value 2 }, data_location 14 (EXTERNAL = 1).
  Msg w = tensor("W", kFloat, {2, 4, 1, 1}, {}, false);
  w.msg(13, Msg().bytes(1, "location").bytes(2, "w.bin"))
      .msg(13, Msg().bytes(1, "offset").bytes(2, "8"))
      .msg(13, Msg().bytes(1, "length").bytes(2, std::to_string(std::numeric_limits<int64_t>::max())))
      .varint(14, 1);
  const std::string bytes = model({node("Conv", {"x", "W"}, "y")}, {w});
  try {
    (void)prequant::OnnxModel::from_bytes(bytes, dir.string());
    ADD_FAILURE() << "the reader accepted external data beyond the end of its file";
  } catch (const prequant::ModelFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("beyond the end"), std::string::npos) << e.what();
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace pqtest
