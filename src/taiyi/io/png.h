// PNG files for generated images, with their generation parameters as text chunks (libspng).
//
// Text follows the PNG specification (ISO/IEC 15948, 11.3.4): keywords are 1-79 Latin-1 characters; a value
// is written as tEXt when it is Latin-1 representable (and has no control character but LF), otherwise as
// uncompressed iTXt with empty language tag and translated keyword, so UTF-8 prompts (Chinese for Taiyi) come
// back byte for byte. The API speaks UTF-8 on both sides: tEXt's Latin-1 is converted when writing and reading.
// A1111-style readers look for the key "parameters".
//
//   write_png("out.png", rgb, 512, 512, 3, {{"parameters", "飞流直下三千尺\nSteps: 20, Seed: 42"}});
//   PngImage img = read_png("out.png");   // img.pixels: height x width x channels, uint8
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace taiyi::io {

// Writes an 8-bit RGB (channels 3) or RGBA (channels 4) image (width * height * channels bytes, row-major HWC)
// with the text pairs in order.
// Written to path + ".tmp" and renamed, so no partial file is left at `path` or beside it on error. Throws
// taiyi::Error naming the path for bad arguments (size, channels, a key that is not 1-79 printable Latin-1
// characters without leading, trailing or double spaces, a value that is not UTF-8 or holds a NUL) and I/O errors.
void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels,
               const std::vector<std::pair<std::string, std::string>>& text = {});

struct PngImage {
  int width = 0, height = 0, channels = 0;                // channels: 4 if the file has alpha (or tRNS), else 3
  std::vector<uint8_t> pixels;                            // height x width x channels
  std::vector<std::pair<std::string, std::string>> text;  // every tEXt, zTXt and iTXt, in file order, UTF-8
};

// Decodes any PNG (any bit depth and colour type) to 8-bit RGB or RGBA. Throws taiyi::Error naming the path
// if the file cannot be read or is not a valid PNG.
PngImage read_png(const std::string& path);

}  // namespace taiyi::io
