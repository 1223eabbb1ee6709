// The txt2img pipeline against diffusers' StableDiffusionPipeline.__call__ on the tiny
// model (tests/fixtures/golden/pipeline.*): three runs covering PNDM with user latents and a
// negative prompt, DPM++ 2M Karras at 64x96 without one, and Euler ancestral from seed 42
// (the generator feeds the initial latents and every step's noise).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include <map>

#include "taiyi/graph/graph_function.h"
#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/pipeline/pipeline.h"
#include "test_util.h"

namespace taiyi {
namespace {

using pipeline::GenerateRequest;
using pipeline::Pipeline;
using testing::fixture;
using testing::max_abs_diff;

const Pipeline& tiny_pipeline(graph::Mode mode = graph::Mode::kGraph) {
  static std::unique_ptr<Pipeline> graph_p = Pipeline::load(fixture("tiny-taiyi"), {graph::Mode::kGraph});
  static std::unique_ptr<Pipeline> eager_p = Pipeline::load(fixture("tiny-taiyi"), {graph::Mode::kEager});
  return mode == graph::Mode::kGraph ? *graph_p : *eager_p;
}

const io::TensorMap& golden() {
  static io::TensorMap g = io::read_safetensors(fixture("golden/pipeline.safetensors"));
  return g;
}

const nlohmann::json& manifest() {
  static nlohmann::json m = io::read_json_file(fixture("golden/pipeline.json"));
  return m;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  for (const auto& c : manifest().at("cases")) names.push_back(c.at("name"));
  return names;
}

const nlohmann::json& case_of(const std::string& name) {
  for (const auto& c : manifest().at("cases"))
    if (c.at("name") == name) return c;
  throw Error("no case " + name);
}

std::string sampler_of(const std::string& golden_name) {
  static const std::map<std::string, std::string> names = {
      {"pndm", "pndm"}, {"dpmpp2m_karras", "dpmpp_2m_karras"}, {"euler_a", "euler_a"}};
  return names.at(golden_name);
}

GenerateRequest request_for(const std::string& name) {
  const auto& c = case_of(name);
  GenerateRequest r;
  r.prompt = c.at("prompt");
  r.negative_prompt = c.at("negative_prompt").is_null() ? "" : c.at("negative_prompt").get<std::string>();
  r.width = c.at("width");
  r.height = c.at("height");
  r.steps = c.at("num_inference_steps");
  r.guidance_scale = c.at("guidance_scale");
  r.sampler = sampler_of(c.at("scheduler"));
  if (c.at("generator_seed").is_null()) r.latents = golden().at(name + "/latents_in");
  else r.seed = c.at("generator_seed");
  return r;
}

class PipelineParity : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(PipelineParity, MatchesDiffusers) {
  const std::string name = std::get<0>(GetParam());
  const graph::Mode mode = graph::parse_mode(std::get<1>(GetParam()));
  const auto& g = golden();
  const GenerateRequest r = request_for(name);
  int calls = 0;
  GenerateRequest counted = r;
  counted.on_step = [&](const pipeline::StepProgress& p) {
    ++calls;
    EXPECT_EQ(p.step, calls);
  };
  const auto out = tiny_pipeline(mode).generate(counted);
  EXPECT_EQ(calls, case_of(name).at("num_unet_calls").get<int>());

  const auto& p = tiny_pipeline(mode);
  EXPECT_LE(max_abs_diff(p.encode_prompt(r.prompt, r.negative_prompt, true), g.at(name + "/prompt_embeds")), 1e-4);
  const Tensor& steps = g.at(name + "/step_latents");
  const Tensor final_latents = steps.slice(0, steps.size(0) - 1, steps.size(0)).squeeze(0);
  EXPECT_LE(max_abs_diff(out.latents, final_latents), 2e-3);
  EXPECT_LE(max_abs_diff(out.image, g.at(name + "/image")), 1e-4);
  const Tensor& u8 = g.at(name + "/image_uint8");
  ASSERT_EQ(static_cast<size_t>(u8.numel()), out.pixels.size());
  int worst = 0;
  for (size_t i = 0; i < out.pixels.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<int>(out.pixels[i]) - static_cast<int>(u8.data<uint8_t>()[i])));
  EXPECT_LE(worst, 1);
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineParity,
                         ::testing::Combine(::testing::ValuesIn(case_names()), ::testing::Values("eager", "graph")),
                         [](const auto& p) {
                           return testing::test_name(std::get<0>(p.param) + "_" + std::get<1>(p.param));
                         });

TEST(Pipeline, GraphModeGivesEagerModesImageAndCompilesOncePerSignature) {
  const GenerateRequest r = request_for("dpmpp2m_karras_5steps_64x96");
  const auto eager = tiny_pipeline(graph::Mode::kEager).generate(r);
  const auto& p = tiny_pipeline(graph::Mode::kGraph);
  const auto first = p.generate(r);
  const size_t compiled = p.compiles().size();
  const auto second = p.generate(r);
  EXPECT_EQ(p.compiles().size(), compiled);  // nothing new to compile
  EXPECT_EQ(second.timings.compile_s, 0.0);
  // Winograd convolutions and fused epilogues round differently from eager mode's kernels, and
  // the sampler carries the difference through every step: the golden runs' latent bound.
  EXPECT_LE(max_abs_diff(first.latents, eager.latents), 2e-3);
  int worst = 0;
  for (size_t i = 0; i < first.pixels.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<int>(first.pixels[i]) - static_cast<int>(eager.pixels[i])));
  EXPECT_LE(worst, 1);
  EXPECT_EQ(second.pixels, first.pixels);  // a replay is bit-exact
  EXPECT_EQ(max_abs_diff(second.latents, first.latents), 0.0);
  for (const auto& c : p.compiles()) EXPECT_GT(c.nodes, 0u) << c.function;
  // The UNet keeps the K and V projections of the text context between steps (two per
  // cross-attention); the replay above was bit-exact with them.
  for (const auto& c : p.compiles()) {
    if (c.function == "unet") {
      EXPECT_GT(c.kept_nodes, 0u);
      EXPECT_EQ(c.kept_nodes % 2, 0u);
    } else {
      EXPECT_EQ(c.kept_nodes, 0u) << c.function;
    }
  }
}

TEST(Pipeline, SeededRunsRepeatAndDifferentSeedsDiffer) {
  GenerateRequest r = request_for("euler_a_5steps_64x64_seed42");
  const auto a = tiny_pipeline().generate(r);
  const auto b = tiny_pipeline().generate(r);
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_EQ(a.seed, 42);
  r.seed = 43;
  EXPECT_NE(tiny_pipeline().generate(r).pixels, a.pixels);
  r.seed = 42 + (int64_t{1} << 32);  // torch keeps the low 32 bits of the seed
  EXPECT_EQ(tiny_pipeline().generate(r).pixels, a.pixels);
}

TEST(Pipeline, RandomSeedIsReportedAndReproduces) {
  GenerateRequest r = request_for("euler_a_5steps_64x64_seed42");
  r.seed = -1;
  const auto a = tiny_pipeline().generate(r);
  EXPECT_GE(a.seed, 0);
  r.seed = a.seed;
  EXPECT_EQ(tiny_pipeline().generate(r).pixels, a.pixels);
}

TEST(Pipeline, NoGuidanceSkipsTheUnconditionalBatch) {
  GenerateRequest r = request_for("pndm_4steps_64x64");
  r.guidance_scale = 1.0f;
  const auto out = tiny_pipeline().generate(r);
  EXPECT_EQ(tiny_pipeline().encode_prompt(r.prompt, r.negative_prompt, false).size(0), 1);
  EXPECT_EQ(out.pixels.size(), 64u * 64u * 3u);
}

TEST(Pipeline, DefaultsComeFromTheFolder) {
  EXPECT_EQ(tiny_pipeline().default_sampler(), "pndm");
  EXPECT_EQ(tiny_pipeline().vae_scale_factor(), 8);
  EXPECT_EQ(tiny_pipeline().default_size(), 64);  // tiny UNet sample_size 8
  EXPECT_EQ(tiny_pipeline().model_name(), "tiny-taiyi");
}

TEST(Pipeline, BadRequestsAreRefusedBeforeAnyWork) {
  auto bad = [](auto edit, const std::string& expect) {
    GenerateRequest r = request_for("pndm_4steps_64x64");
    edit(r);
    try {
      tiny_pipeline().generate(r);
      ADD_FAILURE() << "no error for " << expect;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
    }
  };
  bad([](GenerateRequest& r) { r.width = 500; }, "500x64");
  bad([](GenerateRequest& r) { r.height = -8; }, "multiple of 8");
  bad([](GenerateRequest& r) { r.steps = 0; }, "steps");
  bad([](GenerateRequest& r) { r.sampler = "heun"; }, "heun");
  bad([](GenerateRequest& r) { r.rng = "cuda"; }, "cuda");
  bad([](GenerateRequest& r) { r.latents = Tensor::zeros({1, 4, 8, 9}); }, "latents");
  bad([](GenerateRequest& r) { r.prompt = std::string("bad \xff\xfe utf8"); }, "UTF-8");
  bad([](GenerateRequest& r) { r.negative_prompt = std::string("\xc0\x80"); }, "UTF-8");
}

TEST(Pipeline, MissingComponentOrFolderNamesIt) {
  testing::TempDir tmp("pipeline");
  testing::copy_folder(fixture("tiny-taiyi"), tmp / "m");
  std::filesystem::remove_all(tmp / "m/vae");
  try {
    Pipeline::load(tmp / "m");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("component 'vae' is missing"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Pipeline::load(tmp / "nothing-here"), Error);
}

}  // namespace
}  // namespace taiyi
