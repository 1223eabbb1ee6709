// BertTokenizer against transformers 4.44's slow BertTokenizer: the 26 golden prompts of
// tests/fixtures/golden/tokenizer.{json,safetensors} (pieces, ids, untruncated lengths), plus the error paths
// (invalid UTF-8, broken tokenizer folders) and inputs no golden covers (overrides, long and hostile text).
// The tokenizer.json fallback (folders without vocab.txt) is held to the vocab.txt folder and the same goldens.
#include "taiyi/text/bert_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
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
    static int serial = 0;  // several copies may live in one test
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("taiyi_text_" + std::to_string(::getpid()) + "_" + info->name() + "_" + std::to_string(serial++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const auto& e : fs::directory_iterator(kTokenizerDir)) {
      fs::copy_file(e.path(), dir_ / e.path().filename());
      fs::permissions(dir_ / e.path().filename(), fs::perms::owner_write, fs::perm_options::add);  // fixtures are r/o
    }
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

// ---- tokenizer.json instead of vocab.txt (the folder recent transformers saves) ----

// tests/fixtures/data/bert-chinese-vocab.txt (the tiny model's vocab.txt) as load_vocab reads it: one token per
// "\n"-terminated line (the file has no "\r"; U+2028 is a token, not a line end), id = line index.
const nlohmann::json& chinese_vocab() {
  static const nlohmann::json vocab = [] {
    std::ifstream f(fixture("data/bert-chinese-vocab.txt"), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string bytes = ss.str();
    nlohmann::json v = nlohmann::json::object();
    int64_t index = 0;
    size_t start = 0;
    for (size_t i = 0; i < bytes.size(); ++i)
      if (bytes[i] == '\n') {
        v[bytes.substr(start, i - start)] = index++;
        start = i + 1;
      }
    if (start < bytes.size()) v[bytes.substr(start)] = index++;
    return v;
  }();
  return vocab;
}

nlohmann::json added_token_json(const std::string& content, int64_t id, bool special = true) {
  return {{"id", id},        {"content", content},     {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", !special}, {"special", special}};
}

// The tokenizer.json that `tokenizers` writes for a BERT WordPiece vocabulary.
nlohmann::json tokenizer_json(const nlohmann::json& vocab) {
  nlohmann::json added = nlohmann::json::array();
  for (const char* tok : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
    added.push_back(added_token_json(tok, vocab.at(tok).get<int64_t>()));
  nlohmann::json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "BertNormalizer"},
                     {"clean_text", true},
                     {"handle_chinese_chars", true},
                     {"strip_accents", nullptr},
                     {"lowercase", true}};
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  j["post_processor"] = nullptr;
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
  j["model"] = {{"type", "WordPiece"},
                {"unk_token", "[UNK]"},
                {"continuing_subword_prefix", "##"},
                {"max_input_chars_per_word", 100},
                {"vocab", vocab}};
  return j;
}

// tokenizer_config.json as transformers 5 saves it next to tokenizer.json (the tiny model's model_max_length).
nlohmann::json tokenizers_backend_config() {
  return {{"backend", "tokenizers"},
          {"cls_token", "[CLS]"},
          {"do_lower_case", true},
          {"mask_token", "[MASK]"},
          {"model_max_length", 32},
          {"pad_token", "[PAD]"},
          {"sep_token", "[SEP]"},
          {"strip_accents", nullptr},
          {"tokenize_chinese_chars", true},
          {"tokenizer_class", "BertTokenizer"},
          {"unk_token", "[UNK]"}};
}

// A scratch folder with tokenizer.json and tokenizer_config.json only.
class TokenizerJsonFolder : public TokenizerCopy {
 public:
  explicit TokenizerJsonFolder(const nlohmann::json& tokenizer,
                               const nlohmann::json& config = tokenizers_backend_config()) {
    fs::remove(path("vocab.txt"));
    fs::remove(path("special_tokens_map.json"));
    write_tokenizer(tokenizer);
    write_config(config);
  }
  void write_tokenizer(const nlohmann::json& j) const { std::ofstream(path("tokenizer.json")) << j.dump(); }
  std::string tokenizer_path() const { return path("tokenizer.json"); }
};

// Prompts beyond the goldens: Chinese, mixed case, accents, punctuation, special tokens, a prompt longer than
// model_max_length.
std::vector<std::string> parity_prompts() {
  std::vector<std::string> out;
  for (const auto& p : prompts()) out.push_back(p.at("prompt").get<std::string>());
  std::string long_prompt;
  for (int i = 0; i < 20; ++i) long_prompt += "山水画 Mountain River, ";
  out.insert(out.end(),
             {"飞流直下三千尺，疑是银河落九天。", "A Photo Of THE Great Wall 长城 at SunSet",
              "Café DÉJÀ vu, naïve façade, Ångström, crème brûlée", "Straße İstanbul ΣΊΣΥΦΟΣ",
              "你好，世界！Hello... world?! (test) [x] {y} #tag @me 100% a-b_c", "[MASK] 山水 [SEP] x[CLS]y [Mask]",
              "ＡＢＣ全角　ｘｙｚ", "\t line\nbreaks\r\n and  spaces ", long_prompt});
  return out;
}

// Both folders must give the same pieces, ids and untruncated lengths.
void expect_same_tokenizer(const BertTokenizer& got, const BertTokenizer& want) {
  EXPECT_EQ(got.vocab_size(), want.vocab_size());
  EXPECT_EQ(got.model_max_length(), want.model_max_length());
  EXPECT_EQ(got.pad_id(), want.pad_id());
  EXPECT_EQ(got.unk_id(), want.unk_id());
  EXPECT_EQ(got.cls_id(), want.cls_id());
  EXPECT_EQ(got.sep_id(), want.sep_id());
  EXPECT_EQ(got.mask_id(), want.mask_id());
  for (const std::string& prompt : parity_prompts()) {
    SCOPED_TRACE(prompt);
    EXPECT_EQ(got.tokenize(prompt), want.tokenize(prompt));
    EXPECT_EQ(got.encode(prompt), want.encode(prompt));
    EXPECT_EQ(got.count_ids(prompt), want.count_ids(prompt));
  }
}

TEST(BertTokenizerJson, FolderWithoutVocabTxtMatchesVocabTxtFolder) {
  TokenizerJsonFolder folder(tokenizer_json(chinese_vocab()));
  const BertTokenizer t = BertTokenizer::load(folder.dir());
  EXPECT_EQ(t.vocab_size(), 21128u);
  EXPECT_EQ(t.token_id("\u2028"), 343);
  EXPECT_EQ(t.id_to_token(13502), "##\u2028");
  expect_same_tokenizer(t, tokenizer());
  // The long prompt is truncated to model_max_length, [SEP] last.
  const std::string long_prompt = parity_prompts().back();
  ASSERT_GT(t.count_ids(long_prompt), t.model_max_length());
  const std::vector<int64_t> ids = t.encode(long_prompt);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), t.model_max_length());
  EXPECT_EQ(ids.back(), t.sep_id());
  // And against transformers' own ids.
  const Tensor& golden_ids = golden().input_ids;
  for (size_t i = 0; i < prompts().size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    const int64_t* row = golden_ids.data<int64_t>() + i * static_cast<size_t>(golden_ids.size(1));
    EXPECT_EQ(t.encode(prompts()[i].at("prompt").get<std::string>()),
              std::vector<int64_t>(row, row + golden_ids.size(1)));
  }
}

TEST(BertTokenizerJson, VocabTxtWinsWhenBothExist) {
  TokenizerCopy copy;  // vocab.txt folder plus a tokenizer.json that would fail to load
  std::ofstream(copy.path("tokenizer.json")) << R"({"model": {"type": "BPE", "vocab": {"x": 0}}})";
  expect_same_tokenizer(BertTokenizer::load(copy.dir()), tokenizer());
}

// Each normalizer option stands in for a missing tokenizer_config.json key, and loses to a present one: both
// folders are checked against a vocab.txt folder whose config says the same.
TEST(BertTokenizerJson, NormalizerFillsKeysTheConfigLeavesOut) {
  struct Case {
    const char* config_key;
    const char* normalizer_key;
    bool value;  // of both keys
    bool cased;  // do_lower_case false in every folder (strip_accents true only shows without lowercasing)
    std::vector<std::string> prompts;
  };
  const std::vector<Case> cases = {
      {"do_lower_case", "lowercase", false, false, {"A Photo Of THE Great Wall", "Café DÉJÀ vu"}},
      {"strip_accents", "strip_accents", false, false, {"café déjà vu naïve", "Ångström"}},
      {"strip_accents", "strip_accents", true, true, {"Café DÉJÀ vu naïve", "Ångström"}},
      {"tokenize_chinese_chars", "handle_chinese_chars", false, false, {"飞流直下三千尺", "山水 画"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.normalizer_key) + (c.value ? " true" : " false") + (c.cased ? ", cased" : ""));
    auto vocab_txt_folder = [&](bool set_key) {
      TokenizerCopy copy;
      nlohmann::json config = copy.config();
      if (c.cased) config["do_lower_case"] = false;
      if (set_key) config[c.config_key] = c.value;
      copy.write_config(config);
      return BertTokenizer::load(copy.dir());
    };
    const BertTokenizer want = vocab_txt_folder(true);
    const BertTokenizer defaults = vocab_txt_folder(false);

    nlohmann::json tok = tokenizer_json(chinese_vocab());
    nlohmann::json config = tokenizers_backend_config();
    if (c.cased) {
      tok["normalizer"]["lowercase"] = false;
      config["do_lower_case"] = false;
    }
    tok["normalizer"][c.normalizer_key] = c.value;
    // The config spells out BertTokenizer's default (null for strip_accents): it wins over the normalizer.
    TokenizerJsonFolder config_wins(tok, config);
    const BertTokenizer got_default = BertTokenizer::load(config_wins.dir());
    config.erase(c.config_key);
    TokenizerJsonFolder from_normalizer(tok, config);
    const BertTokenizer got = BertTokenizer::load(from_normalizer.dir());
    bool differs = false;  // the case must be able to fail
    for (const std::string& prompt : c.prompts) {
      SCOPED_TRACE(prompt);
      EXPECT_EQ(got.tokenize(prompt), want.tokenize(prompt));
      EXPECT_EQ(got.encode(prompt), want.encode(prompt));
      EXPECT_EQ(got_default.tokenize(prompt), defaults.tokenize(prompt));
      differs |= want.tokenize(prompt) != defaults.tokenize(prompt);
    }
    EXPECT_TRUE(differs);
  }
}

TEST(BertTokenizerJson, ModelSettingsAreRead) {
  nlohmann::json tok = tokenizer_json(chinese_vocab());
  tok["model"]["max_input_chars_per_word"] = 5;
  tok["model"]["unk_token"] = "[unused1]";  // stands in for the config's unk_token, which is left out
  nlohmann::json config = tokenizers_backend_config();
  config.erase("unk_token");
  TokenizerJsonFolder folder(tok, config);
  const BertTokenizer t = BertTokenizer::load(folder.dir());
  EXPECT_EQ(t.unk_id(), 1);
  EXPECT_EQ(t.tokenize("river mountain"), (std::vector<std::string>{"river", "[unused1]"}));
}

// tokenizer.json's added tokens behave as the same tokens given to a vocab.txt folder (added_tokens.json, and
// special-token flags from special_tokens_map.json).
TEST(BertTokenizerJson, AddedTokensAreRegistered) {
  TokenizerCopy reference;
  std::ofstream(reference.path("added_tokens.json")) << R"({"taiyi": 21128})";
  nlohmann::json map = io::read_json_file(reference.path("special_tokens_map.json"));
  map["mask_token"] = {{"content", "[MASK]"}, {"lstrip", true}, {"rstrip", true}};
  std::ofstream(reference.path("special_tokens_map.json")) << map.dump();
  const BertTokenizer want = BertTokenizer::load(reference.dir());

  nlohmann::json tok = tokenizer_json(chinese_vocab());
  for (auto& a : tok["added_tokens"])
    if (a["content"] == "[MASK]") a["lstrip"] = a["rstrip"] = true;
  tok["added_tokens"].push_back(added_token_json("taiyi", 21128, false));
  TokenizerJsonFolder folder(tok);
  const BertTokenizer t = BertTokenizer::load(folder.dir());
  EXPECT_EQ(t.token_id("taiyi"), 21128);
  EXPECT_EQ(t.id_to_token(21128), "taiyi");
  EXPECT_EQ(t.vocab_size(), 21128u);
  for (const std::string prompt : {"a Taiyi painting", "ataiyib", "山 [MASK]\u3000水", "x [MASK] taiyi[MASK]y"}) {
    SCOPED_TRACE(prompt);
    EXPECT_EQ(t.tokenize(prompt), want.tokenize(prompt));
    EXPECT_EQ(t.encode(prompt), want.encode(prompt));
  }
  EXPECT_EQ(t.tokenize("山 [MASK]\u3000水"), (std::vector<std::string>{"山", "[MASK]", "水"}));
}

// Every broken tokenizer.json throws an Error naming the file and the problem.
TEST(BertTokenizerJson, BrokenFileThrowsNamingIt) {
  const nlohmann::json tiny_vocab = {{"[PAD]", 0},  {"[UNK]", 1}, {"[CLS]", 2}, {"[SEP]", 3},
                                     {"[MASK]", 4}, {"a", 5},     {"##b", 6}};
  {
    TokenizerJsonFolder ok(tokenizer_json(tiny_vocab));  // the base of every case loads
    EXPECT_EQ(BertTokenizer::load(ok.dir()).tokenize("ab A"), (std::vector<std::string>{"a", "##b", "a"}));
  }
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    std::string expect;  // in the message besides the path
  };
  using J = nlohmann::json;
  const std::vector<Case> cases = {
      {"model.type BPE", [](J& j) { j["model"]["type"] = "BPE"; }, "BPE"},
      {"model.type missing", [](J& j) { j["model"].erase("type"); }, "model.type"},
      {"no model", [](J& j) { j.erase("model"); }, "model"},
      {"model not an object", [](J& j) { j["model"] = J::array(); }, "model"},
      {"model.vocab missing", [](J& j) { j["model"].erase("vocab"); }, "model.vocab"},
      {"model.vocab a list",
       [](J& j) {
         j["model"]["vocab"] = J::array({"[PAD]", "a"});
       },
       "model.vocab"},
      {"model.vocab empty", [](J& j) { j["model"]["vocab"] = J::object(); }, "empty"},
      {"vocab id a string", [](J& j) { j["model"]["vocab"]["a"] = "5"; }, "integer"},
      {"vocab id a float", [](J& j) { j["model"]["vocab"]["a"] = 5.5; }, "integer"},
      {"vocab id negative", [](J& j) { j["model"]["vocab"]["a"] = -1; }, "outside"},
      {"vocab id past u32", [](J& j) { j["model"]["vocab"]["a"] = int64_t{1} << 32; }, "outside"},
      {"vocab ids collide", [](J& j) { j["model"]["vocab"]["##b"] = 5; }, "share id 5"},
      {"unk_token not a string", [](J& j) { j["model"]["unk_token"] = 1; }, "model.unk_token"},
      {"prefix not ##", [](J& j) { j["model"]["continuing_subword_prefix"] = "@@"; }, "continuing_subword_prefix"},
      {"max chars negative", [](J& j) { j["model"]["max_input_chars_per_word"] = -3; }, "max_input_chars_per_word"},
      {"normalizer missing", [](J& j) { j.erase("normalizer"); }, "normalizer"},
      {"normalizer null", [](J& j) { j["normalizer"] = nullptr; }, "normalizer"},
      {"normalizer Lowercase",
       [](J& j) {
         j["normalizer"] = {{"type", "Lowercase"}};
       },
       "Lowercase"},
      {"normalizer untyped", [](J& j) { j["normalizer"].erase("type"); }, "normalizer.type"},
      {"lowercase not a bool", [](J& j) { j["normalizer"]["lowercase"] = "yes"; }, "normalizer.lowercase"},
      {"strip_accents not a bool", [](J& j) { j["normalizer"]["strip_accents"] = 0; }, "normalizer.strip_accents"},
      {"clean_text false", [](J& j) { j["normalizer"]["clean_text"] = false; }, "clean_text"},
      {"added_tokens not a list", [](J& j) { j["added_tokens"] = J::object(); }, "added_tokens"},
      {"added token without id", [](J& j) { j["added_tokens"][0].erase("id"); }, "added_tokens[0]"},
      {"added token id a string", [](J& j) { j["added_tokens"][0]["id"] = "0"; }, "added_tokens[0].id"},
      {"added token id negative", [](J& j) { j["added_tokens"][1]["id"] = -7; }, "outside"},
      {"added token flag not a bool", [](J& j) { j["added_tokens"][0]["lstrip"] = 1; }, "lstrip"},
      {"added token content missing", [](J& j) { j["added_tokens"][0].erase("content"); }, "content"},
      {"added token vs vocab id", [](J& j) { j["added_tokens"][0]["id"] = 9; }, "model.vocab gives it 0"},
      {"added token takes a vocab id", [](J& j) { j["added_tokens"].push_back(added_token_json("<x>", 5)); },
       "which model.vocab gives to \"a\""},
      {"added tokens share an id", [](J& j) { j["added_tokens"].push_back(added_token_json("<x>", 0)); },
       "already taken"},
      {"added token listed twice", [](J& j) { j["added_tokens"].push_back(j["added_tokens"][0]); }, "already taken"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    nlohmann::json j = tokenizer_json(tiny_vocab);
    c.edit(j);
    TokenizerJsonFolder folder(j);
    const std::string msg = error_of([&] { BertTokenizer::load(folder.dir()); });
    EXPECT_NE(msg.find(folder.tokenizer_path()), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
  }

  // Not JSON at all, JSON but not an object, and no tokenizer.json and no vocab.txt.
  TokenizerJsonFolder folder(tokenizer_json(tiny_vocab));
  for (const std::string text : {R"({"model": {"type": "WordPiece", "vocab": {"a": 0,)", "[1, 2]", ""}) {
    SCOPED_TRACE(text);
    std::ofstream(folder.tokenizer_path()) << text;
    const std::string msg = error_of([&] { BertTokenizer::load(folder.dir()); });
    EXPECT_NE(msg.find(folder.tokenizer_path()), std::string::npos) << msg;
  }
  fs::remove(folder.tokenizer_path());
  const std::string msg = error_of([&] { BertTokenizer::load(folder.dir()); });
  EXPECT_NE(msg.find("vocab.txt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
}

// Manual check against a folder that transformers 5 saved (e.g. /tmp/taiyi-rand/tokenizer, built from the same
// Chinese vocabulary): TAIYI_TOKENIZER_JSON_DIR=<folder> ./text_tests --gtest_filter='*SavedByTransformers*'.
TEST(BertTokenizerJson, FolderSavedByTransformers) {
  const char* dir = std::getenv("TAIYI_TOKENIZER_JSON_DIR");
  if (!dir) GTEST_SKIP() << "set TAIYI_TOKENIZER_JSON_DIR to a tokenizer folder with tokenizer.json";
  TokenizerJsonFolder folder(io::read_json_file(std::string(dir) + "/tokenizer.json"),
                             io::read_json_file(std::string(dir) + "/tokenizer_config.json"));
  const BertTokenizer t = BertTokenizer::load(folder.dir());
  EXPECT_EQ(t.vocab_size(), tokenizer().vocab_size());
  // `tokenizers` reads vocab.txt lines with a Unicode-aware trim, so the U+2028 lines became "" and "##".
  size_t differ = 0;
  for (int64_t id = 0; id < static_cast<int64_t>(tokenizer().vocab_size()); ++id)
    if (t.id_to_token(id) != tokenizer().id_to_token(id)) {
      ++differ;
      EXPECT_TRUE(id == 343 || id == 13502) << id << " " << t.id_to_token(id);
    }
  EXPECT_LE(differ, 2u);
  for (const std::string& prompt : parity_prompts()) {
    SCOPED_TRACE(prompt);
    EXPECT_EQ(t.tokenize(prompt), tokenizer().tokenize(prompt));
    EXPECT_EQ(t.encode(prompt, tokenizer().model_max_length()), tokenizer().encode(prompt));
  }
}

}  // namespace
}  // namespace taiyi::text
