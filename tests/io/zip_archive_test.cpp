// The zip reader and the file mapping under it: zero-copy stored entries,
// inflated entries, zip64, and refusals of what torch never writes.
#include "taiyi/io/zip_archive.h"

#include <gtest/gtest.h>

#include <cstring>

#include "io/io_test_util.h"

namespace taiyi::io {
namespace {

using test::contains_all;
using test::error_of;
using test::io_fixture;

std::string entry_text(const ZipArchive& zip, const std::string& name) {
  const ZipArchive::Entry* e = zip.find(name);
  if (!e) return "<missing>";
  auto s = zip.read(*e);
  return std::string(reinterpret_cast<const char*>(s->data()), s->bytes());
}

TEST(MappedFile, MapsWholeFilesAndNamesFailures) {
  test::ScratchDir dir;
  const std::string path = dir.path("f.bin");
  test::write_bytes(path, "hello", 5);
  auto f = MappedFile::open(path);
  EXPECT_EQ(f->size(), 5u);
  EXPECT_EQ(std::memcmp(f->data(), "hello", 5), 0);
  EXPECT_EQ(f->path(), path);
  const std::string empty = dir.path("empty.bin");
  test::write_bytes(empty, "", 0);
  EXPECT_EQ(MappedFile::open(empty)->size(), 0u);
  EXPECT_TRUE(MappedFile::open(empty)->bytes().empty());
  const std::string missing = dir.path("missing.bin");
  EXPECT_TRUE(contains_all(error_of([&] { MappedFile::open(missing); }), {missing, "cannot open"}));
  EXPECT_TRUE(contains_all(error_of([&] { MappedFile::open(dir.dir().string()); }), {"not a regular file"}));
}

TEST(ZipArchive, StoredEntriesAreViewsOfTheMapping) {
  auto file = MappedFile::open(io_fixture("state_dict.bin"));
  ZipArchive zip(file);
  ASSERT_EQ(zip.entries().size(), 11u);  // data.pkl, data/0..8, version
  EXPECT_EQ(zip.entries()[0].name, "state_dict/data.pkl");
  EXPECT_EQ(entry_text(zip, "state_dict/version"), "3\n");
  const ZipArchive::Entry* e = zip.find("state_dict/data/0");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->method, 0);
  EXPECT_EQ(e->size, 24u);
  auto s = zip.read(*e);
  EXPECT_FALSE(s->owned());
  EXPECT_GE(s->data(), file->data());
  EXPECT_LE(s->data() + s->bytes(), file->data() + file->size());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s->data()) % 64, 0u);  // torch's alignment padding
  EXPECT_EQ(zip.find("state_dict/data/99"), nullptr);
}

TEST(ZipArchive, DeflatedAndZip64VariantsHoldTheSameBytes) {
  ZipArchive plain(MappedFile::open(io_fixture("state_dict.bin")));
  for (const char* name : {"state_dict_deflated.bin", "state_dict_zip64.bin", "archive_prefix.pt", "pyzip_zip64.pt",
                           "pyzip_deflated.pt"}) {
    SCOPED_TRACE(name);
    ZipArchive other(MappedFile::open(io_fixture(name)));
    ASSERT_EQ(other.entries().size(), plain.entries().size());
    for (size_t i = 0; i < plain.entries().size(); ++i) {
      const auto& a = plain.entries()[i];
      const auto& b = other.entries()[i];
      EXPECT_EQ(a.name.substr(a.name.find('/')), b.name.substr(b.name.find('/')));
      EXPECT_EQ(a.size, b.size);
      EXPECT_EQ(entry_text(plain, a.name), entry_text(other, b.name));
      EXPECT_EQ(other.read(b)->owned(), b.method == 8);
    }
  }
}

// Patches one field of a copy of state_dict_deflated.bin and returns the error of opening/reading it.
class PatchedZip : public ::testing::Test {
 protected:
  void SetUp() override { bytes_ = test::read_bytes(io_fixture("state_dict_deflated.bin")); }
  size_t find(const char* sig, size_t from = 0) const {
    for (size_t i = from; i + 4 <= bytes_.size(); ++i)
      if (std::memcmp(bytes_.data() + i, sig, 4) == 0) return i;
    ADD_FAILURE() << "signature not found";
    return 0;
  }
  void put16(size_t at, uint16_t v) {
    bytes_[at] = static_cast<char>(v);
    bytes_[at + 1] = static_cast<char>(v >> 8);
  }
  std::string read_all_error() {
    const std::string path = dir_.path("patched.bin");
    test::write_bytes(path, bytes_);
    const std::string msg = error_of([&] {
      ZipArchive zip(MappedFile::open(path));
      for (const auto& e : zip.entries()) zip.read(e);
    });
    EXPECT_TRUE(contains_all(msg, {path + ": "}));
    return msg;
  }
  std::vector<char> bytes_;
  test::ScratchDir dir_;
};

TEST_F(PatchedZip, UnknownCompressionMethod) {
  put16(find("PK\x01\x02") + 10, 12);  // bzip2
  EXPECT_TRUE(contains_all(read_all_error(), {"'state_dict_deflated/data.pkl'", "compression method 12"}));
}

TEST_F(PatchedZip, EncryptedEntry) {
  put16(find("PK\x01\x02") + 8, 0x0809);
  EXPECT_TRUE(contains_all(read_all_error(), {"is encrypted"}));
}

TEST_F(PatchedZip, CorruptDeflateData) {
  const size_t local = find("PK\x03\x04");
  const size_t data = local + 30 + static_cast<uint8_t>(bytes_[local + 26]) + static_cast<uint8_t>(bytes_[local + 28]) +
                      256 * static_cast<uint8_t>(bytes_[local + 29]);
  bytes_[data + 5] = static_cast<char>(bytes_[data + 5] ^ 0x55);
  const std::string msg = read_all_error();
  EXPECT_TRUE(contains_all(msg, {"'state_dict_deflated/data.pkl'"}));
  EXPECT_TRUE(msg.find("CRC-32") != std::string::npos || msg.find("deflate") != std::string::npos) << msg;
}

TEST_F(PatchedZip, LocalHeaderDisagreesWithCentralDirectory) {
  put16(find("PK\x03\x04") + 8, 0);  // local says stored, central says deflated
  EXPECT_TRUE(contains_all(read_all_error(), {"local header disagrees with the central directory"}));
}

TEST_F(PatchedZip, CentralDirectoryOutsideTheFile) {
  const size_t eocd64 = find("PK\x06\x06");
  bytes_[eocd64 + 48 + 5] = 0x10;  // central directory offset far past the end
  EXPECT_TRUE(contains_all(read_all_error(), {"central directory", "outside the file"}));
}

TEST_F(PatchedZip, ImpossibleCompressionRatio) {
  const size_t central = find("PK\x01\x02");
  bytes_[central + 24 + 3] = 0x7f;  // uncompressed size ~2 GiB from a few hundred bytes
  EXPECT_TRUE(contains_all(read_all_error(), {"claims to inflate", "impossible for deflate"}));
}

}  // namespace
}  // namespace taiyi::io
