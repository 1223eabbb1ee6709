// transformers' slow BertTokenizer (transformers 4.44: models/bert/tokenization_bert.py for BasicTokenizer and
// WordpieceTokenizer, tokenization_utils.py for PreTrainedTokenizer.tokenize, its Trie and _add_tokens,
// tokenization_utils_base.py for from_pretrained's config handling, truncation and padding).
//
// Text is handled as UTF-32 code points because every Python step (str.lower, str.split, len, slicing) counts
// code points. Python's string predicates are rebuilt from utf8proc's tables:
//   str.isspace  = bidi class WS/B/S or category Zs (CPython's makeunicodedata.py)
//   str.lower    = the simple lowercase mapping, except U+0130 -> "i\u0307" (SpecialCasing's only unconditional
//                  lowercase entry); the context-dependent final sigma cannot fire here: the do_lower_case pre-pass
//                  lowers one character at a time (no context), so BasicTokenizer's lower() never sees a capital
//                  sigma.
#include "taiyi/text/bert_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "taiyi/io/config.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::text {
namespace {

using U32 = std::u32string;

std::string hex_byte(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02x", b);
  return buf;
}

// Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing above U+10FFFF. `what` names the input.
U32 decode_utf8(const std::string& s, const std::string& what) {
  U32 out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  auto fail = [&](size_t at, const std::string& why) -> void {
    throw Error(what + " is not valid UTF-8 at byte " + std::to_string(at) + ": " + why);
  };
  while (i < n) {
    const unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int len = 0;
    char32_t cp = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b <= 0xBF) fail(i, "unexpected continuation byte " + hex_byte(b));
    if (b == 0xC0 || b == 0xC1) fail(i, "overlong encoding (lead byte " + hex_byte(b) + ")");
    if (b >= 0xF5) fail(i, "byte " + hex_byte(b) + " never appears in UTF-8");
    if (b <= 0xDF) {
      len = 2;
      cp = b & 0x1F;
    } else if (b <= 0xEF) {
      len = 3;
      cp = b & 0x0F;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else {
      len = 4;
      cp = b & 0x07;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    }
    if (i + static_cast<size_t>(len) > n) fail(i, "truncated " + std::to_string(len) + "-byte sequence");
    for (int k = 1; k < len; ++k) {
      const unsigned char c = p[i + static_cast<size_t>(k)];
      if (c < 0x80 || c > 0xBF)
        fail(i, "byte " + std::to_string(i + static_cast<size_t>(k)) + " (" + hex_byte(c) +
                    ") is not a continuation byte");
      if (k == 1 && (c < lo || c > hi)) {
        if (b == 0xED) fail(i, "encoded surrogate code point");
        if (b == 0xF4) fail(i, "code point above U+10FFFF");
        fail(i, "overlong encoding");
      }
      cp = (cp << 6) | (c & 0x3F);
    }
    out.push_back(cp);
    i += static_cast<size_t>(len);
  }
  return out;
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string to_utf8(const U32& s) {
  std::string out;
  out.reserve(s.size() * 3);
  for (char32_t c : s) append_utf8(c, out);
  return out;
}

utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

// Python's str.isspace().
bool py_isspace(char32_t c) {
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(c));
  return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
         p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

// Python's str.lower() of one character.
void py_lower_char(char32_t c, U32& out) {
  if (c == 0x130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE: full mapping is two code points
    out.push_back(U'i');
    out.push_back(0x307);
    return;
  }
  out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
}

U32 py_lower(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (char32_t c : s) py_lower_char(c, out);
  return out;
}

// Python's str.split() with no argument: runs of whitespace separate, empty pieces are dropped.
std::vector<U32> py_split(const U32& s) {
  std::vector<U32> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && py_isspace(s[i])) ++i;
    const size_t start = i;
    while (i < s.size() && !py_isspace(s[i])) ++i;
    if (i > start) out.emplace_back(s.substr(start, i - start));
  }
  return out;
}

U32 py_lstrip(const U32& s) {
  size_t i = 0;
  while (i < s.size() && py_isspace(s[i])) ++i;
  return s.substr(i);
}

U32 py_rstrip(const U32& s) {
  size_t n = s.size();
  while (n > 0 && py_isspace(s[n - 1])) --n;
  return s.substr(0, n);
}

// unicodedata.normalize via utf8proc_map; the flags are those of utf8proc_NFC / utf8proc_NFD.
U32 normalize(const U32& s, utf8proc_option_t options) {
  if (s.empty()) return s;
  const std::string in = to_utf8(s);
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data()),
                                          static_cast<utf8proc_ssize_t>(in.size()), &dst, options);
  if (n < 0) throw Error(std::string("utf8proc normalization failed: ") + utf8proc_errmsg(n));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(dst, &std::free);
  return decode_utf8(std::string(reinterpret_cast<const char*>(dst), static_cast<size_t>(n)), "utf8proc output");
}

U32 nfc(const U32& s) { return normalize(s, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE)); }
U32 nfd(const U32& s) { return normalize(s, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE)); }

// tokenization_utils._is_control: every category starting with "C", except \t \n \r.
bool is_control(char32_t c) {
  if (c == U'\t' || c == U'\n' || c == U'\r') return false;
  switch (category(c)) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: return true;
    default: return false;
  }
}

// tokenization_utils._is_whitespace.
bool is_whitespace(char32_t c) {
  return c == U' ' || c == U'\t' || c == U'\n' || c == U'\r' || category(c) == UTF8PROC_CATEGORY_ZS;
}

// tokenization_utils._is_punctuation: all non-alphanumeric ASCII, plus categories P*.
bool is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  const utf8proc_category_t cat = category(c);
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

// BasicTokenizer._is_chinese_char: the CJK Unified Ideographs blocks as BERT's authors listed them.
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// BasicTokenizer._run_strip_accents: NFD, then drop nonspacing marks.
U32 strip_accents(const U32& s) {
  U32 out;
  for (char32_t c : nfd(s))
    if (category(c) != UTF8PROC_CATEGORY_MN) out.push_back(c);
  return out;
}

std::string read_file(const std::string& path, bool* found) {
  std::ifstream f(path, std::ios::binary);
  *found = static_cast<bool>(f);
  if (!*found) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A special-token value of a config: "[MASK]" or {"content": "[MASK]", "lstrip": true, ...}; null = no token.
std::optional<BertTokenizer::AddedToken> parse_token(const nlohmann::json& v, const std::string& file,
                                                     const std::string& key, bool special) {
  BertTokenizer::AddedToken t;
  t.special = special;
  t.normalized = !special;
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) {
    t.content = v.get<std::string>();
  } else if (v.is_object()) {
    if (!v.contains("content") || !v.at("content").is_string())
      throw Error(file + ": key '" + key + "': expected a string \"content\" in " + v.dump());
    t.content = v.at("content").get<std::string>();
    auto flag = [&](const char* name, bool& dst) {
      if (!v.contains(name) || v.at(name).is_null()) return;
      if (!v.at(name).is_boolean())
        throw Error(file + ": key '" + key + "': \"" + name + "\" must be true or false, got " + v.dump());
      dst = v.at(name).get<bool>();
    };
    flag("special", t.special);
    t.normalized = !t.special;
    flag("lstrip", t.lstrip);
    flag("rstrip", t.rstrip);
    flag("single_word", t.single_word);
    flag("normalized", t.normalized);
    if (special) t.special = true;  // from_pretrained builds these as AddedToken(**value, special=True)
  } else {
    throw Error(file + ": key '" + key + "': expected a token string or {\"content\": ...}, got " + v.dump());
  }
  if (t.content.empty()) throw Error(file + ": key '" + key + "': empty token");
  decode_utf8(t.content, file + ": key '" + key + "'");
  return t;
}

// SPECIAL_TOKENS_ATTRIBUTES in transformers' order (all_special_tokens follows it), with BertTokenizer's defaults.
struct SpecialAttr {
  const char* key;
  const char* bert_default;
};
constexpr SpecialAttr kSpecialAttrs[] = {{"bos_token", nullptr},  {"eos_token", nullptr}, {"unk_token", "[UNK]"},
                                         {"sep_token", "[SEP]"},  {"pad_token", "[PAD]"}, {"cls_token", "[CLS]"},
                                         {"mask_token", "[MASK]"}};

// A JSON value for an error message, cut short (a wrong-typed vocabulary can be megabytes).
std::string brief(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// What tokenizer.json (the `tokenizers` library's Tokenizer serialization, `model` a WordPiece and `normalizer` a
// BertNormalizer) tells the slow BertTokenizer: the vocabulary vocab.txt would hold, the defaults of the init
// arguments the normalizer mirrors, and the added tokens.
struct TokenizerJson {
  std::unordered_map<std::string, int64_t> vocab;
  std::optional<std::string> unk_token;
  size_t max_input_chars_per_word = 100;
  bool lowercase = true;
  bool handle_chinese_chars = true;
  int strip_accents = -1;                        // as BertTokenizer::strip_accents_
  std::vector<BertTokenizer::AddedToken> added;  // "added_tokens", in file order
};

TokenizerJson read_tokenizer_json(const std::string& path) {
  const nlohmann::json j = io::read_json_file(path);  // names the file on unreadable or malformed JSON
  auto fail = [&](const std::string& key, const std::string& what) { return Error(path + ": '" + key + "': " + what); };
  // tokenizers stores ids as u32.
  constexpr int64_t kIdLimit = int64_t{1} << 32;
  auto read_id = [&](const nlohmann::json& v, const std::string& key) -> int64_t {
    if (!v.is_number_integer()) throw fail(key, "expected an integer id, got " + brief(v));
    if (v.is_number_unsigned() ? v.get<uint64_t>() >= static_cast<uint64_t>(kIdLimit)
                               : (v.get<int64_t>() < 0 || v.get<int64_t>() >= kIdLimit))
      throw fail(key, "id " + v.dump() + " is outside [0, 2^32)");
    return v.get<int64_t>();
  };
  auto optional_bool = [&](const nlohmann::json& obj, const std::string& prefix, const char* name, bool& dst) {
    if (!obj.contains(name)) return;
    const nlohmann::json& v = obj.at(name);
    if (!v.is_boolean()) throw fail(prefix + name, "expected true or false, got " + brief(v));
    dst = v.get<bool>();
  };
  TokenizerJson out;

  if (!j.contains("model")) throw Error(path + ": missing 'model' (the WordPiece vocabulary)");
  const nlohmann::json& model = j.at("model");
  if (!model.is_object()) throw fail("model", "expected an object, got " + brief(model));
  if (!model.contains("type")) throw Error(path + ": missing 'model.type' (BertTokenizer needs \"WordPiece\")");
  if (model.at("type") != "WordPiece")
    throw fail("model.type", brief(model.at("type")) + " is not supported (BertTokenizer needs \"WordPiece\")");
  if (!model.contains("vocab")) throw Error(path + ": missing 'model.vocab' (the WordPiece vocabulary)");
  const nlohmann::json& vocab = model.at("vocab");
  if (!vocab.is_object()) throw fail("model.vocab", "expected an object {token: id}, got " + brief(vocab));
  if (vocab.empty()) throw fail("model.vocab", "empty vocabulary");
  std::unordered_map<int64_t, const std::string*> token_of_id;
  out.vocab.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    const int64_t i = read_id(id, "model.vocab");
    auto [it, fresh] = token_of_id.emplace(i, &token);
    if (!fresh)
      throw fail("model.vocab", "tokens " + nlohmann::json(*it->second).dump() + " and " +
                                    nlohmann::json(token).dump() + " share id " + std::to_string(i));
    out.vocab.emplace(token, i);
  }
  if (model.contains("unk_token")) {
    const nlohmann::json& v = model.at("unk_token");
    if (!v.is_string() || v.get<std::string>().empty())
      throw fail("model.unk_token", "expected a non-empty string, got " + brief(v));
    out.unk_token = v.get<std::string>();
  }
  if (model.contains("continuing_subword_prefix")) {
    const nlohmann::json& v = model.at("continuing_subword_prefix");
    if (v != "##")
      throw fail("model.continuing_subword_prefix",
                 brief(v) + " is not supported (BertTokenizer's WordPiece marks word pieces with \"##\")");
  }
  if (model.contains("max_input_chars_per_word")) {
    const nlohmann::json& v = model.at("max_input_chars_per_word");
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
      throw fail("model.max_input_chars_per_word", "expected a non-negative integer, got " + brief(v));
    out.max_input_chars_per_word = v.get<size_t>();
  }

  if (!j.contains("normalizer") || j.at("normalizer").is_null())
    throw Error(path + ": missing 'normalizer' (BertTokenizer needs a \"BertNormalizer\")");
  const nlohmann::json& norm = j.at("normalizer");
  if (!norm.is_object()) throw fail("normalizer", "expected an object, got " + brief(norm));
  if (!norm.contains("type") || norm.at("type") != "BertNormalizer")
    throw fail("normalizer.type", (norm.contains("type") ? brief(norm.at("type")) : std::string("a missing type")) +
                                      " is not supported (BertTokenizer needs \"BertNormalizer\")");
  bool clean_text = true;
  optional_bool(norm, "normalizer.", "clean_text", clean_text);
  if (!clean_text)
    throw fail("normalizer.clean_text", "false is not supported (BertTokenizer always drops control characters)");
  optional_bool(norm, "normalizer.", "lowercase", out.lowercase);
  optional_bool(norm, "normalizer.", "handle_chinese_chars", out.handle_chinese_chars);
  if (norm.contains("strip_accents") && !norm.at("strip_accents").is_null()) {
    bool strip = false;
    optional_bool(norm, "normalizer.", "strip_accents", strip);
    out.strip_accents = strip ? 1 : 0;
  }

  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    const nlohmann::json& added = j.at("added_tokens");
    if (!added.is_array()) throw fail("added_tokens", "expected a list of tokens, got " + brief(added));
    std::unordered_map<int64_t, size_t> by_id;
    std::unordered_map<std::string, size_t> by_content;
    for (size_t k = 0; k < added.size(); ++k) {
      const std::string key = "added_tokens[" + std::to_string(k) + "]";
      const nlohmann::json& e = added[k];
      if (!e.is_object() || !e.contains("id"))
        throw fail(key, "expected {\"id\": ..., \"content\": ...}, got " + brief(e));
      std::optional<BertTokenizer::AddedToken> tok = parse_token(e, path, key, false);  // set: e is an object
      tok->id = read_id(e.at("id"), key + ".id");
      const std::string content = nlohmann::json(tok->content).dump();
      if (auto it = by_id.find(tok->id); it != by_id.end())
        throw fail(key, content + " has id " + std::to_string(tok->id) + ", already taken by " +
                            nlohmann::json(out.added[it->second].content).dump());
      if (by_content.count(tok->content)) throw fail(key, content + " is listed twice");
      if (auto it = out.vocab.find(tok->content); it != out.vocab.end() && it->second != tok->id)
        throw fail(key, content + " has id " + std::to_string(tok->id) + " but model.vocab gives it " +
                            std::to_string(it->second));
      if (auto it = token_of_id.find(tok->id); it != token_of_id.end() && *it->second != tok->content)
        throw fail(key, content + " has id " + std::to_string(tok->id) + ", which model.vocab gives to " +
                            nlohmann::json(*it->second).dump());
      by_id[tok->id] = out.added.size();
      by_content[tok->content] = out.added.size();
      out.added.push_back(*tok);
    }
  }
  return out;
}

}  // namespace

BertTokenizer BertTokenizer::load(const std::string& tokenizer_dir) {
  namespace fs = std::filesystem;
  BertTokenizer t;
  t.dir_ = tokenizer_dir;

  // vocab.txt as load_vocab reads it: text mode with universal newlines, so lines end at "\n", "\r\n" or "\r"
  // (never at U+2028, which is a token of the Chinese vocab), and index = line number. Without it, tokenizer.json.
  const std::string vocab_path = (fs::path(tokenizer_dir) / "vocab.txt").string();
  const std::string json_path = (fs::path(tokenizer_dir) / "tokenizer.json").string();
  std::error_code ec;
  std::optional<TokenizerJson> tokenizer_json;
  if (!fs::exists(vocab_path, ec) && fs::exists(json_path, ec)) {
    tokenizer_json = read_tokenizer_json(json_path);
    t.vocab_ = std::move(tokenizer_json->vocab);
    for (const auto& [tok, id] : t.vocab_) t.ids_to_tokens_[id] = tok;
    t.max_input_chars_per_word_ = tokenizer_json->max_input_chars_per_word;
  } else {
    bool found = false;
    const std::string vocab_bytes = read_file(vocab_path, &found);
    if (!found)
      throw Error(
          vocab_path +
          ": cannot open the WordPiece vocabulary (BertTokenizer needs vocab.txt, or tokenizer.json without it)");
    try {
      decode_utf8(vocab_bytes, "the file");
    } catch (const Error& e) {
      throw Error(vocab_path + ": " + e.what());
    }
    int64_t index = 0;
    size_t start = 0, i = 0;
    const size_t n = vocab_bytes.size();
    while (i < n) {
      const char c = vocab_bytes[i];
      if (c == '\n' || c == '\r') {
        t.vocab_[vocab_bytes.substr(start, i - start)] = index++;
        i += (c == '\r' && i + 1 < n && vocab_bytes[i + 1] == '\n') ? 2 : 1;
        start = i;
      } else {
        ++i;
      }
    }
    if (start < n) t.vocab_[vocab_bytes.substr(start)] = index++;
    if (t.vocab_.empty()) throw Error(vocab_path + ": empty vocabulary");
    for (const auto& [tok, id] : t.vocab_) t.ids_to_tokens_[id] = tok;
  }

  // tokenizer_config.json: BertTokenizer.__init__ arguments; model_max_length is what the pipeline pads to.
  const std::string config_path = (fs::path(tokenizer_dir) / "tokenizer_config.json").string();
  if (!fs::exists(config_path))
    throw Error(config_path + ": not found; the tokenizer needs its model_max_length to pad prompts");
  const io::ConfigReader config = io::ConfigReader::load(config_path);
  // A key the config spells out wins (null: BertTokenizer's default); tokenizer.json's normalizer fills the others.
  auto config_bool = [&](const char* key, bool fallback) {
    return config.json().contains(key) ? config.get<bool>(key, true) : fallback;
  };
  t.do_lower_case_ = config_bool("do_lower_case", tokenizer_json ? tokenizer_json->lowercase : true);
  t.do_basic_tokenize_ = config.get<bool>("do_basic_tokenize", true);
  t.tokenize_chinese_chars_ =
      config_bool("tokenize_chinese_chars", tokenizer_json ? tokenizer_json->handle_chinese_chars : true);
  t.do_split_on_punc_ = config.get<bool>("do_split_on_punc", true);
  if (config.has("strip_accents"))
    t.strip_accents_ = config.get<bool>("strip_accents", false) ? 1 : 0;
  else if (tokenizer_json && !config.json().contains("strip_accents"))
    t.strip_accents_ = tokenizer_json->strip_accents;
  if (config.get<bool>("split_special_tokens", false))
    config.fail("split_special_tokens", "true is not supported (Taiyi's tokenizer keeps special tokens whole)");
  for (const char* side : {"truncation_side", "padding_side"}) {
    const std::string v = config.get<std::string>(side, "right");
    if (v != "right" && v != "left") config.fail(side, "expected \"right\" or \"left\", got \"" + v + "\"");
    (std::string(side) == "truncation_side" ? t.truncate_left_ : t.pad_left_) = v == "left";
  }
  if (config.has("never_split")) {
    const nlohmann::json& ns = config.json().at("never_split");
    if (!ns.is_array()) config.fail("never_split", "expected a list of strings, got " + ns.dump());
    for (const auto& e : ns) {
      if (!e.is_string()) config.fail("never_split", "expected a list of strings, got " + ns.dump());
      t.never_split_.insert(e.get<std::string>());
    }
  }
  // from_pretrained falls back to VERY_LARGE_INTEGER (int(1e30)) without the key; padding="max_length" to that
  // length is impossible, so such a folder cannot drive the pipeline.
  if (!config.has("model_max_length"))
    throw Error(config_path +
                ": missing 'model_max_length' (transformers would use 1e30, and padding the prompt to "
                "max length would be impossible)");
  {
    const nlohmann::json& v = config.json().at("model_max_length");
    if (!v.is_number()) config.fail("model_max_length", "expected an integer, got " + v.dump());
    const double d = v.get<double>();
    if (d > 1e29)
      throw Error(config_path + ": 'model_max_length' is " + v.dump() +
                  ", transformers' 'unset' placeholder (1e30); padding the prompt to max length would be impossible");
    if (!v.is_number_integer()) config.fail("model_max_length", "expected an integer, got " + v.dump());
    t.model_max_length_ = v.get<int64_t>();
    if (t.model_max_length_ < 3)
      config.fail("model_max_length",
                  std::to_string(t.model_max_length_) + " is too small: [CLS] and [SEP] alone take 2 of the positions");
  }

  // Special tokens, as _from_pretrained resolves them: a tokenizer_config.json with "added_tokens_decoder" (4.34+
  // format) is authoritative; otherwise (the legacy format Taiyi ships) special_tokens_map.json overrides the
  // config's values and added_tokens.json lists extra tokens.
  std::map<std::string, std::optional<AddedToken>> specials;  // attribute -> token
  for (const SpecialAttr& a : kSpecialAttrs) {
    if (config.json().contains(a.key))
      specials[a.key] = parse_token(config.json().at(a.key), config_path, a.key, true);
    else if (tokenizer_json && tokenizer_json->unk_token && std::string(a.key) == "unk_token")
      specials[a.key] = AddedToken{*tokenizer_json->unk_token, 0, false, false, false, false, true};
    else if (a.bert_default)
      specials[a.key] = AddedToken{a.bert_default, 0, false, false, false, false, true};
    else
      specials[a.key] = std::nullopt;
  }
  std::vector<AddedToken> additional;
  auto read_additional = [&](const nlohmann::json& v, const std::string& file) {
    additional.clear();
    if (v.is_null()) return;
    if (!v.is_array()) throw Error(file + ": key 'additional_special_tokens': expected a list, got " + v.dump());
    for (const auto& e : v)
      if (auto tok = parse_token(e, file, "additional_special_tokens", true)) additional.push_back(*tok);
  };
  if (config.json().contains("additional_special_tokens"))
    read_additional(config.json().at("additional_special_tokens"), config_path);

  std::vector<AddedToken> decoder;  // added tokens with explicit ids, in file order
  // Special-token attributes resolve to the decoder's AddedToken of the same content (its flags win).
  auto resolve_specials = [&] {
    auto resolve = [&](AddedToken& s) {
      for (const AddedToken& d : decoder)
        if (d.content == s.content) s = d;
    };
    for (auto& [key, tok] : specials)
      if (tok) resolve(*tok);
    for (AddedToken& tok : additional) resolve(tok);
  };
  if (config.has("added_tokens_decoder")) {
    const nlohmann::json& dec = config.json().at("added_tokens_decoder");
    if (!dec.is_object()) config.fail("added_tokens_decoder", "expected an object {id: token}, got " + dec.dump());
    for (const auto& [key, value] : dec.items()) {
      auto tok = parse_token(value, config_path, "added_tokens_decoder." + key, false);
      if (!tok) continue;
      try {
        size_t used = 0;
        tok->id = std::stoll(key, &used);
        if (used != key.size()) throw std::invalid_argument(key);
      } catch (const std::exception&) {
        config.fail("added_tokens_decoder", "id '" + key + "' is not an integer");
      }
      decoder.push_back(*tok);
    }
    resolve_specials();
  } else {
    const std::string map_path = (fs::path(tokenizer_dir) / "special_tokens_map.json").string();
    if (fs::exists(map_path)) {
      const nlohmann::json m = io::read_json_file(map_path);
      for (const SpecialAttr& a : kSpecialAttrs)
        if (m.contains(a.key)) specials[a.key] = parse_token(m.at(a.key), map_path, a.key, true);
      if (m.contains("additional_special_tokens")) read_additional(m.at("additional_special_tokens"), map_path);
    }
    const std::string added_path = (fs::path(tokenizer_dir) / "added_tokens.json").string();
    if (fs::exists(added_path)) {
      const nlohmann::json m = io::read_json_file(added_path);
      for (const auto& [content, id] : m.items()) {
        if (!id.is_number_integer()) throw Error(added_path + ": token '" + content + "': expected an integer id");
        bool special = false;
        for (const auto& [key, tok] : specials) special |= tok && tok->content == content;
        for (const AddedToken& tok : additional) special |= tok.content == content;
        AddedToken a{content, id.get<int64_t>(), false, false, false, !special, special};
        if (content.empty()) throw Error(added_path + ": empty token");
        decode_utf8(content, added_path + ": token");
        decoder.push_back(a);
      }
    }
    // The legacy loader's last source: tokenizer.json's "added_tokens", keyed by id like added_tokens_decoder.
    if (tokenizer_json && !tokenizer_json->added.empty()) {
      for (const AddedToken& a : tokenizer_json->added) {
        auto same_id = std::find_if(decoder.begin(), decoder.end(), [&](const AddedToken& d) { return d.id == a.id; });
        if (same_id != decoder.end())
          *same_id = a;
        else
          decoder.push_back(a);
      }
      resolve_specials();
    }
  }

  // all_special_tokens_extended: attribute order, then additional_special_tokens, first occurrence of each string.
  std::vector<AddedToken> all_special;
  for (const SpecialAttr& a : kSpecialAttrs)
    if (const auto& tok = specials[a.key]) all_special.push_back(*tok);
  for (const AddedToken& tok : additional) all_special.push_back(tok);
  {
    std::vector<AddedToken> unique;
    for (const AddedToken& tok : all_special)
      if (!t.all_special_tokens_.count(tok.content)) {
        t.all_special_tokens_.insert(tok.content);
        unique.push_back(tok);
      }
    all_special = unique;
  }

  // PreTrainedTokenizer.__init__: the decoder's tokens, then _add_tokens(all special tokens): a token already in
  // vocab.txt keeps its id there, a new one gets the next id after the vocabulary.
  auto add = [&](AddedToken tok) {
    if (t.added_by_content_.count(tok.content)) return;
    t.added_by_content_[tok.content] = t.added_.size();
    t.added_by_id_[tok.id] = t.added_.size();
    t.added_.push_back(std::move(tok));
  };
  for (const AddedToken& tok : decoder) add(tok);
  for (AddedToken tok : all_special) {
    if (t.added_by_content_.count(tok.content)) continue;
    auto it = t.vocab_.find(tok.content);
    if (it != t.vocab_.end()) {
      tok.id = it->second;
    } else {
      std::unordered_set<std::string> current;  // get_vocab(): vocab.txt plus the added tokens
      for (const auto& [k, v] : t.vocab_) current.insert(k);
      for (const AddedToken& a : t.added_) current.insert(a.content);
      tok.id = static_cast<int64_t>(current.size());
    }
    add(tok);
  }

  // The Trie of every added token, and the strings the do_lower_case pre-pass leaves as they are.
  t.trie_.assign(1, TrieNode{});
  for (const AddedToken& a : t.added_) {
    int node = 0;
    for (char32_t c : decode_utf8(a.content, "token")) {
      auto& ch = t.trie_[static_cast<size_t>(node)].children;
      auto it = std::lower_bound(ch.begin(), ch.end(), c, [](const auto& e, char32_t x) { return e.first < x; });
      if (it != ch.end() && it->first == c) {
        node = it->second;
      } else {
        const int next = static_cast<int>(t.trie_.size());
        ch.insert(it, {c, next});
        t.trie_.push_back(TrieNode{});
        node = next;
      }
    }
    t.trie_[static_cast<size_t>(node)].terminal = true;
  }
  for (const AddedToken& a : all_special) t.lowercase_protected_.push_back(decode_utf8(a.content, "token"));
  for (const AddedToken& a : t.added_)
    if (!a.special && a.normalized) t.lowercase_protected_.push_back(decode_utf8(a.content, "token"));

  auto special_id = [&](const char* key, bool required) -> int64_t {
    const auto& tok = specials[key];
    if (!tok) {
      if (required) throw Error(config_path + ": the tokenizer has no " + key + " (BertTokenizer needs it)");
      return -1;
    }
    return t.added_.at(t.added_by_content_.at(tok->content)).id;
  };
  t.unk_token_ = specials["unk_token"] ? specials["unk_token"]->content : std::string();
  t.unk_id_ = special_id("unk_token", true);
  t.sep_id_ = special_id("sep_token", true);
  t.pad_id_ = special_id("pad_token", true);
  t.cls_id_ = special_id("cls_token", true);
  t.mask_id_ = special_id("mask_token", false);
  return t;
}

int64_t BertTokenizer::token_id(const std::string& token) const {
  if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return added_[it->second].id;
  if (auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return unk_id_;
}

const std::string& BertTokenizer::id_to_token(int64_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
  if (auto it = ids_to_tokens_.find(id); it != ids_to_tokens_.end()) return it->second;
  int64_t max_id = -1;
  for (const auto& [i, tok] : ids_to_tokens_) max_id = std::max(max_id, i);
  for (const AddedToken& a : added_) max_id = std::max(max_id, a.id);
  // An id inside the vocabulary whose line a later duplicate shadowed reads as [UNK], as in _convert_id_to_token.
  if (id >= 0 && id <= max_id) return unk_token_;
  throw Error(dir_ + ": token id " + std::to_string(id) + " is outside the vocabulary [0, " +
              std::to_string(max_id + 1) + ")");
}

// WordpieceTokenizer.tokenize: greedy longest-match-first, "##" on non-initial pieces, > 100 chars (or
// tokenizer.json's max_input_chars_per_word) -> [UNK].
void BertTokenizer::wordpiece(const U32& text, std::vector<std::string>& out) const {
  for (const U32& word : py_split(text)) {
    if (word.size() > max_input_chars_per_word_) {
      out.push_back(unk_token_);
      continue;
    }
    // Byte offset of each code point, so that candidate pieces are substrings of one UTF-8 string.
    const std::string bytes = to_utf8(word);
    std::vector<size_t> offset(word.size() + 1, 0);
    for (size_t i = 0, b = 0; i < word.size(); ++i) {
      offset[i] = b;
      const char32_t c = word[i];
      b += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
      offset[i + 1] = b;
    }
    std::vector<std::string> pieces;
    bool bad = false;
    size_t start = 0;
    std::string candidate;
    while (start < word.size()) {
      size_t end = word.size();
      bool found = false;
      while (start < end) {
        candidate.assign(start > 0 ? "##" : "");
        candidate.append(bytes, offset[start], offset[end] - offset[start]);
        if (vocab_.count(candidate)) {
          found = true;
          break;
        }
        --end;
      }
      if (!found) {
        bad = true;
        break;
      }
      pieces.push_back(candidate);
      start = end;
    }
    if (bad)
      out.push_back(unk_token_);
    else
      out.insert(out.end(), pieces.begin(), pieces.end());
  }
}

// BertTokenizer._tokenize with do_basic_tokenize: BasicTokenizer.tokenize(text, never_split=all_special_tokens),
// then WordPiece on every word not in the config's never_split.
void BertTokenizer::basic_then_wordpiece(const U32& text, std::vector<std::string>& out) const {
  auto in_never_split = [&](const std::string& s) { return never_split_.count(s) || all_special_tokens_.count(s); };

  // _clean_text, then _tokenize_chinese_chars.
  U32 cleaned;
  cleaned.reserve(text.size() * 3);
  for (char32_t c : text) {
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (is_whitespace(c)) {
      cleaned.push_back(U' ');
    } else if (tokenize_chinese_chars_ && is_chinese_char(c)) {
      cleaned.push_back(U' ');
      cleaned.push_back(c);
      cleaned.push_back(U' ');
    } else {
      cleaned.push_back(c);
    }
  }

  std::vector<U32> split_tokens;
  for (U32 token : py_split(nfc(cleaned))) {
    if (!in_never_split(to_utf8(token))) {
      if (do_lower_case_) {
        token = py_lower(token);
        if (strip_accents_ != 0) token = strip_accents(token);
      } else if (strip_accents_ == 1) {
        token = strip_accents(token);
      }
    }
    // _run_split_on_punc: every punctuation character becomes its own word.
    if (!do_split_on_punc_ || in_never_split(to_utf8(token))) {
      split_tokens.push_back(token);
      continue;
    }
    U32 word;
    for (char32_t c : token) {
      if (is_punctuation(c)) {
        if (!word.empty()) split_tokens.push_back(std::move(word));
        word.clear();
        split_tokens.push_back(U32(1, c));
      } else {
        word.push_back(c);
      }
    }
    if (!word.empty()) split_tokens.push_back(std::move(word));
  }

  // whitespace_tokenize(" ".join(split_tokens)) drops the words accent stripping emptied.
  for (const U32& token : split_tokens) {
    for (const U32& word : py_split(token)) {
      std::string utf8 = to_utf8(word);
      if (never_split_.count(utf8))
        out.push_back(std::move(utf8));
      else
        wordpiece(word, out);
    }
  }
}

// PreTrainedTokenizer.tokenize.
std::vector<std::string> BertTokenizer::tokenize_codepoints(const U32& input) const {
  // do_lower_case pre-pass: re.sub(r"(special|...)|(.+?)", ...) lowers every other character on its own; "." does not
  // match "\n", which therefore stays as it is. (BertTokenizer only has do_lower_case with a BasicTokenizer.)
  U32 text;
  if (do_basic_tokenize_ && do_lower_case_) {
    text.reserve(input.size());
    size_t i = 0;
    while (i < input.size()) {
      bool matched = false;
      for (const U32& p : lowercase_protected_) {
        if (input.compare(i, p.size(), p) == 0) {
          text += p;
          i += p.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
      if (input[i] == U'\n')
        text.push_back(U'\n');
      else
        py_lower_char(input[i], text);
      ++i;
    }
  } else {
    text = input;
  }

  // Trie.split, ported step for step (it is leftmost-first with a longest-match lookahead, quirks included).
  const size_t n = text.size();
  auto child = [&](int node, char32_t c) -> int {
    const auto& ch = trie_[static_cast<size_t>(node)].children;
    auto it = std::lower_bound(ch.begin(), ch.end(), c, [](const auto& e, char32_t x) { return e.first < x; });
    return (it != ch.end() && it->first == c) ? it->second : -1;
  };
  auto terminal = [&](int node) { return trie_[static_cast<size_t>(node)].terminal; };
  std::vector<size_t> offsets{0};
  std::map<size_t, int> states;  // start -> trie node; starts are inserted in increasing order, as in the OrderedDict
  size_t skip = 0;
  for (size_t current = 0; current < n; ++current) {
    const char32_t current_char = text[current];
    if (skip && current < skip) continue;
    std::vector<size_t> to_remove;
    bool reset = false;
    for (auto& [state_start, state_node] : states) {
      size_t start = state_start;
      if (terminal(state_node)) {
        size_t end = 0;
        for (const auto& [lookstart, look_node0] : states) {
          if (lookstart > start) break;
          size_t lookahead_index;
          if (lookstart < start) {
            lookahead_index = current + 1;
            end = current + 1;
          } else {
            lookahead_index = current;
            end = current;
          }
          int look_node = look_node0;
          if (terminal(look_node)) {
            start = lookstart;
            end = lookahead_index;
            skip = lookahead_index;
          }
          while (lookahead_index < n) {
            const int next = child(look_node, text[lookahead_index]);
            if (next < 0) break;
            look_node = next;
            ++lookahead_index;
            if (terminal(look_node)) {
              start = lookstart;
              end = lookahead_index;
              skip = lookahead_index;
            }
          }
        }
        offsets.push_back(start);
        offsets.push_back(end);
        reset = true;
        break;
      }
      const int next = child(state_node, current_char);
      if (next >= 0)
        state_node = next;
      else
        to_remove.push_back(state_start);
    }
    if (reset) {
      states.clear();
    } else {
      for (size_t s : to_remove) states.erase(s);
    }
    if (current >= skip) {
      const int next = child(0, current_char);
      if (next >= 0) states[current] = next;
    }
  }
  for (const auto& [start, node] : states) {
    if (terminal(node)) {
      offsets.push_back(start);
      offsets.push_back(n);
      break;
    }
  }
  offsets.push_back(n);
  std::vector<U32> tokens;
  {
    size_t start = 0;
    for (size_t end : offsets) {
      if (start >= end) continue;  // zero-width cuts (and the "bug in Trie" case transformers logs) are skipped
      tokens.push_back(text.substr(start, end - start));
      start = end;
    }
  }

  // lstrip / rstrip / single_word of the added tokens found.
  auto added_of = [&](const U32& s) -> const AddedToken* {
    auto it = added_by_content_.find(to_utf8(s));
    return it == added_by_content_.end() ? nullptr : &added_[it->second];
  };
  for (size_t i = 0; i < tokens.size(); ++i) {
    const AddedToken* tok = added_of(tokens[i]);
    if (!tok) continue;
    // Python's `left` and `right` are read before the strips; the merges use those values.
    const U32 token = tokens[i];
    const U32 left = i > 0 ? tokens[i - 1] : U32();
    const U32 right = i + 1 < tokens.size() ? tokens[i + 1] : U32();
    if (tok->rstrip && !right.empty()) tokens[i + 1] = py_lstrip(right);
    if (tok->lstrip && !left.empty()) tokens[i - 1] = py_rstrip(left);
    if (tok->single_word && !left.empty() && left.back() != U' ') {
      tokens[i - 1] += token;
      tokens[i].clear();
    } else if (tok->single_word && !right.empty() && right.front() != U' ') {
      tokens[i] += right;
      tokens[i + 1].clear();
    }
  }

  std::vector<std::string> out;
  for (const U32& token : tokens) {
    if (token.empty()) continue;
    if (const AddedToken* tok = added_of(token)) {
      out.push_back(tok->content);
    } else if (do_basic_tokenize_) {
      basic_then_wordpiece(token, out);
    } else {
      wordpiece(token, out);
    }
  }
  return out;
}

std::vector<std::string> BertTokenizer::tokenize(const std::string& utf8_text) const {
  return tokenize_codepoints(decode_utf8(utf8_text, "prompt"));
}

int64_t BertTokenizer::count_ids(const std::string& utf8_text) const {
  return static_cast<int64_t>(tokenize(utf8_text).size()) + 2;
}

// prepare_for_model with truncation="longest_first" (one sequence) and padding="max_length".
std::vector<int64_t> BertTokenizer::encode(const std::string& utf8_text, int64_t max_length) const {
  const int64_t length = max_length > 0 ? max_length : model_max_length_;
  // transformers cannot honour fewer than 3 positions (it logs an error and returns the untruncated ids).
  if (length < 3)
    throw Error("BertTokenizer::encode: max_length " + std::to_string(length) +
                " is too small: [CLS] and [SEP] alone take 2 positions");
  std::vector<int64_t> ids;
  for (const std::string& piece : tokenize(utf8_text)) ids.push_back(token_id(piece));
  const size_t keep = static_cast<size_t>(length - 2);
  if (ids.size() > keep) {
    if (truncate_left_)
      ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(keep));
    else
      ids.resize(keep);
  }
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(length));
  const size_t pads = static_cast<size_t>(length) - ids.size() - 2;
  if (pad_left_) out.insert(out.end(), pads, pad_id_);
  out.push_back(cls_id_);
  out.insert(out.end(), ids.begin(), ids.end());
  out.push_back(sep_id_);
  if (!pad_left_) out.insert(out.end(), pads, pad_id_);
  return out;
}

}  // namespace taiyi::text
