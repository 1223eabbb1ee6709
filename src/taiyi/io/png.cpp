// PNG reading and writing through libspng 0.7 (https://libspng.org/docs/), text chunks per the PNG
// specification (ISO/IEC 15948 11.3.4: tEXt is Latin-1, iTXt is UTF-8). See png.h.
#include "taiyi/io/png.h"

#include <spng.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>

#include "taiyi/tensor/tensor.h"

namespace taiyi::io {
namespace {

struct CtxFree {
  void operator()(spng_ctx* ctx) const { spng_ctx_free(ctx); }
};
using SpngCtx = std::unique_ptr<spng_ctx, CtxFree>;

struct FileClose {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileClose>;

std::string spng_message(int err) {
  return std::string(spng_strerror(err)) + " (libspng error " + std::to_string(err) + ")";
}

// Decodes strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF); nullopt if invalid.
std::optional<std::vector<uint32_t>> utf8_code_points(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    int extra;
    uint32_t cp, min;
    if (b0 < 0x80) {
      extra = 0, cp = b0, min = 0;
    } else if ((b0 & 0xe0) == 0xc0) {
      extra = 1, cp = b0 & 0x1fu, min = 0x80;
    } else if ((b0 & 0xf0) == 0xe0) {
      extra = 2, cp = b0 & 0x0fu, min = 0x800;
    } else if ((b0 & 0xf8) == 0xf0) {
      extra = 3, cp = b0 & 0x07u, min = 0x10000;
    } else {
      return std::nullopt;
    }
    if (i + static_cast<size_t>(extra) >= s.size()) return std::nullopt;
    for (int k = 1; k <= extra; ++k) {
      const auto b = static_cast<uint8_t>(s[i + static_cast<size_t>(k)]);
      if ((b & 0xc0) != 0x80) return std::nullopt;
      cp = (cp << 6) | (b & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return std::nullopt;
    out.push_back(cp);
    i += static_cast<size_t>(extra) + 1;
  }
  return out;
}

// The Latin-1 bytes of a UTF-8 string, if every character is in U+0000..U+00FF.
std::optional<std::string> utf8_to_latin1(const std::string& s) {
  const auto cps = utf8_code_points(s);
  if (!cps) return std::nullopt;
  std::string out;
  out.reserve(cps->size());
  for (uint32_t cp : *cps) {
    if (cp > 0xff) return std::nullopt;
    out.push_back(static_cast<char>(cp));
  }
  return out;
}

std::string latin1_to_utf8(const char* data, size_t n) {
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<uint8_t>(data[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xc0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
    }
  }
  return out;
}

// PNG 11.3.4.2: keyword characters are printable Latin-1 (32-126, 161-255), no leading, trailing or
// consecutive spaces (libspng refuses the same).
bool valid_keyword(const std::string& latin1) {
  if (latin1.empty() || latin1.size() > 79 || latin1.front() == ' ' || latin1.back() == ' ') return false;
  if (latin1.find("  ") != std::string::npos) return false;
  for (char ch : latin1) {
    const auto c = static_cast<uint8_t>(ch);
    if (!((c >= 32 && c <= 126) || c >= 161)) return false;
  }
  return true;
}

// tEXt text: printable Latin-1 and LF only, the set libspng accepts (PNG 11.3.4.3 discourages other controls;
// no-break space U+00A0 is left out too); anything else goes to iTXt.
bool tEXt_representable(const std::string& latin1) {
  for (char ch : latin1) {
    const auto c = static_cast<uint8_t>(ch);
    if (!((c >= 32 && c <= 126) || c >= 161 || c == '\n')) return false;
  }
  return true;
}

// One text chunk ready for libspng; owns the bytes its spng_text / spng_unknown_chunk points into.
struct TextChunk {
  std::string keyword;  // Latin-1
  std::string value;    // Latin-1 for tEXt, UTF-8 for iTXt
  bool itxt = false;
  std::string raw;  // the whole chunk payload, when libspng's text API cannot be used (see write_png)
};

TextChunk make_text_chunk(const std::string& path, const std::string& key, const std::string& value) {
  TextChunk chunk;
  const auto key_latin1 = utf8_to_latin1(key);
  if (!key_latin1 || !valid_keyword(*key_latin1))
    throw Error(path + ": PNG text key '" + key +
                "' must be 1-79 printable Latin-1 characters without leading, trailing or double spaces");
  chunk.keyword = *key_latin1;
  if (value.find('\0') != std::string::npos)
    throw Error(path + ": PNG text value of key '" + key + "' contains a NUL byte");
  if (auto latin1 = utf8_to_latin1(value); latin1 && tEXt_representable(*latin1)) {
    chunk.value = std::move(*latin1);
  } else if (utf8_code_points(value)) {
    chunk.value = value;
    chunk.itxt = true;
  } else {
    throw Error(path + ": PNG text value of key '" + key + "' is not valid UTF-8");
  }
  return chunk;
}

}  // namespace

void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels,
               const std::vector<std::pair<std::string, std::string>>& text) {
  if (width <= 0 || height <= 0)
    throw Error(path + ": PNG size " + std::to_string(width) + "x" + std::to_string(height) + " must be positive");
  if (channels != 3 && channels != 4)
    throw Error(path + ": PNG needs 3 (RGB) or 4 (RGBA) channels, got " + std::to_string(channels));
  if (pixels == nullptr) throw Error(path + ": no pixel data");
  std::vector<TextChunk> chunks;
  chunks.reserve(text.size());
  for (const auto& [key, value] : text) chunks.push_back(make_text_chunk(path, key, value));

  // libspng's text API refuses empty values (the PNG format allows them). If there is one, every text chunk is
  // handed to libspng as a ready-made chunk instead, which it writes as is, so the order still holds.
  const bool raw = std::any_of(chunks.begin(), chunks.end(), [](const TextChunk& c) { return c.value.empty(); });
  std::vector<spng_text> spng_texts;
  std::vector<spng_unknown_chunk> raw_chunks;
  char empty_tag[1] = {0};
  for (TextChunk& c : chunks) {
    if (raw) {
      // tEXt: keyword NUL text. iTXt: keyword NUL, compression flag 0, method 0, empty language tag NUL,
      // empty translated keyword NUL, text.
      c.raw = c.keyword + '\0';
      if (c.itxt) c.raw += std::string(4, '\0');
      c.raw += c.value;
      spng_unknown_chunk u{};
      std::memcpy(u.type, c.itxt ? "iTXt" : "tEXt", 4);
      u.length = c.raw.size();
      u.data = c.raw.data();
      u.location = SPNG_AFTER_IHDR;
      raw_chunks.push_back(u);
      continue;
    }
    spng_text t{};
    std::memcpy(t.keyword, c.keyword.c_str(), c.keyword.size() + 1);
    t.type = c.itxt ? SPNG_ITXT : SPNG_TEXT;
    t.length = c.value.size();
    t.text = c.value.data();
    t.compression_flag = 0;  // iTXt uncompressed: greppable, and prompts are short
    t.compression_method = 0;
    t.language_tag = empty_tag;
    t.translated_keyword = empty_tag;
    spng_texts.push_back(t);
  }

  const std::string tmp = path + ".tmp";
  const size_t bytes = static_cast<size_t>(width) * static_cast<size_t>(height) * static_cast<size_t>(channels);
  std::string failure;
  {
    File file(std::fopen(tmp.c_str(), "wb"));
    if (!file) throw Error(path + ": cannot create '" + tmp + "': " + std::strerror(errno));
    SpngCtx ctx(spng_ctx_new(SPNG_CTX_ENCODER));
    if (!ctx) {
      failure = "cannot create a libspng encoder";
    } else {
      spng_ihdr ihdr{};
      ihdr.width = static_cast<uint32_t>(width);
      ihdr.height = static_cast<uint32_t>(height);
      ihdr.bit_depth = 8;
      ihdr.color_type = channels == 4 ? SPNG_COLOR_TYPE_TRUECOLOR_ALPHA : SPNG_COLOR_TYPE_TRUECOLOR;
      int err = spng_set_png_file(ctx.get(), file.get());
      if (!err) err = spng_set_ihdr(ctx.get(), &ihdr);
      if (!err && !spng_texts.empty())
        err = spng_set_text(ctx.get(), spng_texts.data(), static_cast<uint32_t>(spng_texts.size()));
      if (!err && !raw_chunks.empty())
        err = spng_set_unknown_chunks(ctx.get(), raw_chunks.data(), static_cast<uint32_t>(raw_chunks.size()));
      if (!err) err = spng_encode_image(ctx.get(), pixels, bytes, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
      if (err) failure = "cannot encode PNG: " + spng_message(err);
    }
    ctx.reset();  // before closing the file it writes to
    if (failure.empty() && std::fflush(file.get()) != 0) failure = std::string("write failed: ") + std::strerror(errno);
    if (std::fclose(file.release()) != 0 && failure.empty())
      failure = std::string("write failed: ") + std::strerror(errno);
  }
  if (failure.empty() && std::rename(tmp.c_str(), path.c_str()) != 0)
    failure = "cannot rename '" + tmp + "' to it: " + std::strerror(errno);
  if (!failure.empty()) {
    std::remove(tmp.c_str());
    throw Error(path + ": " + failure);
  }
}

PngImage read_png(const std::string& path) {
  File file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(path + ": cannot open: " + std::strerror(errno));
  SpngCtx ctx(spng_ctx_new(0));
  if (!ctx) throw Error(path + ": cannot create a libspng decoder");
  // Bounds for hostile files: 32768 pixels a side, 64 MiB per chunk, 256 MiB of cached ancillary chunks.
  int err = spng_set_png_file(ctx.get(), file.get());
  if (!err) err = spng_set_image_limits(ctx.get(), 1u << 15, 1u << 15);
  if (!err) err = spng_set_chunk_limits(ctx.get(), size_t{1} << 26, size_t{1} << 28);
  spng_ihdr ihdr{};
  if (!err) err = spng_get_ihdr(ctx.get(), &ihdr);
  if (err) throw Error(path + ": not a valid PNG file: " + spng_message(err));

  spng_trns trns{};
  const bool alpha = ihdr.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA ||
                     ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA || spng_get_trns(ctx.get(), &trns) == 0;
  const int fmt = alpha ? SPNG_FMT_RGBA8 : SPNG_FMT_RGB8;
  PngImage img;
  img.width = static_cast<int>(ihdr.width);
  img.height = static_cast<int>(ihdr.height);
  img.channels = alpha ? 4 : 3;
  size_t size = 0;
  err = spng_decoded_image_size(ctx.get(), fmt, &size);
  if (!err) {
    img.pixels.resize(size);
    err = spng_decode_image(ctx.get(), img.pixels.data(), size, fmt, alpha ? SPNG_DECODE_TRNS : 0);
  }
  if (err) throw Error(path + ": cannot decode PNG: " + spng_message(err));

  // After decoding, so text chunks after the image data are included.
  uint32_t n = 0;
  err = spng_get_text(ctx.get(), nullptr, &n);
  if (err == SPNG_ECHUNKAVAIL) return img;
  std::vector<spng_text> texts(n);
  if (!err && n > 0) err = spng_get_text(ctx.get(), texts.data(), &n);
  if (err) throw Error(path + ": cannot read PNG text chunks: " + spng_message(err));
  for (uint32_t i = 0; i < n; ++i) {
    const spng_text& t = texts[i];
    std::string key = latin1_to_utf8(t.keyword, std::strlen(t.keyword));
    std::string value = t.type == SPNG_ITXT ? std::string(t.text, t.length) : latin1_to_utf8(t.text, t.length);
    img.text.emplace_back(std::move(key), std::move(value));
  }
  return img;
}

}  // namespace taiyi::io
