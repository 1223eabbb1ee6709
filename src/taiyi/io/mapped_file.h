// A whole file mapped read-only into memory (POSIX mmap), the backing of every
// zero-copy tensor read from a weight file.
//
// The mapping lives as long as the MappedFile; tensors that borrow its bytes
// hold a shared_ptr to it (Storage::borrow's keep-alive), so it goes away when
// the last such tensor does. The pages are PROT_READ: writing through a tensor
// that views them faults, which is intended (weights are never modified in place).
//
//   auto file = MappedFile::open("unet/diffusion_pytorch_model.safetensors");
//   std::span<const std::byte> bytes = file->bytes();
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace taiyi::io {

class MappedFile {
 public:
  // Throws taiyi::Error naming `path` if it is missing, not a regular file or
  // cannot be mapped. An empty file gives an empty span.
  static std::shared_ptr<const MappedFile> open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace taiyi::io
