// The text layer: turns a prompt into the input ids of Taiyi's BERT text encoder.
//
// BertTokenizer reproduces transformers' slow `BertTokenizer` (tokenization_bert.py of transformers 4.44:
// BasicTokenizer + WordpieceTokenizer, plus the added/special-token handling of
// `PreTrainedTokenizer.tokenize`) as diffusers' StableDiffusionPipeline calls it:
// `tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)`.
// Unicode properties (categories, case mapping, NFC/NFD) come from utf8proc.
//
//   BertTokenizer tok = BertTokenizer::load(model_dir + "/tokenizer");
//   std::vector<int64_t> ids = tok.encode("飞流直下三千尺");  // [CLS] 飞 流 ... [SEP] [PAD]... (model_max_length)
//   if (tok.count_ids(prompt) > tok.model_max_length()) { /* warn: the prompt was truncated */ }
//
// A folder that recent transformers saved may have tokenizer.json (the `tokenizers` serialization) instead of
// vocab.txt. load() falls back to it only when vocab.txt is absent (with both, vocab.txt is used as before):
//   * vocabulary: model.vocab ({token: id}) of a model.type "WordPiece" model; continuing_subword_prefix must be
//     "##"; max_input_chars_per_word replaces WordPiece's 100.
//   * normalizer (must be a "BertNormalizer"): lowercase, strip_accents (null = follow lowercase) and
//     handle_chinese_chars stand in for tokenizer_config.json's do_lower_case, strip_accents and
//     tokenize_chinese_chars; model.unk_token stands in for unk_token. A key tokenizer_config.json spells out
//     wins (null keeps its meaning there: BertTokenizer's default), as in transformers, which rebuilds the normalizer
//     from the config's init arguments (for a folder it saved the two agree). transformers would take BertTokenizer's
//     defaults, not the normalizer's values, for keys the config lacks. clean_text false is rejected (BasicTokenizer
//     always cleans).
//   * added_tokens: without "added_tokens_decoder" in tokenizer_config.json, they join added_tokens.json's as
//     transformers' legacy loader does (same id: tokenizer.json's wins), and special-token attributes take the
//     flags of the added token with the same content. pre_tokenizer, post_processor and decoder are not read:
//     BertTokenizer always splits, wraps and decodes the BERT way.
//   model, model.type, model.vocab and normalizer (with its type) are required; the other keys default as in
//   `tokenizers` ([UNK], "##", 100, BertNormalizer's true/true/null/true). Another model or normalizer type, a
//   prefix other than "##", a missing required key, a value of the wrong type, or ids that collide (two tokens, or
//   an added token against the vocabulary) or fall outside [0, 2^32) throw taiyi::Error naming tokenizer.json.
//
// Known differences from transformers: Unicode tables are utf8proc's (Unicode 15 for utf8proc 2.8), not the
// running Python's; `str.lower()`'s context-dependent final sigma is not applied (it can never fire in this
// pipeline, see bert_tokenizer.cpp); `split_special_tokens=true` configs are rejected.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace taiyi::text {

class BertTokenizer {
 public:
  // Reads vocab.txt (or, without it, tokenizer.json), tokenizer_config.json and special_tokens_map.json /
  // added_tokens.json (if present) from a tokenizer folder. Throws taiyi::Error naming the file at fault (missing
  // vocab, no usable model_max_length, ...).
  static BertTokenizer load(const std::string& tokenizer_dir);

  // The pieces of transformers' tokenize(text) (no [CLS]/[SEP]), as UTF-8 strings.
  // Throws taiyi::Error if the text is not valid UTF-8 (naming the byte offset).
  std::vector<std::string> tokenize(const std::string& utf8_text) const;
  // Ids as the pipeline builds them: [CLS] pieces... [SEP], truncated to max_length (keeping the first
  // max_length-2 pieces), then [PAD] up to max_length. max_length <= 0 means model_max_length().
  std::vector<int64_t> encode(const std::string& utf8_text, int64_t max_length = 0) const;
  // Untruncated count of ids, [CLS] and [SEP] included (so a caller can warn about truncation).
  int64_t count_ids(const std::string& utf8_text) const;

  int64_t model_max_length() const { return model_max_length_; }
  int64_t token_id(const std::string& token) const;  // unk id if absent
  const std::string& id_to_token(int64_t id) const;  // throws Error on a bad id
  int64_t pad_id() const { return pad_id_; }
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t mask_id() const { return mask_id_; }  // -1 if the config sets mask_token to null
  // len(vocab.txt's token -> id map) (or of tokenizer.json's model.vocab), as transformers' `vocab_size` (added
  // tokens not counted).
  size_t vocab_size() const { return vocab_.size(); }

  // An added token (special or not): transformers' `AddedToken` as far as the slow tokenizer uses it.
  struct AddedToken {
    std::string content;
    int64_t id = 0;
    bool lstrip = false, rstrip = false, single_word = false, normalized = false, special = true;
  };

 private:
  BertTokenizer() = default;
  std::vector<std::string> tokenize_codepoints(const std::u32string& text) const;
  void wordpiece(const std::u32string& text, std::vector<std::string>& out) const;
  void basic_then_wordpiece(const std::u32string& text, std::vector<std::string>& out) const;

  std::string dir_;
  // vocab.txt (or tokenizer.json's model.vocab): token -> id (a later duplicate line wins, as in a Python dict) and
  // id -> token.
  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<int64_t, std::string> ids_to_tokens_;
  // Added tokens (the special tokens first of all), keyed both ways; their trie splits the prompt.
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, size_t> added_by_content_;
  std::unordered_map<int64_t, size_t> added_by_id_;
  struct TrieNode {
    std::vector<std::pair<char32_t, int>> children;  // sorted by code point
    bool terminal = false;
  };
  std::vector<TrieNode> trie_;
  // Strings the do_lower_case pre-pass leaves alone, in transformers' order (all special tokens first).
  std::vector<std::u32string> lowercase_protected_;
  std::unordered_set<std::string> all_special_tokens_;  // BasicTokenizer's never_split of each call
  std::unordered_set<std::string> never_split_;         // tokenizer_config.json "never_split"

  bool do_lower_case_ = true;
  bool do_basic_tokenize_ = true;
  bool tokenize_chinese_chars_ = true;
  int strip_accents_ = -1;  // -1: null (follow do_lower_case), 0: false, 1: true
  bool do_split_on_punc_ = true;
  bool truncate_left_ = false;
  bool pad_left_ = false;
  int64_t model_max_length_ = 0;
  size_t max_input_chars_per_word_ = 100;  // longer words become unk_token_
  std::string unk_token_;
  int64_t pad_id_ = 0, cls_id_ = 0, sep_id_ = 0, unk_id_ = 0, mask_id_ = 0;
};

}  // namespace taiyi::text
