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
#include "onnx_test_encoder.h"

namespace pqtest {
namespace {

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
