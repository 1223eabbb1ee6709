// Timestep embeddings as in diffusers 0.27 (models/embeddings.py): Timesteps
// (sinusoidal projection, no parameters) and TimestepEmbedding (linear_1, SiLU, linear_2).
#pragma once

#include "taiyi/nn/layers.h"

namespace taiyi::nn {

class TimestepEmbedding {
 public:
  TimestepEmbedding(const Scope& s, int64_t in_channels, int64_t time_embed_dim);
  Tensor operator()(const Tensor& x) const { return linear_2_(ops::silu(linear_1_(x))); }

 private:
  Linear linear_1_, linear_2_;
};

}  // namespace taiyi::nn
