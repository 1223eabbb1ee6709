// AutoencoderKL against diffusers 0.27's outputs (tests/fixtures/golden/vae.*): decode of
// latents / scaling_factor, and encode to the latent distribution (mean, std, logvar).
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/ops/ops.h"
#include "test_util.h"

namespace taiyi {
namespace {

using testing::fixture;
using testing::max_abs_diff;

const models::AutoencoderKL& vae_for(const std::string& folder) {
  static std::map<std::string, std::unique_ptr<models::AutoencoderKL>> cache;
  auto& m = cache[folder];
  if (!m) m = models::AutoencoderKL::load(fixture(folder + "/vae"));
  return *m;
}

const io::TensorMap& golden() {
  static io::TensorMap g = io::read_safetensors(fixture("golden/vae.safetensors"));
  return g;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  const nlohmann::json manifest = io::read_json_file(fixture("golden/vae.json"));
  for (const auto& c : manifest.at("cases")) names.push_back(c.at("name"));
  return names;
}

class VaeParity : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(VaeParity, MatchesDiffusers) {
  const auto& [folder, name] = GetParam();
  const auto& g = golden();
  const auto& vae = vae_for(folder);
  if (name.rfind("decode/", 0) == 0) {
    EXPECT_FLOAT_EQ(vae.config().scaling_factor, 0.18215f);
    const Tensor z = ops::scale(g.at(name + "/latents"), 1.0f / vae.config().scaling_factor);
    EXPECT_LE(max_abs_diff(vae.decode(z), g.at(name + "/image")), 1e-4) << folder << " " << name;
  } else {
    const auto d = vae.encode(g.at(name + "/image"));
    EXPECT_LE(max_abs_diff(d.mean, g.at(name + "/mean")), 1e-4) << folder << " " << name;
    EXPECT_LE(max_abs_diff(d.std, g.at(name + "/std")), 1e-4) << folder << " " << name;
    EXPECT_LE(max_abs_diff(d.logvar, g.at(name + "/logvar")), 1e-4) << folder << " " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, VaeParity,
                         ::testing::Combine(::testing::Values("tiny-taiyi", "tiny-taiyi-safetensors"),
                                            ::testing::ValuesIn(case_names())),
                         [](const auto& p) {
                           return testing::test_name(std::get<0>(p.param) + "_" + std::get<1>(p.param));
                         });

TEST(VaeParity, GoldenHasTwoDecodeAndTwoEncodeCases) { EXPECT_EQ(case_names().size(), 4u); }

}  // namespace
}  // namespace taiyi
