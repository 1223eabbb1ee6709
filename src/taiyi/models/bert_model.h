// BertModel as in transformers 4.44 (models/bert/modeling_bert.py, eager attention),
// the text encoder of Taiyi: word + token-type + absolute position embeddings,
// LayerNorm, then post-norm encoder layers (self-attention, GELU feed-forward).
//
//   auto bert = BertModel::load("taiyi/text_encoder");
//   Tensor h = bert->forward(input_ids);    // last_hidden_state [B, L, hidden]
//
// Whether the pipeline passes an attention mask is the caller's business: diffusers
// passes one only when config.json has "use_attention_mask": true (use_attention_mask()).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/nn/layers.h"

namespace taiyi::models {

struct BertConfig {
  int64_t vocab_size = 30522, hidden_size = 768, num_hidden_layers = 12, num_attention_heads = 12;
  int64_t intermediate_size = 3072, max_position_embeddings = 512, type_vocab_size = 2;
  float layer_norm_eps = 1e-12f;
  bool use_attention_mask = false;  // diffusers' flag, not transformers'

  static BertConfig from_config(const io::ConfigReader& c);
};

class BertLayer {
 public:
  BertLayer(const nn::Scope& s, const BertConfig& c);
  // mask_rows: per batch element, the key positions to attend to (empty: all).
  Tensor operator()(const Tensor& x, const std::vector<Tensor>& key_rows) const;

 private:
  int heads_;
  nn::Linear query_, key_, value_, attn_out_, intermediate_, output_;
  nn::LayerNorm attn_norm_, output_norm_;
};

class BertModel {
 public:
  explicit BertModel(const BertConfig& config);
  static std::unique_ptr<BertModel> load(const std::string& component_dir);
  static std::unique_ptr<BertModel> random(const std::string& component_dir, uint64_t seed = 0);

  // input_ids [B, L] (i64 or i32); attention_mask [B, L] of 0/1 or undefined (attend everywhere).
  // Returns last_hidden_state [B, L, hidden].
  Tensor forward(const Tensor& input_ids, const Tensor& attention_mask = Tensor()) const;

  const BertConfig& config() const { return config_; }
  bool use_attention_mask() const { return config_.use_attention_mask; }
  nn::ParameterSet& parameters() { return params_; }
  const nn::ParameterSet& parameters() const { return params_; }

 private:
  BertConfig config_;
  nn::ParameterSet params_;
  nn::Embedding word_embeddings_, position_embeddings_, token_type_embeddings_;
  nn::LayerNorm embeddings_norm_;
  std::vector<BertLayer> layers_;
  nn::Linear pooler_;  // loaded with the checkpoint; the pipeline uses last_hidden_state only
};

// Skips the buffers older and newer transformers save with the weights
// (embeddings.position_ids, embeddings.token_type_ids).
bool adapt_bert_weight(std::string& name, Tensor& t);

}  // namespace taiyi::models
