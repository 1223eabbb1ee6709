// Transformer2DModel as in diffusers 0.27 (models/transformers/transformer_2d.py),
// continuous input: GroupNorm, proj_in (1x1 conv, or linear when
// use_linear_projection), BasicTransformerBlocks over the H*W positions,
// proj_out, residual.
#pragma once

#include <vector>

#include "taiyi/nn/attention.h"

namespace taiyi::nn {

struct Transformer2DOptions {
  int heads = 8;
  int64_t dim_head = 40;
  int64_t in_channels = 320;
  int layers = 1;
  int64_t cross_attention_dim = 768;
  int norm_groups = 32;
  bool use_linear_projection = false;
};

class Transformer2DModel {
 public:
  Transformer2DModel(const Scope& s, const Transformer2DOptions& o);
  Tensor operator()(const Tensor& x, const Tensor& context) const;

 private:
  Transformer2DOptions o_;
  GroupNorm norm_;
  Conv2d proj_in_conv_, proj_out_conv_;
  Linear proj_in_linear_, proj_out_linear_;
  std::vector<BasicTransformerBlock> blocks_;
};

}  // namespace taiyi::nn
