// The prepared-op implementations behind ops::prepare_conv2d (prepared.cpp picks one).
#pragma once

#include <memory>

#include "taiyi/ops/prepared.h"

namespace taiyi::ops {

// conv2d_prepared_dnnl.cpp: oneDNN's direct convolution, weights reordered once; any conv2d.
std::unique_ptr<PreparedOp> prepare_conv2d_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                const Conv2dParams& p, DType compute, Layout src_layout,
                                                Layout dst_layout, const Epilogue& epilogue);

}  // namespace taiyi::ops
