// The implementations behind cpu::attention_f32 (cpu_kernels.h), which picks one at run time
// through cpu_isa.h. All take the arguments of cpu::attention_f32 unchanged: q, k, v with unit
// stride in the last dim and non-overlapping rows, out contiguous.
#pragma once

#include "taiyi/tensor/tensor.h"

namespace taiyi::ops::cpu {

// attention_f32_avx2.cpp and attention_f32_avx512.cpp: fused flash attention with an online softmax
// (attention_f32_flash.h), on AVX2+FMA and on AVX-512F. Only call when cpu_has_avx2_fma(),
// cpu_has_avx512f().
void attention_f32_avx2(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out);
void attention_f32_avx512(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                          const Tensor& out);

// attention_f32.cpp: the portable path, two dnnl_sgemm products per query block with an exact
// softmax between them; scratch is O(block * Lk) per thread.
void attention_f32_sgemm(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out);

}  // namespace taiyi::ops::cpu
