// fuzz_onnx_reader.cpp — libFuzzer target for the ONNX reader (build with -DPREQUANT_FUZZ=ON,
// clang only; scripts/sanitize.sh builds and runs it under ASan + UBSan).
//
// Input:  arbitrary bytes, handed to OnnxModel::from_bytes as if they were an .onnx file.
// Checks: on a model the reader accepts, the read-only analyses (find_batch_norm_folds,
//         find_cls_sets under every ReLU6 policy), the full equalize_model pipeline and the
//         writer (to_bytes, then reading the written bytes back) run as well.
// Expected: bad input is refused with a prequant::Error (ModelFormatError, UnsupportedError,
//         GraphError, InvalidParameterError, ...). Anything else is a finding: a crash, an
//         ASan/UBSan report, a timeout, or any other exception type escaping (std::out_of_range,
//         std::bad_alloc, std::length_error, ...), which this target turns into an abort.
//
// No base directory is given, so a model naming external data is refused and the fuzzer never
// reads files from disk.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "prequant/errors.h"
#include "prequant/onnx_io.h"
#include "prequant/passes.h"

namespace {

[[noreturn]] void finding(const char* stage, const char* what) {
  std::fprintf(stderr, "fuzz_onnx_reader: unexpected exception in %s: %s\n", stage, what);
  std::abort();
}

// Runs fn; a prequant::Error is an accepted refusal (returns false), anything else aborts.
template <typename Fn>
bool expect_ok_or_error(const char* stage, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const prequant::Error&) {
    return false;
  } catch (const std::exception& e) {
    finding(stage, e.what());
  } catch (...) {
    finding(stage, "(not a std::exception)");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    prequant::OnnxModel model = prequant::OnnxModel::from_bytes(bytes);
    const prequant::Graph& graph = model.graph();
    expect_ok_or_error("find_batch_norm_folds", [&] { (void)prequant::find_batch_norm_folds(graph); });
    for (auto policy : {prequant::Relu6Policy::Bound, prequant::Relu6Policy::Replace,
                        prequant::Relu6Policy::Skip})
      expect_ok_or_error("find_cls_sets", [&] { (void)prequant::find_cls_sets(graph, policy); });
    expect_ok_or_error("to_bytes (unchanged)", [&] { (void)model.to_bytes(); });
    expect_ok_or_error("equalize_model", [&] { (void)prequant::equalize_model(model.graph()); });
    std::string out;
    if (expect_ok_or_error("to_bytes (equalized)", [&] { out = model.to_bytes(); }))
      // What the writer produced must read back (or be refused cleanly, never crash).
      expect_ok_or_error("from_bytes (written)", [&] { (void)prequant::OnnxModel::from_bytes(out); });
  } catch (const prequant::Error&) {
    // The reader refused the input: expected for most fuzzed bytes.
  } catch (const std::exception& e) {
    finding("from_bytes", e.what());
  } catch (...) {
    finding("from_bytes", "(not a std::exception)");
  }
  return 0;
}
