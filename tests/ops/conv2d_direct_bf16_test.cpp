// The direct bf16 3x3 convolution on AMX (conv2d_direct_bf16_amx.cpp) against a reference in double
// over the bf16-rounded input and weights (its arithmetic: bf16 products, f32 sums): f32 and bf16
// inputs and outputs, channels-last, residuals (f32 separate and in place, bf16 in place), bias or
// none, batches, an odd number of 32-channel panels (a last group of one), one thread and the
// default count, NaN-filled scratch and guard values; its GroupNorm+SiLU prologue; its refusals;
// and which convolutions prepare_conv2d gives it. Skipped on CPUs without AMX-BF16.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "guarded_buffers.h"
#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops_test {
namespace {

using ops::Layout;

class Conv2dDirectBf16Amx : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cpu::cpu_has_amx_bf16()) GTEST_SKIP() << "this CPU has no AMX-BF16 (or Linux does not allow it)";
  }
};

struct Case {
  int64_t n, cin, h, w, cout;
  bool bias;
};
std::string case_name(const Case& c) {
  return "[" + std::to_string(c.n) + "," + std::to_string(c.cin) + "," + std::to_string(c.h) + "," +
         std::to_string(c.w) + "] -> " + std::to_string(c.cout) + (c.bias ? " +bias" : "");
}

// conv2d(x, bf16(w)) + bias, padding 1, in double: [N, Cout, H, W] values, and per output the sum of
// the terms' magnitudes (what bounds the f32 sums' error).
struct Reference {
  std::vector<double> y, scale;
};
Reference reference(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), wd = x.size(3), cout = w.size(0);
  const std::vector<double> xv = values(x), wv0 = values(w);
  std::vector<double> wv(wv0.size());
  for (size_t i = 0; i < wv.size(); ++i) wv[i] = bf16_to_f32(f32_to_bf16(static_cast<float>(wv0[i])));
  Reference r;
  r.y.assign(static_cast<size_t>(n * cout * h * wd), 0.0);
  r.scale.assign(r.y.size(), 0.0);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t o = 0; o < cout; ++o)
      for (int64_t yy = 0; yy < h; ++yy)
        for (int64_t xx = 0; xx < wd; ++xx) {
          double s = bias.defined() ? bias.item(o) : 0.0, a = std::abs(s);
          for (int64_t c = 0; c < cin; ++c)
            for (int64_t ky = 0; ky < 3; ++ky) {
              const int64_t iy = yy + ky - 1;
              if (iy < 0 || iy >= h) continue;
              for (int64_t kx = 0; kx < 3; ++kx) {
                const int64_t ix = xx + kx - 1;
                if (ix < 0 || ix >= wd) continue;
                const double t = xv[static_cast<size_t>(((b * cin + c) * h + iy) * wd + ix)] *
                                 wv[static_cast<size_t>(((o * cin + c) * 3 + ky) * 3 + kx)];
                s += t;
                a += std::abs(t);
              }
            }
          const size_t at = static_cast<size_t>(((b * cout + o) * h + yy) * wd + xx);
          r.y[at] = s;
          r.scale[at] = a;
        }
  return r;
}

// The f32 path (every residual kind, guarded buffers) against the reference, then bf16 input (the
// same values) into f32 and bf16 outputs (the bf16 one the f32 one rounded), and a bf16 residual
// in place.
void check_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(case_name(c));
  const Shape xs = {c.n, c.cin, c.h, c.w};
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  const Tensor x = ops::cast(ops::cast(random_tensor(xs, seed), DType::BF16), DType::F32);  // bf16 values
  const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1, -0.1f, 0.1f);
  const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
  ASSERT_TRUE(ops::cpu::direct_conv_bf16_amx_applicable(xs, w, p));
  const Reference ref = reference(x, w, bias);
  const auto close = [&](const std::vector<double>& got, const std::vector<double>& extra) {
    int64_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double want = ref.y[i] + (extra.empty() ? 0.0 : extra[i]);
      bad += !(std::abs(got[i] - want) <= 1e-5 * (ref.scale[i] + std::abs(want)) + 1e-6);
    }
    return bad;
  };
  for (Residual r : {Residual::kNone, Residual::kSeparate, Residual::kInPlace}) {
    SCOPED_TRACE("residual " + std::to_string(static_cast<int>(r)));
    const auto op =
        ops::cpu::prepare_conv2d_direct_bf16_amx(xs, w, bias, p, {r != Residual::kNone}, DType::F32, DType::F32);
    EXPECT_NE(op->describe().find("direct:amx"), std::string::npos);
    EXPECT_EQ(op->flops(), 2.0 * c.n * c.cout * c.h * c.w * c.cin * 9);
    const GuardedRun run = run_guarded(*op, x, Layout::kNHWC, {c.n, c.cout, c.h, c.w}, Layout::kNHWC, r, seed + 3);
    EXPECT_EQ(close(values(run.y), run.residual), 0);
  }
  const auto f32_out = ops::cpu::prepare_conv2d_direct_bf16_amx(xs, w, bias, p, {}, DType::BF16, DType::F32);
  const auto bf16_out = ops::cpu::prepare_conv2d_direct_bf16_amx(xs, w, bias, p, {}, DType::BF16, DType::BF16);
  const Tensor xb = nhwc(x, DType::BF16);
  const auto [yf_nchw, yb_nchw] = run_f32_and_bf16_out(*f32_out, *bf16_out, xb, {c.n, c.cout, c.h, c.w});
  EXPECT_EQ(close(values(yf_nchw), {}), 0) << "bf16 input";
  int64_t differ = 0;
  for (int64_t i = 0; i < yf_nchw.numel(); ++i)
    differ += yb_nchw.data_u16()[i] != f32_to_bf16(yf_nchw.data<float>()[i]);
  EXPECT_EQ(differ, 0);
  const auto with_res = ops::cpu::prepare_conv2d_direct_bf16_amx(
      xs, w, bias, p, {true, 1.0f, ops::PostOp::kNone, DType::F32, DType::BF16}, DType::BF16, DType::BF16);
  const Tensor res = ops::cast(ops::cast(random_tensor({c.n, c.cout, c.h, c.w}, seed + 4), DType::BF16), DType::F32);
  Tensor y = nhwc(res, DType::BF16);
  Scratch scratch(with_res->scratch_bytes());
  with_res->run({xb, y}, y, scratch.mem.get());
  const std::vector<double> rv = values(res), yv = values(y);
  for (size_t i = 0; i < yv.size(); ++i)
    ASSERT_EQ(f32_to_bf16(static_cast<float>(yv[i])), f32_to_bf16(yf_nchw.data<float>()[i] + static_cast<float>(rv[i])))
        << "element " << i;
}

TEST_F(Conv2dDirectBf16Amx, MatchesTheRoundedReference) {
  // 10 steps of 32 input channels, 10 panels (5 groups); 11 steps and 11 panels (a last group of
  // one), a batch of 2, two 32-pixel blocks a row; one row (both paddings in one); 24 steps.
  const Case cases[] = {
      {1, 320, 3, 32, 320, true}, {2, 352, 2, 64, 352, false}, {1, 320, 1, 32, 384, true}, {1, 768, 2, 32, 320, true}};
  uint32_t seed = 8100;
  for (const Case& c : cases) {
    check_case(c, seed);
    seed += 10;
  }
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  check_case({2, 320, 3, 32, 320, true}, seed);
  omp_set_num_threads(threads);
}

// The GroupNorm+SiLU prologue of a bf16 input: against the reference of y = bf16(silu(group_norm(x)))
// (eager f32 ops); the kernel computes silu with silu16_for_bf16 (relative error ~1e-4), which
// moves a few percent of y's roundings by one bf16 step. Samples of different mean and spread.
TEST_F(Conv2dDirectBf16Amx, GroupNormSiluPrologue) {
  uint32_t seed = 8200;
  for (const bool affine : {true, false}) {
    SCOPED_TRACE(affine ? "gamma and beta" : "none");
    const Case c{2, 320, 3, 32, 320, true};
    const Shape xs = {c.n, c.cin, c.h, c.w};
    const ops::Conv2dParams p = ops::Conv2dParams::same(1);
    Tensor x = random_tensor(xs, seed);
    const int64_t per = c.cin * c.h * c.w;
    for (int64_t s = 0; s < c.n; ++s)
      for (int64_t i = 0; i < per; ++i)
        x.data<float>()[s * per + i] = x.data<float>()[s * per + i] * (1 + s) + 2 * s - 1;
    x = ops::cast(ops::cast(x, DType::BF16), DType::F32);
    const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1, -0.1f, 0.1f);
    const Tensor bias = random_tensor({c.cout}, seed + 2);
    const Tensor gamma = affine ? random_tensor({c.cin}, seed + 3) : Tensor();
    const Tensor beta = affine ? random_tensor({c.cin}, seed + 4) : Tensor();
    const float eps = 1e-6f;
    const Tensor y = ops::cast(ops::cast(ops::group_norm_silu(x, 32, gamma, beta, eps), DType::BF16), DType::F32);
    const Reference ref = reference(y, w, bias);
    const auto op =
        ops::cpu::prepare_conv2d_direct_bf16_amx(xs, w, bias, p, {}, DType::BF16, DType::F32, {32, eps, gamma, beta});
    EXPECT_NE(op->describe().find("groupnorm+silu"), std::string::npos);
    Scratch scratch(op->scratch_bytes());
    Tensor out = nhwc(Tensor::zeros({c.n, c.cout, c.h, c.w}), DType::F32);
    op->run({nhwc(x, DType::BF16)}, out, scratch.mem.get());
    const std::vector<double> got = values(out);
    double err2 = 0, ref2 = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      err2 += (got[i] - ref.y[i]) * (got[i] - ref.y[i]);
      ref2 += ref.y[i] * ref.y[i];
    }
    // a wrong channel, sample or a missing SiLU gives 0.1 and more
    EXPECT_LE(std::sqrt(err2 / ref2), 1.5e-3);
    seed += 10;
  }
}

TEST_F(Conv2dDirectBf16Amx, RefusesWhatItDoesNotTake) {
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  const Tensor w = random_tensor({320, 320, 3, 3}, 1);
  EXPECT_FALSE(ops::cpu::direct_conv_bf16_amx_applicable({1, 320, 4, 48}, w, p));  // width off 32
  EXPECT_FALSE(ops::cpu::direct_conv_bf16_amx_applicable({1, 320, 4, 32}, random_tensor({256, 320, 3, 3}, 2), p));
  EXPECT_FALSE(ops::cpu::direct_conv_bf16_amx_applicable({1, 320, 4, 32}, w, ops::Conv2dParams::same(0)));
  EXPECT_FALSE(ops::cpu::direct_conv_bf16_amx_applicable({1, 960, 4, 32}, random_tensor({320, 960, 3, 3}, 3), p));
  EXPECT_TRUE(ops::cpu::direct_conv_bf16_amx_applicable({1, 320, 4, 32}, w, p));
  EXPECT_THROW(ops::cpu::prepare_conv2d_direct_bf16_amx({1, 320, 4, 48}, w, Tensor(), p, {}, DType::BF16, DType::BF16),
               Error);
  EXPECT_THROW(ops::cpu::prepare_conv2d_direct_bf16_amx({1, 320, 4, 32}, w, Tensor(), p, {}, DType::F32, DType::BF16,
                                                        {32, 1e-6f, Tensor(), Tensor()}),
               Error);  // a prologue on f32 input
  const auto op =
      ops::cpu::prepare_conv2d_direct_bf16_amx({1, 320, 4, 32}, w, Tensor(), p, {}, DType::BF16, DType::BF16);
  Scratch scratch(op->scratch_bytes());
  Tensor out = nhwc(Tensor::zeros({1, 320, 4, 32}), DType::BF16);
  EXPECT_THROW(op->run({nhwc(Tensor::zeros({1, 320, 4, 32}), DType::F32)}, out, scratch.mem.get()), Error);
  EXPECT_THROW(op->run({Tensor::zeros({1, 320, 4, 32}).to(DType::BF16)}, out, scratch.mem.get()), Error);  // NCHW
}

// prepare_conv2d gives it the bf16 channels-last 3x3 convolutions of 320-768 input channels that
// the AMX Winograd does not take; TAIYI_DIRECT_CONV=0 keeps oneDNN.
TEST_F(Conv2dDirectBf16Amx, PreparedConvolutionPicksIt) {
  if (!ops::cpu::dnnl_uses_amx()) GTEST_SKIP() << "oneDNN does not use AMX here";
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  const auto describe = [&](const Shape& xs, int64_t cout, const ops::Epilogue& e = {}) {
    return ops::prepare_conv2d(xs, random_tensor({cout, xs[1], 3, 3}, 5), random_tensor({cout}, 6), p, DType::BF16,
                               Layout::kNHWC, Layout::kNHWC, e, DType::BF16, DType::F32)
        ->describe();
  };
  EXPECT_NE(describe({1, 512, 8, 64}, 512).find("direct:amx"), std::string::npos);
  EXPECT_NE(describe({2, 320, 8, 32}, 320).find("direct:amx"), std::string::npos);
  EXPECT_NE(describe({1, 128, 8, 64}, 128).find("winograd"), std::string::npos);      // the Winograd's
  EXPECT_EQ(describe({1, 1280, 8, 32}, 1280).find("direct:amx"), std::string::npos);  // past 768 channels
  EXPECT_EQ(describe({1, 512, 8, 8}, 512).find("direct:amx"), std::string::npos);     // 8 wide
  ops::Epilogue bias_add;
  bias_add.post_op = ops::PostOp::kBiasAdd;
  EXPECT_TRUE(ops::conv2d_takes_bias_add({1, 512, 8, 64}, random_tensor({512, 512, 3, 3}, 7), p, DType::BF16,
                                         Layout::kNHWC, Layout::kNHWC));
  EXPECT_TRUE(ops::conv2d_takes_group_norm_silu({1, 512, 8, 64}, random_tensor({512, 512, 3, 3}, 7), p, DType::BF16,
                                                Layout::kNHWC, Layout::kNHWC, {}, DType::BF16, 32));
  setenv("TAIYI_DIRECT_CONV", "0", 1);
  EXPECT_EQ(describe({1, 512, 8, 64}, 512).find("direct:amx"), std::string::npos);
  unsetenv("TAIYI_DIRECT_CONV");
}

}  // namespace
}  // namespace taiyi::ops_test
