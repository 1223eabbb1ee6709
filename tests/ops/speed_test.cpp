// Speed sanity checks at the UNet's 64x64-latent sizes; DISABLED_ so they never run as
// unit tests. Run with:
//   ops_tests --gtest_also_run_disabled_tests --gtest_filter='*Speed*'
// Real benchmarks (with PyTorch alongside) belong in bench/.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

template <class F>
void report(const char* name, int reps, F&& f) {
  f();  // warm-up: primitive creation, JIT, first-touch of buffers
  double best = 1e30;
  uint64_t flops = 0;
  for (int r = 0; r < reps; ++r) {
    ops::reset_flop_count();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    flops = ops::flop_count();
    best = std::min(best, s);
  }
  std::printf("%-48s %8.4f s  %7.1f GFLOP  %7.1f GFLOP/s  (%d threads, best of %d)\n", name, best, flops * 1e-9,
              flops * 1e-9 / best, ops::num_threads(), reps);
}

TEST(Speed, DISABLED_UNetSizes) {
  const Tensor x = random_tensor({2, 320, 64, 64}, 1), w = random_tensor({320, 320, 3, 3}, 2, -0.05f, 0.05f);
  const Tensor bias = random_tensor({320}, 3);
  report("conv2d 3x3 320->320 [2,320,64,64]", 5, [&] { ops::conv2d(x, w, bias, ops::Conv2dParams::same(1)); });

  const Tensor q = random_tensor({2, 4096, 320}, 4), k = random_tensor({2, 4096, 320}, 5);
  const Tensor v = random_tensor({2, 4096, 320}, 6);
  report("attention B=2 H=8 L=4096 D=40", 3, [&] { ops::attention(q, k, v, 8, 1.0f / std::sqrt(40.0f)); });

  const Tensor kc = random_tensor({2, 77, 320}, 7), vc = random_tensor({2, 77, 320}, 8);
  report("attention B=2 H=8 Lq=4096 Lk=77 D=40", 5, [&] { ops::attention(q, kc, vc, 8, 0.158f); });

  const Tensor qv = random_tensor({1, 4096, 512}, 9), kv = random_tensor({1, 4096, 512}, 10);
  report("attention VAE B=1 H=1 L=4096 D=512", 3, [&] { ops::attention(qv, kv, kv, 1, 0.044f); });

  const Tensor xl = random_tensor({2, 4096, 320}, 11), wl = random_tensor({1280, 320}, 12),
               bl = random_tensor({1280}, 13);
  report("linear [8192,320] x [1280,320]^T", 5, [&] { ops::linear(xl, wl, bl); });

  const Tensor gn = random_tensor({2, 320, 64, 64}, 14);
  report("group_norm [2,320,64,64] 32 groups", 5, [&] { ops::group_norm(gn, 32, bias, bias, 1e-5f); });
  const Tensor gg = random_tensor({2, 4096, 2560}, 15);
  report("geglu [2,4096,2560]", 5, [&] { ops::geglu(gg); });
  report("silu [2,320,64,64]", 5, [&] { ops::silu(gn); });
}

}  // namespace
}  // namespace taiyi::ops_test
