// BertTokenizer against transformers 4.44's slow BertTokenizer: the 26 golden prompts of
// tests/fixtures/golden/tokenizer.{json,safetensors} (pieces, ids, untruncated lengths), plus the error paths
// (invalid UTF-8, broken tokenizer folders) and inputs no golden covers (overrides, long and hostile text).
#include "taiyi/text/bert_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::text {
namespace {

namespace fs = std::filesystem;

std::string fixture(const std::string& rel) { return std::string(TAIYI_FIXTURES) + "/" + rel; }
const std::string kTokenizerDir = fixture("tiny-taiyi/tokenizer");

const BertTokenizer& tokenizer() {
  static const BertTokenizer t = BertTokenizer::load(kTokenizerDir);
  return t;
}

struct Golden {
  nlohmann::json json;
  Tensor input_ids;  // int64 [prompts, model_max_length]
};

const Golden& golden() {
  static const Golden g = [] {
    Golden out;
    out.json = io::read_json_file(fixture("golden/tokenizer.json"));
    out.input_ids = io::read_safetensors(fixture("golden/tokenizer.safetensors")).at("input_ids");
    return out;
  }();
  return g;
}

const nlohmann::json& prompts() { return golden().json.at("prompts"); }

std::string hex_decode(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), 0, 16)));
  return out;
}

std::vector<std::string> strings(const nlohmann::json& j) { return j.get<std::vector<std::string>>(); }

// Runs f, which must throw taiyi::Error; returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected taiyi::Error";
  return "";
}

// A scratch copy of the tiny tokenizer folder that a test may break.
class TokenizerCopy {
 public:
  TokenizerCopy() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("taiyi_text_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const auto& e : fs::directory_iterator(kTokenizerDir)) fs::copy_file(e.path(), dir_ / e.path().filename());
  }
  ~TokenizerCopy() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write_config(const nlohmann::json& j) const { std::ofstream(path("tokenizer_config.json")) << j.dump(2); }
  nlohmann::json config() const { return io::read_json_file(path("tokenizer_config.json")); }

 private:
  fs::path dir_;
};

TEST(BertTokenizer, VocabLoadsAsTransformersDoes) {
  const BertTokenizer& t = tokenizer();
  // vocab.txt has 21128 lines; lines 344 and 13503 are U+2028 and ##U+2028, which must not split lines.
  EXPECT_EQ(t.vocab_size(), 21128u);
  EXPECT_EQ(t.token_id("\u2028"), 343);
  EXPECT_EQ(t.token_id("##\u2028"), 13502);
  EXPECT_EQ(t.id_to_token(343), "\u2028");
  const nlohmann::json& special = golden().json.at("special_ids");
  EXPECT_EQ(t.pad_id(), special.at("[PAD]").get<int64_t>());
  EXPECT_EQ(t.unk_id(), special.at("[UNK]").get<int64_t>());
  EXPECT_EQ(t.cls_id(), special.at("[CLS]").get<int64_t>());
  EXPECT_EQ(t.sep_id(), special.at("[SEP]").get<int64_t>());
  EXPECT_EQ(t.mask_id(), special.at("[MASK]").get<int64_t>());
  EXPECT_EQ(t.model_max_length(), golden().json.at("model_max_length").get<int64_t>());
  EXPECT_EQ(t.token_id("no-such-token"), t.unk_id());
  EXPECT_EQ(t.id_to_token(0), "[PAD]");
  EXPECT_NE(error_of([&] { t.id_to_token(21128); }).find("21128"), std::string::npos);
  EXPECT_NE(error_of([&] { t.id_to_token(-1); }).find("-1"), std::string::npos);
}

TEST(BertTokenizer, GoldenPromptBytesMatchTheirHex) {
  ASSERT_EQ(prompts().size(), 26u);
  for (const auto& p : prompts()) {
    SCOPED_TRACE("prompt " + std::to_string(p.at("index").get<int>()));
    EXPECT_EQ(p.at("prompt").get<std::string>(), hex_decode(p.at("prompt_utf8_hex").get<std::string>()));
  }
}

TEST(BertTokenizer, TokenizeMatchesTransformersPieces) {
  for (const auto& p : prompts()) {
    SCOPED_TRACE("prompt " + std::to_string(p.at("index").get<int>()));
    EXPECT_EQ(tokenizer().tokenize(p.at("prompt").get<std::string>()), strings(p.at("tokenize")));
  }
}

TEST(BertTokenizer, EncodeMatchesGoldenInputIds) {
  const Tensor& ids = golden().input_ids;
  ASSERT_EQ(ids.dtype(), DType::I64);
  ASSERT_EQ(ids.shape(), (Shape{static_cast<int64_t>(prompts().size()), tokenizer().model_max_length()}));
  for (size_t i = 0; i < prompts().size(); ++i) {
    const auto& p = prompts()[i];
    SCOPED_TRACE("prompt " + std::to_string(i));
    const std::vector<int64_t> got = tokenizer().encode(p.at("prompt").get<std::string>());
    const int64_t* row = ids.data<int64_t>() + i * static_cast<size_t>(ids.size(1));
    EXPECT_EQ(got, std::vector<int64_t>(row, row + ids.size(1)));
    std::vector<std::string> names;
    for (int64_t id : got) names.push_back(tokenizer().id_to_token(id));
    EXPECT_EQ(names, strings(p.at("tokens")));
  }
}

TEST(BertTokenizer, CountIdsIsTheUntruncatedLength) {
  for (const auto& p : prompts()) {
    SCOPED_TRACE("prompt " + std::to_string(p.at("index").get<int>()));
    const int64_t n = tokenizer().count_ids(p.at("prompt").get<std::string>());
    EXPECT_EQ(n, p.at("untruncated_length").get<int64_t>());
    EXPECT_EQ(n > tokenizer().model_max_length(), p.at("truncated").get<bool>());
  }
}

TEST(BertTokenizer, InvalidUtf8ThrowsNamingTheByte) {
  struct Case {
    const char* what;
    std::string bytes;
    size_t bad_byte;
  };
  const std::vector<Case> cases = {
      {"lone continuation byte", std::string("ab\x80", 3), 2},
      {"overlong '/' (C0 AF)", std::string("x\xC0\xAF", 3), 1},
      {"overlong 3-byte (E0 80 AF)", std::string("\xE0\x80\xAF", 3), 0},
      {"encoded surrogate U+D800", std::string("ok \xED\xA0\x80", 6), 3},
      {"truncated 3-byte sequence", std::string("\xE4\xB8", 2), 0},
      {"truncated by a non-continuation", std::string("\xE4\xB8\x61", 3), 0},
      {"above U+10FFFF", std::string("\xF4\x90\x80\x80", 4), 0},
      {"invalid lead byte", std::string("\xFF", 1), 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string msg = error_of([&] { tokenizer().encode(c.bytes); });
    EXPECT_NE(msg.find("prompt is not valid UTF-8 at byte " + std::to_string(c.bad_byte)), std::string::npos) << msg;
    EXPECT_NE(error_of([&] { tokenizer().tokenize(c.bytes); }), "");
  }
}

TEST(BertTokenizer, ConfigWithoutUsableModelMaxLengthThrows) {
  TokenizerCopy copy;
  nlohmann::json config = copy.config();
  config.erase("model_max_length");
  copy.write_config(config);
  std::string msg = error_of([&] { BertTokenizer::load(copy.dir()); });
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model_max_length"), std::string::npos) << msg;

  // What save_pretrained writes when the length was never set: int(1e30), transformers' VERY_LARGE_INTEGER.
  std::ofstream(copy.path("tokenizer_config.json")) << R"({"model_max_length": 1000000000000000019884624838656})";
  msg = error_of([&] { BertTokenizer::load(copy.dir()); });
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;

  fs::remove(copy.path("tokenizer_config.json"));
  msg = error_of([&] { BertTokenizer::load(copy.dir()); });
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
}

TEST(BertTokenizer, MissingVocabThrowsNamingIt) {
  TokenizerCopy copy;
  fs::remove(copy.path("vocab.txt"));
  const std::string msg = error_of([&] { BertTokenizer::load(copy.dir()); });
  EXPECT_NE(msg.find("vocab.txt"), std::string::npos) << msg;
}

TEST(BertTokenizer, ModelMaxLengthComesFromTheConfig) {
  TokenizerCopy copy;
  nlohmann::json config = copy.config();
  config["model_max_length"] = 12;
  copy.write_config(config);
  const BertTokenizer t = BertTokenizer::load(copy.dir());
  EXPECT_EQ(t.model_max_length(), 12);
  EXPECT_EQ(t.encode("螺蛳粉").size(), 12u);
}

TEST(BertTokenizer, MaxLengthOverrideTruncatesKeepingSepLast) {
  const auto& p = prompts()[12];  // 48 pieces
  const std::string prompt = p.at("prompt").get<std::string>();
  const std::vector<std::string> pieces = strings(p.at("tokenize"));
  for (int64_t max_length : {3, 8, 50, 64}) {
    SCOPED_TRACE("max_length " + std::to_string(max_length));
    const std::vector<int64_t> ids = tokenizer().encode(prompt, max_length);
    ASSERT_EQ(static_cast<int64_t>(ids.size()), max_length);
    std::vector<int64_t> want{tokenizer().cls_id()};
    for (size_t i = 0; i < pieces.size() && static_cast<int64_t>(want.size()) < max_length - 1; ++i)
      want.push_back(tokenizer().token_id(pieces[i]));
    want.push_back(tokenizer().sep_id());
    want.resize(static_cast<size_t>(max_length), tokenizer().pad_id());
    EXPECT_EQ(ids, want);
  }
  EXPECT_NE(error_of([&] { tokenizer().encode(prompt, 2); }).find("max_length"), std::string::npos);
}

TEST(BertTokenizer, EmptyPromptIsClsSepThenPads) {
  std::vector<int64_t> want(static_cast<size_t>(tokenizer().model_max_length()), tokenizer().pad_id());
  want[0] = tokenizer().cls_id();
  want[1] = tokenizer().sep_id();
  EXPECT_EQ(tokenizer().encode(""), want);
  EXPECT_EQ(tokenizer().count_ids(""), 2);
  EXPECT_TRUE(tokenizer().tokenize("").empty());
}

TEST(BertTokenizer, VeryLongPromptIsTruncated) {
  std::string prompt;
  while (prompt.size() < 30000) prompt += "山水画 mountain, ";  // 10k+ code points
  const std::vector<int64_t> ids = tokenizer().encode(prompt);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), tokenizer().model_max_length());
  EXPECT_EQ(ids.front(), tokenizer().cls_id());
  EXPECT_EQ(ids.back(), tokenizer().sep_id());
  EXPECT_EQ(tokenizer().id_to_token(ids[1]), "山");
  EXPECT_EQ(tokenizer().count_ids(prompt), 2 + 5 * static_cast<int64_t>(prompt.size() / 20));  // 山 水 画 mountain ,
  // One 10k-character word: longer than WordPiece's 100-character limit, so a single [UNK].
  EXPECT_EQ(tokenizer().tokenize(std::string(10000, 'a')), std::vector<std::string>{"[UNK]"});
}

TEST(BertTokenizer, LineAndParagraphSeparatorsSplitWords) {
  // U+2028/U+2029 are neither control nor BasicTokenizer whitespace, but Python's str.split() splits on them.
  EXPECT_EQ(tokenizer().tokenize("mountain\u2028river\u2029lake"),
            (std::vector<std::string>{"mountain", "river", "lake"}));
}

TEST(BertTokenizer, SpecialTokenTextIsLoweredWhenNotExact) {
  // Only the exact special-token strings survive the do_lower_case pre-pass and the trie.
  EXPECT_EQ(tokenizer().tokenize("[MASK][Mask]"), (std::vector<std::string>{"[MASK]", "[", "ma", "##sk", "]"}));
  EXPECT_EQ(tokenizer().tokenize("x[SEP]y"), (std::vector<std::string>{"x", "[SEP]", "y"}));
}

// Added-token flags and extra special tokens from special_tokens_map.json. No golden covers them; the expected pieces
// come from a line-by-line transcription of transformers 4.44's PreTrainedTokenizer.tokenize and Trie.split.
TEST(BertTokenizer, AddedTokenFlagsAndLongestTrieMatch) {
  struct Case {
    nlohmann::json mask_token;
    nlohmann::json additional;
    std::string prompt;
    std::vector<std::string> pieces;
  };
  const nlohmann::json strip_both = {{"content", "[MASK]"}, {"lstrip", true}, {"rstrip", true}};
  const nlohmann::json single_word = {{"content", "[MASK]"}, {"single_word", true}};
  const std::vector<Case> cases = {
      // The trie prefers the longest token at the leftmost start; "ABC" is lowered first, then split off.
      {"[MASK]", {"ab", "abc"}, "xabcx abx ABC", {"x", "abc", "x", "ab", "x", "abc"}},
      {strip_both, {"ab", "abc"}, "abab[MASK]abc", {"ab", "ab", "[MASK]", "abc"}},
      {strip_both, nlohmann::json::array(), "山 [MASK]\u3000水", {"山", "[MASK]", "水"}},
      // single_word: a special token glued to a word is no longer special (and gets lowered and split).
      {single_word, nlohmann::json::array(), "x[MASK] y", {"x", "[", "ma", "##sk", "]", "y"}},
      {single_word, nlohmann::json::array(), "x [MASK]y", {"x", "[", "ma", "##sk", "]", "y"}},
      {single_word, nlohmann::json::array(), "x [MASK] y", {"x", "[MASK]", "y"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.prompt);
    TokenizerCopy copy;
    nlohmann::json map = io::read_json_file(copy.path("special_tokens_map.json"));
    map["mask_token"] = c.mask_token;
    map["additional_special_tokens"] = c.additional;
    std::ofstream(copy.path("special_tokens_map.json")) << map.dump();
    const BertTokenizer t = BertTokenizer::load(copy.dir());
    EXPECT_EQ(t.tokenize(c.prompt), c.pieces);
    EXPECT_EQ(t.mask_id(), tokenizer().mask_id());
  }
}

TEST(BertTokenizer, AnyUnicodeNeverCrashes) {
  const std::vector<std::string> hostile = {
      std::string("a\0b\0\0c", 6),
      "\u2028\u2029\u0085\u000b\u000c\u001c",
      "שלום עולם مرحبا بالعالم",                               // RTL
      "e\u0301\u0301\u0301 \u0301\u0302 Z\u0351\u0352\u0353",  // combining marks, a lone mark
      "👩‍👩‍👧‍👦🏳️‍🌈🇨🇳",       // ZWJ sequences, flags
      "\uFEFF\u200B\u200D\u2060\uFFFD\uFFFF\U0010FFFF\U000E0001\uE000",
      "İstanbul ΣΊΣΥΦΟΣ ǅ ß ﬃ",
      "[CLS][SEP][PAD][UNK][MASK][CLS",
      "[[MASK]] [MAS[MASK]K]",
      std::string(300, '[') + "MASK]",
  };
  for (const std::string& s : hostile) {
    SCOPED_TRACE(s);
    const std::vector<int64_t> ids = tokenizer().encode(s);
    EXPECT_EQ(static_cast<int64_t>(ids.size()), tokenizer().model_max_length());
    for (int64_t id : ids) EXPECT_NO_THROW(tokenizer().id_to_token(id));
  }
  // Random code points from every plane (surrogates excluded: they cannot be encoded in UTF-8).
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> cp(0, 0x10FFFF);
  for (int round = 0; round < 200; ++round) {
    std::string s;
    for (int i = 0; i < 40; ++i) {
      uint32_t c = cp(rng);
      if (round % 2) c &= 0xFFFF;  // favour the BMP every other round
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      if (c < 0x80) {
        s += static_cast<char>(c);
      } else if (c < 0x800) {
        s += static_cast<char>(0xC0 | (c >> 6));
        s += static_cast<char>(0x80 | (c & 0x3F));
      } else if (c < 0x10000) {
        s += static_cast<char>(0xE0 | (c >> 12));
        s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (c & 0x3F));
      } else {
        s += static_cast<char>(0xF0 | (c >> 18));
        s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (c & 0x3F));
      }
    }
    const std::vector<int64_t> ids = tokenizer().encode(s);
    ASSERT_EQ(static_cast<int64_t>(ids.size()), tokenizer().model_max_length());
    for (int64_t id : ids) ASSERT_NO_THROW(tokenizer().id_to_token(id));
  }
}

}  // namespace
}  // namespace taiyi::text
