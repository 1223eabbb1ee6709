// The machine's measured peak for benchmark reports: the throughput of one large 3x3
// convolution through oneDNN (weights packed once, as graph mode runs them), f32 or bf16.
// Benchmarks print a stage's GFLOP/s as a fraction of it, so a number means the same on
// an AVX2 core, an AVX-512 one and one with AMX.
#pragma once

#include <string>

#include "taiyi/tensor/tensor.h"

namespace taiyi::ops {

struct MeasuredPeak {
  bool supported = false;  // false: this CPU has no such kernel (bf16 without avx512_bf16 or AMX)
  double gflops = 0;       // best of several runs
  std::string shape;       // what was timed
  std::string kernel;      // oneDNN's implementation, e.g. "jit:avx2"
};

// Times x [2, 256, 64, 64] * w [256, 256, 3, 3] (9.7 GFLOP) on the current threads; about
// 0.5 s at fp32 on 2 AVX2 cores.
MeasuredPeak measure_conv_peak(DType compute);

}  // namespace taiyi::ops
