#include "taiyi/nn/embeddings.h"

namespace taiyi::nn {

TimestepEmbedding::TimestepEmbedding(const Scope& s, int64_t in_channels, int64_t time_embed_dim)
    : linear_1_(s / "linear_1", in_channels, time_embed_dim), linear_2_(s / "linear_2", time_embed_dim, time_embed_dim) {}

}  // namespace taiyi::nn
