// A minimal reader for the zip archives torch.save writes (.bin, .pt, .ckpt).
//
// Follows PKWARE's APPNOTE.TXT (6.3.x): end-of-central-directory search, the
// zip64 end record and locator, zip64 extra fields (real SD checkpoints pass
// 4 GiB), the central directory and a consistency check of each local header.
// Only what PyTorch and Python's zipfile write is accepted: stored entries
// (method 0), which are returned as zero-copy views of the mapped file, and
// deflated ones (method 8), inflated with zlib into owned memory. Encryption,
// multi-disk archives and other methods are refused. Every offset and size is
// checked against the file, so a truncated or hostile archive gives an Error,
// never an out-of-bounds read.
//
//   ZipArchive zip(MappedFile::open(path));
//   if (const ZipArchive::Entry* e = zip.find("archive/data.pkl")) auto bytes = zip.read(*e);
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "taiyi/io/mapped_file.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::io {

class ZipArchive {
 public:
  struct Entry {
    std::string name;
    uint16_t method = 0;  // 0 stored, 8 deflated
    uint16_t flags = 0;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t size = 0;
    uint64_t local_header_offset = 0;
  };

  // Parses the central directory; throws Error (message starts with the path) if it is malformed.
  explicit ZipArchive(std::shared_ptr<const MappedFile> file);

  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(std::string_view name) const;  // nullptr if absent
  // The entry's bytes: a borrowed view of the mapping (stored) or an owned,
  // inflated and CRC-checked copy (deflated). Either way 64-byte alignment is
  // not guaranteed for borrowed views; callers check before typed access.
  std::shared_ptr<Storage> read(const Entry& entry) const;
  const std::string& path() const { return file_->path(); }

 private:
  // Offset of the entry's data in the file, after checking its local header.
  uint64_t data_offset(const Entry& entry) const;

  std::shared_ptr<const MappedFile> file_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
};

}  // namespace taiyi::io
