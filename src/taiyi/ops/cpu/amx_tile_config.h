// ldtilecfg's 64-byte operand (palette 1), shared by the AMX kernels (attention_bf16_amx.cpp,
// linear_bf16_amx.cpp): each thread loads one with _tile_loadconfig before its tile instructions.
#pragma once

#include <cstdint>

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

}  // namespace taiyi::ops::cpu
