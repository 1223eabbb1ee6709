// safetensors reader and writer. Format: https://github.com/huggingface/safetensors
// (README, "Format"): an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to its start.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "taiyi/io/mapped_file.h"
#include "taiyi/io/tensor_file.h"

namespace taiyi::io {

namespace {

// The Rust library's own limit; a real header is a few hundred KB at most.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeName {
  const char* name;
  DType dtype;
};
// BOOL is one byte per element (0 or 1), read as U8. F64, I8, I16, U16, U32, U64, F8_* are refused.
constexpr DTypeName kDTypeNames[] = {{"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
                                     {"I64", DType::I64}, {"I32", DType::I32}, {"U8", DType::U8},
                                     {"BOOL", DType::U8}};

const char* safetensors_name(DType t) {
  for (const auto& d : kDTypeNames)
    if (d.dtype == t) return d.name;
  return "?";
}

using nlohmann::json;

// The parsed and validated header of one file.
struct Header {
  std::shared_ptr<const MappedFile> file;
  json object;
  uint64_t data_start = 0;
  uint64_t data_size = 0;
};

Header parse_header(const std::string& path) {
  Header h;
  h.file = MappedFile::open(path);
  const uint64_t size = h.file->size();
  if (size < 8)
    throw Error(path + ": file is " + std::to_string(size) +
                " bytes, shorter than the 8-byte safetensors header length (not a safetensors file?)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<uint8_t>(h.file->data()[i]);
  if (n > kMaxHeaderBytes)
    throw Error(path + ": safetensors header length " + std::to_string(n) + " is absurdly large (limit " +
                std::to_string(kMaxHeaderBytes) + " bytes; not a safetensors file?)");
  if (n > size - 8)
    throw Error(path + ": safetensors header length " + std::to_string(n) + " runs past the end of the file (" +
                std::to_string(size) + " bytes; truncated file?)");
  const char* begin = reinterpret_cast<const char*>(h.file->data()) + 8;
  try {
    h.object = json::parse(begin, begin + n);
  } catch (const json::parse_error& e) {
    throw Error(path + ": safetensors header is not valid JSON (" + e.what() + ")");
  }
  if (!h.object.is_object())
    throw Error(path + ": safetensors header is a JSON " + std::string(h.object.type_name()) + ", expected an object");
  h.data_start = 8 + n;
  h.data_size = size - h.data_start;
  return h;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const Header& h) {
  std::map<std::string, std::string> meta;
  auto it = h.object.find("__metadata__");
  if (it == h.object.end()) return meta;
  if (!it->is_object())
    throw Error(path + ": safetensors __metadata__ is a JSON " + std::string(it->type_name()) +
                ", expected an object of strings");
  for (const auto& [k, v] : it->items()) {
    if (!v.is_string())
      throw Error(path + ": safetensors __metadata__ entry '" + k + "' is a JSON " + std::string(v.type_name()) +
                  ", expected a string");
    meta[k] = v.get<std::string>();
  }
  return meta;
}

// A JSON value that must be a non-negative integer; `what` names it for the message.
uint64_t unsigned_field(const std::string& where, const json& v, const std::string& what) {
  if (!v.is_number_unsigned())
    throw Error(where + ": " + what + " is " +
                (v.is_number_integer() ? "negative" : "a JSON " + std::string(v.type_name())) +
                ", expected a non-negative integer");
  return v.get<uint64_t>();
}

}  // namespace

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  return parse_metadata(path, parse_header(path));
}

TensorMap read_safetensors(const std::string& path) {
  const Header h = parse_header(path);
  parse_metadata(path, h);
  std::byte* data = const_cast<std::byte*>(h.file->data()) + h.data_start;
  // One borrowed storage for the whole data section; every aligned tensor is a view of it.
  auto section = Storage::borrow_file_pages(data, static_cast<size_t>(h.data_size), h.file);

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  TensorMap out;
  for (const auto& [name, info] : h.object.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    if (!info.is_object())
      throw Error(where + ": header entry is a JSON " + std::string(info.type_name()) + ", expected an object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!info.contains(field)) throw Error(where + ": header entry has no \"" + field + "\"");

    const json& jd = info["dtype"];
    if (!jd.is_string())
      throw Error(where + ": \"dtype\" is a JSON " + std::string(jd.type_name()) + ", expected a string");
    const std::string dname = jd.get<std::string>();
    const DTypeName* dt = nullptr;
    for (const auto& d : kDTypeNames)
      if (dname == d.name) dt = &d;
    if (!dt) throw Error(where + ": unsupported dtype '" + dname + "' (supported: F32, F16, BF16, I64, I32, U8, BOOL)");
    const DType dtype = dt->dtype;
    const uint64_t es = dtype_size(dtype);

    const json& js = info["shape"];
    if (!js.is_array())
      throw Error(where + ": \"shape\" is a JSON " + std::string(js.type_name()) + ", expected an array");
    Shape shape;
    uint64_t numel = 1;
    for (size_t i = 0; i < js.size(); ++i) {
      const uint64_t d = unsigned_field(where, js[i], "shape[" + std::to_string(i) + "]");
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(numel, d, &numel))
        throw Error(where + ": shape " + js.dump() + " is too large (element count overflows)");
      shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t nbytes = 0;
    if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, es, &nbytes))
      throw Error(where + ": shape " + js.dump() + " is too large (byte count overflows)");

    const json& jo = info["data_offsets"];
    if (!jo.is_array() || jo.size() != 2)
      throw Error(where + ": \"data_offsets\" is " + jo.dump() + ", expected [begin, end]");
    const uint64_t begin = unsigned_field(where, jo[0], "data_offsets[0]");
    const uint64_t end = unsigned_field(where, jo[1], "data_offsets[1]");
    if (begin > end)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] has begin > end");
    if (end > h.data_size)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] lie outside the data section of " + std::to_string(h.data_size) + " bytes (truncated file?)");
    if (end - begin != nbytes)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] hold " +
                  std::to_string(end - begin) + " bytes, but shape " + js.dump() + " of " + dname + " needs " +
                  std::to_string(nbytes));
    if (begin != end) ranges.push_back({begin, end, &name});

    const Strides strides = contiguous_strides(shape);
    // Typed access through a misaligned pointer is UB: such tensors get an aligned copy.
    if (reinterpret_cast<uintptr_t>(data + begin) % es != 0) {
      auto owned = Storage::allocate(static_cast<size_t>(nbytes));
      if (nbytes) std::memcpy(owned->data(), data + begin, static_cast<size_t>(nbytes));
      out[name] = Tensor::from_storage(std::move(owned), 0, shape, strides, dtype);
    } else {
      out[name] = Tensor::from_storage(section, static_cast<size_t>(begin), shape, strides, dtype);
    }
  }

  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end)
      throw Error(path + ": tensors '" + *ranges[i - 1].name + "' and '" + *ranges[i].name +
                  "' overlap (data_offsets [" + std::to_string(ranges[i - 1].begin) + ", " +
                  std::to_string(ranges[i - 1].end) + "] and [" + std::to_string(ranges[i].begin) + ", " +
                  std::to_string(ranges[i].end) + "])");
  return out;
}

namespace {

// Owns the temporary file until it is renamed into place; removes it on any failure.
class TempFile {
 public:
  explicit TempFile(const std::string& path) : path_(path), tmp_(path + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(path_ + ": cannot create " + tmp_ + ": " + std::strerror(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd_, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw Error(path_ + ": cannot write " + tmp_ + ": " + std::strerror(errno));
      c += w;
      n -= static_cast<size_t>(w);
    }
  }
  void commit() {
    if (::fsync(fd_) != 0) throw Error(path_ + ": cannot flush " + tmp_ + ": " + std::strerror(errno));
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) throw Error(path_ + ": cannot close " + tmp_ + ": " + std::strerror(errno));
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
      throw Error(path_ + ": cannot rename " + tmp_ + " into place: " + std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps __metadata__ first and the tensors in the order their data is written.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  // Data laid out by element size (largest first), then name, as the Rust library does, so every
  // tensor stays aligned to its element size and reads back zero-copy.
  std::vector<std::pair<std::string, Tensor>> order(tensors.begin(), tensors.end());
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    const size_t sa = a.second.defined() ? dtype_size(a.second.dtype()) : 0;
    const size_t sb = b.second.defined() ? dtype_size(b.second.dtype()) : 0;
    return sa > sb;
  });
  std::vector<Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    if (name == "__metadata__") throw Error(path + ": '__metadata__' cannot be a tensor name");
    if (!t.defined()) throw Error(path + ": tensor '" + name + "' is undefined");
    contiguous.push_back(t.contiguous());
    const uint64_t nbytes = t.nbytes();
    header[name] = {
        {"dtype", safetensors_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not valid UTF-8
    throw Error(path + ": cannot write the safetensors header: " + e.what());
  }
  // Pad with spaces so the data section starts 8-byte aligned (the header length field is 8 bytes).
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  TempFile out(path);
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const Tensor& t : contiguous)
    if (t.nbytes()) out.write(t.raw_data(), t.nbytes());
  out.commit();
}

}  // namespace taiyi::io
