// onnx_io.cpp — OnnxModel: load, save, to_bytes. The work is in onnx_read.cpp (parse and map
// to the IR), onnx_write.cpp (mirror the IR's edits into a new proto) and
// onnx_external_data.cpp (external tensor data, atomic writes).
#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "onnx_model_impl.h"
#include "prequant/errors.h"
#include "prequant/onnx_io.h"

namespace prequant {

namespace fs = std::filesystem;
using namespace onnx_detail;

namespace {

// Protobuf refuses to serialize messages of 2 GB or more; stay clear of the limit.
constexpr size_t kProtoLimit = static_cast<size_t>(INT_MAX) - (size_t{64} << 20);
// What onnx.save_model uses for save_as_external_data.
constexpr int64_t kDefaultExternalThreshold = 1024;

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw ModelFormatError("cannot read '" + path + "': no such file");
  if (fs::is_directory(path, ec))
    throw ModelFormatError("cannot read '" + path + "': it is a directory, not an .onnx file");
  // Refuse before reading: protobuf cannot parse a message over 2 GB, so the bytes would be
  // read (and held twice) for nothing.
  const auto size = fs::file_size(path, ec);
  if (!ec && size > static_cast<uintmax_t>(INT_MAX))
    throw ModelFormatError("'" + path + "' is " + std::to_string(size >> 20) +
                           " MB, larger than the 2 GB protobuf can parse; save the model with its "
                           "weights as external data (onnx.save_model(model, path, "
                           "save_as_external_data=True)) and pass that .onnx file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelFormatError("cannot open '" + path + "' for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw ModelFormatError("cannot read '" + path + "': I/O error");
  return std::move(buffer).str();
}

}  // namespace

OnnxModel::OnnxModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OnnxModel::OnnxModel(OnnxModel&&) noexcept = default;
OnnxModel& OnnxModel::operator=(OnnxModel&&) noexcept = default;
OnnxModel::~OnnxModel() = default;

OnnxModel OnnxModel::load(const std::string& path) {
  const std::string bytes = read_file(path);
  fs::path dir = fs::path(path).parent_path();
  // Name the file in every message about its contents.
  try {
    return from_bytes(bytes, dir.empty() ? std::string(".") : dir.string());
  } catch (const ModelFormatError& e) {
    throw ModelFormatError("'" + path + "': " + e.what(), e.node());
  } catch (const UnsupportedError& e) {
    throw UnsupportedError("'" + path + "': " + e.what(), e.node());
  }
}

OnnxModel OnnxModel::from_bytes(std::string_view bytes, const std::string& base_dir) {
  auto impl = std::make_unique<Impl>();
  impl->base_dir = base_dir;
  impl->parse(bytes);
  impl->build_graph();
  return OnnxModel(std::move(impl));
}

Graph& OnnxModel::graph() { return impl_->graph; }
const Graph& OnnxModel::graph() const { return impl_->graph; }
int64_t OnnxModel::opset() const { return impl_->opset; }

std::string OnnxModel::to_bytes() const {
  const pb::ModelProto proto = impl_->write_proto();
  if (proto.ByteSizeLong() >= kProtoLimit)
    throw ModelFormatError("the model is larger than 2 GB and cannot be held in one protobuf; "
                           "save it to a file instead (its weights then go to external data)");
  std::string out;
  if (!proto.SerializeToString(&out)) throw ModelFormatError("cannot serialize the model");
  return out;
}

void OnnxModel::save(const std::string& path, const OnnxSaveOptions& options) const {
  pb::ModelProto proto = impl_->write_proto();
  int64_t threshold = options.external_data_threshold_bytes;
  if (threshold <= 0 && (impl_->used_external_data || proto.ByteSizeLong() >= kProtoLimit))
    threshold = kDefaultExternalThreshold;
  if (threshold > 0) {
    const fs::path target(path);
    // Never write over a data file the loaded model reads (the input would lose its weights
    // if it is not the file being replaced).
    std::string data_name = target.filename().string() + ".data";
    auto read_by_input = [&](const std::string& name) {
      std::error_code ec;
      const std::string p = fs::weakly_canonical(target.parent_path() / name, ec).string();
      return std::find(impl_->external_files.begin(), impl_->external_files.end(), p) !=
             impl_->external_files.end();
    };
    for (int k = 1; read_by_input(data_name); ++k)
      data_name = target.filename().string() + "." + std::to_string(k) + ".data";
    const std::string data = externalize_initializers(proto, data_name, threshold);
    if (!data.empty()) {
      fs::path dir = target.parent_path();
      write_file_atomically((dir / data_name).string(), data);
    }
  }
  if (proto.ByteSizeLong() >= kProtoLimit)
    throw ModelFormatError("'" + path + "': even with its initializers in external data the model "
                           "is larger than 2 GB");
  std::string bytes;
  if (!proto.SerializeToString(&bytes)) throw ModelFormatError("cannot serialize the model");
  write_file_atomically(path, bytes);
}

}  // namespace prequant
