// PyTorch zip checkpoints: the good fixtures of tools/make_io_fixtures.py
// (values checked against expected.json), hostile and broken ones (each must
// fail with a message naming the file and the problem), and the real
// tiny-taiyi .bin files against their .safetensors twins.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "io/io_test_util.h"
#include "taiyi/io/tensor_file.h"

namespace taiyi::io {
namespace {

using test::contains_all;
using test::error_of;
using test::io_fixture;

const nlohmann::json& manifest() {
  static const nlohmann::json m = [] {
    std::ifstream f(io_fixture("expected.json"));
    return nlohmann::json::parse(f);
  }();
  return m;
}

// Checks every tensor of `file` against its entry in expected.json.
void expect_matches_manifest(const std::string& file, const TensorMap& got) {
  const nlohmann::json& want = manifest().at(file);
  std::set<std::string> want_names, got_names;
  for (const auto& [k, v] : want.items()) want_names.insert(k);
  for (const auto& [k, v] : got) got_names.insert(k);
  EXPECT_EQ(got_names, want_names) << file;
  for (const auto& [name, w] : want.items()) {
    SCOPED_TRACE(file + ": " + name);
    auto it = got.find(name);
    if (it == got.end()) continue;
    const Tensor& t = it->second;
    EXPECT_EQ(t.dtype(), test::dtype_from_name(w.at("dtype").get<std::string>()));
    EXPECT_EQ(t.shape(), w.at("shape").get<Shape>());
    const auto& values = w.at("values");
    ASSERT_EQ(t.numel(), static_cast<int64_t>(values.size()));
    for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(t.item(static_cast<int64_t>(i)), values[i].get<double>()) << i;
    // Typed access must be legal: the reader copies anything misaligned.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % dtype_size(t.dtype()), 0u);
  }
}

TEST(TorchCheckpoint, GoodFilesMatchTheirManifest) {
  for (const auto& [file, tensors] : manifest().items()) {
    if (file.starts_with("st_")) continue;
    SCOPED_TRACE(file);
    expect_matches_manifest(file, read_torch_checkpoint(io_fixture(file)));
    expect_matches_manifest(file, read_tensor_file(io_fixture(file)));
  }
}

TEST(TorchCheckpoint, TorchLayoutIsZeroCopyWithSharedStoragesAndViews) {
  const TensorMap m = read_torch_checkpoint(io_fixture("state_dict.bin"));
  const Tensor& mat = m.at("mat");
  const Tensor& mat_t = m.at("mat_t");
  const Tensor& row1 = m.at("mat_row1");
  // torch pads every entry to 64 bytes, so every storage is a view of the mapping.
  for (const auto& [name, t] : m) EXPECT_FALSE(t.storage()->owned()) << name;
  EXPECT_EQ(mat.storage(), mat_t.storage());
  EXPECT_EQ(mat.storage(), row1.storage());
  EXPECT_EQ(mat_t.strides(), (Strides{1, 3}));
  EXPECT_FALSE(mat_t.is_contiguous());
  EXPECT_EQ(row1.byte_offset(), mat.byte_offset() + 3 * sizeof(float));
  EXPECT_EQ(mat_t.item(1), 13.0);  // mat_t[0][1] = mat[1][0]
  EXPECT_EQ(m.at("scalar").ndim(), 0);
  EXPECT_EQ(m.at("scalar").item(), 42.0);
  EXPECT_EQ(m.at("empty").shape(), (Shape{0, 3}));
  EXPECT_EQ(m.at("embeddings.position_ids").data<int64_t>()[4], -(int64_t{1} << 62));
  EXPECT_EQ(m.at("half").data_u16()[0], 0x3c00);
  EXPECT_EQ(m.at("bfloat").data_u16()[2], 0x4049);  // 3.140625 in bf16
}

TEST(TorchCheckpoint, DeflatedAndUnalignedEntriesAreCopiedIntoOwnedMemory) {
  for (const auto& t : read_torch_checkpoint(io_fixture("state_dict_deflated.bin")))
    EXPECT_TRUE(t.second.storage()->owned());
  // Python's zipfile does not align entries: whatever is misaligned got copied (the manifest test checks alignment).
  const TensorMap m = read_torch_checkpoint(io_fixture("archive_prefix.pt"));
  EXPECT_EQ(m.at("mat").storage(), m.at("mat_t").storage());
}

TEST(TorchCheckpoint, TensorsOutliveTheirMap) {
  Tensor t;
  {
    TensorMap m = read_tensor_file(io_fixture("state_dict.bin"));
    t = m.at("mat_t");
  }
  EXPECT_EQ(t.item(5), 15.0);
}

struct BadFile {
  const char* file;
  std::vector<std::string> parts;
};

TEST(TorchCheckpoint, RefusesEveryGlobalOutsideTheAllowList) {
  const BadFile cases[] = {
      {"evil_os_system.bin", {"refusing to load global 'os.system'", "only PyTorch state dicts"}},
      {"evil_posix_system.bin", {"refusing to load global 'posix.system'"}},
      {"evil_builtins_eval.bin", {"refusing to load global 'builtins.eval'"}},
      {"evil_builtin_eval.bin", {"refusing to load global '__builtin__.eval'"}},
      {"evil_subprocess.bin", {"refusing to load global 'subprocess.Popen'"}},
      {"evil_stack_global.bin", {"refusing to load global 'os.system'"}},
      {"evil_torch_other.bin", {"refusing to load global 'torch.storage._load_from_bytes'"}},
      {"evil_hidden.bin", {"refusing to load global 'nt.system'"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string msg = error_of([&] { read_tensor_file(io_fixture(c.file)); });
    EXPECT_TRUE(contains_all(msg, {io_fixture(c.file)}));
    for (const auto& p : c.parts) EXPECT_TRUE(contains_all(msg, {p}));
  }
}

TEST(TorchCheckpoint, BrokenFilesGiveClearErrors) {
  const BadFile cases[] = {
      {"truncated.bin", {"not a valid zip archive", "truncated"}},
      {"short_storage.bin", {"tensor 'w'", "'short_storage/data/0' has 12 bytes, fewer than the 16"}},
      {"view_outside.bin", {"tensor 'too_far'", "past the end of its storage of 4 elements"}},
      {"missing_storage.bin", {"tensor 'lost'", "'missing_storage/data/9' is missing"}},
      {"bad_opcode.bin", {"unsupported opcode 0x81 (NEWOBJ) at byte 13"}},
      {"memo_out_of_range.bin", {"memo index 7 is not defined", "at byte 5"}},
      {"stack_underflow.bin", {"stack underflow"}},
      {"deep_nesting.bin", {"nesting deeper than 200 levels"}},
      {"self_reference.bin", {"self-referencing"}},
      {"huge_length.bin", {"BINUNICODE of 4294967280 bytes runs past the end of the data"}},
      {"no_stop.bin", {"without a STOP"}},
      {"not_state_dict.bin", {"holds list, expected a state dict"}},
      {"non_tensor_value.bin", {"'step' holds int 7, not a tensor"}},
      {"lightning_bad_sibling.ckpt", {"'optimizer_states' holds list"}},
      {"no_data_pkl.bin", {"no '<prefix>/data.pkl' entry"}},
      {"big_endian.bin", {"byte order is 'big'", "only little-endian"}},
      {"two_data_pkl.bin", {"several data.pkl entries", "a/data.pkl", "b/data.pkl"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string msg = error_of([&] { read_tensor_file(io_fixture(c.file)); });
    EXPECT_TRUE(contains_all(msg, {io_fixture(c.file) + ":"}));
    for (const auto& p : c.parts) EXPECT_TRUE(contains_all(msg, {p}));
  }
}

TEST(TorchCheckpoint, LegacyFormatIsRefusedWithAHint) {
  const std::string msg = error_of([] { read_tensor_file(io_fixture("legacy.pt")); });
  EXPECT_TRUE(contains_all(msg, {io_fixture("legacy.pt"), "legacy (pre-1.6, non-zip)", "torch>=1.6"}));
}

TEST(TorchCheckpoint, EveryTruncationFailsCleanly) {
  test::ScratchDir dir;
  // Every length of the torch-layout file; every 7th of the variants (they share its structure).
  for (const auto& [name, step] :
       {std::pair{"state_dict.bin", 1}, {"state_dict_zip64.bin", 7}, {"state_dict_deflated.bin", 7}}) {
    const std::vector<char> bytes = test::read_bytes(io_fixture(name));
    const std::string path = dir.path(name);
    for (size_t n = 0; n < bytes.size(); n += step) {
      test::write_bytes(path, bytes.data(), n);
      const std::string msg = error_of([&] { read_tensor_file(path); });
      ASSERT_TRUE(contains_all(msg, {path})) << "truncated to " << n << " bytes";
    }
  }
}

// Random byte corruption must give either a result or a taiyi::Error, never a
// crash (the ASan/UBSan build is what makes this test bite).
TEST(TorchCheckpoint, CorruptedBytesNeverCrash) {
  test::ScratchDir dir;
  std::mt19937 rng(1234);
  for (const char* name : {"state_dict.bin", "protocol4.bin", "state_dict_deflated.bin", "state_dict_zip64.bin"}) {
    const std::vector<char> bytes = test::read_bytes(io_fixture(name));
    const std::string path = dir.path(name);
    for (int iter = 0; iter < 800; ++iter) {
      std::vector<char> b = bytes;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<char>(rng());
      test::write_bytes(path, b);
      try {
        const TensorMap m = read_tensor_file(path);
        for (const auto& [k, t] : m)
          if (t.numel() > 0) (void)t.item(t.numel() - 1);
      } catch (const Error&) {
      }
    }
  }
}

// The real torch.save output of the tiny pipeline must give exactly the tensors of its safetensors twin.
TEST(TorchCheckpoint, TinyTaiyiBinMatchesSafetensors) {
  const std::pair<const char*, const char*> parts[] = {
      {"unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors"},
      {"vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.safetensors"},
      {"text_encoder/pytorch_model.bin", "text_encoder/model.safetensors"},
  };
  for (const auto& [bin, st] : parts) {
    SCOPED_TRACE(bin);
    const TensorMap a = read_tensor_file(test::fixture(std::string("tiny-taiyi/") + bin));
    const TensorMap b = read_tensor_file(test::fixture(std::string("tiny-taiyi-safetensors/") + st));
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GT(a.size(), 10u);
    for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
      ASSERT_EQ(ia->first, ib->first);
      SCOPED_TRACE(ia->first);
      EXPECT_EQ(ia->second.dtype(), ib->second.dtype());
      EXPECT_EQ(ia->second.shape(), ib->second.shape());
      EXPECT_TRUE(test::logical_bytes(ia->second) == test::logical_bytes(ib->second));
      EXPECT_FALSE(ia->second.storage()->owned());  // zero-copy from both formats
      EXPECT_FALSE(ib->second.storage()->owned());
    }
  }
  const TensorMap te = read_tensor_file(test::fixture("tiny-taiyi/text_encoder/pytorch_model.bin"));
  const Tensor& ids = te.at("embeddings.position_ids");
  EXPECT_EQ(ids.dtype(), DType::I64);
  EXPECT_EQ(ids.shape(), (Shape{1, 512}));
  for (int64_t i = 0; i < 512; ++i) ASSERT_EQ(ids.data<int64_t>()[i], i);
}

}  // namespace
}  // namespace taiyi::io
