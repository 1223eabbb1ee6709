// Probe: what oneDNN 2.6 does for the UNet's typical convolution and linear on this
// machine, by layout and packing, and what first-touch page faults cost. Guides the
// graph passes (bench/RESULTS.md records the numbers). Not a test.
//
//   build/bench/layout_probe
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <dnnl.hpp>
#include <functional>
#include <unordered_map>
#include <vector>

#include "taiyi/ops/ops.h"
#include "taiyi/ops/runtime_info.h"

using dnnl::memory;
using tag = memory::format_tag;

static double best_of(int n, const std::function<void()>& f) {
  double best = 1e30;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

static memory filled(const memory::desc& md, const dnnl::engine& eng) {
  memory m(md, eng);
  std::memset(m.get_data_handle(), 0, md.get_size());
  float* p = static_cast<float*>(m.get_data_handle());
  if (md.data_type() == memory::data_type::f32)
    for (size_t i = 0; i < md.get_size() / 4; i += 7) p[i] = 0.01f * static_cast<float>(i % 13);
  return m;
}

static void conv_case(const char* label, memory::data_type dt, tag src_tag, int n, int c, int hw, int k) {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const memory::dims src = {n, c, hw, hw}, wei = {c, c, k, k}, dst = {n, c, hw, hw};
  try {
    const dnnl::convolution_forward::desc d(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, memory::desc(src, dt, src_tag),
        memory::desc(wei, dt, tag::any), memory::desc({c}, memory::data_type::f32, tag::x),
        memory::desc(dst, dt, src_tag), {1, 1}, {0, 0}, {k / 2, k / 2}, {k / 2, k / 2});
    const dnnl::convolution_forward::primitive_desc pd(d, eng);
    auto s = filled(pd.src_desc(), eng), w = filled(pd.weights_desc(), eng), b = filled(pd.bias_desc(), eng),
         o = filled(pd.dst_desc(), eng);
    dnnl::convolution_forward prim(pd);
    const double t = best_of(5, [&] {
      prim.execute(strm, {{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, o}});
      strm.wait();
    });
    const double gflop = 2.0 * n * c * hw * hw * c * k * k * 1e-9;
    std::printf("  conv %-28s %dx%dx%dx%d k%d: %.4f s  %.0f GFLOP/s  impl %s\n", label, n, c, hw, hw, k, t, gflop / t,
                pd.impl_info_str());
  } catch (const dnnl::error& e) {
    std::printf("  conv %-28s unsupported here (%s)\n", label, e.what());
  }
}

static void matmul_case(const char* label, memory::data_type dt, tag w_tag, int m, int kdim, int nn) {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  try {
    const dnnl::matmul::desc d(memory::desc({m, kdim}, dt, tag::ab), memory::desc({kdim, nn}, dt, w_tag),
                               memory::desc({1, nn}, memory::data_type::f32, tag::ab), memory::desc({m, nn}, dt, tag::ab));
    const dnnl::matmul::primitive_desc pd(d, eng);
    auto a = filled(pd.src_desc(), eng), b = filled(pd.weights_desc(), eng), bias = filled(pd.bias_desc(), eng),
         o = filled(pd.dst_desc(), eng);
    dnnl::matmul prim(pd);
    const double t = best_of(5, [&] {
      prim.execute(strm, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, o}});
      strm.wait();
    });
    std::printf("  matmul %-26s %dx%dx%d: %.4f s  %.0f GFLOP/s  impl %s\n", label, m, kdim, nn, t,
                2.0 * m * kdim * nn * 1e-9 / t, pd.impl_info_str());
  } catch (const dnnl::error& e) {
    std::printf("  matmul %-26s unsupported here (%s)\n", label, e.what());
  }
}

int main() {
  taiyi::ops::set_num_threads(0);
  std::printf("cpu %s, oneDNN %s isa %s, %d threads\n", taiyi::ops::cpu_model_name().c_str(),
              taiyi::ops::onednn_version().c_str(), taiyi::ops::onednn_isa().c_str(), taiyi::ops::num_threads());
  const auto f32 = memory::data_type::f32, bf16 = memory::data_type::bf16;
  conv_case("f32 blocked (any)", f32, tag::any, 2, 320, 64, 3);
  conv_case("f32 nhwc", f32, tag::nhwc, 2, 320, 64, 3);
  conv_case("f32 nchw", f32, tag::nchw, 2, 320, 64, 3);
  conv_case("f32 blocked 1280@8x8", f32, tag::any, 2, 1280, 8, 3);
  conv_case("f32 nhwc 1280@8x8", f32, tag::nhwc, 2, 1280, 8, 3);
  conv_case("f32 blocked 1x1", f32, tag::any, 2, 320, 64, 1);
  conv_case("f32 nhwc 1x1", f32, tag::nhwc, 2, 320, 64, 1);
  conv_case("bf16 blocked (any)", bf16, tag::any, 2, 320, 64, 3);
  conv_case("bf16 nhwc", bf16, tag::nhwc, 2, 320, 64, 3);
  matmul_case("f32 plain weights", f32, tag::ab, 8192, 320, 1280);
  matmul_case("f32 packed weights (any)", f32, tag::any, 8192, 320, 1280);
  matmul_case("f32 plain, transposed", f32, tag::ba, 8192, 320, 1280);
  matmul_case("bf16 packed weights", bf16, tag::any, 8192, 320, 1280);
  for (int k : {640, 1280}) {
    matmul_case("f32 plain, K=N", f32, tag::ab, 2048, k, k);
    matmul_case("f32 packed, K=N", f32, tag::any, 2048, k, k);
    matmul_case("f32 transposed, K=N", f32, tag::ba, 2048, k, k);
  }
  matmul_case("f32 transposed geglu", f32, tag::ba, 2048, 640, 5120);
  matmul_case("f32 plain geglu", f32, tag::ab, 2048, 640, 5120);
  matmul_case("f32 packed geglu", f32, tag::any, 2048, 640, 5120);

  // The eager op as the model calls it today (NCHW in and out, weights reordered per call).
  {
    using namespace taiyi;
    const Tensor x = Tensor::full({2, 320, 64, 64}, 0.01f), w = Tensor::full({320, 320, 3, 3}, 0.01f);
    const Tensor b = Tensor::full({320}, 0.0f);
    const double t = best_of(5, [&] { ops::conv2d(x, w, b, ops::Conv2dParams::same(1)); });
    std::printf("  eager ops::conv2d NCHW 2x320x64x64 k3: %.4f s  %.0f GFLOP/s\n", t, 15.1 / t);
  }
  // First touch: a fresh 64 MiB mapping each time vs writing the same buffer again.
  {
    const size_t bytes = 64u << 20;
    const double fresh = best_of(3, [&] {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      std::memset(p, 1, bytes);
      munmap(p, bytes);
    });
    std::vector<char> buf(bytes);
    const double reuse = best_of(3, [&] { std::memset(buf.data(), 2, bytes); });
    std::printf("  touch 64 MiB: fresh pages %.4f s (%.2f s/GiB), reused %.4f s\n", fresh, fresh * 16, reuse);
  }
  return 0;
}
