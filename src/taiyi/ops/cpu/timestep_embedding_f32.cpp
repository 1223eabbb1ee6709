// Sinusoidal timestep embedding, diffusers.models.embeddings.get_timestep_embedding,
// reproducing torch's float32 CPU arithmetic step by step:
//   exponent_i = f32(-ln(max_period)) * f32(i) / f32(half - freq_shift)   (f32 multiply, f32 divide)
//   freq_i     = exp(exponent_i)                                          (rounded to f32)
//   arg        = f32(t) * freq_i * scale                                  (two f32 multiplies)
//   [sin(arg) | cos(arg)], halves swapped when flip_sin_to_cos, a zero column when dim is odd.
// exp, sin and cos are evaluated in double and rounded once, i.e. correctly rounded f32 in
// all but vanishingly rare cases; torch's vectorised Sleef versions are within 1 ulp of that.
#include <cmath>

#include "taiyi/ops/cpu/cpu_kernels.h"

namespace taiyi::ops::cpu {

void timestep_embedding_f32(const std::vector<float>& t, int dim, bool flip_sin_to_cos, float freq_shift, float scale,
                            float max_period, float* y) {
  const int half = dim / 2;
  const float neg_log_period = static_cast<float>(-std::log(static_cast<double>(max_period)));
  const float denom = static_cast<float>(half) - freq_shift;
  std::vector<float> freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const float exponent = neg_log_period * static_cast<float>(i) / denom;
    freq[i] = static_cast<float>(std::exp(static_cast<double>(exponent)));
  }
  const int sin_at = flip_sin_to_cos ? half : 0, cos_at = flip_sin_to_cos ? 0 : half;
  for (size_t b = 0; b < t.size(); ++b) {
    float* row = y + b * static_cast<size_t>(dim);
    for (int i = 0; i < half; ++i) {
      float arg = t[b] * freq[i];
      arg = arg * scale;
      row[sin_at + i] = static_cast<float>(std::sin(static_cast<double>(arg)));
      row[cos_at + i] = static_cast<float>(std::cos(static_cast<double>(arg)));
    }
    if (dim % 2 == 1) row[dim - 1] = 0.0f;
  }
}

}  // namespace taiyi::ops::cpu
