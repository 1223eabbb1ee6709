// The small diffusers blocks the graph tests trace: a Transformer2DModel of 2 heads of 8 over 16
// channels (context width 12, 4 norm groups), under the scope "t" of a parameter set.
#pragma once

#include "taiyi/nn/transformer_2d.h"

namespace taiyi::graph {

inline nn::Transformer2DModel small_transformer(nn::ParameterSet& params) {
  nn::Transformer2DOptions o;
  o.heads = 2;
  o.dim_head = 8;
  o.in_channels = 16;
  o.cross_attention_dim = 12;
  o.norm_groups = 4;
  return nn::Transformer2DModel(nn::Scope(params, "t"), o);
}

}  // namespace taiyi::graph
