// ldtilecfg's 64-byte operand (palette 1), shared by the AMX kernels (attention_bf16_amx.cpp,
// linear_bf16_amx.cpp, conv2d_winograd_bf16_amx.cpp): each thread loads one with _tile_loadconfig
// before its tile instructions. And the step of a 2 x 2 block of C tiles those products share.
#pragma once

#include <cstdint>

#include "taiyi/ops/cpu/cpu_isa.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace taiyi::ops::cpu {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  // Tile `tile` holds rows_ rows of bytes_per_row bytes.
  void set(int tile, int rows_, int bytes_per_row) {
    rows[tile] = static_cast<uint8_t>(rows_);
    colsb[tile] = static_cast<uint16_t>(bytes_per_row);
  }
};

#if defined(__x86_64__)
// One step of a 32 x 32 block of C in tiles t0-t3 (rows 0-15 / 16-31 x columns 0-15 / 16-31) +=
// A (t4: rows 0-15, t5: rows 16-31; 32 k each) x B (t6: columns 0-15, t7: columns 16-31; bf16
// pairs), then the next step's operands: A tiles an and an + 512 elements, B tiles bn and bn + 512,
// none where an is null. Each operand is loaded right after the last product that reads its
// register: tiles have no renaming, and loading all four first makes each load wait for the
// product before it (linear_bf16_amx.cpp: the same loop with L1 operands 2.8 -> 5.0 TFLOP/s).
// kStreamB: B by tileloaddt1, the load with a non-temporal hint, where each B tile is used once from
// L2 and the A tiles are to stay in L1 (the whole-K linear: 2.7 -> 3.4 TFLOP/s for the bare loop in
// a /tmp probe of BERT's intermediate dense, 1-4% for the kernel in linear_bench).
template <bool kStreamB = false>
TAIYI_TARGET_AMX inline void amx_step_2x2(const uint16_t* an, const uint16_t* bn) {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(2, 5, 6);
  if (an) {
    if (kStreamB) {
      _tile_stream_loadd(6, bn, 64);
    } else {
      _tile_loadd(6, bn, 64);
    }
  }
  _tile_dpbf16ps(1, 4, 7);
  if (an) _tile_loadd(4, an, 64);
  _tile_dpbf16ps(3, 5, 7);
  if (an) {
    _tile_loadd(5, an + 512, 64);
    if (kStreamB) {
      _tile_stream_loadd(7, bn + 512, 64);
    } else {
      _tile_loadd(7, bn + 512, 64);
    }
  }
}
#endif

}  // namespace taiyi::ops::cpu
