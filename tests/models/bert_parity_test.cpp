// BertModel (the Taiyi text encoder) against transformers 4.44 (tests/fixtures/golden/text_encoder.*):
// last_hidden_state as the pipeline gets it (no attention mask), and with the mask for the
// use_attention_mask: true configs.
#include <gtest/gtest.h>

#include <fstream>

#include "taiyi/graph/graph_function.h"
#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/models/bert_model.h"
#include "test_util.h"

namespace taiyi {
namespace {

using models::BertModel;
using testing::fixture;
using testing::max_abs_diff;

const io::TensorMap& golden() {
  static io::TensorMap g = io::read_safetensors(fixture("golden/text_encoder.safetensors"));
  return g;
}

class BertParity : public ::testing::TestWithParam<std::string> {};

TEST_P(BertParity, LastHiddenStateWithoutMaskAsThePipeline) {
  const auto bert = BertModel::load(fixture(GetParam() + "/text_encoder"));
  EXPECT_FALSE(bert->use_attention_mask());  // Taiyi's config has no use_attention_mask key
  const auto& g = golden();
  EXPECT_LE(max_abs_diff(bert->forward(g.at("input_ids")), g.at("last_hidden_state")), 1e-4);
  graph::GraphFunction f([&](const std::vector<Tensor>& in) { return std::vector<Tensor>{bert->forward(in[0])}; },
                         "text_encoder");
  EXPECT_LE(max_abs_diff(f({g.at("input_ids")})[0], g.at("last_hidden_state")), 1e-4);
}

TEST_P(BertParity, LastHiddenStateWithMask) {
  const auto bert = BertModel::load(fixture(GetParam() + "/text_encoder"));
  const auto& g = golden();
  const Tensor out = bert->forward(g.at("input_ids"), g.at("attention_mask"));
  EXPECT_LE(max_abs_diff(out, g.at("last_hidden_state_with_mask")), 1e-4);
  EXPECT_GT(max_abs_diff(out, g.at("last_hidden_state")), 1e-2);  // the mask matters on these prompts
}

INSTANTIATE_TEST_SUITE_P(Golden, BertParity, ::testing::Values("tiny-taiyi", "tiny-taiyi-safetensors"),
                         [](const auto& p) { return testing::test_name(p.param); });

TEST(BertModel, FullSizeTaiyiTextEncoderHasBertBaseParameterCount) {
  // bert-base-chinese: 102,267,648 parameters (with pooler).
  BertModel bert(models::BertConfig::from_config(
      io::ConfigReader::load(std::string(TAIYI_SOURCE_DIR) + "/configs/taiyi-v0.1/text_encoder/config.json")));
  EXPECT_EQ(bert.parameters().numel(), 102267648);
}

TEST(BertModel, BadInputsAndConfigs) {
  const auto bert = BertModel::load(fixture("tiny-taiyi-safetensors/text_encoder"));
  EXPECT_THROW(bert->forward(Tensor::zeros({2, 4})), Error);  // float ids
  EXPECT_THROW(bert->forward(Tensor::zeros({2, 513}, DType::I64)), Error);
  EXPECT_THROW(bert->forward(Tensor::from_vector<int64_t>({21128}, {1, 1})), Error);
  EXPECT_THROW(bert->forward(Tensor::zeros({1, 3}, DType::I64), Tensor::zeros({1, 3}, DType::I64)), Error);
  testing::TempDir tmp("bert-config");
  nlohmann::json j = io::read_json_file(fixture("tiny-taiyi/text_encoder/config.json"));
  j["hidden_act"] = "relu";
  std::ofstream(tmp / "config.json") << j.dump();
  try {
    BertModel::load(tmp.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_act"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace taiyi
