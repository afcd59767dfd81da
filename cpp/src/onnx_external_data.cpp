// onnx_external_data.cpp — ONNX external tensor data, and atomic file writes.
//
// Reading: a tensor with data_location EXTERNAL names a file (`location`, relative to the
// model's directory), an `offset` and a `length`. The bytes are read into raw_data so the rest
// of the engine sees an ordinary tensor. Locations that are absolute or leave the model's
// directory are refused (a model file must not make the tool read arbitrary files).
// Writing: initializers of at least a threshold size go to one data file next to the model,
// each at a 64-byte aligned offset. Every file is written to a temporary name in its
// destination directory, flushed to disk and renamed, so a reader never sees a partial file.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onnx_model_impl.h"
#include "prequant/errors.h"

namespace prequant {
namespace onnx_detail {

namespace fs = std::filesystem;

namespace {

struct ExternalRef {
  std::string location;
  int64_t offset = 0;
  int64_t length = -1;
};

ExternalRef parse_ref(const pb::TensorProto& t) {
  ExternalRef ref;
  for (const auto& kv : t.external_data()) {
    try {
      if (kv.key() == "location") ref.location = kv.value();
      else if (kv.key() == "offset") ref.offset = std::stoll(kv.value());
      else if (kv.key() == "length") ref.length = std::stoll(kv.value());
    } catch (const std::exception&) {
      throw ModelFormatError("tensor '" + t.name() + "': external data field '" + kv.key() +
                             "' is '" + kv.value() + "', not a number; the model is damaged");
    }
  }
  if (ref.location.empty())
    throw ModelFormatError("tensor '" + t.name() +
                           "' is stored externally but names no location; the model is damaged");
  if (ref.offset < 0 || ref.length < -1)
    throw ModelFormatError("tensor '" + t.name() + "': negative external data offset or length");
  return ref;
}

class ExternalReader {
 public:
  explicit ExternalReader(std::string base_dir) : base_(std::move(base_dir)) {}
  ~ExternalReader() {
    for (auto& [path, f] : files_)
      if (f.file) std::fclose(f.file);
  }

  void resolve(pb::TensorProto& t) {
    const ExternalRef ref = parse_ref(t);
    const fs::path rel(ref.location);
    if (rel.is_absolute() || std::any_of(rel.begin(), rel.end(), [](const fs::path& p) { return p == ".."; }))
      throw ModelFormatError("tensor '" + t.name() + "': external data location '" + ref.location +
                             "' is outside the model's directory; keep data files next to the model");
    if (base_.empty())
      throw ModelFormatError("tensor '" + t.name() + "' keeps its data in external file '" +
                             ref.location + "'; load the model from its file (or give the "
                             "directory that holds the data files)");
    const fs::path path = fs::path(base_) / rel;
    OpenFile& f = open(path, t.name());
    const int64_t length = ref.length >= 0 ? ref.length : f.size - ref.offset;
    // length > size - offset, not offset + length > size: a damaged length near INT64_MAX
    // must not overflow the sum.
    if (ref.offset > f.size || length < 0 || length > f.size - ref.offset)
      throw ModelFormatError("tensor '" + t.name() + "': external data at offset " +
                             std::to_string(ref.offset) + ", length " + std::to_string(length) +
                             " lies beyond the end of '" + path.string() + "' (" +
                             std::to_string(f.size) + " bytes); the data file is truncated or "
                             "belongs to another model");
    std::string bytes(static_cast<size_t>(length), '\0');
    if (length > 0) {
      if (fseeko(f.file, static_cast<off_t>(ref.offset), SEEK_SET) != 0 ||
          std::fread(bytes.data(), 1, bytes.size(), f.file) != bytes.size())
        throw ModelFormatError("tensor '" + t.name() + "': cannot read " + std::to_string(length) +
                               " bytes of external data from '" + path.string() + "': " +
                               std::strerror(errno));
    }
    t.clear_external_data();
    t.clear_data_location();
    t.set_raw_data(std::move(bytes));
  }

  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto& [path, f] : files_) {
      std::error_code ec;
      const fs::path canonical = fs::weakly_canonical(path, ec);
      out.push_back(ec ? path : canonical.string());
    }
    return out;
  }

 private:
  struct OpenFile {
    std::FILE* file = nullptr;
    int64_t size = 0;
  };
  std::string base_;
  std::unordered_map<std::string, OpenFile> files_;

  OpenFile& open(const fs::path& path, const std::string& tensor) {
    auto it = files_.find(path.string());
    if (it != files_.end()) return it->second;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      throw ModelFormatError("tensor '" + tensor + "' keeps its data in '" + path.string() +
                             "', which does not exist; copy the data file next to the model");
    OpenFile f;
    f.size = static_cast<int64_t>(fs::file_size(path, ec));
    f.file = std::fopen(path.c_str(), "rb");
    if (!f.file || ec)
      throw ModelFormatError("tensor '" + tensor + "': cannot open external data file '" +
                             path.string() + "': " + std::strerror(errno));
    return files_.emplace(path.string(), f).first->second;
  }
};

template <typename Fn>
void for_each_tensor(pb::GraphProto& root, Fn&& fn) {
  std::vector<pb::GraphProto*> stack{&root};
  while (!stack.empty()) {
    pb::GraphProto* g = stack.back();
    stack.pop_back();
    for (auto& t : *g->mutable_initializer()) fn(t);
    for (auto& s : *g->mutable_sparse_initializer()) {
      fn(*s.mutable_values());
      fn(*s.mutable_indices());
    }
    for (auto& n : *g->mutable_node())
      for (auto& a : *n.mutable_attribute()) {
        if (a.has_t()) fn(*a.mutable_t());
        for (auto& t : *a.mutable_tensors()) fn(t);
        if (a.has_g()) stack.push_back(a.mutable_g());
        for (auto& sg : *a.mutable_graphs()) stack.push_back(&sg);
      }
  }
}

}  // namespace

std::vector<std::string> load_external_data(pb::ModelProto& model, const std::string& base_dir) {
  ExternalReader reader(base_dir);
  auto visit = [&](pb::TensorProto& t) {
    if (t.data_location() != pb::TensorProto::EXTERNAL) return;
    reader.resolve(t);
  };
  for_each_tensor(*model.mutable_graph(), visit);
  for (auto& f : *model.mutable_functions())
    for (auto& n : *f.mutable_node())
      for (auto& a : *n.mutable_attribute())
        if (a.has_t()) visit(*a.mutable_t());
  return reader.files();
}

std::string externalize_initializers(pb::ModelProto& model, const std::string& data_name,
                                     int64_t threshold) {
  auto moves = [&](const pb::TensorProto& t) {
    return t.has_raw_data() && static_cast<int64_t>(t.raw_data().size()) >= threshold;
  };
  // Reserve the whole file: growing a multi-GB string by doubling would hold up to twice the
  // weights at once (and copy them) on top of the model.
  size_t total = 0;
  for (const auto& t : model.graph().initializer())
    if (moves(t)) total = (total + 63) / 64 * 64 + t.raw_data().size();
  std::string data;
  data.reserve(total);
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    if (!moves(t)) continue;
    while (data.size() % 64) data.push_back('\0');
    const size_t offset = data.size();
    data += t.raw_data();
    t.clear_raw_data();
    t.clear_external_data();
    auto add = [&](const char* key, const std::string& value) {
      auto* kv = t.add_external_data();
      kv->set_key(key);
      kv->set_value(value);
    };
    add("location", data_name);
    add("offset", std::to_string(offset));
    add("length", std::to_string(data.size() - offset));
    t.set_data_location(pb::TensorProto::EXTERNAL);
  }
  return data;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (fs::is_directory(target, ec))
    throw ModelFormatError("cannot write '" + path + "': it is a directory");
  std::string leaf = ".";
  leaf += target.filename().string();
  leaf += ".prequant-XXXXXX";
  std::string tmpl = (dir / leaf).string();
  const int fd = mkstemp(tmpl.data());
  if (fd < 0)
    throw ModelFormatError("cannot write '" + path + "': cannot create a temporary file in '" +
                           dir.string() + "': " + std::strerror(errno));
  auto fail = [&](const std::string& what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmpl.c_str());
    throw ModelFormatError("cannot write '" + path + "': " + what + ": " + std::strerror(err));
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("write failed");
    }
    done += static_cast<size_t>(w);
  }
  const mode_t mask = ::umask(0);
  ::umask(mask);
  if (::fchmod(fd, 0666 & ~mask) != 0) fail("chmod failed");
  if (::fsync(fd) != 0) fail("fsync failed");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmpl.c_str());
    throw ModelFormatError("cannot write '" + path + "': close failed: " + std::strerror(err));
  }
  if (std::rename(tmpl.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmpl.c_str());
    throw ModelFormatError("cannot write '" + path + "': rename failed: " + std::strerror(err));
  }
}

}  // namespace onnx_detail
}  // namespace prequant
