// Batched matrix product, f32, through oneDNN 2.6's matmul primitive; serves both
// ops::matmul and ops::linear (linear passes its weight [N, K] as a transposed [K, N]
// view, so nothing is copied).
//
// Strided operands are described to oneDNN with their strides, which its gemm-based
// matmul (gemm:jit) takes when each matrix has a unit stride in one of its two dims (a
// plain or transposed matrix). Other strides would send it to its slow reference
// implementation, so such operands, and any that oneDNN still declines to run fast,
// are copied to contiguous first.
#include <algorithm>
#include <dnnl.hpp>
#include <string>
#include <unordered_map>

#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/dnnl_context.h"

namespace taiyi::ops::cpu {
namespace {

// Strides of size-1 dims mean nothing, but oneDNN's layout checks look at them: give them
// the value a contiguous tensor would have, from the dims inside them.
dnnl::memory::desc strided_desc(const Tensor& t, bool drop_batch) {
  dnnl::memory::dims dims(t.shape().begin(), t.shape().end());
  dnnl::memory::dims strides(t.strides().begin(), t.strides().end());
  for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
    if (dims[d] != 1) continue;
    int64_t s = 1;
    for (int e = d + 1; e < static_cast<int>(dims.size()); ++e)
      if (dims[e] != 1) s = std::max(s, strides[e] * dims[e]);
    strides[d] = s;
  }
  if (drop_batch) {
    dims.erase(dims.begin());
    strides.erase(strides.begin());
  }
  return dnnl::memory::desc(dims, dnnl::memory::data_type::f32, strides);
}

// Plain or transposed: a unit stride in one of the two matrix dims (size-1 dims have any stride).
bool gemm_friendly(const Tensor& t) {
  return t.stride(-1) == 1 || t.stride(-2) == 1 || t.size(-1) == 1 || t.size(-2) == 1;
}

// Runs y = a @ b (+ bias); returns false, without running, if oneDNN would only use its reference code.
bool run_matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& y, bool allow_reference) {
  using dnnl::memory;
  const bool two_d = a.size(0) == 1;  // one product: plain 2-D descriptors
  const memory::desc a_md = strided_desc(a, two_d);
  const memory::desc b_md = strided_desc(b, two_d);
  const memory::desc y_md = strided_desc(y, two_d);
  const int64_t n = y.size(2);
  memory::desc bias_md;
  if (bias.defined())
    bias_md = two_d ? memory::desc({1, n}, memory::data_type::f32, memory::format_tag::ab)
                    : memory::desc({1, 1, n}, memory::data_type::f32, memory::format_tag::abc);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, bias_md, y_md), dnnl_cpu_engine());
  if (!allow_reference && std::string(pd.impl_info_str()).rfind("ref", 0) == 0) return false;
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, dnnl_wrap(a_md, a.data<float>())},
                                          {DNNL_ARG_WEIGHTS, dnnl_wrap(b_md, b.data<float>())},
                                          {DNNL_ARG_DST, dnnl_wrap(y_md, y.data<float>())}};
  if (bias.defined()) args.insert({DNNL_ARG_BIAS, dnnl_wrap(bias_md, bias.data<float>())});
  dnnl::stream& strm = dnnl_cpu_stream();
  dnnl::matmul(pd).execute(strm, args);
  strm.wait();
  return true;
}

}  // namespace

void matmul_f32_dnnl(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& y) {
  try {
    const bool plain = a.is_contiguous() && b.is_contiguous();
    bool done = false;
    if (gemm_friendly(a) && gemm_friendly(b)) {
      try {
        done = run_matmul(a, b, bias, y, plain);
      } catch (const dnnl::error&) {
        if (plain) throw;
      }
    }
    if (!done) run_matmul(a.contiguous(), b.contiguous(), bias, y, true);
  } catch (const dnnl::error& e) {
    throw Error(std::string("matmul: oneDNN failed (") + e.what() + ") for " + a.describe() + " @ " + b.describe());
  }
}

}  // namespace taiyi::ops::cpu
