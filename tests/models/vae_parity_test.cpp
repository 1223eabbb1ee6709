// AutoencoderKL against diffusers 0.27's outputs (tests/fixtures/golden/vae.*): decode of
// latents / scaling_factor, and encode to the latent distribution (mean, std, logvar).
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "taiyi/graph/graph_function.h"
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

// Graph mode: decode, and encode's three outputs, as compiled functions per folder.
graph::GraphFunction& vae_graph_for(const std::string& folder, bool decode) {
  static std::map<std::pair<std::string, bool>, std::unique_ptr<graph::GraphFunction>> cache;
  auto& f = cache[{folder, decode}];
  if (!f) {
    const auto* vae = &vae_for(folder);
    f = std::make_unique<graph::GraphFunction>(
        [vae, decode](const std::vector<Tensor>& in) {
          if (decode) return std::vector<Tensor>{vae->decode(in[0])};
          const auto d = vae->encode(in[0]);
          return std::vector<Tensor>{d.mean, d.std, d.logvar};
        },
        decode ? "vae_decode" : "vae_encode");
  }
  return *f;
}

class VaeParity : public ::testing::TestWithParam<std::tuple<std::string, std::string, std::string>> {};

TEST_P(VaeParity, MatchesDiffusers) {
  const auto& [folder, name, mode] = GetParam();
  const bool graph = mode == "graph";
  const auto& g = golden();
  const auto& vae = vae_for(folder);
  if (name.rfind("decode/", 0) == 0) {
    EXPECT_FLOAT_EQ(vae.config().scaling_factor, 0.18215f);
    const Tensor z = ops::scale(g.at(name + "/latents"), 1.0f / vae.config().scaling_factor);
    const Tensor image = graph ? vae_graph_for(folder, true)({z})[0] : vae.decode(z);
    EXPECT_LE(max_abs_diff(image, g.at(name + "/image")), 1e-4) << folder << " " << name;
  } else {
    models::LatentDistribution d;
    if (graph) {
      const auto out = vae_graph_for(folder, false)({g.at(name + "/image")});
      d = {out[0], out[1], out[2]};
    } else {
      d = vae.encode(g.at(name + "/image"));
    }
    EXPECT_LE(max_abs_diff(d.mean, g.at(name + "/mean")), 1e-4) << folder << " " << name;
    EXPECT_LE(max_abs_diff(d.std, g.at(name + "/std")), 1e-4) << folder << " " << name;
    EXPECT_LE(max_abs_diff(d.logvar, g.at(name + "/logvar")), 1e-4) << folder << " " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, VaeParity,
                         ::testing::Combine(::testing::Values("tiny-taiyi", "tiny-taiyi-safetensors"),
                                            ::testing::ValuesIn(case_names()), ::testing::Values("eager", "graph")),
                         [](const auto& p) {
                           return testing::test_name(std::get<0>(p.param) + "_" + std::get<1>(p.param) + "_" +
                                                     std::get<2>(p.param));
                         });

TEST(VaeParity, GoldenHasTwoDecodeAndTwoEncodeCases) { EXPECT_EQ(case_names().size(), 4u); }

}  // namespace
}  // namespace taiyi
