// safetensors: the good fixtures (values in expected.json), each refusal of a
// malformed header, zero-copy views, and the write/read round trip.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "io/io_test_util.h"
#include "taiyi/io/tensor_file.h"

namespace taiyi::io {
namespace {

using test::contains_all;
using test::error_of;
using test::io_fixture;

TEST(Safetensors, ReadsEveryDtypeAsStored) {
  const TensorMap m = read_safetensors(io_fixture("st_good.safetensors"));
  ASSERT_EQ(m.size(), 9u);
  EXPECT_EQ(m.at("position_ids").dtype(), DType::I64);
  EXPECT_EQ(m.at("position_ids").shape(), (Shape{1, 3}));
  EXPECT_EQ(m.at("position_ids").data<int64_t>()[2], -(int64_t{1} << 40));
  EXPECT_EQ(m.at("weight").data<float>()[3], 3.25f);
  EXPECT_EQ(m.at("count").data<int32_t>()[1], 2147483647);
  EXPECT_EQ(m.at("half").dtype(), DType::F16);
  EXPECT_EQ(m.at("half").data_u16()[2], 0x7bff);  // 65504
  EXPECT_EQ(m.at("bfloat").dtype(), DType::BF16);
  EXPECT_EQ(bf16_to_f32(m.at("bfloat").data_u16()[1]), -2.5f);
  EXPECT_EQ(m.at("mask").dtype(), DType::U8);  // BOOL is read as bytes
  EXPECT_EQ(m.at("mask").data<uint8_t>()[2], 1);
  EXPECT_EQ(m.at("bytes").data<uint8_t>()[1], 255);
  EXPECT_EQ(m.at("scalar").ndim(), 0);
  EXPECT_EQ(m.at("scalar").item(), 7.0);
  EXPECT_EQ(m.at("nothing").shape(), (Shape{0, 4}));
  // Zero-copy: every tensor is a view of one borrowed storage over the mapping.
  for (const auto& [name, t] : m) {
    EXPECT_FALSE(t.storage()->owned()) << name;
    EXPECT_EQ(t.storage(), m.at("weight").storage()) << name;
  }
  EXPECT_EQ(read_tensor_file(io_fixture("st_good.safetensors")).size(), 9u);
  const auto meta = read_safetensors_metadata(io_fixture("st_good.safetensors"));
  EXPECT_EQ(meta, (std::map<std::string, std::string>{{"format", "pt"}, {"note", "taiyi io fixture"}}));
}

TEST(Safetensors, MisalignedTensorIsCopied) {
  const TensorMap m = read_safetensors(io_fixture("st_misaligned.safetensors"));
  const Tensor& t = m.at("b_f32");
  EXPECT_TRUE(t.storage()->owned());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 4, 0u);
  EXPECT_EQ(t.data<float>()[0], 1.25f);
  EXPECT_EQ(t.data<float>()[1], -8.0f);
  EXPECT_FALSE(m.at("a_pad").storage()->owned());
  EXPECT_EQ(m.at("a_pad").data<uint8_t>()[1], 6);
}

TEST(Safetensors, EmptyHeaderGivesNoTensors) {
  EXPECT_TRUE(read_safetensors(io_fixture("st_empty_header.safetensors")).empty());
}

TEST(Safetensors, TensorsOutliveTheirMap) {
  Tensor t;
  { t = read_safetensors(io_fixture("st_good.safetensors")).at("weight"); }
  EXPECT_EQ(t.item(0), 1.5);
}

TEST(Safetensors, RefusesMalformedHeaders) {
  struct Case {
    const char* name;
    std::vector<std::string> parts;
  };
  const Case cases[] = {
      {"too_short", {"5 bytes, shorter than the 8-byte safetensors header length"}},
      {"header_past_end", {"header length 1000 runs past the end of the file (15 bytes"}},
      {"header_huge", {"header length 1099511627776 is absurdly large"}},
      {"not_json", {"header is not valid JSON"}},
      {"not_object", {"header is a JSON array, expected an object"}},
      {"entry_not_object", {"tensor 't'", "header entry is a JSON number, expected an object"}},
      {"missing_dtype", {"tensor 't'", "has no \"dtype\""}},
      {"missing_shape", {"tensor 't'", "has no \"shape\""}},
      {"missing_offsets", {"tensor 't'", "has no \"data_offsets\""}},
      {"dtype_not_string", {"tensor 't'", "\"dtype\" is a JSON number, expected a string"}},
      {"shape_not_array", {"tensor 't'", "\"shape\" is a JSON string, expected an array"}},
      {"shape_float", {"tensor 't'", "shape[0] is a JSON number, expected a non-negative integer"}},
      {"offsets_strings", {"tensor 't'", "data_offsets[0] is a JSON string"}},
      {"unknown_dtype", {"tensor 't'", "unsupported dtype 'F64'", "F32, F16, BF16, I64, I32, U8, BOOL"}},
      {"offsets_not_pair", {"tensor 't'", "\"data_offsets\" is [0], expected [begin, end]"}},
      {"offsets_reversed", {"tensor 't'", "[8, 4] has begin > end"}},
      {"range_outside", {"tensor 't'", "[0, 16] lie outside the data section of 8 bytes"}},
      {"size_mismatch", {"tensor 't'", "hold 8 bytes, but shape [3] of F32 needs 12"}},
      {"overlap", {"tensors 'a' and 'b' overlap"}},
      {"negative_shape", {"tensor 't'", "shape[0] is negative"}},
      {"huge_shape", {"tensor 't'", "is too large"}},
      {"metadata_not_strings", {"__metadata__ entry 'format' is a JSON number, expected a string"}},
      {"negative_offset", {"tensor 't'", "data_offsets[0] is negative"}},
  };
  for (const auto& c : cases) {
    const std::string path = io_fixture(std::string("st_bad_") + c.name + ".safetensors");
    SCOPED_TRACE(path);
    for (auto reader : {&read_safetensors, &read_tensor_file}) {
      const std::string msg = error_of([&] { reader(path); });
      EXPECT_TRUE(contains_all(msg, {path + ":"}));
      for (const auto& p : c.parts) EXPECT_TRUE(contains_all(msg, {p}));
    }
  }
}

TEST(Safetensors, MissingEmptyAndNonRegularFiles) {
  test::ScratchDir dir;
  const std::string missing = dir.path("nope.safetensors");
  EXPECT_TRUE(contains_all(error_of([&] { read_tensor_file(missing); }), {missing, "cannot open"}));
  const std::string empty = dir.path("empty.safetensors");
  test::write_bytes(empty, "", 0);
  EXPECT_TRUE(contains_all(error_of([&] { read_tensor_file(empty); }), {empty, "0 bytes, shorter than"}));
  EXPECT_TRUE(contains_all(error_of([&] { read_tensor_file(dir.dir().string()); }), {"not a regular file"}));
}

// A header length whose first bytes look like a pickle PROTO opcode (0x80 0x02) is still safetensors.
TEST(Safetensors, SniffingIsNotFooledByAHeaderLengthOf640) {
  test::ScratchDir dir;
  std::string header = R"({"__metadata__":{"a":"b"}})";
  header.resize(640, ' ');
  std::string file = std::string("\x80\x02\0\0\0\0\0\0", 8) + header;
  const std::string path = dir.path("x.safetensors");
  test::write_bytes(path, file.data(), file.size());
  EXPECT_TRUE(read_tensor_file(path).empty());
}

TEST(Safetensors, WriteThenReadRoundTrips) {
  test::ScratchDir dir;
  const std::string path = dir.path("out.safetensors");
  TensorMap in;
  Tensor mat = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  in["b.transposed"] = mat.transpose(0, 1);  // non-contiguous: written as a contiguous copy
  in["a.ids"] = Tensor::from_vector<int64_t>({0, -1, int64_t{1} << 50}, {1, 3});
  in["c.i32"] = Tensor::from_vector<int32_t>({-5, 5}, {2});
  in["d.u8"] = Tensor::from_vector<uint8_t>({1, 2, 3}, {3});
  in["e.f16"] = mat.to(DType::F16);
  in["f.bf16"] = mat.to(DType::BF16);
  in["g.scalar"] = Tensor::scalar(3.5f);
  in["h.empty"] = Tensor::empty({0, 5});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"by", "taiyi"}};
  write_safetensors(path, in, meta);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const TensorMap out = read_tensor_file(path);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    const Tensor& r = out.at(name);
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(r.shape(), t.shape());
    EXPECT_TRUE(r.is_contiguous());
    EXPECT_TRUE(test::logical_bytes(r) == test::logical_bytes(t));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.raw_data()) % dtype_size(r.dtype()), 0u);
  }
  EXPECT_EQ(out.at("b.transposed").item(1), 4.0);
  EXPECT_EQ(read_safetensors_metadata(path), meta);

  // Layout: header padded with spaces to 8 bytes, dtype names as safetensors spells them, data in name order.
  const std::vector<char> bytes = test::read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const auto header = nlohmann::json::parse(std::string(bytes.data() + 8, n));
  EXPECT_EQ(header["e.f16"]["dtype"], "F16");
  EXPECT_EQ(header["f.bf16"]["dtype"], "BF16");
  EXPECT_EQ(header["a.ids"]["dtype"], "I64");
  EXPECT_EQ(header["a.ids"]["data_offsets"], nlohmann::json::array({0, 24}));
  EXPECT_EQ(header["__metadata__"]["by"], "taiyi");
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 24 + 8 + 3 + 12 + 12 + 4);

  // Overwriting replaces the file; no metadata means no __metadata__ key.
  write_safetensors(path, {{"x", Tensor::scalar(1)}});
  EXPECT_EQ(read_tensor_file(path).size(), 1u);
  EXPECT_TRUE(read_safetensors_metadata(path).empty());
}

TEST(Safetensors, WriteErrorsNameThePathAndLeaveNoFile) {
  test::ScratchDir dir;
  const std::string bad_dir = dir.path("no_such_dir/out.safetensors");
  EXPECT_TRUE(contains_all(error_of([&] { write_safetensors(bad_dir, {{"x", Tensor::scalar(1)}}); }), {bad_dir}));
  const std::string path = dir.path("out.safetensors");
  EXPECT_TRUE(contains_all(error_of([&] { write_safetensors(path, {{"x", Tensor()}}); }), {path, "'x' is undefined"}));
  EXPECT_TRUE(contains_all(error_of([&] { write_safetensors(path, {{"__metadata__", Tensor::scalar(1)}}); }), {path}));
  EXPECT_TRUE(contains_all(error_of([&] {
                             write_safetensors(path, {{"bad\xff", Tensor::scalar(1)}});
                           }),
                           {path, "UTF-8"}));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(Safetensors, EveryTruncationFailsCleanly) {
  test::ScratchDir dir;
  const std::vector<char> bytes = test::read_bytes(io_fixture("st_good.safetensors"));
  const std::string path = dir.path("t.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    test::write_bytes(path, bytes.data(), n);
    ASSERT_TRUE(contains_all(error_of([&] { read_tensor_file(path); }), {path})) << n;
  }
}

TEST(Safetensors, CorruptedBytesNeverCrash) {
  test::ScratchDir dir;
  const std::vector<char> bytes = test::read_bytes(io_fixture("st_good.safetensors"));
  const std::string path = dir.path("c.safetensors");
  std::mt19937 rng(99);
  for (int iter = 0; iter < 1500; ++iter) {
    std::vector<char> b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    // Mostly the header, where the structure is.
    for (int k = 0; k < flips; ++k) b[rng() % std::min<size_t>(b.size(), 600)] = static_cast<char>(rng() % 128);
    test::write_bytes(path, b);
    try {
      for (const auto& [k, t] : read_tensor_file(path))
        if (t.numel() > 0) (void)t.item(t.numel() - 1);
    } catch (const Error&) {
    }
  }
}

// A header of deeply nested arrays must not overflow the stack (nlohmann's parser is iterative).
TEST(Safetensors, DeeplyNestedHeaderIsRefusedNotCrashing) {
  test::ScratchDir dir;
  std::string header = std::string(100000, '[') + std::string(100000, ']');
  std::string file(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header;
  const std::string path = dir.path("deep.safetensors");
  test::write_bytes(path, file.data(), file.size());
  EXPECT_TRUE(contains_all(error_of([&] { read_tensor_file(path); }), {path, "expected an object"}));
}

}  // namespace
}  // namespace taiyi::io

namespace taiyi::io {
namespace {

TEST(Safetensors, WrittenMixedDtypesReadBackZeroCopy) {
  const test::ScratchDir dir;
  const std::string path = dir.path("mixed.safetensors");
  TensorMap m;
  m["a_bytes"] = Tensor::from_vector<uint8_t>({1, 2, 3}, {3});
  m["b_half"] = Tensor::from_vector<float>({1, 2, 3}, {3}).to(DType::F16);
  m["c_float"] = Tensor::from_vector<float>({1, 2, 3}, {3});
  m["d_long"] = Tensor::from_vector<int64_t>({1, 2, 3}, {3});
  write_safetensors(path, m);
  const TensorMap back = read_safetensors(path);
  for (const auto& [name, t] : back) {
    EXPECT_FALSE(t.storage()->owned()) << name << " was copied: written misaligned";
    EXPECT_EQ(t.item(2), 3.0) << name;
  }
}

}  // namespace
}  // namespace taiyi::io

namespace taiyi::io {
namespace {

size_t resident_bytes() {  // this process's resident memory now, from /proc/self/statm
  std::ifstream f("/proc/self/statm");
  size_t total = 0, resident = 0;
  f >> total >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// Weights read from a checkpoint are views of its mapping: releasing their pages (what graph mode
// does with weights it has packed) takes them out of resident memory, and the next read brings the
// same values back from the file. Memory the process owns is never released.
TEST(Safetensors, FileBackedWeightPagesCanBeReleased) {
  test::ScratchDir dir;
  const std::string path = dir.path("big.safetensors");
  const int64_t n = 8 << 20;  // 32 MiB of f32
  {
    Tensor w = Tensor::empty({n});
    float* d = w.data<float>();
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(i % 1000) * 0.5f;
    write_safetensors(path, {{"w", w}});
  }
  const TensorMap m = read_tensor_file(path);
  const Tensor& w = m.at("w");
  ASSERT_TRUE(w.storage()->file_backed());
  auto checksum = [&] {
    double s = 0;
    const float* d = w.data<float>();
    for (int64_t i = 0; i < n; ++i) s += d[i];
    return s;
  };
  const double sum = checksum();  // every page resident now
  const size_t before = resident_bytes();
  const size_t released = w.storage()->release_pages(w.byte_offset(), static_cast<size_t>(n) * 4);
  EXPECT_GE(released, static_cast<size_t>(n) * 4 - 2 * static_cast<size_t>(sysconf(_SC_PAGESIZE)));
  EXPECT_LE(resident_bytes() + (24u << 20), before);  // at least 24 of the 32 MiB left memory
  EXPECT_EQ(checksum(), sum);                         // and read back from the file as they were

  Tensor owned = Tensor::empty({1024 * 1024});
  owned.data<float>()[5000] = 7.0f;
  EXPECT_FALSE(owned.storage()->file_backed());
  EXPECT_EQ(owned.storage()->release_pages(0, 4 << 20), 0u);
  EXPECT_EQ(owned.data<float>()[5000], 7.0f);
}

}  // namespace
}  // namespace taiyi::io
