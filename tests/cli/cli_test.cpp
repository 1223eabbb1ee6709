// The `taiyi` binary as a user runs it: eval parity through files, bench's JSON line,
// and one clear stderr line with a non-zero exit for every bad flag or file.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/run_taiyi.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::max_abs_diff;
using testing::relative_l2;
using testing::TempDir;

using Result = testing::RunResult;
Result run(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  return testing::run_taiyi(args, env);
}

const io::TensorMap& golden(const std::string& part) {
  static std::map<std::string, io::TensorMap> cache;
  auto& g = cache[part];
  if (g.empty()) g = io::read_safetensors(fixture("golden/" + part + ".safetensors"));
  return g;
}

TEST(CliEval, UNetMatchesGoldenThroughFiles) {
  TempDir tmp("eval-unet");
  const auto& g = golden("unet");
  const std::string c = "b2_8x12_t301_nonsquare_oddpath/";
  io::write_safetensors(tmp / "in.safetensors", {{"sample", g.at(c + "sample")},
                                                 {"timestep", g.at(c + "timestep")},
                                                 {"encoder_hidden_states", g.at(c + "encoder_hidden_states")}});
  for (const char* mode : {"eager", "graph"}) {
    const Result r = run({"eval", "unet", "--model", fixture("tiny-taiyi"), "--inputs", tmp / "in.safetensors",
                          "--output", tmp / "out.safetensors", "--mode", mode});
    ASSERT_EQ(r.rc, 0) << r.err;
    const io::TensorMap out = io::read_safetensors(tmp / "out.safetensors");
    EXPECT_LE(max_abs_diff(out.at("noise_pred"), g.at(c + "noise_pred")), 1e-4) << mode;
    EXPECT_EQ(r.err.find("compiled unet") != std::string::npos, std::string(mode) == "graph") << r.err;
  }
}

TEST(CliEval, VaeDecodeAndEncodeMatchGolden) {
  TempDir tmp("eval-vae");
  const auto& g = golden("vae");
  io::write_safetensors(tmp / "dec.safetensors", {{"latents", g.at("decode/b2_8x12/latents")}});
  Result r = run({"eval", "vae_decode", "-m", fixture("tiny-taiyi-safetensors"), "-i", tmp / "dec.safetensors", "-o",
                  tmp / "dec_out.safetensors"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_LE(max_abs_diff(io::read_safetensors(tmp / "dec_out.safetensors").at("image"), g.at("decode/b2_8x12/image")),
            1e-4);
  io::write_safetensors(tmp / "enc.safetensors", {{"image", g.at("encode/b1_64x96/image")}});
  // A component folder works as well as the pipeline folder.
  r = run({"eval", "vae_encode", "-m", fixture("tiny-taiyi/vae"), "-i", tmp / "enc.safetensors", "-o",
           tmp / "enc_out.safetensors"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const io::TensorMap out = io::read_safetensors(tmp / "enc_out.safetensors");
  for (const char* n : {"mean", "std", "logvar"})
    EXPECT_LE(max_abs_diff(out.at(n), g.at(std::string("encode/b1_64x96/") + n)), 1e-4) << n;
}

TEST(CliEval, TextEncoderMatchesGolden) {
  TempDir tmp("eval-text");
  const auto& g = golden("text_encoder");
  io::write_safetensors(tmp / "in.safetensors", {{"input_ids", g.at("input_ids")}});
  Result r = run({"eval", "text_encoder", "-m", fixture("tiny-taiyi"), "-i", tmp / "in.safetensors", "-o",
                  tmp / "out.safetensors"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_LE(
      max_abs_diff(io::read_safetensors(tmp / "out.safetensors").at("last_hidden_state"), g.at("last_hidden_state")),
      1e-4);
  io::write_safetensors(tmp / "in_mask.safetensors",
                        {{"input_ids", g.at("input_ids")}, {"attention_mask", g.at("attention_mask")}});
  r = run({"eval", "text_encoder", "-m", fixture("tiny-taiyi"), "-i", tmp / "in_mask.safetensors", "-o",
           tmp / "out.safetensors"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_LE(max_abs_diff(io::read_safetensors(tmp / "out.safetensors").at("last_hidden_state"),
                         g.at("last_hidden_state_with_mask")),
            1e-4);
}

TEST(CliEval, Bf16WhereSupportedElseAnFp32Fallback) {
  TempDir tmp("eval-bf16");
  const auto& g = golden("unet");
  const std::string c = "b2_8x8_t801/";
  io::write_safetensors(tmp / "in.safetensors", {{"sample", g.at(c + "sample")},
                                                 {"timestep", g.at(c + "timestep")},
                                                 {"encoder_hidden_states", g.at(c + "encoder_hidden_states")}});
  // bf16's arithmetic (bf16 inputs to every convolution, linear and attention product, f32
  // accumulation): oneDNN's kernels where the CPU has bf16, else the f32 kernels on bf16-rounded
  // weights and inputs (TAIYI_BF16_EMULATE=1). Measured on this fixture (tools/bf16_error.py): relative L2 1.1-1.4e-2,
  // max |diff| 2.9-4.1e-2 on outputs up to ~2.2, as expected of about 25 product layers in a row each
  // adding a relative error of order 2^-9 (sqrt(25) x 2.8e-3 = 1.4e-2). Bound: 3e-2 relative L2
  // (2x the worst case seen) and 1e-1 max; below 1e-4 would mean nothing was rounded.
  // Then the plain fallback, forced with ONEDNN_MAX_CPU_ISA=AVX512_CORE or AVX2 (no bf16 in oneDNN
  // below AVX512_CORE_BF16, whatever the CPU has: our own bf16 kernels follow oneDNN's verdict), or
  // as on a CPU without bf16: f32 results.
  for (const std::vector<std::string>& env :
       {std::vector<std::string>{"TAIYI_BF16_EMULATE=1"}, std::vector<std::string>{"ONEDNN_MAX_CPU_ISA=AVX512_CORE"},
        std::vector<std::string>{"ONEDNN_MAX_CPU_ISA=AVX2"}, std::vector<std::string>{}}) {
    const Result r = run({"eval", "unet", "-m", fixture("tiny-taiyi"), "-i", tmp / "in.safetensors", "-o",
                          tmp / "out.safetensors", "--dtype", "bf16"},
                         env);
    ASSERT_EQ(r.rc, 0) << r.err;
    const Tensor got = io::read_safetensors(tmp / "out.safetensors").at("noise_pred");
    const Tensor& want = g.at(c + "noise_pred");
    const bool bf16_arithmetic = env.empty() ? ops::bf16_supported() : env[0] == "TAIYI_BF16_EMULATE=1";
    if (bf16_arithmetic) {
      EXPECT_LE(relative_l2(got, want), 3e-2) << (env.empty() ? "" : env[0]);
      EXPECT_LE(max_abs_diff(got, want), 1e-1) << (env.empty() ? "" : env[0]);
      EXPECT_GT(max_abs_diff(got, want), 1e-4) << (env.empty() ? "" : env[0]) << ": nothing was rounded to bf16";
    } else {
      EXPECT_LE(max_abs_diff(got, want), 1e-4) << (env.empty() ? "" : env[0]);
    }
  }
  const Result bad = run({"eval", "unet", "-m", fixture("tiny-taiyi"), "-i", tmp / "in.safetensors", "-o",
                          tmp / "x.safetensors", "--dtype", "bf16", "--mode", "eager"});
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("needs --mode graph"), std::string::npos) << bad.err;
}

// The VAE decoder in bf16 where the CPU runs it (graph mode: the ResNet outputs in bf16, the
// upsamplers as four 2x2 convolutions of summed taps on AMX, the 64x64 level channels-last), both
// golden cases. Measured (tools/bf16_error.py): relative L2 9.3-9.6e-3, max |diff| 3.5-3.8e-2 on
// images up to ~4.8; PyTorch's own bf16 VAE, full size: 2.4e-2. Bound: 2e-2 relative L2 and 1e-1
// max; below 1e-4 would mean nothing was rounded. Without bf16: f32 results.
TEST(CliEval, VaeDecodeBf16WithinItsBound) {
  TempDir tmp("eval-vae-bf16");
  const auto& g = golden("vae");
  for (const char* c : {"b1_8x8", "b2_8x12"}) {
    const std::string k = std::string("decode/") + c + "/";
    io::write_safetensors(tmp / "dec.safetensors", {{"latents", g.at(k + "latents")}});
    const Result r = run({"eval", "vae_decode", "-m", fixture("tiny-taiyi"), "-i", tmp / "dec.safetensors", "-o",
                          tmp / "out.safetensors", "--dtype", "bf16"});
    ASSERT_EQ(r.rc, 0) << r.err;
    const Tensor got = io::read_safetensors(tmp / "out.safetensors").at("image");
    const Tensor& want = g.at(k + "image");
    if (ops::bf16_supported()) {
      EXPECT_LE(relative_l2(got, want), 2e-2) << c;
      EXPECT_LE(max_abs_diff(got, want), 1e-1) << c;
      EXPECT_GT(max_abs_diff(got, want), 1e-4) << c << ": nothing was rounded to bf16";
    } else {
      EXPECT_LE(max_abs_diff(got, want), 1e-4) << c;
    }
  }
}

// Each bad invocation: non-zero exit, one line on stderr containing `expect`, no output file.
TEST(CliErrors, BadFlagsAndFilesGiveOneClearLine) {
  TempDir tmp("errors");
  const auto& g = golden("vae");
  io::write_safetensors(tmp / "dec.safetensors", {{"latents", g.at("decode/b1_8x8/latents")}});
  std::ofstream(tmp / "garbage.safetensors") << "not a tensor file at all";
  const std::string model = fixture("tiny-taiyi-safetensors");
  const std::string out = tmp / "out.safetensors";
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"eval", "text_decoder", "-m", model, "-i", tmp / "dec.safetensors", "-o", out}, "unknown component"},
      {{"eval", "vae_decode", "-m", model, "-i", tmp / "missing.safetensors", "-o", out}, "missing.safetensors"},
      {{"eval", "vae_decode", "-m", model, "-i", tmp / "garbage.safetensors", "-o", out}, "garbage.safetensors"},
      {{"eval", "vae_encode", "-m", model, "-i", tmp / "dec.safetensors", "-o", out}, "missing input tensor 'image'"},
      {{"eval", "vae_decode", "-m", tmp / "no-model", "-i", tmp / "dec.safetensors", "-o", out}, "no-model"},
      {{"eval", "vae_decode", "-m", model, "-i", tmp / "dec.safetensors", "-o", tmp / "no/such/dir/out.safetensors"},
       "no/such/dir"},
      {{"eval", "vae_decode", "-i", tmp / "dec.safetensors", "-o", out}, "--model"},
      {{"bench", "unet", "-m", model, "--random-weights", "-W", "500", "-H", "512"}, "multiples of 8"},
      {{"frobnicate"}, "frobnicate"},
      {{"eval", "vae_decode", "-m", model, "-i", tmp / "dec.safetensors", "-o", out, "--mode", "static"},
       "unknown mode 'static'"},
  };
  for (const auto& c : cases) {
    const Result r = run(c.args);
    EXPECT_NE(r.rc, 0) << c.expect;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << "stderr: " << r.err;
    EXPECT_FALSE(fs::exists(out)) << c.expect;
    if (c.args[0] != "frobnicate" && c.args.size() > 6) {
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    }
  }
}

TEST(CliBench, TextEncoderAndWholeTxt2Img) {
  Result r = run({"bench", "text_encoder", "-m", fixture("tiny-taiyi"), "--context", "32", "--repeat", "1", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(j.at("batch"), 2);
  EXPECT_GT(j.at("gflop").get<double>(), 0.0);
  r = run({"bench", "txt2img", "-m", fixture("tiny-taiyi"), "-W", "64", "-H", "64", "--steps", "3", "--repeat", "1",
           "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(j.at("unet_calls"), 4);  // PNDM: steps + 1 calls
  EXPECT_GT(j.at("median_s").get<double>(), 0.0);
  EXPECT_LE(j.at("parts_s").get<double>(), j.at("median_s").get<double>());
  EXPECT_GT(j.at("first_run_compile_s").get<double>(), 0.0);
}

TEST(CliBench, PrintsJsonWithTimingFlopsAndMemory) {
  for (const char* mode : {"eager", "graph"}) {
    const Result r =
        run({"bench", "unet", "--model", fixture("tiny-taiyi"), "--random-weights", "--width", "64", "--height", "96",
             "--batch", "2", "--context", "8", "--repeat", "2", "--json", "--mode", mode});
    ASSERT_EQ(r.rc, 0) << r.err;
    const std::string last = r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
    const auto j = nlohmann::json::parse(last);
    EXPECT_EQ(j.at("mode"), mode);
    if (std::string(mode) == "graph") {
      EXPECT_GT(j.at("compile_s").get<double>(), 0.0);
      EXPECT_GT(j.at("graph_nodes").get<int>(), 100);
    }
    EXPECT_GT(j.at("median_s").get<double>(), 0.0);
    EXPECT_GT(j.at("gflop").get<double>(), 0.0);
    EXPECT_GT(j.at("peak_rss_mb").get<double>(), 1.0);
    EXPECT_EQ(j.at("times_s").size(), 2u);
    EXPECT_FALSE(j.at("onednn_isa").get<std::string>().empty());
    // The measured fp32 peak is always there (every x86-64 CPU runs an f32 convolution).
    EXPECT_GT(j.at("machine_peak_gflop_per_s").get<double>(), 1.0);
    EXPECT_GT(j.at("fraction_of_peak").get<double>(), 0.0);
    EXPECT_NE(r.err.find("machine peak (measured"), std::string::npos);
  }
}

}  // namespace
}  // namespace taiyi
