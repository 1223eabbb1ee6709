// PyTorch checkpoint reader (torch.save's zip format, torch >= 1.6), and the
// format sniffing of read_tensor_file.
//
// Layout, per torch/serialization.py (_save / _load): a zip whose entries share
// one prefix (the file stem, or "archive/" when saved to a file object):
// <prefix>/data.pkl is a pickle of the object, in which every storage is a
// persistent id ('storage', torch.<Type>Storage, key, location, numel) whose
// bytes are the entry <prefix>/data/<key>; tensors are
// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
// requires_grad, backward_hooks[, metadata]), offsets and strides in elements.
// The pickle is read by the restricted unpickler of pickle.h.
#include <algorithm>
#include <cstring>
#include <limits>

#include "taiyi/io/mapped_file.h"
#include "taiyi/io/pickle.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/io/zip_archive.h"

namespace taiyi::io {

namespace {

using pickle::Kind;
using pickle::Value;
using pickle::ValuePtr;

struct StorageType {
  std::string_view global;
  DType dtype;
};
constexpr StorageType kStorageTypes[] = {{"torch.FloatStorage", DType::F32},     {"torch.HalfStorage", DType::F16},
                                         {"torch.BFloat16Storage", DType::BF16}, {"torch.LongStorage", DType::I64},
                                         {"torch.IntStorage", DType::I32},       {"torch.ByteStorage", DType::U8}};

// Element counts beyond this cannot be a real tensor and could overflow byte arithmetic.
constexpr int64_t kMaxElements = int64_t{1} << 58;

// "int 7", "str 'abc'", "list", "global 'x.y'", "call of torch._utils._rebuild_tensor_v2": for messages.
std::string describe_value(const Value& v) {
  switch (v.kind) {
    case Kind::Int: return "int " + std::to_string(v.integer);
    case Kind::String:
    case Kind::Global: return std::string(pickle::kind_name(v.kind)) + " '" + v.text + "'";
    case Kind::Call: return "call of " + v.callee->text;
    default: return pickle::kind_name(v.kind);
  }
}

class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path) : path_(path), zip_(MappedFile::open(path)) {}

  TensorMap read() {
    // The prefix varies ("archive/", "pytorch_model/", "diffusion_pytorch_model/", ...): find it from data.pkl.
    std::vector<const ZipArchive::Entry*> pickles;
    for (const auto& e : zip_.entries()) {
      const std::string_view n = e.name;
      if (n.size() > 9 && n.ends_with("/data.pkl")) pickles.push_back(&e);
    }
    if (pickles.empty())
      throw Error(path_ + ": zip archive has no '<prefix>/data.pkl' entry (not a PyTorch checkpoint)");
    if (pickles.size() > 1)
      throw Error(path_ + ": zip archive has several data.pkl entries ('" + pickles[0]->name + "', '" +
                  pickles[1]->name + "'); expected one PyTorch checkpoint");
    prefix_ = pickles[0]->name.substr(0, pickles[0]->name.size() - 8);  // keeps the trailing '/'

    // torch >= 2.1 records the byte order; storages are read as little-endian.
    if (const ZipArchive::Entry* bo = zip_.find(prefix_ + "byteorder")) {
      auto s = zip_.read(*bo);
      const std::string order(reinterpret_cast<const char*>(s->data()), std::min<size_t>(s->bytes(), 16));
      if (order != "little" || s->bytes() != 6)
        throw Error(path_ + ": checkpoint byte order is '" + order + "'; only little-endian checkpoints are supported");
    }

    auto pkl = zip_.read(*pickles[0]);
    const ValuePtr root = pickle::unpickle({pkl->data(), pkl->bytes()}, path_);
    if (root->kind != Kind::Dict)
      throw Error(path_ + ": the checkpoint holds " + describe_value(*root) +
                  ", expected a state dict (a dict of name -> tensor)");

    // A Lightning .ckpt wraps the state dict: {"state_dict": {...}, "epoch": 3, "global_step": 1000, ...}.
    const Value* state_dict = root.get();
    for (const auto& [k, v] : root->entries)
      if (k->is_string("state_dict") && v->kind == Kind::Dict) state_dict = v.get();
    std::string in;
    if (state_dict != root.get()) {
      in = " in state_dict";
      for (const auto& [k, v] : root->entries) {
        if (v.get() == state_dict) continue;
        const bool plain = v->kind == Kind::None || v->kind == Kind::Bool || v->kind == Kind::Int ||
                           v->kind == Kind::Float || v->kind == Kind::String;
        if (!plain)
          throw Error(path_ + ": Lightning checkpoint entry " + describe_value(*k) + " holds " + describe_value(*v) +
                      "; only 'state_dict' and plain values (int, str, ...) are supported next to it");
      }
    }

    TensorMap out;
    for (const auto& [k, v] : state_dict->entries) {
      if (k->kind != Kind::String)
        throw Error(path_ + ": state dict key is " + describe_value(*k) + ", expected a str");
      if (!is_tensor(*v))
        throw Error(path_ + ": '" + k->text + "'" + in + " holds " + describe_value(*v) + ", not a tensor");
      out[k->text] = tensor(*v, k->text);
    }
    return out;
  }

 private:
  static bool is_call(const Value& v, std::string_view fn) { return v.kind == Kind::Call && v.callee->is_global(fn); }
  static bool is_tensor(const Value& v) {
    return is_call(v, "torch._utils._rebuild_tensor_v2") || is_call(v, "torch._utils._rebuild_parameter");
  }

  Tensor tensor(const Value& v, const std::string& key) {
    const std::string where = path_ + ": tensor '" + key + "'";
    if (is_call(v, "torch._utils._rebuild_parameter")) {
      // _rebuild_parameter(data, requires_grad, backward_hooks): a Parameter is its data tensor.
      if (v.items.size() != 3 || !is_call(*v.items[0], "torch._utils._rebuild_tensor_v2"))
        throw Error(where + ": _rebuild_parameter needs (tensor, requires_grad, backward_hooks)");
      return tensor(*v.items[0], key);
    }
    if (v.items.size() != 6 && v.items.size() != 7)
      throw Error(where + ": _rebuild_tensor_v2 called with " + std::to_string(v.items.size()) +
                  " arguments, expected 6 or 7");
    const Value& pid = *v.items[0];
    const Value& offset = *v.items[1];
    const Value& size = *v.items[2];
    const Value& stride = *v.items[3];
    if (pid.kind != Kind::PersistentId)
      throw Error(where + ": storage argument is " + describe_value(pid) + ", expected a persistent id");
    if (offset.kind != Kind::Int || offset.integer < 0)
      throw Error(where + ": storage offset is " + describe_value(offset) + ", expected an int >= 0");
    auto ints = [&](const Value& t, const char* what) {
      if (t.kind != Kind::Tuple) throw Error(where + ": " + what + " is " + describe_value(t) + ", expected a tuple");
      std::vector<int64_t> r;
      for (const auto& x : t.items) {
        if (x->kind != Kind::Int || x->integer < 0 || x->integer > kMaxElements)
          throw Error(where + ": " + what + " holds " + describe_value(*x) + ", expected ints in [0, 2^58]");
        r.push_back(x->integer);
      }
      return r;
    };
    const Shape shape = ints(size, "size");
    const Strides strides = ints(stride, "stride");
    if (shape.size() != strides.size())
      throw Error(where + ": size " + shape_str(shape) + " and stride " + shape_str(strides) + " differ in length");

    const LoadedStorage& st = storage(pid, where);
    // Check the view in elements before Tensor::from_storage does byte arithmetic on it.
    int64_t numel = 1, last = offset.integer;
    bool overflow = false;
    for (size_t i = 0; i < shape.size(); ++i) {
      int64_t span = 0;
      overflow = overflow || __builtin_mul_overflow(numel, shape[i], &numel) || numel > kMaxElements;
      if (shape[i] > 0)
        overflow = overflow || __builtin_mul_overflow(shape[i] - 1, strides[i], &span) ||
                   __builtin_add_overflow(last, span, &last);
    }
    if (overflow || (numel > 0 && last >= st.numel) || offset.integer > st.numel)
      throw Error(where + ": view of size " + shape_str(shape) + ", stride " + shape_str(strides) +
                  " at storage offset " + std::to_string(offset.integer) + " reaches past the end of its storage of " +
                  std::to_string(st.numel) + " elements ('" + st.entry + "')");
    return Tensor::from_storage(st.storage, static_cast<size_t>(offset.integer) * dtype_size(st.dtype), shape, strides,
                                st.dtype);
  }

  struct LoadedStorage {
    std::shared_ptr<Storage> storage;
    DType dtype;
    int64_t numel;
    std::string entry;
  };

  // Resolves ('storage', torch.<Type>Storage, key, location, numel) to the bytes of <prefix>/data/<key>.
  const LoadedStorage& storage(const Value& pid_value, const std::string& where) {
    const Value& pid = *pid_value.items.at(0);
    if (pid.kind != Kind::Tuple || pid.items.size() != 5 || !pid.items[0]->is_string("storage"))
      throw Error(where + ": persistent id is " + describe_value(pid) +
                  ", expected ('storage', type, key, location, numel)");
    const Value& type = *pid.items[1];
    const Value& key = *pid.items[2];
    const Value& location = *pid.items[3];
    const Value& numel = *pid.items[4];
    const StorageType* st = nullptr;
    for (const auto& s : kStorageTypes)
      if (type.is_global(s.global)) st = &s;
    if (!st) throw Error(where + ": storage type is " + describe_value(type) + ", expected a torch.*Storage");
    if (key.kind != Kind::String || location.kind != Kind::String)
      throw Error(where + ": storage key and location must be strings");
    if (numel.kind != Kind::Int || numel.integer < 0 || numel.integer > kMaxElements)
      throw Error(where + ": storage size is " + describe_value(numel) + ", expected an int in [0, 2^58]");

    auto it = storages_.find(key.text);
    if (it != storages_.end()) {
      if (it->second.dtype != st->dtype || it->second.numel != numel.integer)
        throw Error(where + ": storage '" + key.text + "' is declared again with a different type or size");
      return it->second;
    }
    const std::string name = prefix_ + "data/" + key.text;
    const ZipArchive::Entry* e = zip_.find(name);
    if (!e) throw Error(where + ": storage entry '" + name + "' is missing from the archive");
    const uint64_t es = dtype_size(st->dtype);
    const uint64_t need = static_cast<uint64_t>(numel.integer) * es;
    if (e->size < need)
      throw Error(where + ": storage entry '" + name + "' has " + std::to_string(e->size) + " bytes, fewer than the " +
                  std::to_string(need) + " its " + std::to_string(numel.integer) + " " + dtype_name(st->dtype) +
                  " elements need");
    auto bytes = zip_.read(*e);
    // Typed access through a misaligned pointer is UB: copy such a storage (zips not written by torch, which
    // pads every entry to 64 bytes).
    if (reinterpret_cast<uintptr_t>(bytes->data()) % es != 0) {
      auto owned = Storage::allocate(static_cast<size_t>(need));
      if (need) std::memcpy(owned->data(), bytes->data(), static_cast<size_t>(need));
      bytes = std::move(owned);
    }
    return storages_[key.text] = LoadedStorage{std::move(bytes), st->dtype, numel.integer, name};
  }

  std::string path_;
  ZipArchive zip_;
  std::string prefix_;
  std::map<std::string, LoadedStorage> storages_;
};

}  // namespace

TensorMap read_torch_checkpoint(const std::string& path) { return CheckpointReader(path).read(); }

TensorMap read_tensor_file(const std::string& path) {
  unsigned char head[9] = {};
  size_t size = 0;
  {
    auto file = MappedFile::open(path);
    size = file->size();
    if (size) std::memcpy(head, file->data(), std::min<size_t>(size, sizeof head));
  }
  if (size >= 4 && head[0] == 'P' && head[1] == 'K' &&
      ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
    return read_torch_checkpoint(path);
  // torch < 1.6 wrote a bare pickle stream (PROTO 2 first). A safetensors header length may also start with
  // 0x80 0x02, but then its JSON begins at byte 8.
  if (size >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5 && !(size > 8 && head[8] == '{'))
    throw Error(path +
                ": legacy (pre-1.6, non-zip) PyTorch checkpoint format is not supported; re-save it with "
                "torch>=1.6 (torch.save(torch.load(f), new_f)) or convert it to safetensors");
  return read_safetensors(path);
}

}  // namespace taiyi::io
