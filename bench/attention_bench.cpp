// Times the prepared bf16 attention (ops::prepare_attention_bf16, native) on every attention shape
// of the Taiyi UNet at 512x512 (batch 2 for guidance, 8 heads, 512 context tokens), the VAE's
// mid-block attention and BERT's, and prints seconds and GFLOP/s per shape: the kernel-level view
// behind `taiyi bench unet --profile`. TAIYI_ATTENTION=dnnl times oneDNN's matmuls instead of the
// AVX512-BF16 kernel. Kind f32 times the f32 kernel of ops::attention instead (AVX-512 where the CPU
// has it), f32-avx2 its AVX2 build.
// Kind bf16-in feeds the bf16 kernel q, k and v in bf16, as graph mode does (graph/passes/bf16_inputs.cpp).
//   build/bench/attention_bench [reps] [only this row, -1 all] [bf16|bf16-in|f32|f32-avx2]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_random.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

int main(int argc, char** argv) {
  using namespace taiyi;
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  const std::string kind = argc > 3 ? argv[3] : "bf16";
  const bool bf16_in = kind == "bf16-in";
  if (kind != "bf16" && !bf16_in && kind != "f32" && kind != "f32-avx2") {
    std::fprintf(stderr, "attention_bench: unknown kind '%s' (bf16, bf16-in, f32 or f32-avx2)\n", kind.c_str());
    return 1;
  }
  if (kind == "f32-avx2") ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kAvx2);
  if ((kind == "bf16" || bf16_in) && !ops::bf16_supported()) {
    std::fprintf(stderr, "attention_bench: this CPU has no bf16 (avx512_bf16 or AMX)\n");
    return 1;
  }
  struct Case {
    int64_t b, lq, lk;
    int heads;
    int64_t d;
  };
  const Case cases[] = {{2, 4096, 4096, 8, 40}, {2, 4096, 512, 8, 40},   {2, 1024, 1024, 8, 80},
                        {2, 1024, 512, 8, 80},  {2, 256, 256, 8, 160},   {2, 256, 512, 8, 160},
                        {2, 64, 64, 8, 160},    {1, 4096, 4096, 1, 512}, {2, 512, 512, 12, 64}};
  bench::RandomTensors random;
  const int only = argc > 2 ? std::atoi(argv[2]) : -1;
  for (int row = 0; row < static_cast<int>(std::size(cases)); ++row) {
    if (only >= 0 && row != only) continue;
    const Case& c = cases[row];
    Tensor q = random({c.b, c.lq, c.heads * c.d}, 2.0f), k = random({c.b, c.lk, c.heads * c.d}, 2.0f);
    Tensor v = random({c.b, c.lk, c.heads * c.d}, 2.0f);
    if (bf16_in) {
      q = q.to(DType::BF16);
      k = k.to(DType::BF16);
      v = v.to(DType::BF16);
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    std::unique_ptr<ops::PreparedOp> op;
    if (kind == "bf16" || bf16_in)
      op = ops::prepare_attention_bf16(q.shape(), k.shape(), v.shape(), c.heads, scale, ops::Bf16Arithmetic::kNative);
    Tensor out = Tensor::empty({c.b, c.lq, c.heads * c.d});
    const auto scratch = Storage::allocate((op ? op->scratch_bytes() : 0) + 64);
    double best = 1e30;
    for (int r = 0; r <= reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      if (op) {
        op->run({q, k, v}, out, scratch->data());
      } else {
        ops::cpu::attention_f32(q, k, v, c.heads, scale, out);
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) best = std::min(best, s);  // run 0 warms up
    }
    const double flops = 4.0 * static_cast<double>(c.b * c.heads * c.lq * c.lk * c.d);
    std::printf("B=%lld H=%d Lq=%-5lld Lk=%-5lld D=%-4lld %9.2f ms %7.1f GFLOP/s  %s\n", static_cast<long long>(c.b),
                c.heads, static_cast<long long>(c.lq), static_cast<long long>(c.lk), static_cast<long long>(c.d),
                best * 1e3, flops * 1e-9 / best, op ? op->describe().c_str() : ("attention " + kind).c_str());
  }
  return 0;
}
