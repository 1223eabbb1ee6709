// Loading models from folders as users have them: config defaults and variants,
// fp16 and sharded weights, legacy names, and every broken input giving an error
// that names the file and the tensor or key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/ops/ops.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using models::AutoencoderKL;
using models::UNet2DConditionModel;
using testing::fixture;
using testing::max_abs_diff;
using testing::TempDir;

const char* kUNetWeights = "diffusion_pytorch_model.safetensors";

// A copy of the tiny model's unet (or vae) folder that a test may edit.
struct ComponentCopy {
  explicit ComponentCopy(const std::string& component) : tmp(component) {
    testing::copy_folder(fixture("tiny-taiyi-safetensors/" + component), dir());
  }
  std::string dir() const { return tmp / "c"; }
  std::string file(const std::string& name) const { return dir() + "/" + name; }
  nlohmann::json config() const { return io::read_json_file(file("config.json")); }
  void set_config(const nlohmann::json& j) const { std::ofstream(file("config.json")) << j.dump(2); }
  io::TensorMap weights() const { return io::read_safetensors(file(kUNetWeights)); }
  void set_weights(const io::TensorMap& w) const { io::write_safetensors(file(kUNetWeights), w); }
  TempDir tmp;
};

// Runs `f`, expects an Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

const io::TensorMap& unet_golden() {
  static io::TensorMap g = io::read_safetensors(fixture("golden/unet.safetensors"));
  return g;
}

Tensor run_golden_case(const UNet2DConditionModel& unet, const std::string& name = "b2_8x8_t801") {
  const auto& g = unet_golden();
  return unet.forward(g.at(name + "/sample"), g.at(name + "/timestep"), g.at(name + "/encoder_hidden_states"));
}

double golden_error(const UNet2DConditionModel& unet, const std::string& name = "b2_8x8_t801") {
  return max_abs_diff(run_golden_case(unet, name), unet_golden().at(name + "/noise_pred"));
}

TEST(ModelConfig, TinyUNetConfigTakesDiffusersDefaults) {
  const auto cfg = models::UNet2DConditionConfig::from_config(
      io::ConfigReader::load(fixture("tiny-taiyi/unet/config.json")));
  EXPECT_EQ(cfg.num_attention_heads, (std::vector<int64_t>{4, 4, 4, 4}));
  EXPECT_EQ(cfg.transformer_layers_per_block, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(cfg.cross_attention_dim, (std::vector<int64_t>{32, 32, 32, 32}));
  EXPECT_FALSE(cfg.use_linear_projection);
  EXPECT_EQ(cfg.mid_block_type, "UNetMidBlock2DCrossAttn");
  const auto vae = models::AutoencoderKLConfig::from_config(io::ConfigReader::load(fixture("tiny-taiyi/vae/config.json")));
  EXPECT_FLOAT_EQ(vae.scaling_factor, 0.18215f);
  EXPECT_TRUE(vae.mid_block_add_attention);
}

TEST(ModelConfig, FullSizeTaiyiConfigHasTheRealParameterCounts) {
  // Public figures: the SD1 UNet has 859,520,964 parameters and its VAE 83,653,863.
  UNet2DConditionModel unet(models::UNet2DConditionConfig::from_config(
      io::ConfigReader::load(std::string(TAIYI_SOURCE_DIR) + "/configs/taiyi-v0.1/unet/config.json")));
  EXPECT_EQ(unet.parameters().numel(), 859520964);
  AutoencoderKL vae(models::AutoencoderKLConfig::from_config(
      io::ConfigReader::load(std::string(TAIYI_SOURCE_DIR) + "/configs/taiyi-v0.1/vae/config.json")));
  EXPECT_EQ(vae.parameters().numel(), 83653863);
}

TEST(ModelConfig, AttentionHeadsAsListOrNumAttentionHeadsGiveTheSameModel) {
  for (const auto& edit : std::vector<std::pair<std::string, nlohmann::json>>{
           {"attention_head_dim", nlohmann::json::array({4, 4, 4, 4})}, {"num_attention_heads", 4}}) {
    ComponentCopy c("unet");
    auto j = c.config();
    if (edit.first == "num_attention_heads") j.erase("attention_head_dim");
    j[edit.first] = edit.second;
    c.set_config(j);
    EXPECT_LE(golden_error(*UNet2DConditionModel::load(c.dir())), 1e-4) << edit.first;
  }
}

TEST(ModelConfig, DifferentHeadCountChangesTheOutput) {
  ComponentCopy c("unet");
  auto j = c.config();
  j["attention_head_dim"] = 2;
  c.set_config(j);
  EXPECT_GT(golden_error(*UNet2DConditionModel::load(c.dir())), 1e-3);
}

TEST(ModelConfig, LinearProjectionEqualsOneByOneConvolution) {
  ComponentCopy c("unet");
  auto j = c.config();
  j["use_linear_projection"] = true;
  c.set_config(j);
  io::TensorMap w = c.weights();
  int changed = 0;
  for (auto& [name, t] : w) {
    if ((name.find(".proj_in.weight") != std::string::npos || name.find(".proj_out.weight") != std::string::npos) &&
        t.ndim() == 4) {
      t = t.reshape({t.size(0), t.size(1)});
      ++changed;
    }
  }
  EXPECT_EQ(changed, 32);  // proj_in and proj_out of 16 transformers
  c.set_weights(w);
  const auto unet = UNet2DConditionModel::load(c.dir());
  for (const char* name : {"b2_8x8_t801", "b2_8x12_t301_nonsquare_oddpath"})
    EXPECT_LE(golden_error(*unet, name), 1e-4) << name;
}

TEST(ModelConfig, TransformerLayersPerBlockAddsBlocks) {
  ComponentCopy c("unet");
  auto j = c.config();
  j["transformer_layers_per_block"] = 2;
  c.set_config(j);
  auto unet = UNet2DConditionModel::random(c.dir(), 7);
  EXPECT_NE(unet->parameters().find("down_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k.weight"), nullptr);
  EXPECT_NE(unet->parameters().find("up_blocks.3.attentions.2.transformer_blocks.1.ff.net.2.bias"), nullptr);
  EXPECT_EQ(unet->parameters().find("down_blocks.0.attentions.0.transformer_blocks.2.attn1.to_q.weight"), nullptr);
  const Tensor out = run_golden_case(*unet);
  EXPECT_EQ(out.shape(), (Shape{2, 4, 8, 8}));
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_TRUE(std::isfinite(out.item(i)));
}

TEST(ModelConfig, TimestepAsIntFloatOrPerSampleVectorAgree) {
  const auto unet = UNet2DConditionModel::load(fixture("tiny-taiyi-safetensors/unet"));
  const auto& g = unet_golden();
  const Tensor& x = g.at("b2_8x8_t801/sample");
  const Tensor& ctx = g.at("b2_8x8_t801/encoder_hidden_states");
  const Tensor a = unet->forward(x, Tensor::from_vector<int64_t>({801}, {}), ctx);
  const Tensor b = unet->forward(x, Tensor::from_vector<float>({801.0f}, {}), ctx);
  const Tensor c = unet->forward(x, Tensor::from_vector<int64_t>({801, 801}, {2}), ctx);
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  EXPECT_LE(max_abs_diff(a, c), 1e-5);  // [1] vs [2] rows: another summation order in the time MLP
  EXPECT_THROW(unet->forward(x, Tensor::from_vector<int64_t>({1, 2, 3}, {3}), ctx), Error);
}

TEST(ModelWeights, Fp16FileLoadsAsItsExactValues) {
  ComponentCopy c("unet");
  io::TensorMap w = c.weights();
  for (auto& [name, t] : w) t = t.to(DType::F16);
  fs::remove(c.file(kUNetWeights));
  io::write_safetensors(c.file("diffusion_pytorch_model.fp16.safetensors"), w);
  const auto unet = UNet2DConditionModel::load(c.dir());
  for (const auto& p : unet->parameters().all()) {
    ASSERT_EQ(p.value.dtype(), DType::F32);
    ASSERT_EQ(max_abs_diff(p.value, w.at(p.name).to(DType::F32)), 0.0) << p.name;
  }
  EXPECT_LE(golden_error(*unet), 2e-2);  // f16 rounding of the weights, not a loader error
}

TEST(ModelWeights, ShardedCheckpointWithIndexLoads) {
  ComponentCopy c("unet");
  io::TensorMap w = c.weights(), a, b;
  nlohmann::json index;
  for (auto& [name, t] : w) {
    const bool first = name < "mid";
    (first ? a : b)[name] = t;
    index["weight_map"][name] = first ? "part-1.safetensors" : "part-2.safetensors";
  }
  fs::remove(c.file(kUNetWeights));
  io::write_safetensors(c.file("part-1.safetensors"), a);
  io::write_safetensors(c.file("part-2.safetensors"), b);
  std::ofstream(c.file("diffusion_pytorch_model.safetensors.index.json")) << index.dump();
  EXPECT_LE(golden_error(*UNet2DConditionModel::load(c.dir())), 1e-4);
}

TEST(ModelWeights, VaeLoadsLegacyAndCurrentAttentionNames) {
  const auto& g = [] {
    static io::TensorMap v = io::read_safetensors(fixture("golden/vae.safetensors"));
    return v;
  }();
  const Tensor z = ops::scale(g.at("decode/b1_8x8/latents"), 1.0f / 0.18215f);
  const Tensor& expected = g.at("decode/b1_8x8/image");
  // Current names (to_q, to_k, to_v, to_out.0).
  ComponentCopy c("vae");
  io::TensorMap w = c.weights(), renamed, conv_shaped;
  for (auto& [name, t] : w) {
    std::string n = name;
    Tensor tt = t;
    models::adapt_legacy_vae_weight(n, tt);
    renamed[n] = tt;
    // Original-checkpoint style: projections as 1x1 convolutions.
    conv_shaped[name] = (name.find("attentions.0.") != std::string::npos && name.ends_with(".weight") &&
                         name.find("group_norm") == std::string::npos)
                            ? t.reshape({t.size(0), t.size(1), 1, 1})
                            : t;
  }
  EXPECT_TRUE(renamed.count("decoder.mid_block.attentions.0.to_out.0.weight"));
  EXPECT_FALSE(renamed.count("decoder.mid_block.attentions.0.proj_attn.weight"));
  for (const auto* variant : {&renamed, &conv_shaped}) {
    c.set_weights(*variant);
    EXPECT_LE(max_abs_diff(AutoencoderKL::load(c.dir())->decode(z), expected), 1e-4);
  }
}

TEST(ModelErrors, MissingRequiredConfigKey) {
  ComponentCopy c("unet");
  auto j = c.config();
  j.erase("block_out_channels");
  c.set_config(j);
  expect_error([&] { UNet2DConditionModel::load(c.dir()); }, {"config.json", "missing required key 'block_out_channels'"});
}

TEST(ModelErrors, ConfigErrorsNameFileAndKey) {
  struct Case {
    std::string key;
    nlohmann::json value;
    std::string expect;
  };
  for (const Case& k : std::vector<Case>{{"class_embed_type", "timestep", "class_embed_type"},
                                         {"_class_name", "UNet2DModel", "_class_name is 'UNet2DModel'"},
                                         {"layers_per_block", "two", "expected an integer"},
                                         {"down_block_types", nlohmann::json::array({"CrossAttnDownBlock2D"}),
                                          "has 1 entries"},
                                         {"up_block_types",
                                          nlohmann::json::array({"UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"}),
                                          "'AttnUpBlock2D' is not supported"},
                                         {"norm_num_groups", 5, "cannot be split into 5 groups"},
                                         {"attention_head_dim", nlohmann::json::array({4, 4}), "expected 4 values"}}) {
    ComponentCopy c("unet");
    auto j = c.config();
    j[k.key] = k.value;
    c.set_config(j);
    expect_error([&] { UNet2DConditionModel::load(c.dir()); }, {k.expect});
  }
  ComponentCopy bad("unet");
  std::ofstream(bad.file("config.json")) << "{\"block_out_channels\": [16, ";
  expect_error([&] { UNet2DConditionModel::load(bad.dir()); }, {"config.json", "invalid JSON"});
}

TEST(ModelErrors, WrongShapedWeightNamesTensorAndFile) {
  ComponentCopy c("unet");
  io::TensorMap w = c.weights();
  w["conv_in.weight"] = Tensor::zeros({16, 4, 3, 1});
  c.set_weights(w);
  expect_error([&] { UNet2DConditionModel::load(c.dir()); },
               {kUNetWeights, "'conv_in.weight'", "[16, 4, 3, 1]", "[16, 4, 3, 3]"});
}

TEST(ModelErrors, MissingAndUnexpectedTensors) {
  ComponentCopy c("unet");
  io::TensorMap w = c.weights();
  w.erase("conv_out.bias");
  c.set_weights(w);
  expect_error([&] { UNet2DConditionModel::load(c.dir()); }, {kUNetWeights, "missing tensor 'conv_out.bias'"});
  w = c.weights();
  w["conv_out.bias"] = Tensor::zeros({4});
  w["down_blocks.0.extra.weight"] = Tensor::zeros({4});
  c.set_weights(w);
  expect_error([&] { UNet2DConditionModel::load(c.dir()); },
               {kUNetWeights, "unexpected tensor 'down_blocks.0.extra.weight'"});
}

TEST(ModelErrors, IntegerWeightIsRefused) {
  ComponentCopy c("unet");
  io::TensorMap w = c.weights();
  w["conv_out.bias"] = Tensor::zeros({4}, DType::I64);
  c.set_weights(w);
  expect_error([&] { UNet2DConditionModel::load(c.dir()); }, {"'conv_out.bias'", "dtype i64"});
}

TEST(ModelErrors, MissingWeightsOrFolder) {
  ComponentCopy c("unet");
  fs::remove(c.file(kUNetWeights));
  expect_error([&] { UNet2DConditionModel::load(c.dir()); }, {c.dir(), "no weights found"});
  expect_error([&] { UNet2DConditionModel::load(c.dir() + "/nope"); }, {"nope/config.json"});
}

TEST(ModelErrors, BadInputShapes) {
  const auto unet = UNet2DConditionModel::load(fixture("tiny-taiyi-safetensors/unet"));
  const Tensor ctx = Tensor::zeros({2, 8, 32});
  const Tensor t = Tensor::from_vector<int64_t>({1}, {});
  expect_error([&] { unet->forward(Tensor::zeros({2, 3, 8, 8}), t, ctx); }, {"sample", "[2, 3, 8, 8]"});
  expect_error([&] { unet->forward(Tensor::zeros({2, 4, 8, 8}), t, Tensor::zeros({2, 8, 31})); },
               {"encoder_hidden_states"});
  const auto vae = AutoencoderKL::load(fixture("tiny-taiyi-safetensors/vae"));
  expect_error([&] { vae->decode(Tensor::zeros({1, 3, 8, 8})); }, {"latents"});
  expect_error([&] { vae->encode(Tensor::zeros({1, 4, 64, 64})); }, {"image"});
}

}  // namespace
}  // namespace taiyi
