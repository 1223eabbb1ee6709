// PNG: pixel round trips, text chunks (tEXt for Latin-1, iTXt for UTF-8 such as Chinese prompts), decoding of
// PNGs taiyi does not write (grayscale, tRNS, zTXt, compressed iTXt), and the refusals, each naming the file.
#include "taiyi/io/png.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "io/io_test_util.h"

namespace taiyi::io {
namespace {

using test::contains_all;
using test::error_of;
using test::read_bytes;
using test::ScratchDir;
using test::write_bytes;
using Text = std::vector<std::pair<std::string, std::string>>;

std::vector<uint8_t> random_pixels(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> p(n);
  for (auto& v : p) v = static_cast<uint8_t>(rng() & 0xff);
  return p;
}

bool file_contains(const std::string& path, const std::string& needle) {
  const auto bytes = read_bytes(path);
  return std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end()) != bytes.end();
}

std::vector<char> from_hex(const std::string& hex) {
  std::vector<char> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

struct Size {
  int width, height, channels;
};

class PngRoundTrip : public ::testing::TestWithParam<Size> {};

TEST_P(PngRoundTrip, PixelsComeBackExactly) {
  const Size s = GetParam();
  ScratchDir dir;
  const std::string path = dir.path("image.png");
  const auto pixels = random_pixels(static_cast<size_t>(s.width) * s.height * s.channels, 17u + s.width);
  write_png(path, pixels.data(), s.width, s.height, s.channels);
  const auto bytes = read_bytes(path);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(std::string(bytes.begin(), bytes.begin() + 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const PngImage img = read_png(path);
  EXPECT_EQ(img.width, s.width);
  EXPECT_EQ(img.height, s.height);
  EXPECT_EQ(img.channels, s.channels);
  EXPECT_EQ(img.pixels, pixels);
  EXPECT_TRUE(img.text.empty());
}

INSTANTIATE_TEST_SUITE_P(Sizes, PngRoundTrip,
                         ::testing::Values(Size{1, 1, 3}, Size{1, 1, 4}, Size{7, 13, 3}, Size{7, 13, 4},
                                           Size{64, 48, 3}, Size{96, 64, 4}),
                         [](const ::testing::TestParamInfo<Size>& p) {
                           return std::to_string(p.param.width) + "x" + std::to_string(p.param.height) +
                                  (p.param.channels == 3 ? "_rgb" : "_rgba");
                         });

TEST(Png, ChinesePromptIsStoredAsITXtAndReadBackByteIdentical) {
  ScratchDir dir;
  const std::string path = dir.path("prompt.png");
  const std::string params =
      "飞流直下三千尺, 疑是银河落九天\nNegative prompt: 低质量\n"
      "Steps: 20, Sampler: PNDM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: taiyi";
  const auto pixels = random_pixels(8 * 8 * 3, 1);
  write_png(path, pixels.data(), 8, 8, 3, {{"parameters", params}});
  EXPECT_TRUE(file_contains(path, "iTXt"));
  EXPECT_FALSE(file_contains(path, "tEXt"));
  EXPECT_TRUE(file_contains(path, params));  // uncompressed UTF-8
  const PngImage img = read_png(path);
  ASSERT_EQ(img.text.size(), 1u);
  EXPECT_EQ(img.text[0].first, "parameters");
  EXPECT_EQ(img.text[0].second, params);
  EXPECT_EQ(img.pixels, pixels);
}

TEST(Png, Latin1TextIsStoredAsTEXt) {
  ScratchDir dir;
  const std::string path = dir.path("latin1.png");
  const std::string value = "a caf\xc3\xa9 at night\nSteps: 20";  // "café" in UTF-8
  const auto pixels = random_pixels(4 * 4 * 4, 2);
  write_png(path, pixels.data(), 4, 4, 4, {{"parameters", value}});
  EXPECT_TRUE(file_contains(path, "tEXt"));
  EXPECT_FALSE(file_contains(path, "iTXt"));
  // Stored as Latin-1 (one byte 0xE9), as the PNG spec wants for tEXt.
  EXPECT_TRUE(file_contains(path, std::string("parameters\0a caf\xe9 at", 19)));
  const PngImage img = read_png(path);
  ASSERT_EQ(img.text.size(), 1u);
  EXPECT_EQ(img.text[0].second, value);  // back as UTF-8
}

TEST(Png, SeveralPairsKeepTheirOrderAndTypes) {
  ScratchDir dir;
  const std::string path = dir.path("many.png");
  const Text text = {{"parameters", "中文 prompt"},
                     {"Software", "taiyi"},
                     {"tabbed", "a\tb"},          // a control character: not tEXt-representable
                     {"K\xc3\xa9y", "\xc3\xbf"},  // key and value are Latin-1 "Kéy", "ÿ"
                     {"parameters", "a second chunk with the same key"}};
  const auto pixels = random_pixels(3 * 2 * 3, 3);
  write_png(path, pixels.data(), 3, 2, 3, text);
  EXPECT_EQ(read_png(path).text, text);
}

// libspng's text API refuses empty values, so with one present every chunk takes the raw-chunk path: check
// that path keeps order, types and bytes too.
TEST(Png, EmptyValueRoundTripsWithTheOthersInOrder) {
  ScratchDir dir;
  const std::string path = dir.path("empty.png");
  const auto pixels = random_pixels(2 * 2 * 3, 4);
  const Text text = {{"parameters", "飞流直下三千尺\nSteps: 20"}, {"Comment", ""}, {"Title", "caf\xc3\xa9"}};
  write_png(path, pixels.data(), 2, 2, 3, text);
  EXPECT_TRUE(file_contains(path, std::string("iTXtparameters\0\0\0\0\0\xe9\xa3\x9e", 22)));
  EXPECT_TRUE(file_contains(path, std::string("tEXtComment", 11)));
  EXPECT_TRUE(file_contains(path, std::string("tEXtTitle\0caf\xe9", 14)));
  const PngImage img = read_png(path);
  EXPECT_EQ(img.text, text);
  EXPECT_EQ(img.pixels, pixels);
}

TEST(Png, OverwritesAnExistingFile) {
  ScratchDir dir;
  const std::string path = dir.path("again.png");
  const auto a = random_pixels(5 * 5 * 3, 5), b = random_pixels(5 * 5 * 3, 6);
  write_png(path, a.data(), 5, 5, 3);
  write_png(path, b.data(), 5, 5, 3);
  EXPECT_EQ(read_png(path).pixels, b);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(Png, RefusesBadArgumentsNamingThePathAndWritesNothing) {
  ScratchDir dir;
  const std::string path = dir.path("bad.png");
  const auto pixels = random_pixels(4 * 4 * 4, 7);
  const auto expect_refused = [&](auto&& call, const std::string& what) {
    const std::string msg = error_of(call);
    EXPECT_TRUE(contains_all(msg, {path, what})) << what;
    EXPECT_FALSE(std::filesystem::exists(path)) << what;
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp")) << what;
  };
  expect_refused([&] { write_png(path, pixels.data(), 0, 4, 3); }, "0x4");
  expect_refused([&] { write_png(path, pixels.data(), 4, -1, 3); }, "4x-1");
  expect_refused([&] { write_png(path, pixels.data(), 4, 4, 2); }, "channels");
  expect_refused([&] { write_png(path, nullptr, 4, 4, 3); }, "pixel");
  for (const std::string& key : {std::string(), std::string(80, 'k'), std::string(" lead"), std::string("trail "),
                                 std::string("two  spaces"), std::string("中文"), std::string("tab\tkey")})
    expect_refused([&] { write_png(path, pixels.data(), 4, 4, 3, {{key, "v"}}); }, "key '" + key + "'");
  expect_refused([&] { write_png(path, pixels.data(), 4, 4, 3, {{"k", "bad \xff utf-8"}}); }, "UTF-8");
  expect_refused([&] { write_png(path, pixels.data(), 4, 4, 3, {{"k", std::string("nul\0byte", 8)}}); }, "NUL");
  // 79 Latin-1 characters is the longest keyword.
  write_png(path, pixels.data(), 4, 4, 3, {{std::string(79, 'k'), "v"}});
  EXPECT_EQ(read_png(path).text.at(0).first, std::string(79, 'k'));
}

TEST(Png, UnwritablePathThrowsNamingItAndLeavesNoFile) {
  ScratchDir dir;
  const std::string path = dir.path("missing-dir/out.png");
  const auto pixels = random_pixels(2 * 2 * 3, 8);
  const std::string msg = error_of([&] { write_png(path, pixels.data(), 2, 2, 3, {{"parameters", "x"}}); });
  EXPECT_TRUE(contains_all(msg, {path}));
  EXPECT_FALSE(std::filesystem::exists(dir.path("missing-dir")));
  EXPECT_TRUE(std::filesystem::is_empty(dir.dir()));
}

TEST(Png, ReadRefusesNonPngAndTruncatedFilesNamingThem) {
  ScratchDir dir;
  const std::string text_file = dir.path("not-a.png");
  write_bytes(text_file, std::vector<char>{'h', 'e', 'l', 'l', 'o', ' ', 'p', 'n', 'g', '\n'});
  EXPECT_TRUE(contains_all(error_of([&] { read_png(text_file); }), {text_file, "not a valid PNG"}));

  const std::string missing = dir.path("missing.png");
  EXPECT_TRUE(contains_all(error_of([&] { read_png(missing); }), {missing, "cannot open"}));

  const std::string good = dir.path("good.png");
  const auto pixels = random_pixels(32 * 32 * 3, 9);
  write_png(good, pixels.data(), 32, 32, 3);
  auto bytes = read_bytes(good);
  bytes.resize(bytes.size() / 2);
  const std::string cut = dir.path("cut.png");
  write_bytes(cut, bytes);
  EXPECT_TRUE(contains_all(error_of([&] { read_png(cut); }), {cut}));
}

// Made with Python's zlib (not by taiyi): 2x2 8-bit grayscale [0, 85; 170, 255], a zTXt "Comment" = "zipped"
// before the image data and a compressed iTXt "Title" = "标题" (language zh) after it.
TEST(Png, ReadsGrayscaleAndCompressedText) {
  ScratchDir dir;
  const std::string path = dir.path("gray.png");
  write_bytes(path, from_hex("89504e470d0a1a0a0000000d494844520000000200000002080000000057dd52f8000000177a545874436f6d"
                             "6d656e740000789cabca2c28484d0100092d028d8a9010190000000e49444154789c6360086558f51f00"
                             "03ad01ff67fbca0900000020695458745469746c650001007a6800e6a087e9a29800789c7bb6a0fde5a2"
                             "19000f3d0431131bda850000000049454e44ae426082"));
  const PngImage img = read_png(path);
  EXPECT_EQ(img.width, 2);
  EXPECT_EQ(img.height, 2);
  EXPECT_EQ(img.channels, 3);
  EXPECT_EQ(img.pixels, (std::vector<uint8_t>{0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255}));
  EXPECT_EQ(img.text, (Text{{"Comment", "zipped"}, {"Title", "标题"}}));
}

// 2x1 grayscale [7, 9] with tRNS marking gray 7 transparent: decoded as RGBA.
TEST(Png, TransparencyChunkGivesRgba) {
  ScratchDir dir;
  const std::string path = dir.path("trns.png");
  write_bytes(path, from_hex("89504e470d0a1a0a0000000d4948445200000002000000010800000000d14920560000000274524e530007e8"
                             "f7589b0000000b49444154789c6360e70400001a001160cd24920000000049454e44ae426082"));
  const PngImage img = read_png(path);
  EXPECT_EQ(img.channels, 4);
  EXPECT_EQ(img.pixels, (std::vector<uint8_t>{7, 7, 7, 0, 9, 9, 9, 255}));
}

}  // namespace
}  // namespace taiyi::io
