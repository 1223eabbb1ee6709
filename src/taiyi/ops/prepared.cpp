// ops::prepare_conv2d: picks the kernel a convolution is bound to at compile time.
#include "taiyi/ops/prepared.h"

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops {

std::unique_ptr<PreparedOp> prepare_conv2d(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                           const Conv2dParams& p, DType compute, Layout src_layout,
                                           Layout dst_layout, const Epilogue& epilogue) {
  return prepare_conv2d_dnnl(x_shape, w, bias, p, compute, src_layout, dst_layout, epilogue);
}

}  // namespace taiyi::ops
