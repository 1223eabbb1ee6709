// The prepared-op implementations behind ops::prepare_conv2d (prepared.cpp picks one) and
// ops::prepare_attention_bf16 (attention_prepared_dnnl.cpp picks one).
#pragma once

#include <memory>

#include "taiyi/ops/prepared.h"

namespace taiyi::ops {

// conv2d_prepared_dnnl.cpp: oneDNN's direct convolution, weights reordered once; any conv2d.
std::unique_ptr<PreparedOp> prepare_conv2d_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                const Conv2dParams& p, DType compute, Layout src_layout,
                                                Layout dst_layout, const Epilogue& epilogue);

namespace cpu {

// attention_bf16_avx512.cpp: bf16 attention on vdpbf16ps, for CPUs with avx512_bf16 and no AMX.
// Needs cpu_has_avx512_bf16() and scale > 0 (attention_bf16_avx512_applicable).
bool attention_bf16_avx512_applicable(float scale);
std::unique_ptr<PreparedOp> prepare_attention_bf16_avx512(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                          float scale);

}  // namespace cpu
}  // namespace taiyi::ops
