// Attention, FeedForward (GEGLU) and BasicTransformerBlock as in diffusers 0.27
// (models/attention_processor.py, models/attention.py), the parts SD 1.x uses.
#pragma once

#include "taiyi/nn/layers.h"

namespace taiyi::nn {

struct AttentionOptions {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: self-attention (keys from the query input)
  int heads = 8;
  int64_t dim_head = 64;
  bool bias = false;          // bias on to_q/to_k/to_v
  int norm_groups = 0;        // > 0: GroupNorm on the input (the VAE's spatial attention)
  float norm_eps = 1e-5f;
  bool residual_connection = false;
  float rescale_output_factor = 1.0f;
};

// diffusers Attention: to_q, to_k, to_v, to_out.0 (and group_norm when asked).
// Input [B, L, C], or [B, C, H, W] which is attended over its H*W positions.
class Attention {
 public:
  Attention(const Scope& s, const AttentionOptions& o);
  Tensor operator()(const Tensor& x, const Tensor& context = Tensor()) const;

 private:
  AttentionOptions o_;
  GroupNorm group_norm_;
  bool has_group_norm_ = false;
  Linear to_q_, to_k_, to_v_, to_out_;
};

// FeedForward with GEGLU: net.0.proj (dim -> 2*inner), gate, net.2 (inner -> dim).
class FeedForward {
 public:
  FeedForward(const Scope& s, int64_t dim, int64_t inner_dim);
  Tensor operator()(const Tensor& x) const { return out_(ops::geglu(proj_(x))); }

 private:
  Linear proj_, out_;
};

// LayerNorm -> self-attention -> LayerNorm -> cross-attention -> LayerNorm -> GEGLU, each with a residual.
class BasicTransformerBlock {
 public:
  BasicTransformerBlock(const Scope& s, int64_t dim, int heads, int64_t dim_head, int64_t cross_attention_dim);
  Tensor operator()(const Tensor& x, const Tensor& context) const;

 private:
  LayerNorm norm1_, norm2_, norm3_;
  Attention attn1_, attn2_;
  FeedForward ff_;
};

}  // namespace taiyi::nn
