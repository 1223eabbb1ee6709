// Times the prepared bf16 linear (ops::prepare_linear, the kernel graph mode binds) on the linears
// of BERT (2 x 512 tokens) and the Taiyi UNet's feed-forward outputs (512x512, batch 2), bf16 input
// and output with a bf16 residual (BERT's intermediate dense: its GELU) as the graph runs them, against oneDNN's matmul
// (TAIYI_AMX_LINEAR=0), taking turns; prints milliseconds and GFLOP/s of each and the largest
// difference between the two outputs relative to the largest output.
// With --cold, a 256 MiB buffer is written between runs, so that weights, input and output come
// from memory as they do in the graph (each layer's weights are read once a call). --only NAME
// runs the cases whose name contains NAME (for perf record).
//   build/bench/linear_bench [reps] [--cold] [--only NAME]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_random.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

int main(int argc, char** argv) {
  using namespace taiyi;
  int reps = 10;
  bool cold = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--cold") {
      cold = true;
    } else if (std::string(argv[i]) == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      reps = std::max(1, std::atoi(argv[i]));
    }
  }
  std::vector<char> flush(cold ? size_t{256} << 20 : 0);
  if (!ops::bf16_supported()) {
    std::fprintf(stderr, "linear_bench: this CPU has no bf16 (avx512_bf16 or AMX)\n");
    return 1;
  }
  struct Case {
    const char* what;
    int64_t m, k, n;
    bool gelu = false;  // a GELU after the bias and no residual (BERT's intermediate dense), else a bf16 residual
  };
  const Case cases[] = {{"BERT output dense", 1024, 3072, 768},
                        {"BERT attention out", 1024, 768, 768},
                        {"BERT intermediate", 1024, 768, 3072, true},
                        {"BERT q/k/v", 1024, 768, 2304},
                        {"UNet 64 q/k/v", 8192, 320, 960},
                        {"UNet 64 attn out", 8192, 320, 320},
                        {"UNet 64 geglu", 8192, 320, 2560},
                        {"UNet 64 ff out", 8192, 1280, 320},
                        {"UNet context k/v", 1024, 768, 2560},
                        {"UNet 32 q/k/v", 2048, 640, 1920},
                        {"UNet 32 attn out", 2048, 640, 640},
                        {"UNet 32 geglu", 2048, 640, 5120},
                        {"UNet 32 ff out", 2048, 2560, 640},
                        {"UNet 16 q/k/v", 512, 1280, 3840},
                        {"UNet 16 attn out", 512, 1280, 1280},
                        {"UNet 16 ff out", 512, 5120, 1280}};
  bench::RandomTensors random;
  for (const Case& c : cases) {
    if (std::string(c.what).find(only) == std::string::npos) continue;
    const Tensor x = random({c.m, c.k}, 1.0f).to(DType::BF16), w = random({c.n, c.k}, 0.05f), b = random({c.n}, 0.1f),
                 res = random({c.m, c.n}, 1.0f).to(DType::BF16);
    ops::Epilogue e;
    e.residual = !c.gelu;
    e.residual_dtype = DType::BF16;
    if (c.gelu) e.post_op = ops::PostOp::kGelu;
    std::unique_ptr<ops::PreparedOp> op[2];
    op[0] = ops::prepare_linear({c.m, c.k}, w, b, DType::BF16, e, DType::BF16, DType::BF16);
    setenv("TAIYI_AMX_LINEAR", "0", 1);
    op[1] = ops::prepare_linear({c.m, c.k}, w, b, DType::BF16, e, DType::BF16, DType::BF16);
    unsetenv("TAIYI_AMX_LINEAR");
    const auto scratch = Storage::allocate(std::max(op[0]->scratch_bytes(), op[1]->scratch_bytes()) + 64);
    Tensor y[2] = {Tensor::empty({c.m, c.n}, DType::BF16), Tensor::empty({c.m, c.n}, DType::BF16)};
    double best[2] = {1e30, 1e30};
    for (int r = 0; r <= reps; ++r)
      for (int j = 0; j < 2; ++j) {
        for (size_t i = 0; i < flush.size(); i += 64) flush[i] = static_cast<char>(flush[i] + 1);
        const auto t0 = std::chrono::steady_clock::now();
        op[j]->run({x, res}, y[j], scratch->data());
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r > 0) best[j] = std::min(best[j], s);
      }
    double diff = 0, big = 0;
    for (int64_t i = 0; i < y[0].numel(); ++i) {
      diff = std::max(diff, std::fabs(y[0].item(i) - y[1].item(i)));
      big = std::max(big, std::fabs(y[1].item(i)));
    }
    std::printf("%-20s [%lld,%lld]x[%lld,%lld] %7.3f ms %7.1f GFLOP/s %-52s | %7.3f ms %7.1f GFLOP/s %s | diff %.1e\n",
                c.what, static_cast<long long>(c.m), static_cast<long long>(c.k), static_cast<long long>(c.k),
                static_cast<long long>(c.n), best[0] * 1e3, op[0]->flops() * 1e-9 / best[0], op[0]->describe().c_str(),
                best[1] * 1e3, op[1]->flops() * 1e-9 / best[1], op[1]->describe().c_str(), diff / big);
  }
  return 0;
}
