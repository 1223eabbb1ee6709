// Runtime instruction-set dispatch for the hand-written CPU kernels.
//
// The build targets baseline x86-64 (no -march), so a kernel that wants AVX2 is
// compiled twice from one always-inline body: once with TAIYI_TARGET_AVX2_FMA and
// once without, and the caller picks with cpu_has_avx2_fma(). Plain loops in the
// body are vectorised by the compiler for each target; no intrinsics are needed.
//
//   TAIYI_ALWAYS_INLINE void scale_body(float* x, int64_t n) { ... }
//   TAIYI_TARGET_AVX2_FMA void scale_avx2(float* x, int64_t n) { scale_body(x, n); }
//   void scale_generic(float* x, int64_t n) { scale_body(x, n); }
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#define TAIYI_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
// The f32 AVX-512 kernels (intrinsics, called only when cpu_has_avx512f()).
#define TAIYI_TARGET_AVX512_F32 __attribute__((target("avx512f,avx2,fma")))
// The bf16 kernels (intrinsics, called only when cpu_has_avx512_bf16()).
#define TAIYI_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
// The AMX kernels (tile intrinsics plus AVX512-BF16, called only when cpu_has_amx_bf16()).
#define TAIYI_TARGET_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#else
#define TAIYI_TARGET_AVX2_FMA
#define TAIYI_TARGET_AVX512_F32
#define TAIYI_TARGET_AVX512_BF16
#define TAIYI_TARGET_AMX
#endif

namespace taiyi::ops::cpu {

// True when the CPU and the OS support AVX2 and FMA (GCC's and Clang's builtin checks XCR0 too).
bool cpu_has_avx2_fma();
// True when the CPU and the OS support AVX-512F (the f32 kernels' 16-lane builds, such as
// attention_f32_avx512.cpp).
bool cpu_has_avx512f();
// True when the CPU and the OS support AVX-512 F/BW/VL/DQ and AVX512-BF16 (vdpbf16ps); the
// hand-written bf16 kernels use intrinsics under a target attribute (attention_bf16_avx512.cpp).
// Not affected by set_kernel_level: bf16 has no portable path to compare with.
bool cpu_has_avx512_bf16();
// True when the CPU has AMX-TILE and AMX-BF16 besides cpu_has_avx512_bf16(), and Linux lets this
// process use the tile registers (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked
// once: the permission is per process, so every thread may then run tile instructions).
bool cpu_has_amx_bf16();
// The most the f32 kernels may use, for tests that cover every path: the portable code, AVX2 at
// most (cpu_has_avx512f() false), or all the CPU has (the default).
enum class KernelLevel { kPortable, kAvx2, kAll };
void set_kernel_level(KernelLevel level);

}  // namespace taiyi::ops::cpu
