// The prepared bf16 attention (ops/cpu/attention_prepared_dnnl.cpp, and the AVX512-BF16 kernel of
// attention_bf16_avx512.cpp and the AMX kernel of attention_bf16_amx.cpp where the CPU has them) against a reference in
// double that rounds as the kernel does: q, k, v to bf16, scores in full precision, probabilities 2^(log2(e) (s - max))
// (max over all keys; for the AMX kernel's online softmax, the running max over its chunks of 128 keys, with the sums
// and outputs before rescaled) rounded to bf16 (with the kernel's exp2_nonpositive_f32, itself checked against
// std::exp2 here) and normalised by their rounded sum. Emulated arithmetic (f32 matmuls on bf16-rounded values) runs on
// every CPU; native bf16 where oneDNN has it. Shapes cross the query-block boundary (full blocks plus a tail), D != Dv,
// 1 to 8 heads, Lq = Lk = 1, strided views; the result stays within bf16's error of f32 attention; scratch grows with
// L, not L x L.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/cpu/vector_math_f32.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/ops/runtime_info.h"
#include "taiyi/tensor/dtype.h"
#include "test_util.h"

namespace taiyi::ops_test {
namespace {

constexpr float kLog2e = 1.44269504088896341f;

double round_bf16(double x) { return bf16_to_f32(f32_to_bf16(static_cast<float>(x))); }

constexpr double kAmxLazyLog2 = 8.0;  // attention_bf16_amx.cpp's kLazyLog2

// 2^x as the kernels compute it (exp2_nonpositive_f32's fit of 2^frac(x), times 2^floor(x)), also
// for the x up to kAmxLazyLog2 of the AMX kernel's lazy reference: exact powers of two moved out.
double kernel_exp2(float x) {
  if (x <= 0.0f) return ops::cpu::exp2_nonpositive_f32(x);
  const float up = std::ceil(x);
  return std::ldexp(static_cast<double>(ops::cpu::exp2_nonpositive_f32(x - up)), static_cast<int>(up));
}

// chunk > 0: the AMX kernel's online softmax, keys in chunks of `chunk`, each chunk's
// probabilities taken against a running reference m: the first chunk's max, then moved to the max
// of the keys so far only where that passes m by more than kAmxLazyLog2 (the sums and outputs
// before it scaled by 2^(old m - new m) then); between, probabilities up to 2^kAmxLazyLog2.
std::vector<double> bf16_attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                                             int64_t chunk = 0) {
  const int64_t b = q.size(0), lq = q.size(1), lk = k.size(1);
  const int64_t d = q.size(2) / heads, dv = v.size(2) / heads;
  if (chunk <= 0) chunk = lk;
  std::vector<double> qv = values(q), kv = values(k), vv = values(v);
  for (auto* xs : {&qv, &kv, &vv})
    for (double& x : *xs) x = round_bf16(x);
  std::vector<double> out(static_cast<size_t>(b * lq * heads * dv));
  std::vector<double> s(static_cast<size_t>(lk)), acc(static_cast<size_t>(dv));
  for (int64_t n = 0; n < b; ++n)
    for (int64_t i = 0; i < lq; ++i)
      for (int h = 0; h < heads; ++h) {
        for (int64_t j = 0; j < lk; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c)
            dot += qv[(n * lq + i) * heads * d + h * d + c] * kv[(n * lk + j) * heads * d + h * d + c];
          s[j] = static_cast<float>(scale * kLog2e * dot);  // the kernel's matmul output scale
        }
        double mx = -INFINITY, sum = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j0 = 0; j0 < lk; j0 += chunk) {
          const int64_t j1 = std::min(lk, j0 + chunk);
          double m_new = mx;
          for (int64_t j = j0; j < j1; ++j) m_new = std::max(m_new, s[j]);
          if (j0 == 0) {
            mx = m_new;
          } else if (m_new - mx > kAmxLazyLog2) {
            const double alpha = std::exp2(mx - m_new);
            sum *= alpha;
            for (double& a : acc) a *= alpha;
            mx = m_new;
          }
          for (int64_t j = j0; j < j1; ++j) {
            const double p = round_bf16(kernel_exp2(static_cast<float>(s[j] - mx)));
            sum += p;
            for (int64_t c = 0; c < dv; ++c) acc[c] += p * vv[(n * lk + j) * heads * dv + h * dv + c];
          }
        }
        for (int64_t c = 0; c < dv; ++c) out[(n * lq + i) * heads * dv + h * dv + c] = acc[c] / sum;
      }
  return out;
}

// How a case's op is made: through ops::prepare_attention_bf16 (which picks the kernel), or the
// AVX512-BF16 kernel itself.
enum class Kernel { kEmulated, kNative, kAvx512, kAmx };

std::unique_ptr<ops::PreparedOp> prepare(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                                         Kernel kernel) {
  if (kernel == Kernel::kAvx512)
    return ops::cpu::prepare_attention_bf16_avx512(q.shape(), k.shape(), v.shape(), heads, scale);
  if (kernel == Kernel::kAmx)
    return ops::cpu::prepare_attention_bf16_amx(q.shape(), k.shape(), v.shape(), heads, scale);
  return ops::prepare_attention_bf16(
      q.shape(), k.shape(), v.shape(), heads, scale,
      kernel == Kernel::kNative ? ops::Bf16Arithmetic::kNative : ops::Bf16Arithmetic::kEmulated);
}

Tensor run_prepared(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, Kernel kernel) {
  const auto op = prepare(q, k, v, heads, scale, kernel);
  Tensor out = Tensor::empty({q.size(0), q.size(1), v.size(2)});
  std::vector<std::byte> scratch(op->scratch_bytes() + 64);
  auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
  op->run({q, k, v}, out, aligned);
  EXPECT_DOUBLE_EQ(op->flops(), 2.0 * q.size(0) * q.size(1) * k.size(1) * (q.size(2) + v.size(2)));
  return out;
}

// The reference's chunk for the kernel a case's op runs: the AMX kernel's online softmax works in
// chunks of 128 keys (its describe() says so), the others over whole rows of keys.
int64_t chunk_of(Kernel kernel, float scale) {
  const auto op =
      prepare(random_tensor({1, 2, 4}, 1), random_tensor({1, 3, 4}, 2), random_tensor({1, 3, 4}, 3), 1, scale, kernel);
  return op->describe().find("online softmax per 128 keys") != std::string::npos ? 128 : 0;
}

struct Case {
  Shape q, k, v;
  int heads;
};

// oneDNN path: block rows are 256K / Lk clamped to [32, 256] and to Lq: Lk = 2048 gives blocks of
// 128, so Lq = 300 is two full blocks and a tail of 44; Lk = 77 gives one block of all queries.
// AVX512-BF16 kernel: 16 queries a task (300 = 18 x 16 + 12), keys padded to 8 (77 -> 80, 5 -> 8)
// and packed for V in blocks of 64 (2048 = 32 full blocks, 77 = one full and a part), D padded to
// even (1, 3), Dv to 8 (3, 8, 40 = 16 + 16 + 8).
const std::vector<Case> kCases = {
    {{1, 300, 16}, {1, 2048, 16}, {1, 2048, 8}, 1},  // full blocks + tail, Dv != D
    {{2, 64, 64}, {2, 64, 64}, {2, 64, 64}, 8},      // self-attention, 8 heads of 8
    {{2, 50, 80}, {2, 77, 80}, {2, 77, 80}, 2},      // cross-attention, D = 40
    {{1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1},            // one query, one key, D = 1
    {{1, 33, 6}, {1, 5, 6}, {1, 5, 9}, 3},           // D = 2, Dv = 3
    {{1, 17, 9}, {1, 131, 9}, {1, 131, 120}, 3},     // D = 3, Dv = 40, keys 131 = 2 x 64 + 3
    {{2, 40, 320}, {2, 70, 320}, {2, 70, 320}, 2},   // D = Dv = 160 (the UNet's 16x16 level)
};

void check_cases(Kernel kernel) {
  uint32_t seed = 1;
  for (const Case& c : kCases) {
    const Tensor q = random_tensor(c.q, seed++, -2.0f, 2.0f), k = random_tensor(c.k, seed++, -2.0f, 2.0f);
    const Tensor v = random_tensor(c.v, seed++);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.q[2] / c.heads));
    const Tensor got = run_prepared(q, k, v, c.heads, scale, kernel);
    const std::string what = "q " + shape_str(c.q) + " k " + shape_str(c.k) + " v " + shape_str(c.v);
    // The same roundings as the kernel: what remains is the f32 accumulation order, and the odd
    // probability that rounds the other way when the kernel's exp and the reference's differ in
    // the last bit (one bf16 ulp, 2^-8, of one weight out of Lk).
    EXPECT_TRUE(all_close(got, bf16_attention_reference(q, k, v, c.heads, scale, chunk_of(kernel, scale)), 1e-4, 2e-4))
        << what;
    // Against f32 attention: bf16's error, and not less (the roundings happen).
    const Tensor f32 = ops::attention(q, k, v, c.heads, scale);
    double num = 0, den = 0;
    for (int64_t i = 0; i < f32.numel(); ++i) {
      num += (got.item(i) - f32.item(i)) * (got.item(i) - f32.item(i));
      den += f32.item(i) * f32.item(i);
    }
    EXPECT_LT(std::sqrt(num / den), 2e-2) << what;
    if (c.k[1] > 1) {
      EXPECT_GT(std::sqrt(num / den), 1e-4) << what;
    }
  }
}

TEST(AttentionBf16, Exp2OfNonPositiveIsWithinItsBound) {
  double worst = 0.0;
  for (double x = -130.0; x <= 0.0; x += 1.0 / 4096 + 1e-7) {
    const float xf = static_cast<float>(x);
    const double want = std::exp2(std::max(static_cast<double>(xf), -125.0));
    worst = std::max(worst, std::abs(ops::cpu::exp2_nonpositive_f32(xf) / want - 1.0));
  }
  // A degree-3 fit: 7.5e-5, under 4% of the bf16 rounding that follows it (2^-9), and not much less
  // (a slip back to a degree-4 fit would show here as well as in the kernels' speed).
  EXPECT_LT(worst, 8e-5);
  EXPECT_GT(worst, 1e-5);
  EXPECT_NEAR(ops::cpu::exp2_nonpositive_f32(-0.0f), 1.0, 8e-5);
  EXPECT_NEAR(ops::cpu::exp2_nonpositive_f32(-1e30f), std::exp2(-125.0), 8e-5 * std::exp2(-125.0));
}

TEST(AttentionBf16, EmulatedMatchesTheRoundedReference) { check_cases(Kernel::kEmulated); }

TEST(AttentionBf16, NativeMatchesTheRoundedReference) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "oneDNN has no bf16 matmul on this CPU (needs avx512_bf16 or AMX)";
  check_cases(Kernel::kNative);
}

// The cases of check_cases, then scores over a wide range (|s| up to ~50 before the scale: most
// probabilities round to 0 or underflow, one key dominates a row) and strided views.
void check_kernel(Kernel kernel) {
  check_cases(kernel);
  const Tensor q = random_tensor({2, 45, 64}, 21, -6.0f, 6.0f), k = random_tensor({2, 93, 64}, 22, -6.0f, 6.0f);
  const Tensor v = random_tensor({2, 93, 64}, 23);
  EXPECT_TRUE(all_close(run_prepared(q, k, v, 1, 0.5f, kernel),
                        bf16_attention_reference(q, k, v, 1, 0.5f, chunk_of(kernel, 0.5f)), 1e-4, 2e-4));
  const Tensor qkv = random_tensor({2, 70, 72}, 24);
  const Tensor qs = qkv.slice(2, 0, 24), ks = qkv.slice(2, 24, 48);
  const Tensor vs = random_tensor({70, 2, 24}, 25).permute({1, 0, 2});
  EXPECT_TRUE(all_close(run_prepared(qs, ks, vs, 3, 0.35f, kernel),
                        bf16_attention_reference(qs, ks, vs, 3, 0.35f, chunk_of(kernel, 0.35f)), 1e-4, 2e-4));
}

TEST(AttentionBf16, Avx512KernelMatchesTheRoundedReference) {
  if (!ops::cpu::cpu_has_avx512_bf16()) GTEST_SKIP() << "this CPU has no avx512_bf16";
  check_kernel(Kernel::kAvx512);
}

TEST(AttentionBf16, AmxKernelMatchesTheRoundedReference) {
  if (!ops::cpu::cpu_has_amx_bf16()) GTEST_SKIP() << "this CPU has no AMX-BF16 (or Linux does not allow it)";
  check_kernel(Kernel::kAmx);
  // D = 64 and 96 (two and three full d steps: Q leaves its tiles), Dv = 72 (48 + 16 + 8 columns),
  // Lk = 33 (one key past a step of 32): 16 queries a task; D = 80 (32 + 32 + 16) and D = 160 (five
  // steps) over 300 keys (three chunks): heads past 64 KiB, 64 queries a task (below).
  uint32_t seed = 40;
  for (const Case& c :
       {Case{{1, 20, 128}, {1, 33, 128}, {1, 33, 144}, 2}, Case{{2, 18, 192}, {2, 40, 192}, {2, 40, 48}, 2},
        Case{{1, 21, 160}, {1, 300, 160}, {1, 300, 160}, 2}, Case{{1, 19, 320}, {1, 300, 320}, {1, 300, 80}, 2}}) {
    const Tensor q = random_tensor(c.q, seed++, -2.0f, 2.0f), k = random_tensor(c.k, seed++, -2.0f, 2.0f);
    const Tensor v = random_tensor(c.v, seed++);
    EXPECT_TRUE(all_close(run_prepared(q, k, v, c.heads, 0.2f, Kernel::kAmx),
                          bf16_attention_reference(q, k, v, c.heads, 0.2f, 128), 1e-4, 2e-4))
        << shape_str(c.q) << " " << shape_str(c.v);
  }
  // Heads whose packed K and V^T pass 64 KiB (the VAE's: one head of 512 over 4096 keys; the UNet's
  // cross-attention, BERT's) run 4 blocks of 16 queries a task, chunk by chunk: D = 512 over 600 keys (7 blocks: a task of 4 and
  // one of 3, the last block 4 queries), and D = 64 over 4200 keys (Q reloaded into its tiles for
  // each block), 2 heads (tasks of both).
  for (const Case& c :
       {Case{{1, 100, 512}, {1, 600, 512}, {1, 600, 512}, 1}, Case{{1, 70, 128}, {1, 4200, 128}, {1, 4200, 128}, 2}}) {
    const Tensor q = random_tensor(c.q, seed++, -2.0f, 2.0f), k = random_tensor(c.k, seed++, -2.0f, 2.0f);
    const Tensor v = random_tensor(c.v, seed++);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.q[2] / c.heads));
    EXPECT_NE(prepare(q, k, v, c.heads, scale, Kernel::kAmx)->describe().find("(64 queries"), std::string::npos);
    EXPECT_TRUE(all_close(run_prepared(q, k, v, c.heads, scale, Kernel::kAmx),
                          bf16_attention_reference(q, k, v, c.heads, scale, 128), 1e-4, 2e-4))
        << shape_str(c.q) << " " << shape_str(c.k);
  }
  // The lazy running max both ways: keys 128-255 score up to 1.5x the first chunk's (most maxima
  // grow by less than kAmxLazyLog2: m stays, probabilities above 1), keys 256-299 8x (they grow by
  // more: m moves, the sums and outputs are rescaled).
  const Tensor q = random_tensor({1, 37, 80}, 50, -2.0f, 2.0f), v = random_tensor({1, 300, 80}, 51);
  Tensor k = random_tensor({1, 300, 80}, 52, -0.5f, 0.5f);
  for (int64_t j = 128; j < 300; ++j)
    for (int64_t e = 0; e < 80; ++e) k.data<float>()[j * 80 + e] *= j < 256 ? 1.5f : 8.0f;
  const Tensor got = run_prepared(q, k, v, 2, 0.3f, Kernel::kAmx);
  EXPECT_TRUE(all_close(got, bf16_attention_reference(q, k, v, 2, 0.3f, 128), 1e-4, 2e-4));
  EXPECT_LT(taiyi::testing::relative_l2(got, ops::attention(q, k, v, 2, 0.3f)), 2e-2);
}

// The AMX and AVX512-BF16 kernels write a bf16 output as the f32 one rounded to nearest even
// (the input of the bf16 linear after them); oneDNN's path writes f32 only.
TEST(AttentionBf16, Bf16OutputIsTheF32OutputRounded) {
  const Tensor q = random_tensor({2, 37, 80}, 31, -2.0f, 2.0f), k = random_tensor({2, 50, 80}, 32, -2.0f, 2.0f);
  const Tensor v = random_tensor({2, 50, 80}, 33);
  for (const Kernel kernel : {Kernel::kAvx512, Kernel::kAmx}) {
    if (kernel == Kernel::kAvx512 && !ops::cpu::cpu_has_avx512_bf16()) continue;
    if (kernel == Kernel::kAmx && !ops::cpu::cpu_has_amx_bf16()) continue;
    const auto op = prepare(q, k, v, 2, 0.15f, kernel);
    std::vector<std::byte> scratch(op->scratch_bytes() + 64);
    auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
    Tensor f32 = Tensor::empty({2, 37, 80}), bf16 = Tensor::empty({2, 37, 80}, DType::BF16);
    op->run({q, k, v}, f32, aligned);
    op->run({q, k, v}, bf16, aligned);
    int64_t differ = 0;
    for (int64_t i = 0; i < f32.numel(); ++i) differ += bf16.data_u16()[i] != f32_to_bf16(f32.data<float>()[i]);
    EXPECT_EQ(differ, 0) << op->describe();
  }
  if (ops::bf16_supported()) {
    ::setenv("TAIYI_ATTENTION", "dnnl", 1);
    EXPECT_FALSE(ops::attention_bf16_writes_bf16(0.15f));
    const auto dnnl =
        ops::prepare_attention_bf16(q.shape(), k.shape(), v.shape(), 2, 0.15f, ops::Bf16Arithmetic::kNative);
    ::unsetenv("TAIYI_ATTENTION");
    std::vector<std::byte> scratch(dnnl->scratch_bytes() + 64);
    auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
    EXPECT_THROW(dnnl->run({q, k, v}, Tensor::empty({2, 37, 80}, DType::BF16), aligned), Error);
  }
}

// The AMX kernel reads q, k and v in bf16 (the linears before it write them so in graph mode:
// graph/passes/bf16_inputs.cpp) and computes exactly what it computes from the f32 values it would
// round: q, k, v slices of one stacked projection (element stride 1), D = 40 (a 32 and an 8 step)
// and 80, Dv = 40 and 80 (the ones row of the sums and not), keys not a multiple of 32 nor of 16
// over more than one chunk; cross-attention with the context's k and v in bf16 and q in f32.
TEST(AttentionBf16, AmxKernelReadsBf16InputsAsTheF32ItWouldRound) {
  if (!ops::cpu::cpu_has_amx_bf16()) GTEST_SKIP() << "this CPU has no AMX-BF16 (or Linux does not allow it)";
  uint32_t seed = 60;
  for (const auto& [l, lk, c, heads] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{{37, 37, 80, 2}, {21, 300, 160, 2}, {50, 77, 320, 8}}) {
    SCOPED_TRACE("L " + std::to_string(l) + " Lk " + std::to_string(lk) + " C " + std::to_string(c));
    // f32 values that are bf16 already, so that both runs see the same numbers.
    const Tensor qf = ops::cast(ops::cast(random_tensor({2, l, c}, seed++, -2.0f, 2.0f), DType::BF16), DType::F32);
    const Tensor kvf =
        ops::cast(ops::cast(random_tensor({2, lk, 2 * c}, seed++, -2.0f, 2.0f), DType::BF16), DType::F32);
    const Tensor qb = ops::cast(qf, DType::BF16), kvb = ops::cast(kvf, DType::BF16);
    const auto op = prepare(qf, kvf.slice(2, 0, c), kvf.slice(2, c, 2 * c), heads, 0.2f, Kernel::kAmx);
    std::vector<std::byte> scratch(op->scratch_bytes() + 64);
    auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
    Tensor want = Tensor::empty({2, l, c}), got = Tensor::empty({2, l, c}), mixed = Tensor::empty({2, l, c});
    op->run({qf, kvf.slice(2, 0, c), kvf.slice(2, c, 2 * c)}, want, aligned);
    op->run({qb, kvb.slice(2, 0, c), kvb.slice(2, c, 2 * c)}, got, aligned);
    op->run({qf, kvb.slice(2, 0, c), kvb.slice(2, c, 2 * c)}, mixed, aligned);
    EXPECT_TRUE(all_close(got, values(want), 0.0, 0.0));
    EXPECT_TRUE(all_close(mixed, values(want), 0.0, 0.0));
    // (graph mode binds the kernel where bf16 runs: not under ONEDNN_MAX_CPU_ISA below AMX)
    EXPECT_EQ(ops::attention_bf16_reads_bf16(0.2f, c / heads, 1), ops::bf16_supported());
    EXPECT_FALSE(ops::attention_bf16_reads_bf16(0.2f, c / heads, 2));  // a strided head
    EXPECT_FALSE(ops::attention_bf16_reads_bf16(0.2f, 3, 1));          // an odd head size
  }
  // The other kernels read f32 only.
  if (ops::cpu::cpu_has_avx512_bf16()) {
    const Tensor q = ops::cast(random_tensor({1, 20, 16}, 1), DType::BF16);
    const auto op = prepare(q, q, q, 2, 0.2f, Kernel::kAvx512);
    std::vector<std::byte> scratch(op->scratch_bytes() + 64);
    auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
    EXPECT_THROW(op->run({q, q, q}, Tensor::empty({1, 20, 16}), aligned), Error);
  }
}

TEST(AttentionBf16, NativePicksTheFastestKernelOfTheCpu) {
  if (!ops::bf16_supported() || !ops::cpu::cpu_has_avx512_bf16()) GTEST_SKIP() << "needs avx512_bf16";
  const auto op =
      ops::prepare_attention_bf16({2, 64, 80}, {2, 77, 80}, {2, 77, 80}, 2, 0.15f, ops::Bf16Arithmetic::kNative);
  const bool amx = ops::cpu::cpu_has_amx_bf16(), dnnl_amx = ops::onednn_isa() == "avx512_core_amx";
  const std::string want = amx ? "attention bf16 amx (" : dnnl_amx ? "attention bf16 brg" : "avx512_bf16 (";
  EXPECT_NE(op->describe().find(want), std::string::npos) << op->describe();
}

TEST(AttentionBf16, ReadsStridedViews) {
  // q and k as channel slices of one fused [B, L, 3C] projection, v permuted from [L, B, C].
  const int64_t b = 2, l = 70, c = 24;
  const int heads = 3;
  const Tensor qkv = random_tensor({b, l, 3 * c}, 11);
  const Tensor q = qkv.slice(2, 0, c), k = qkv.slice(2, c, 2 * c);
  const Tensor v = random_tensor({l, b, c}, 12).permute({1, 0, 2});
  const float scale = 0.35f;
  const Tensor got = run_prepared(q, k, v, heads, scale, Kernel::kEmulated);
  EXPECT_TRUE(all_close(got, bf16_attention_reference(q, k, v, heads, scale), 1e-4, 2e-4));
}

TEST(AttentionBf16, ScratchGrowsWithLengthNotItsSquare) {
  // The UNet's largest self-attention, 2 x 8 heads at 64x64 latents: all scores at once would be
  // 2 * 8 * 4096^2 floats (1 GiB). The kernel holds bf16 copies of q, k, v and, per thread, one
  // block of scores: doubling L doubles the scratch, it does not quadruple it. The same for the
  // AVX512-BF16 kernel (16 queries' scores and probabilities of all keys per thread).
  for (const Kernel kernel : {Kernel::kEmulated, Kernel::kAvx512, Kernel::kAmx}) {
    if (kernel == Kernel::kAvx512 && !ops::cpu::cpu_has_avx512_bf16()) continue;  // they refuse to prepare without
    if (kernel == Kernel::kAmx && !ops::cpu::cpu_has_amx_bf16()) continue;
    const auto scratch = [&](int64_t l) {
      const Tensor x = Tensor::empty({2, l, 320});
      return prepare(x, x, x, 8, 0.158f, kernel)->scratch_bytes();
    };
    const double all_scores = 2.0 * 8 * 4096 * 4096 * sizeof(float);
    const int which = static_cast<int>(kernel);
    EXPECT_LT(static_cast<double>(scratch(4096)), all_scores / 16) << which;
    EXPECT_LT(static_cast<double>(scratch(8192)), 2.5 * static_cast<double>(scratch(4096))) << which;
  }
}

TEST(AttentionBf16, RefusesShapesItCannotRun) {
  EXPECT_FALSE(ops::prepared_attention_applicable({2, 4, 8}, {2, 5, 8}, {2, 6, 8}, 2));  // Lk != Lv
  EXPECT_FALSE(ops::prepared_attention_applicable({2, 4, 8}, {2, 5, 8}, {2, 5, 8}, 3));  // 8 % 3
  EXPECT_FALSE(ops::prepared_attention_applicable({2, 0, 8}, {2, 5, 8}, {2, 5, 8}, 2));  // empty
  EXPECT_TRUE(ops::prepared_attention_applicable({2, 4, 8}, {2, 5, 8}, {2, 5, 6}, 2));
  EXPECT_THROW(ops::prepare_attention_bf16({2, 4, 8}, {1, 5, 8}, {1, 5, 8}, 2, 1.0f, ops::Bf16Arithmetic::kEmulated),
               Error);
}

}  // namespace
}  // namespace taiyi::ops_test
