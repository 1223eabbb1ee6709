// The bf16 linear on AMX tiles (linear_bf16_amx.cpp), both modes (K blocks from K = 1280, all of K
// in the tiles below), against a reference in double on bf16-rounded inputs and weights (its
// arithmetic: bf16 products, f32 accumulation, f32 bias and residual):
// row counts off the 16- and 32-row tiles, several strips of rows per thread, one thread and the
// default count, bias or none, an f32 or bf16 residual (also in place), f32 or bf16 output (the
// bf16 one the f32 one rounded), NaN-filled scratch with guard values; and which linears
// ops::prepare_linear gives it. Skipped on CPUs without AMX-BF16.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "guarded_buffers.h"
#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops_test {
namespace {

double round_bf16(double x) { return bf16_to_f32(f32_to_bf16(static_cast<float>(x))); }

struct Case {
  int64_t m, k, n;
  bool bias;
};

class LinearBf16Amx : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cpu::cpu_has_amx_bf16()) GTEST_SKIP() << "this CPU has no AMX-BF16 (or Linux does not allow it)";
  }
};

// x w^T + bias in double over the bf16 values.
std::vector<double> reference(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const std::vector<double> xv = values(x), wv = values(w);
  std::vector<double> wr(wv.size());
  for (size_t i = 0; i < wv.size(); ++i) wr[i] = round_bf16(wv[i]);
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = bias.defined() ? bias.item(j) : 0.0;
      for (int64_t p = 0; p < k; ++p) s += xv[static_cast<size_t>(i * k + p)] * wr[static_cast<size_t>(j * k + p)];
      y[static_cast<size_t>(i * n + j)] = s;
    }
  return y;
}

// Runs op on x (and a residual) into a fresh output of dtype dst with NaN-filled scratch, checking
// the scratch's guard.
Tensor run(const ops::PreparedOp& op, const Tensor& x, const Tensor& residual, int64_t n, DType dst) {
  Scratch scratch(op.scratch_bytes());
  Tensor y = Tensor::empty({x.size(0), n}, dst);
  std::vector<Tensor> in = {x};
  if (residual.defined()) in.push_back(residual);
  op.run(in, y, scratch.mem.get());
  EXPECT_TRUE(scratch.guard_intact()) << op.describe() << " wrote past its scratch";
  return y;
}

TEST_F(LinearBf16Amx, MatchesTheRoundedReference) {
  // 37 rows: a partial 32-row block and a partial 16-row tile; 600 rows: two strips of (up to) 256
  // rows for each of two threads, and N = 1024 three chunks of columns (384, 384, 256); K = 1312: a
  // last K block of one step.
  // Below K = 1280 the whole-K mode: 600 rows x K 320 (one K block; strips of 512 rows: two for one
  // thread), 1100 rows x K 768 x N 800 (3 K blocks of 8 steps; groups of 64 columns, the last 32),
  // K 640 (2 blocks of 10 steps), K 704 (blocks of 8, 8 and 6 steps), 37 and 70 rows, K of one step.
  const Case cases[] = {{37, 2048, 64, true},   {600, 1280, 1024, true}, {70, 1312, 96, false},  {1, 2560, 32, true},
                        {600, 320, 1024, true}, {1100, 768, 800, true},  {300, 640, 160, false}, {90, 704, 96, true},
                        {37, 96, 64, true},     {70, 32, 96, false}};
  const int default_threads = omp_get_max_threads();
  for (int threads : {1, default_threads}) {
    omp_set_num_threads(threads);
    uint32_t seed = 10;
    for (const Case& c : cases) {
      SCOPED_TRACE("x [" + std::to_string(c.m) + "," + std::to_string(c.k) + "] n " + std::to_string(c.n) +
                   ", threads " + std::to_string(threads));
      const Tensor x = random_tensor({c.m, c.k}, seed).to(DType::BF16),
                   w = random_tensor({c.n, c.k}, seed + 1, -0.1f, 0.1f);
      const Tensor bias = c.bias ? random_tensor({c.n}, seed + 2) : Tensor();
      seed += 3;
      const Shape xs = {c.m, c.k};
      if (c.m < 64) {  // below prepare_linear's threshold: the kernel itself
        EXPECT_FALSE(
            ops::cpu::linear_bf16_amx_applicable(xs, w, bias, DType::BF16, {}, DType::BF16, DType::F32, false));
      } else {
        EXPECT_TRUE(ops::cpu::linear_bf16_amx_applicable(xs, w, bias, DType::BF16, {}, DType::BF16, DType::F32, false));
      }
      const std::vector<double> expected = reference(x, w, bias);
      const auto f32_op = ops::cpu::prepare_linear_bf16_amx(xs, w, bias, {}, DType::F32);
      const Tensor y = run(*f32_op, x, Tensor(), c.n, DType::F32);
      // The same roundings: what remains is the f32 accumulation of K products.
      EXPECT_TRUE(all_close(y, expected, 1e-5, 2e-6));
      // A bf16 output is the f32 one rounded to nearest even as stored.
      const auto bf16_op = ops::cpu::prepare_linear_bf16_amx(xs, w, bias, {}, DType::BF16);
      const Tensor yb = run(*bf16_op, x, Tensor(), c.n, DType::BF16);
      for (int64_t i = 0; i < y.numel(); ++i)
        ASSERT_EQ(yb.data_u16()[i], f32_to_bf16(y.data<float>()[i])) << "element " << i;
      EXPECT_EQ(f32_op->flops(), 2.0 * c.m * c.n * c.k);
      EXPECT_EQ(f32_op->packed_weight_bytes(), static_cast<size_t>(c.n * c.k * 2));
      // Residuals: f32 into an f32 output, bf16 into a bf16 output (in place: the residual's memory).
      ops::Epilogue e;
      e.residual = true;
      const Tensor r = random_tensor({c.m, c.n}, seed++);
      const Tensor yr = run(*ops::cpu::prepare_linear_bf16_amx(xs, w, bias, e, DType::F32), x, r, c.n, DType::F32);
      std::vector<double> with_r = expected;
      const std::vector<double> rv = values(r);
      for (size_t i = 0; i < with_r.size(); ++i) with_r[i] += rv[i];
      EXPECT_TRUE(all_close(yr, with_r, 1e-5, 2e-6));
      e.residual_dtype = DType::BF16;
      const Tensor rb = r.to(DType::BF16);
      const auto in_place = ops::cpu::prepare_linear_bf16_amx(xs, w, bias, e, DType::BF16);
      Scratch scratch(in_place->scratch_bytes());
      in_place->run({x, rb}, rb, scratch.mem.get());
      const std::vector<double> rbv = values(r.to(DType::BF16).to(DType::F32));
      for (int64_t i = 0; i < y.numel(); ++i)
        ASSERT_EQ(rb.data_u16()[i], f32_to_bf16(y.data<float>()[i] + static_cast<float>(rbv[static_cast<size_t>(i)])))
            << "element " << i;
    }
  }
  omp_set_num_threads(default_threads);
}

// gelu(x w^T + bias) in the epilogue (BERT's intermediate dense): the exact GELU of the f32 sums, in
// both modes, f32 and bf16 output; no gelu with a residual.
TEST_F(LinearBf16Amx, GeluEpilogue) {
  ops::Epilogue gelu;
  gelu.post_op = ops::PostOp::kGelu;
  uint32_t seed = 40;
  for (const Case& c : {Case{600, 768, 96, true}, Case{70, 1280, 64, true}, Case{100, 64, 128, false}}) {
    SCOPED_TRACE("x [" + std::to_string(c.m) + "," + std::to_string(c.k) + "] n " + std::to_string(c.n));
    const Tensor x = random_tensor({c.m, c.k}, seed).to(DType::BF16),
                 w = random_tensor({c.n, c.k}, seed + 1, -0.1f, 0.1f);
    const Tensor bias = c.bias ? random_tensor({c.n}, seed + 2) : Tensor();
    seed += 3;
    const Shape xs = {c.m, c.k};
    ASSERT_TRUE(ops::cpu::linear_bf16_amx_applicable(xs, w, bias, DType::BF16, gelu, DType::BF16, DType::BF16, false));
    std::vector<double> expected = reference(x, w, bias);
    for (double& v : expected) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    const auto op = ops::cpu::prepare_linear_bf16_amx(xs, w, bias, gelu, DType::F32);
    EXPECT_NE(op->describe().find("+gelu"), std::string::npos);
    // (the GELU's polynomial: within 1e-4 of |g|; the sums as above)
    EXPECT_TRUE(all_close(run(*op, x, Tensor(), c.n, DType::F32), expected, 2e-4, 1e-4));
    const Tensor yb =
        run(*ops::cpu::prepare_linear_bf16_amx(xs, w, bias, gelu, DType::BF16), x, Tensor(), c.n, DType::BF16);
    EXPECT_TRUE(all_close(yb.to(DType::F32), expected, 8e-3, 1e-4));
  }
  gelu.residual = true;
  EXPECT_FALSE(ops::cpu::linear_bf16_amx_applicable({512, 2048}, random_tensor({64, 2048}, 4), Tensor(), DType::BF16,
                                                    gelu, DType::BF16, DType::BF16, false));
}

// A LayerNorm over each row after the residual (BERT's post-LN): bit-identical to the same linear
// without it (bf16 output) followed by the bf16 LayerNorm, in both modes, with gamma and beta or
// none, the residual in place or not; one thread and the default count.
TEST_F(LinearBf16Amx, LayerNormEpilogue) {
  uint32_t seed = 60;
  const int default_threads = omp_get_max_threads();
  for (int threads : {1, default_threads}) {
    omp_set_num_threads(threads);
    for (const Case& c : {Case{300, 768, 96, true}, Case{70, 1280, 64, false}, Case{100, 64, 128, true}}) {
      SCOPED_TRACE("x [" + std::to_string(c.m) + "," + std::to_string(c.k) + "] n " + std::to_string(c.n));
      const Tensor x = random_tensor({c.m, c.k}, seed).to(DType::BF16),
                   w = random_tensor({c.n, c.k}, seed + 1, -0.1f, 0.1f);
      const Tensor bias = c.bias ? random_tensor({c.n}, seed + 2) : Tensor();
      const Tensor res = random_tensor({c.m, c.n}, seed + 3).to(DType::BF16);
      const Tensor gamma = random_tensor({c.n}, seed + 4, 0.5f, 1.5f), beta = random_tensor({c.n}, seed + 5);
      seed += 6;
      const Shape xs = {c.m, c.k};
      ops::Epilogue e;
      e.residual = true;
      e.residual_dtype = DType::BF16;
      const Tensor plain =
          run(*ops::cpu::prepare_linear_bf16_amx(xs, w, bias, e, DType::BF16), x, res, c.n, DType::BF16);
      for (const bool affine : {true, false}) {
        std::vector<uint16_t> want(static_cast<size_t>(c.m * c.n));
        ops::cpu::layer_norm_bf16_to_bf16(plain.data_u16(), affine ? gamma.data<float>() : nullptr,
                                          affine ? beta.data<float>() : nullptr, want.data(), c.m, c.n, 1e-5f);
        ops::Epilogue ln = e;
        ln.layer_norm_eps = 1e-5f;
        if (affine) {
          ln.layer_norm_gamma = gamma;
          ln.layer_norm_beta = beta;
        }
        ASSERT_TRUE(
            ops::cpu::linear_bf16_amx_applicable(xs, w, bias, DType::BF16, ln, DType::BF16, DType::BF16, false));
        const auto op = ops::cpu::prepare_linear_bf16_amx(xs, w, bias, ln, DType::BF16);
        EXPECT_NE(op->describe().find("+layer norm"), std::string::npos);
        const Tensor got = run(*op, x, res, c.n, DType::BF16);
        Tensor in_place = res.clone();  // the residual's memory as the output
        Scratch scratch(op->scratch_bytes());
        op->run({x, in_place}, in_place, scratch.mem.get());
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_EQ(got.data_u16()[i], want[i]) << "element " << i << (affine ? "" : " (no gamma, beta)");
          ASSERT_EQ(in_place.data_u16()[i], want[i]) << "element " << i << " in place";
        }
      }
    }
  }
  omp_set_num_threads(default_threads);
  ops::Epilogue ln;
  ln.layer_norm_eps = 1e-5f;  // (the LayerNorm needs a bf16 output)
  EXPECT_FALSE(ops::cpu::linear_bf16_amx_applicable({512, 768}, random_tensor({64, 768}, 1), Tensor(), DType::BF16, ln,
                                                    DType::BF16, DType::F32, false));
}

TEST_F(LinearBf16Amx, PrepareLinearPicksItWithTheModeForK) {
  const Tensor w = random_tensor({64, 2048}, 1), w_short = random_tensor({64, 1024}, 2), b = random_tensor({64}, 3);
  // (K 2048: K blocks; K 1024: all of K in the tiles, or oneDNN's matmul with TAIYI_AMX_LINEAR_WHOLE_K=0)
  const auto describe = [](const Shape& xs, const Tensor& wt, DType src) {
    return ops::prepare_linear(xs, wt, Tensor(), DType::BF16, {}, src, DType::BF16)->describe();
  };
  EXPECT_NE(describe({2, 256, 2048}, w, DType::BF16).find("x K blocks of 256"), std::string::npos);
  EXPECT_NE(describe({2, 256, 1024}, w_short, DType::BF16).find("x all of K"), std::string::npos);
  EXPECT_EQ(describe({2, 256, 2048}, w, DType::F32).find("linear bf16 amx"), std::string::npos);  // f32 input
  setenv("TAIYI_AMX_LINEAR_WHOLE_K", "0", 1);
  EXPECT_EQ(describe({2, 256, 1024}, w_short, DType::BF16).find("linear bf16 amx"), std::string::npos);
  EXPECT_NE(describe({2, 256, 2048}, w, DType::BF16).find("x K blocks of 256"), std::string::npos);
  unsetenv("TAIYI_AMX_LINEAR_WHOLE_K");
  ops::Epilogue mul;
  mul.post_op = ops::PostOp::kMultiply;
  EXPECT_FALSE(ops::cpu::linear_bf16_amx_applicable({512, 2048}, w, Tensor(), DType::BF16, mul, DType::BF16,
                                                    DType::BF16, false));
  EXPECT_FALSE(
      ops::cpu::linear_bf16_amx_applicable({512, 2048}, w, Tensor(), DType::F32, {}, DType::BF16, DType::F32, false));
  EXPECT_FALSE(ops::cpu::linear_bf16_amx_applicable({512, 2048}, random_tensor({40, 2048}, 4), Tensor(), DType::BF16,
                                                    {}, DType::BF16, DType::F32, false));  // N not a multiple of 32
  setenv("TAIYI_AMX_LINEAR", "0", 1);
  EXPECT_EQ(describe({2, 256, 2048}, w, DType::BF16).find("linear bf16 amx"), std::string::npos);
  EXPECT_EQ(describe({2, 256, 1024}, w_short, DType::BF16).find("linear bf16 amx"), std::string::npos);
  unsetenv("TAIYI_AMX_LINEAR");
  // prepare_linear's result computes what the kernel does.
  const Tensor x = random_tensor({300, 2048}, 5).to(DType::BF16);
  const auto op = ops::prepare_linear({300, 2048}, w, b, DType::BF16, {}, DType::BF16, DType::F32);
  EXPECT_TRUE(all_close(run(*op, x, Tensor(), 64, DType::F32), reference(x, w, b), 1e-5, 2e-6));
  EXPECT_THROW(op->run({random_tensor({300, 2048}, 6)}, Tensor::empty({300, 64}), nullptr), Error);  // f32 input
  EXPECT_THROW(ops::cpu::prepare_linear_bf16_amx({300, 2048}, w, random_tensor({63}, 7), {}, DType::F32), Error);
}

// Threads take units of work from the ends of the others': with thread 1 asleep after a unit,
// thread 0 takes most of its work, and the output is the same to the bit; with the LayerNorm
// epilogue (each thread normalises its own rows after all have finished) and the residual in place
// too. Whole-K mode (units of 32 rows by a chunk, from the last strips): 1000 rows x K 768, one
// strip per thread (512 and 488 rows), N 672 in chunks of 320, 320, 32: 48 units for thread 1.
// K-block mode (units of a strip by a chunk): 1100 rows x K 1280, 3 strips per thread (544 and
// 556 rows), N 800 in chunks of 384, 384, 32: 9 units for thread 1.
void check_units_taken(int64_t m, int64_t k, int64_t n, const char* mode, int64_t at_least) {
  SCOPED_TRACE(mode);
  const Tensor x = random_tensor({m, k}, 90).to(DType::BF16), w = random_tensor({n, k}, 91, -0.1f, 0.1f),
               bias = random_tensor({n}, 92), res = random_tensor({m, n}, 93).to(DType::BF16),
               gamma = random_tensor({n}, 94, 0.5f, 1.5f), beta = random_tensor({n}, 95);
  ops::Epilogue plain;
  plain.residual = true;
  plain.residual_dtype = DType::BF16;
  ops::Epilogue ln = plain;
  ln.layer_norm_eps = 1e-5f;
  ln.layer_norm_gamma = gamma;
  ln.layer_norm_beta = beta;
  for (const ops::Epilogue& e : {plain, ln}) {
    const auto op = ops::cpu::prepare_linear_bf16_amx({m, k}, w, bias, e, DType::BF16);
    ASSERT_NE(op->describe().find(mode), std::string::npos) << op->describe();
    ops::cpu::work_stealing_stall_for_tests(-1, 0);
    const Tensor want = run(*op, x, res, n, DType::BF16);
    // (a thread takes only from one that has started: where thread 1 woke after thread 0 had done
    // its own units, as under ctest's parallel load, nothing is taken; up to 5 tries)
    int64_t most = 0;
    for (int attempt = 0; attempt < 5 && most < 2 * at_least; ++attempt) {
      ops::cpu::work_stealing_stall_for_tests(1, 100000);
      const Tensor got = run(*op, x, res, n, DType::BF16);
      Tensor in_place = res.clone();
      Scratch scratch(op->scratch_bytes());
      op->run({x, in_place}, in_place, scratch.mem.get());
      most = std::max(most, ops::cpu::work_stealing_stall_for_tests(-1, 0));
      for (int64_t i = 0; i < m * n; ++i) {
        ASSERT_EQ(got.data_u16()[i], want.data_u16()[i]) << "element " << i;
        ASSERT_EQ(in_place.data_u16()[i], want.data_u16()[i]) << "element " << i << " in place";
      }
    }
    EXPECT_GE(most, 2 * at_least) << "thread 0 took too few of thread 1's units";
  }
}

TEST_F(LinearBf16Amx, ThreadsTakeUnitsFromAStalledThread) {
  if (omp_get_max_threads() < 2) GTEST_SKIP() << "needs two threads";
  check_units_taken(1000, 768, 672, "all of K", 17);
  check_units_taken(1100, 1280, 800, "K blocks", 5);
}

}  // namespace
}  // namespace taiyi::ops_test
