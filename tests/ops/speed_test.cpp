// Speed sanity checks at the UNet's 64x64-latent sizes; DISABLED_ so they never run as
// unit tests. Run with:
//   ops_tests --gtest_also_run_disabled_tests --gtest_filter='*Speed*'
// Real benchmarks (with PyTorch alongside) belong in bench/.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

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

  const Tensor xl = random_tensor({2, 4096, 320}, 11), wl = random_tensor({1280, 320}, 12),
               bl = random_tensor({1280}, 13);
  report("linear [8192,320] x [1280,320]^T", 5, [&] { ops::linear(xl, wl, bl); });

  const Tensor gn = random_tensor({2, 320, 64, 64}, 14);
  report("group_norm [2,320,64,64] 32 groups", 5, [&] { ops::group_norm(gn, 32, bias, bias, 1e-5f); });
  const Tensor gg = random_tensor({2, 4096, 2560}, 15);
  report("geglu [2,4096,2560]", 5, [&] { ops::geglu(gg); });
  report("silu [2,320,64,64]", 5, [&] { ops::silu(gn); });
}

// Every attention shape of the Taiyi UNet at 512x512 (batch 2 for guidance, 8 heads, BERT context of
// 512 tokens) and the VAE's mid-block attention; FLOPs are 2 B H Lq Lk (D + Dv).
TEST(Speed, DISABLED_AttentionShapes) {
  struct AttnShape {
    int64_t b, lq, lk;
    int heads;
    int64_t d;
    int reps;
  };
  const AttnShape shapes[] = {
      {2, 4096, 4096, 8, 40, 3}, {2, 1024, 1024, 8, 80, 5},  {2, 256, 256, 8, 160, 20}, {2, 64, 64, 8, 160, 50},
      {2, 4096, 512, 8, 40, 5},  {2, 1024, 512, 8, 80, 10},  {2, 256, 512, 8, 160, 20}, {2, 64, 512, 8, 160, 50},
      {2, 4096, 77, 8, 40, 10},  {1, 4096, 4096, 1, 512, 3},
  };
  uint32_t seed = 20;
  for (const AttnShape& s : shapes) {
    const int64_t c = s.heads * s.d;
    const Tensor q = random_tensor({s.b, s.lq, c}, seed++), k = random_tensor({s.b, s.lk, c}, seed++);
    const Tensor v = random_tensor({s.b, s.lk, c}, seed++);
    const std::string name = "attention B=" + std::to_string(s.b) + " H=" + std::to_string(s.heads) +
                             " Lq=" + std::to_string(s.lq) + " Lk=" + std::to_string(s.lk) +
                             " D=" + std::to_string(s.d);
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
    report(name.c_str(), s.reps, [&] { ops::attention(q, k, v, s.heads, scale); });
  }
}

}  // namespace
}  // namespace taiyi::ops_test
