// Random inputs for the kernel benchmarks (conv_bench, linear_bench, attention_bench): f32 tensors
// uniform in [-scale, scale] from one seeded generator, so runs time the same values.
#pragma once

#include <random>

#include "taiyi/tensor/tensor.h"

namespace taiyi::bench {

class RandomTensors {
 public:
  Tensor operator()(const Shape& shape, float scale) {
    Tensor t = Tensor::empty(shape);
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = scale * dist_(rng_);
    return t;
  }

 private:
  std::mt19937 rng_{1};
  std::uniform_real_distribution<float> dist_{-1.0f, 1.0f};
};

}  // namespace taiyi::bench
