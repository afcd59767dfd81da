// prequant/onnx_io.h — read an ONNX model into the engine's Graph and write it back.
//
// Before: an .onnx file (or its bytes), possibly with external data, as torch.onnx.export
//         writes it (opsets 13–20).
// After:  an OnnxModel that owns the parsed model and a float buffer per floating initializer;
//         graph() views those buffers. Passes change the buffers and the graph; save() writes
//         the model with every change applied (removed BatchNormalization nodes, added biases,
//         Clip replaced by Relu or by Relu + per-channel Min, unrolled initializers), leaving
//         every node, attribute and opset domain the engine does not understand untouched.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "prequant/graph.h"

namespace prequant {

struct OnnxSaveOptions {
  // Write initializers at least this large to an external data file next to the model.
  // 0 = only when the model would exceed protobuf's 2 GB limit, or the input used external data.
  int64_t external_data_threshold_bytes = 0;
};

class OnnxModel {
 public:
  // Throws ModelFormatError (unreadable, truncated, missing external data or initializers)
  // or UnsupportedError (opset or data type the engine cannot handle).
  static OnnxModel load(const std::string& path);
  static OnnxModel from_bytes(std::string_view bytes, const std::string& base_dir = {});

  OnnxModel(OnnxModel&&) noexcept;
  OnnxModel& operator=(OnnxModel&&) noexcept;
  ~OnnxModel();

  Graph& graph();
  const Graph& graph() const;

  // Writes atomically: a temporary file in the destination directory, then rename.
  void save(const std::string& path, const OnnxSaveOptions& options = {}) const;
  std::string to_bytes() const;

  // Opset of the default ONNX domain.
  int64_t opset() const;

 private:
  struct Impl;
  explicit OnnxModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace prequant
