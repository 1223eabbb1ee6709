// Times the prepared convolution (ops::prepare_conv2d, the kernel graph mode would bind) on the 3x3
// stride-1 and 1x1 convolutions of the Taiyi UNet at 512x512 (batch 2) and of the VAE decoder,
// against oneDNN's direct convolution (TAIYI_WINOGRAD=0 TAIYI_CONV1X1=0 TAIYI_DIRECT_CONV=0), taking turns; prints
// milliseconds and direct-equivalent GFLOP/s of each. bf16-nhwc-gn: the kernel with a GroupNorm+SiLU
// prologue (32 groups, graph/passes/fuse_group_norm_conv.cpp) against the same kernel without.
//   build/bench/conv_bench [fp32|bf16|bf16-nhwc|bf16-nhwc-gn] [reps] [first row] [last row]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_random.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

int main(int argc, char** argv) {
  using namespace taiyi;
  const std::string kind = argc > 1 ? argv[1] : "fp32";
  // bf16-nhwc: bf16 channels-last input and output, as graph mode runs the AMX convolutions.
  const bool gn = kind == "bf16-nhwc-gn";
  const bool nhwc = kind == "bf16-nhwc" || gn;
  const DType compute = kind == "bf16" || nhwc ? DType::BF16 : DType::F32;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  if (compute == DType::BF16 && !ops::bf16_supported()) {
    std::fprintf(stderr, "conv_bench: this CPU has no bf16 (avx512_bf16 or AMX)\n");
    return 1;
  }
  struct Case {
    int64_t n, cin, h, cout;
  };
  const Case cases[] = {{2, 320, 64, 320},  {2, 640, 64, 320},   {2, 960, 64, 320},   {2, 640, 32, 640},
                        {2, 1280, 32, 640}, {2, 1280, 16, 1280}, {2, 2560, 16, 1280}, {2, 1280, 8, 1280},
                        {2, 2560, 8, 1280}, {1, 512, 64, 512},   {1, 512, 128, 512},  {1, 256, 256, 256},
                        {1, 128, 512, 128}, {1, 256, 512, 128},  {1, 512, 256, 512},  {1, 256, 512, 256},
                        {1, 512, 256, 256}, {1, 128, 512, 3}};
  // 1x1 convolutions (UNet ResNet shortcuts and transformer projections, VAE shortcuts), against
  // oneDNN with TAIYI_CONV1X1=0.
  const Case cases_1x1[] = {{2, 320, 64, 320},   {2, 640, 64, 320},  {2, 640, 32, 640},
                            {2, 1280, 16, 1280}, {1, 256, 512, 128}, {1, 512, 256, 256}};
  struct Row {
    Case c;
    int64_t k;  // kernel edge
  };
  std::vector<Row> rows;
  for (const Case& c : cases) rows.push_back({c, 3});
  for (const Case& c : cases_1x1) rows.push_back({c, 1});
  const int first = argc > 3 ? std::atoi(argv[3]) : 0;
  const int last = argc > 4 ? std::atoi(argv[4]) : static_cast<int>(rows.size()) - 1;
  bench::RandomTensors random;
  for (int i = first; i <= last && i < static_cast<int>(rows.size()); ++i) {
    const Case& c = rows[i].c;
    const int64_t k = rows[i].k;
    const Shape xs = {c.n, c.cin, c.h, c.h};
    const Tensor w = random({c.cout, c.cin, k, k}, 0.05f), b = random({c.cout}, 0.1f);
    const Tensor x =
        nhwc ? random({c.n, c.h, c.h, c.cin}, 1.0f).to(DType::BF16).permute({0, 3, 1, 2}) : random(xs, 1.0f);
    const ops::Conv2dParams p = ops::Conv2dParams::same(static_cast<int>(k / 2));
    // bf16 out where both kernels write it (oneDNN's convolution over input-channel slices, 960
    // channels and more, does not), else f32 for both.
    const auto writes_bf16 = [&] {
      return ops::conv2d_writes_bf16(xs, w, p, compute, ops::Layout::kNHWC, ops::Layout::kNHWC, {}, DType::BF16);
    };
    bool bf16_out = nhwc && writes_bf16();
    setenv("TAIYI_WINOGRAD", "0", 1);
    setenv("TAIYI_CONV1X1", "0", 1);
    setenv("TAIYI_DIRECT_CONV", "0", 1);
    bf16_out = bf16_out && writes_bf16();
    unsetenv("TAIYI_WINOGRAD");
    unsetenv("TAIYI_CONV1X1");
    unsetenv("TAIYI_DIRECT_CONV");
    const DType dst = bf16_out ? DType::BF16 : DType::F32;
    const Tensor y = nhwc ? Tensor::empty({c.n, c.h, c.h, c.cout}, dst).permute({0, 3, 1, 2})
                          : Tensor::empty({c.n, c.cout, c.h, c.h});
    const Tensor y1 = nhwc ? Tensor::empty({c.n, c.h, c.h, c.cout}, dst).permute({0, 3, 1, 2})
                           : Tensor::empty({c.n, c.cout, c.h, c.h});
    const auto prepare = [&](const ops::Prologue& prologue) {
      if (!nhwc) return ops::prepare_conv2d(xs, w, b, p, compute);
      return ops::prepare_conv2d(xs, w, b, p, compute, ops::Layout::kNHWC, ops::Layout::kNHWC, {}, DType::BF16, dst,
                                 prologue);
    };
    std::unique_ptr<ops::PreparedOp> op[2];
    if (gn) {
      if (!ops::conv2d_takes_group_norm_silu(xs, w, p, compute, ops::Layout::kNHWC, ops::Layout::kNHWC, {}, DType::BF16,
                                             32))
        continue;
      op[0] = prepare({32, 1e-6f, random({c.cin}, 1.0f), random({c.cin}, 1.0f)});
      op[1] = prepare({});
    } else {
      op[0] = prepare({});
      setenv("TAIYI_WINOGRAD", "0", 1);
      setenv("TAIYI_CONV1X1", "0", 1);
      setenv("TAIYI_DIRECT_CONV", "0", 1);
      op[1] = prepare({});
      unsetenv("TAIYI_WINOGRAD");
      unsetenv("TAIYI_CONV1X1");
      unsetenv("TAIYI_DIRECT_CONV");
    }
    const auto scratch = Storage::allocate(std::max(op[0]->scratch_bytes(), op[1]->scratch_bytes()) + 64);
    double best[2] = {1e30, 1e30};
    for (int r = 0; r <= reps; ++r)
      for (int j = 0; j < 2; ++j) {
        const auto t0 = std::chrono::steady_clock::now();
        op[j]->run({x}, j == 0 ? y : y1, scratch->data());
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r > 0) best[j] = std::min(best[j], s);
      }
    // The two outputs' difference, relative (L2) to the second's.
    double num = 0.0, den = 0.0;
    const Tensor a = y.to(DType::F32).contiguous(), bb = y1.to(DType::F32).contiguous();
    for (int64_t e = 0; e < a.numel(); ++e) {
      const double d = a.data<float>()[e] - bb.data<float>()[e];
      num += d * d;
      den += static_cast<double>(bb.data<float>()[e]) * bb.data<float>()[e];
    }
    std::printf(
        "%2d %lldx%lld [%lld,%lld,%lld,%lld]->%-5lld %8.2f ms %7.1f GFLOP/s  %-44s | %8.2f ms %7.1f GFLOP/s  %s | rel "
        "diff %.1e\n",
        i, static_cast<long long>(k), static_cast<long long>(k), static_cast<long long>(c.n),
        static_cast<long long>(c.cin), static_cast<long long>(c.h), static_cast<long long>(c.h),
        static_cast<long long>(c.cout), best[0] * 1e3, op[0]->flops() * 1e-9 / best[0], op[0]->describe().c_str(),
        best[1] * 1e3, op[1]->flops() * 1e-9 / best[1], op[1]->describe().c_str(), std::sqrt(num / (den + 1e-30)));
  }
  return 0;
}
