// Zip reader for torch.save archives; format per PKWARE APPNOTE.TXT 6.3.x. See zip_archive.h.
#include "taiyi/io/zip_archive.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace taiyi::io {

namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr uint16_t kZip64ExtraId = 0x0001;
// Deflate cannot compress better than about 1032:1; a larger claimed ratio is a
// lie (or a zip bomb) and would make us allocate the claimed size for nothing.
constexpr uint64_t kMaxDeflateRatio = 1032;

uint16_t le16(const std::byte* p) {
  return static_cast<uint16_t>(static_cast<uint16_t>(p[0]) | static_cast<uint16_t>(p[1]) << 8);
}
uint32_t le32(const std::byte* p) { return static_cast<uint32_t>(le16(p)) | static_cast<uint32_t>(le16(p + 2)) << 16; }
uint64_t le64(const std::byte* p) { return static_cast<uint64_t>(le32(p)) | static_cast<uint64_t>(le32(p + 4)) << 32; }

// True if [offset, offset + length) lies inside a file of `size` bytes (no overflow).
bool in_file(uint64_t offset, uint64_t length, uint64_t size) { return offset <= size && length <= size - offset; }

}  // namespace

ZipArchive::ZipArchive(std::shared_ptr<const MappedFile> file) : file_(std::move(file)) {
  const std::string& path = file_->path();
  const std::byte* base = file_->data();
  const uint64_t size = file_->size();
  auto fail = [&](const std::string& what) -> Error { return Error(path + ": not a valid zip archive: " + what); };

  // The end-of-central-directory record is the last 22 bytes, unless a comment (up to 64 KiB) follows it.
  if (size < kEndSize) throw fail("file is " + std::to_string(size) + " bytes, too short for a zip end record");
  uint64_t end_pos = 0;
  bool found = false;
  const uint64_t lowest = size - kEndSize > 0xffff ? size - kEndSize - 0xffff : 0;
  for (uint64_t pos = size - kEndSize + 1; pos-- > lowest;) {
    if (le32(base + pos) == kEndSig && pos + kEndSize + le16(base + pos + 20) <= size) {
      end_pos = pos;
      found = true;
      break;
    }
  }
  if (!found) throw fail("no end-of-central-directory record (truncated file?)");

  const std::byte* end = base + end_pos;
  uint64_t disk = le16(end + 4), cd_disk = le16(end + 6), disk_entries = le16(end + 8);
  uint64_t total_entries = le16(end + 10), cd_size = le32(end + 12), cd_offset = le32(end + 16);

  // zip64: a locator just before the end record points at the zip64 end record,
  // whose 64-bit fields replace the saturated 16/32-bit ones.
  const bool has_locator = end_pos >= kZip64LocatorSize && le32(end - kZip64LocatorSize) == kZip64LocatorSig;
  if (has_locator) {
    const std::byte* loc = end - kZip64LocatorSize;
    const uint64_t rec_pos = le64(loc + 8);
    if (!in_file(rec_pos, kZip64EndSize, end_pos - kZip64LocatorSize) || le32(base + rec_pos) != kZip64EndSig)
      throw fail("zip64 end-of-central-directory locator points at offset " + std::to_string(rec_pos) +
                 ", where there is no zip64 end record");
    const std::byte* rec = base + rec_pos;
    disk = le32(rec + 16);
    cd_disk = le32(rec + 20);
    disk_entries = le64(rec + 24);
    total_entries = le64(rec + 32);
    cd_size = le64(rec + 40);
    cd_offset = le64(rec + 48);
  } else if (total_entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    throw fail("end record has zip64 markers but no zip64 end record locator");
  }
  if (disk != 0 || cd_disk != 0 || disk_entries != total_entries) throw fail("multi-disk archives are not supported");
  if (!in_file(cd_offset, cd_size, size))
    throw fail("central directory (offset " + std::to_string(cd_offset) + ", " + std::to_string(cd_size) +
               " bytes) lies outside the file of " + std::to_string(size) + " bytes (truncated file?)");
  if (total_entries > cd_size / kCentralHeaderSize)
    throw fail(std::to_string(total_entries) + " entries cannot fit in a central directory of " +
               std::to_string(cd_size) + " bytes");

  entries_.reserve(static_cast<size_t>(total_entries));
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < total_entries; ++i) {
    if (!in_file(pos, kCentralHeaderSize, cd_end) || le32(base + pos) != kCentralHeaderSig)
      throw fail("central directory entry " + std::to_string(i) + " at offset " + std::to_string(pos) +
                 " is missing or corrupt");
    const std::byte* h = base + pos;
    const uint16_t name_len = le16(h + 28), extra_len = le16(h + 30), comment_len = le16(h + 32);
    const uint64_t record_len = kCentralHeaderSize + uint64_t{name_len} + extra_len + comment_len;
    if (!in_file(pos, record_len, cd_end))
      throw fail("central directory entry " + std::to_string(i) + " runs past the end of the central directory");
    Entry e;
    e.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
    e.flags = le16(h + 8);
    e.method = le16(h + 10);
    e.crc32 = le32(h + 16);
    e.compressed_size = le32(h + 20);
    e.size = le32(h + 24);
    uint64_t disk_start = le16(h + 34);
    e.local_header_offset = le32(h + 42);

    // The zip64 extra field holds, in this order, exactly those values whose 32/16-bit field is saturated.
    const std::byte* x = h + kCentralHeaderSize + name_len;
    const std::byte* x_end = x + extra_len;
    while (x_end - x >= 4) {
      const uint16_t id = le16(x), len = le16(x + 2);
      if (len > x_end - x - 4) throw fail("entry '" + e.name + "' has an extra field running past its header");
      if (id == kZip64ExtraId) {
        const std::byte* f = x + 4;
        const std::byte* f_end = f + len;
        auto take64 = [&](uint64_t& v, const char* what) {
          if (f_end - f < 8) throw fail("entry '" + e.name + "' zip64 extra field lacks the " + what);
          v = le64(f);
          f += 8;
        };
        if (e.size == 0xffffffff) take64(e.size, "uncompressed size");
        if (e.compressed_size == 0xffffffff) take64(e.compressed_size, "compressed size");
        if (e.local_header_offset == 0xffffffff) take64(e.local_header_offset, "local header offset");
        if (disk_start == 0xffff) {
          if (f_end - f < 4) throw fail("entry '" + e.name + "' zip64 extra field lacks the disk number");
          disk_start = le32(f);
        }
      }
      x += 4 + len;
    }
    if (e.size == 0xffffffff || e.compressed_size == 0xffffffff || e.local_header_offset == 0xffffffff)
      throw fail("entry '" + e.name + "' has zip64 markers but no zip64 extra field");
    if (disk_start != 0) throw fail("entry '" + e.name + "' starts on another disk (multi-disk archive)");
    if (e.flags & 0x1) throw fail("entry '" + e.name + "' is encrypted");
    if (e.method != 0 && e.method != 8)
      throw fail("entry '" + e.name + "' uses compression method " + std::to_string(e.method) +
                 " (only stored and deflated are supported)");
    if (e.method == 0 && e.size != e.compressed_size)
      throw fail("stored entry '" + e.name + "' has compressed size " + std::to_string(e.compressed_size) +
                 " != size " + std::to_string(e.size));
    if (!by_name_.emplace(e.name, entries_.size()).second) throw fail("duplicate entry '" + e.name + "'");
    entries_.push_back(std::move(e));
    pos += record_len;
  }
  // Check local headers now, so a broken archive fails when opened rather than halfway through a load.
  for (const Entry& e : entries_) data_offset(e);
}

const ZipArchive::Entry* ZipArchive::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

uint64_t ZipArchive::data_offset(const Entry& e) const {
  const std::byte* base = file_->data();
  const uint64_t size = file_->size();
  const std::string where = file_->path() + ": zip entry '" + e.name + "'";
  const uint64_t lho = e.local_header_offset;
  if (!in_file(lho, kLocalHeaderSize, size) || le32(base + lho) != kLocalHeaderSig)
    throw Error(where + ": no local header at offset " + std::to_string(lho) + " (truncated or corrupt file)");
  const std::byte* h = base + lho;
  const uint16_t method = le16(h + 8), name_len = le16(h + 26), extra_len = le16(h + 28);
  const uint64_t start = lho + kLocalHeaderSize + name_len + extra_len;
  if (start > size) throw Error(where + ": local header runs past the end of the file (truncated file?)");
  if (method != e.method || std::string_view(reinterpret_cast<const char*>(h + kLocalHeaderSize), name_len) != e.name)
    throw Error(where + ": local header disagrees with the central directory");
  // With flag bit 3 the sizes follow the data (PyTorch writes zeros here); otherwise they must agree.
  const uint32_t local_csize = le32(h + 18);
  if (!(le16(h + 6) & 0x8) && local_csize != 0xffffffff && local_csize != e.compressed_size)
    throw Error(where + ": local header size " + std::to_string(local_csize) +
                " disagrees with the central directory (" + std::to_string(e.compressed_size) + ")");
  if (!in_file(start, e.compressed_size, size))
    throw Error(where + ": data (" + std::to_string(e.compressed_size) + " bytes at offset " + std::to_string(start) +
                ") runs past the end of the file of " + std::to_string(size) + " bytes (truncated file?)");
  return start;
}

std::shared_ptr<Storage> ZipArchive::read(const Entry& e) const {
  const uint64_t start = data_offset(e);
  const std::byte* src = file_->data() + start;
  const std::string where = file_->path() + ": zip entry '" + e.name + "'";
  if (e.method == 0) {
    // Zero-copy: the mapping is read-only; the Storage API takes a mutable pointer but nothing writes weights.
    return Storage::borrow_file_pages(const_cast<std::byte*>(src), static_cast<size_t>(e.size), file_);
  }

  if (e.size / kMaxDeflateRatio > e.compressed_size + 1)
    throw Error(where + ": claims to inflate " + std::to_string(e.size) + " bytes from " +
                std::to_string(e.compressed_size) + " (impossible for deflate)");
  auto out = Storage::allocate(static_cast<size_t>(e.size));
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw Error(where + ": zlib inflateInit2 failed");
  struct Ender {
    z_stream* s;
    ~Ender() { inflateEnd(s); }
  } ender{&zs};
  // avail_in / avail_out are 32-bit: feed and drain in chunks so entries past 4 GiB work.
  constexpr uint64_t kChunk = uint64_t{1} << 30;
  uint64_t in_left = e.compressed_size, out_left = e.size;
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(src));
  zs.next_out = reinterpret_cast<Bytef*>(out->data());
  for (;;) {
    if (zs.avail_in == 0 && in_left > 0) {
      zs.avail_in = static_cast<uInt>(std::min(in_left, kChunk));
      in_left -= zs.avail_in;
    }
    if (zs.avail_out == 0 && out_left > 0) {
      zs.avail_out = static_cast<uInt>(std::min(out_left, kChunk));
      out_left -= zs.avail_out;
    }
    const int rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_STREAM_END) break;
    if (rc == Z_OK) continue;  // progress was made
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0)
      throw Error(where + ": deflate data ends early (truncated or corrupt entry)");
    if (rc == Z_BUF_ERROR && zs.avail_out == 0 && out_left == 0)
      throw Error(where + ": inflates to more than the " + std::to_string(e.size) + " bytes its header says");
    throw Error(where + ": corrupt deflate data (" + (zs.msg ? zs.msg : "zlib error " + std::to_string(rc)) + ")");
  }
  if (zs.avail_out != 0 || out_left != 0)
    throw Error(where + ": inflates to fewer bytes than the " + std::to_string(e.size) + " its header says");
  const uLong crc = crc32_z(0, reinterpret_cast<const Bytef*>(out->data()), static_cast<z_size_t>(e.size));
  if (crc != e.crc32) throw Error(where + ": CRC-32 mismatch (corrupt data)");
  return out;
}

}  // namespace taiyi::io
