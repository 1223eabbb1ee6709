// Seeded Gaussian noise for the pipeline: the initial latents and the per-step noise of ancestral samplers.
//
// A seed only means something if it gives the same image as the reference, so each Generator reproduces one
// reference RNG bit for bit:
//   "torch"  — torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed)) on x86 (PyTorch's
//              GCC-built wheels): mt19937, the AVX2 16-wide Box-Muller kernel for >= 16 values, the scalar double
//              one below. What diffusers does with a CPU generator; bit-exact against the torch 1.13 goldens in
//              tests/fixtures/golden/rng.*, and the kernels read the same through torch 2.x.
//   "philox" — AUTOMATIC1111 stable-diffusion-webui's "NV" RNG (modules/rng_philox.py), Philox4x32-10 on the
//              CPU imitating torch.randn on CUDA, so `--rng philox` seeds from A1111 carry over.
// A generator carries its state from call to call, as the reference's does: one generator feeds the initial
// latents and then every step's noise.
//
//   auto gen = make_generator("torch", 42);
//   Tensor latents = gen->randn({1, 4, 64, 64});   // f32, contiguous
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "taiyi/tensor/tensor.h"

namespace taiyi::pipeline {

class Generator {
 public:
  virtual ~Generator() = default;
  virtual Tensor randn(const Shape& shape) = 0;  // standard normal, f32, contiguous
  virtual const char* name() const = 0;          // "torch" or "philox"
};

// torch's CPUGeneratorImpl + normal_kernel (aten/src/ATen/native/cpu/DistributionTemplates.h, avx_mathfun.h).
class TorchCpuGenerator : public Generator {
 public:
  explicit TorchCpuGenerator(uint64_t seed);  // manual_seed: mt19937 keeps the low 32 bits
  Tensor randn(const Shape& shape) override;
  const char* name() const override { return "torch"; }

 private:
  float uniform_float();    // at::uniform_real_distribution<float>(0, 1): 24 bits of one draw
  double uniform_double();  // at::uniform_real_distribution<double>(0, 1): 53 bits of two draws
  double normal_double();   // at::normal_distribution<double>, with the generator's cached second value
  void normal_fill(float* data, int64_t n);

  std::mt19937 engine_;
  // Box-Muller makes two values; torch keeps the unused one in the generator (not in the call), so it
  // survives into the next small randn call. Cleared only by reseeding.
  std::optional<double> next_double_normal_;
};

// AUTOMATIC1111 modules/rng_philox.py: value i of call k is Box-Muller(Philox4x32-10(counter {k, 0, i, 0},
// key {seed low 32 bits, seed high 32 bits})), using the first two output words; k counts calls.
class PhiloxGenerator : public Generator {
 public:
  explicit PhiloxGenerator(uint64_t seed) : seed_(seed) {}
  Tensor randn(const Shape& shape) override;
  const char* name() const override { return "philox"; }

 private:
  uint64_t seed_;
  uint32_t offset_ = 0;
};

// The Philox4x32-10 counter-based bijection (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC11; Random123's philox4x32_R with R = 10).
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// kind is "torch" or "philox"; anything else throws Error naming it.
std::unique_ptr<Generator> make_generator(const std::string& kind, uint64_t seed);

}  // namespace taiyi::pipeline
