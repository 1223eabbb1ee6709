// `taiyi txt2img`, `tokenize` and `info` as a user runs them: a seeded Chinese prompt gives
// diffusers' image in a PNG that carries its parameters; bad input gives one clear line, a
// non-zero exit and no file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/run_taiyi.h"
#include "taiyi/io/config.h"
#include "taiyi/io/png.h"
#include "taiyi/io/tensor_file.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::max_abs_diff;
using testing::run_taiyi;
using testing::TempDir;

const io::TensorMap& golden() {
  static io::TensorMap g = io::read_safetensors(fixture("golden/pipeline.safetensors"));
  return g;
}

int max_u8_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  int worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<int>(a[i]) - static_cast<int>(b[i])));
  return worst;
}

int max_u8_diff(const std::vector<uint8_t>& a, const Tensor& b) {
  const uint8_t* p = b.data<uint8_t>();
  return max_u8_diff(a, std::vector<uint8_t>(p, p + b.numel()));
}

std::string text_of(const io::PngImage& img, const std::string& key) {
  for (const auto& [k, v] : img.text)
    if (k == key) return v;
  return "";
}

bool file_contains(const std::string& path, const std::string& needle) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str().find(needle) != std::string::npos;
}

const std::string kCase = "euler_a_5steps_64x64_seed42/";

TEST(CliTxt2Img, SeededChinesePromptGivesDiffusersImageWithParameters) {
  TempDir tmp("txt2img");
  const auto r = run_taiyi({"txt2img", "-m", fixture("tiny-taiyi"), "-p", "穿着宇航服的哈士奇", "-n", "模糊",
                            "--steps", "5", "--cfg-scale", "7.5", "--sampler", "euler_a", "-s", "42", "-W", "64", "-H",
                            "64", "-o", tmp / "out.png", "--save-raw", tmp / "raw.safetensors"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const io::PngImage img = io::read_png(tmp / "out.png");
  EXPECT_EQ(img.width, 64);
  EXPECT_EQ(img.height, 64);
  EXPECT_EQ(img.channels, 3);
  EXPECT_LE(max_u8_diff(img.pixels, golden().at(kCase + "image_uint8")), 1);
  const std::string params = text_of(img, "parameters");
  EXPECT_EQ(params.rfind("穿着宇航服的哈士奇\nNegative prompt: 模糊\nSteps: 5, Sampler: Euler a, CFG scale: 7.5, Seed: 42, "
                         "Size: 64x64, Model: tiny-taiyi",
                         0),
            0u)
      << params;
  EXPECT_TRUE(file_contains(tmp / "out.png", "iTXt"));
  const io::TensorMap raw = io::read_safetensors(tmp / "raw.safetensors");
  const Tensor& steps = golden().at(kCase + "step_latents");
  EXPECT_LE(max_abs_diff(raw.at("latents"), steps.slice(0, 4, 5).squeeze(0)), 2e-3);
  EXPECT_LE(max_abs_diff(raw.at("image"), golden().at(kCase + "image")), 1e-4);
  EXPECT_NE(r.err.find("unet 5 x"), std::string::npos) << r.err;  // per-stage timings
}

TEST(CliTxt2Img, EagerAndGraphModesWriteTheSameImage) {
  TempDir tmp("txt2img-modes");
  for (const char* mode : {"eager", "graph"}) {
    const auto r = run_taiyi({"txt2img", "-m", fixture("tiny-taiyi"), "-p", "小桥流水人家", "--steps", "3", "-s", "5",
                              "--mode", mode, "-o", tmp / (std::string(mode) + ".png")});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find(std::string(mode) + " mode"), std::string::npos) << r.err;
  }
  // Graph mode's kernels (Winograd convolutions, fused epilogues) round differently from eager's
  // oneDNN direct convolutions: within one level of 255, as the golden image bound.
  EXPECT_LE(max_u8_diff(io::read_png(tmp / "eager.png").pixels, io::read_png(tmp / "graph.png").pixels), 1);
}

TEST(CliTxt2Img, UserLatentsAndTheFoldersSampler) {
  TempDir tmp("txt2img-latents");
  const std::string c = "pndm_4steps_64x64/";
  io::write_safetensors(tmp / "latents.safetensors", {{"latents", golden().at(c + "latents_in")}});
  const auto r = run_taiyi({"txt2img", "-m", fixture("tiny-taiyi-safetensors"), "-p", "飞流直下三千尺, 疑是银河落九天, 唯美, 插画",
                            "-n", "低质量, 模糊, 水印", "--steps", "4", "--latents", tmp / "latents.safetensors", "-o",
                            tmp / "out.png", "--quiet"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  const io::PngImage img = io::read_png(tmp / "out.png");
  EXPECT_LE(max_u8_diff(img.pixels, golden().at(c + "image_uint8")), 1);
  EXPECT_NE(text_of(img, "parameters").find("Sampler: PLMS"), std::string::npos);
}

TEST(CliTxt2Img, RandomSeedIsPrintedAndBatchCountNumbersFiles) {
  TempDir tmp("txt2img-batch");
  const auto r = run_taiyi({"txt2img", "-m", fixture("tiny-taiyi"), "-p", "螺蛳粉", "--steps", "2", "-s", "-1", "-b",
                            "2", "-o", tmp / "img.png"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("random seed"), std::string::npos) << r.err;
  ASSERT_TRUE(fs::exists(tmp / "img-1.png"));
  ASSERT_TRUE(fs::exists(tmp / "img-2.png"));
  const std::string p1 = text_of(io::read_png(tmp / "img-1.png"), "parameters");
  const std::string p2 = text_of(io::read_png(tmp / "img-2.png"), "parameters");
  const auto seed_of = [](const std::string& p) { return std::stoll(p.substr(p.find("Seed: ") + 6)); };
  EXPECT_EQ(seed_of(p2), seed_of(p1) + 1);
}

TEST(CliTxt2Img, BadInputGivesOneLineAndNoFile) {
  TempDir tmp("txt2img-bad");
  testing::copy_folder(fixture("tiny-taiyi"), tmp / "broken");
  fs::remove_all(tmp / "broken/unet");
  const std::string out = tmp / "out.png";
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::string m = fixture("tiny-taiyi");
  const std::vector<Case> cases = {
      {{"-m", tmp / "missing", "-p", "a"}, "missing"},
      {{"-m", tmp / "broken", "-p", "a"}, "component 'unet' is missing"},
      {{"-m", m, "-p", std::string("bad \xff prompt")}, "UTF-8"},
      {{"-m", m, "-p", "a", "-W", "500"}, "500x"},
      {{"-m", m, "-p", "a", "--steps", "0"}, "steps"},
      {{"-m", m, "-p", "a", "--sampler", "heun"}, "heun"},
      {{"-m", m, "-p", "a", "--rng", "gpu"}, "gpu"},
      {{"-m", m, "-p", "a", "--latents", tmp / "none.safetensors"}, "none.safetensors"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"txt2img"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    args.insert(args.end(), {"-o", out});
    const auto r = run_taiyi(args);
    EXPECT_NE(r.rc, 0) << c.expect;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(out)) << c.expect;
  }
  const auto r = run_taiyi({"txt2img", "-m", m, "-p", "a", "-o", tmp / "no/such/dir/x.png"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("no/such/dir"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "no"));
}

TEST(CliTokenize, PrintsThePipelinesIds) {
  const auto r = run_taiyi({"tokenize", "-m", fixture("tiny-taiyi"), "-p", "飞流直下三千尺, 疑是银河落九天, 唯美, 插画"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto ids = nlohmann::json::parse(r.out).at("input_ids").get<std::vector<int64_t>>();
  const io::TensorMap golden_ids = io::read_safetensors(fixture("golden/tokenizer.safetensors"));
  const Tensor& g = golden_ids.at("input_ids");
  ASSERT_EQ(ids.size(), static_cast<size_t>(g.size(1)));
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], g.data<int64_t>()[i]) << i;
}

TEST(CliInfo, DescribesComponents) {
  const auto r = run_taiyi({"info", "-m", fixture("tiny-taiyi"), "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("components").at("unet").at("class"), "UNet2DConditionModel");
  EXPECT_GT(j.at("components").at("unet").at("parameters").get<int64_t>(), 0);
  EXPECT_EQ(j.at("components").at("unet").at("formats")[0], "pytorch-zip");
  EXPECT_EQ(j.at("components").at("text_encoder").at("dtypes"), nlohmann::json({"f32", "i64"}));
  EXPECT_EQ(j.at("components").at("tokenizer").at("model_max_length"), 32);
  EXPECT_EQ(j.at("components").at("scheduler").at("sampler"), "pndm");
  const auto text = run_taiyi({"info", "-m", fixture("tiny-taiyi-safetensors")});
  ASSERT_EQ(text.rc, 0) << text.err;
  EXPECT_NE(text.out.find("safetensors"), std::string::npos) << text.out;
}

}  // namespace
}  // namespace taiyi
