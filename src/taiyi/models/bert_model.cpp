#include "taiyi/models/bert_model.h"

#include <cmath>

#include "taiyi/models/config_checks.h"

namespace taiyi::models {

BertConfig BertConfig::from_config(const io::ConfigReader& c) {
  const std::string type = c.get<std::string>("model_type", "bert");
  if (type != "bert")
    throw Error(c.path() + ": model_type is '" + type + "', expected 'bert' (taiyi supports BertModel text encoders)");
  refuse_unless(c, "hidden_act", "gelu");
  refuse_unless(c, "position_embedding_type", "absolute");
  BertConfig cfg;
  cfg.vocab_size = c.require<int64_t>("vocab_size");
  cfg.hidden_size = c.require<int64_t>("hidden_size");
  cfg.num_hidden_layers = c.require<int64_t>("num_hidden_layers");
  cfg.num_attention_heads = c.require<int64_t>("num_attention_heads");
  cfg.intermediate_size = c.require<int64_t>("intermediate_size");
  cfg.max_position_embeddings = c.get<int64_t>("max_position_embeddings", 512);
  cfg.type_vocab_size = c.get<int64_t>("type_vocab_size", 2);
  cfg.layer_norm_eps = c.get<float>("layer_norm_eps", 1e-12f);
  cfg.use_attention_mask = c.get<bool>("use_attention_mask", false);
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                          "max_position_embeddings", "type_vocab_size"})
    if (c.get<int64_t>(key, 1) <= 0) c.fail(key, "must be positive");
  if (cfg.hidden_size % cfg.num_attention_heads != 0)
    c.fail("num_attention_heads", "hidden_size " + std::to_string(cfg.hidden_size) + " is not a multiple of it");
  return cfg;
}

BertLayer::BertLayer(const nn::Scope& s, const BertConfig& c)
    : heads_(static_cast<int>(c.num_attention_heads)),
      query_(s / "attention" / "self" / "query", c.hidden_size, c.hidden_size),
      key_(s / "attention" / "self" / "key", c.hidden_size, c.hidden_size),
      value_(s / "attention" / "self" / "value", c.hidden_size, c.hidden_size),
      attn_out_(s / "attention" / "output" / "dense", c.hidden_size, c.hidden_size),
      intermediate_(s / "intermediate" / "dense", c.hidden_size, c.intermediate_size),
      output_(s / "output" / "dense", c.intermediate_size, c.hidden_size),
      attn_norm_(s / "attention" / "output" / "LayerNorm", c.hidden_size, c.layer_norm_eps),
      output_norm_(s / "output" / "LayerNorm", c.hidden_size, c.layer_norm_eps) {}

Tensor BertLayer::operator()(const Tensor& x, const std::vector<Tensor>& key_rows) const {
  const Tensor q = query_(x), k = key_(x), v = value_(x);
  const float scale = 1.0f / std::sqrt(static_cast<float>(x.size(2) / heads_));
  Tensor ctx;
  if (key_rows.empty()) {
    ctx = ops::attention(q, k, v, heads_, scale);
  } else {
    // A masked key gets score + finfo.min, whose exp is exactly 0: attending only to the
    // unmasked keys computes the same thing.
    std::vector<Tensor> per_sample;
    for (int64_t b = 0; b < x.size(0); ++b) {
      auto rows = [&](const Tensor& t) {
        const Tensor table = ops::reshape(ops::slice(t, 0, b, b + 1), {t.size(1), t.size(2)});
        return ops::reshape(ops::embedding(table, key_rows[b]), {1, key_rows[b].size(0), t.size(2)});
      };
      per_sample.push_back(ops::attention(ops::slice(q, 0, b, b + 1), rows(k), rows(v), heads_, scale));
    }
    ctx = ops::concat(per_sample, 0);
  }
  const Tensor a = attn_norm_(ops::add(attn_out_(ctx), x));
  return output_norm_(ops::add(output_(ops::gelu(intermediate_(a))), a));
}

BertModel::BertModel(const BertConfig& config) : config_(config) {
  const nn::Scope root(params_);
  const nn::Scope emb = root / "embeddings";
  word_embeddings_ = nn::Embedding(emb / "word_embeddings", config_.vocab_size, config_.hidden_size);
  position_embeddings_ = nn::Embedding(emb / "position_embeddings", config_.max_position_embeddings, config_.hidden_size);
  token_type_embeddings_ = nn::Embedding(emb / "token_type_embeddings", config_.type_vocab_size, config_.hidden_size);
  embeddings_norm_ = nn::LayerNorm(emb / "LayerNorm", config_.hidden_size, config_.layer_norm_eps);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) layers_.emplace_back(root / "encoder" / "layer" / i, config_);
  pooler_ = nn::Linear(root / "pooler" / "dense", config_.hidden_size, config_.hidden_size);
}

bool adapt_bert_weight(std::string& name, Tensor&) {
  return name != "embeddings.position_ids" && name != "embeddings.token_type_ids";
}

std::unique_ptr<BertModel> BertModel::load(const std::string& component_dir) {
  auto model = std::make_unique<BertModel>(from_config_file<BertConfig>(component_dir));
  model->params_.load(io::read_component_weights(component_dir), "BertModel", adapt_bert_weight);
  return model;
}

std::unique_ptr<BertModel> BertModel::random(const std::string& component_dir, uint64_t seed) {
  auto model = std::make_unique<BertModel>(from_config_file<BertConfig>(component_dir));
  model->params_.init_random(seed);
  return model;
}

Tensor BertModel::forward(const Tensor& input_ids, const Tensor& attention_mask) const {
  if (input_ids.ndim() != 2 || (input_ids.dtype() != DType::I64 && input_ids.dtype() != DType::I32))
    throw Error("text_encoder: input_ids must be integer [batch, length], got " + input_ids.describe());
  const int64_t batch = input_ids.size(0), length = input_ids.size(1);
  if (length > config_.max_position_embeddings)
    throw Error("text_encoder: " + std::to_string(length) + " tokens exceed max_position_embeddings " +
                std::to_string(config_.max_position_embeddings));
  std::vector<Tensor> key_rows;
  if (attention_mask.defined()) {
    if (attention_mask.shape() != input_ids.shape())
      throw Error("text_encoder: attention_mask " + attention_mask.describe() + " does not match input_ids " +
                  input_ids.describe());
    bool all_ones = true;
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<int64_t> rows;
      for (int64_t i = 0; i < length; ++i)
        if (attention_mask.item(b * length + i) != 0) rows.push_back(i);
      if (rows.empty()) throw Error("text_encoder: attention_mask of sample " + std::to_string(b) + " is all zeros");
      all_ones = all_ones && static_cast<int64_t>(rows.size()) == length;
      key_rows.push_back(Tensor::from_vector(rows, {static_cast<int64_t>(rows.size())}));
    }
    if (all_ones) key_rows.clear();
  }
  // token_type_ids default to zeros and position_ids to arange(L), as when the pipeline calls it.
  const Tensor token_type = ops::slice(token_type_embeddings_.weight(), 0, 0, 1);
  const Tensor positions = ops::slice(position_embeddings_.weight(), 0, 0, length);
  Tensor h = ops::add(ops::add(word_embeddings_(input_ids), token_type), positions);
  h = embeddings_norm_(h);
  for (const auto& layer : layers_) h = layer(h, key_rows);
  return h;
}

}  // namespace taiyi::models
