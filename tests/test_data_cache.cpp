// Data module, tokenization and the token cache: parallel tokenization equals serial encoding,
// loss-mask bits of instruct / chat data, cache miss then hit, invalidation by content (a changed
// byte with the same size and time), tokenizer and reader options, the documented file layout,
// atomic writes, damaged files rebuilt, skipped records reported on hits; with the real SmolLM2
// tokenizer, ChatML segments tokenize as the whole text does, and the tokenization speed on the
// real dictd corpora (FOLDOC, GCIDE, WordNet) when installed.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "autograd/check.h"
#include "data/chat_template.h"
#include "data/hash.h"
#include "data/sources.h"
#include "data/token_cache.h"
#include "data/tokenize.h"
#include "data_test_helpers.h"
#include "layers/gguf.h"

namespace loom {
namespace {

using test::ByteTokenizer;
using test::TempDir;
using test::write_file;
namespace fs = std::filesystem;

SourceConfig jsonl_source(const std::string& path) {
  SourceConfig c;
  c.name = "corpus";
  c.path = path;
  c.format = SourceFormat::Jsonl;
  return c;
}

std::vector<int32_t> all_tokens(const TokenizedSource& s) {
  std::vector<int32_t> out;
  for (int64_t d = 0; d < s.num_documents(); ++d) {
    const auto t = s.document_tokens(d);
    out.insert(out.end(), t.begin(), t.end());
  }
  return out;
}

std::string many_docs(int n, const std::string& tag) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    out +=
        "{\"text\": \"" + tag + " document number " + std::to_string(i) + " with some words\"}\n";
  }
  return out;
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

TEST(DataTokenize, ParallelEqualsSerialAndMasksFollowSegments) {
  auto tok = ByteTokenizer::make(false, {{"a", "b"}, {"ab", "c"}});
  SourceDocuments docs;
  docs.files = {"mem"};
  std::mt19937_64 rng(2);
  for (int d = 0; d < 1000; ++d) {
    Document doc;
    const int n_seg = 1 + static_cast<int>(rng() % 3);
    for (int s = 0; s < n_seg; ++s) {
      std::string text;
      const int len = 1 + static_cast<int>(rng() % 40);
      for (int i = 0; i < len; ++i) text += "abc <"[rng() % 5];
      if (rng() % 4 == 0) text += "<|im_end|>";
      doc.segments.push_back({text, rng() % 2 == 0, rng() % 2 == 0});
    }
    doc.line = static_cast<uint64_t>(d + 1);
    docs.documents.push_back(std::move(doc));
  }
  const TokenizedDocs one = tokenize_documents(docs, *tok, 1, "test");
  const TokenizedDocs two = tokenize_documents(docs, *tok, 2, "test");
  EXPECT_EQ(one.tokens, two.tokens);
  EXPECT_EQ(one.offsets, two.offsets);
  EXPECT_EQ(one.mask, two.mask);
  auto src = TokenizedSource::from_docs("x", TokenizedDocs(one));
  ASSERT_EQ(src->num_documents(), 1000);
  for (int64_t d = 0; d < 1000; ++d) {
    std::vector<int32_t> ids;
    std::vector<bool> bits;
    for (const auto& seg : docs.documents[d].segments) {
      const auto e = tok->encode(seg.text, false, seg.parse_special);
      ids.insert(ids.end(), e.begin(), e.end());
      bits.insert(bits.end(), e.size(), seg.trained);
    }
    const auto got = src->document_tokens(d);
    ASSERT_EQ(std::vector<int32_t>(got.begin(), got.end()), ids) << d;
    for (size_t i = 0; i < bits.size(); ++i) {
      ASSERT_EQ(src->trained(src->document_begin(d) + static_cast<int64_t>(i)), bits[i]) << d;
    }
  }
}

TEST(DataCache, MissThenHitAtomicAndDisabled) {
  TempDir dir;
  write_file(dir / "a.jsonl", many_docs(500, "alpha"));
  auto tok = ByteTokenizer::make();
  const uint64_t fp = tokenizer_fingerprint(*tok);
  TokenCacheOptions opt;
  opt.dir = dir / "cache";
  TokenCacheReport rep;
  auto first = load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);
  EXPECT_TRUE(fs::exists(rep.path));
  EXPECT_EQ(first->cache_path(), rep.path);
  EXPECT_EQ(fs::path(rep.path).parent_path().string(), dir / "cache");
  EXPECT_TRUE(fs::path(rep.path).filename().string().starts_with("corpus-"));
  EXPECT_EQ(files_in(dir.path() / "cache").size(), 1u);  // no temporary file left behind
  EXPECT_GT(rep.text_bytes, 0u);
  EXPECT_EQ(first->num_documents(), 500);

  auto second = load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, fp, opt, &rep);
  EXPECT_TRUE(rep.hit);
  EXPECT_EQ(rep.text_bytes, 0u);
  EXPECT_EQ(all_tokens(*second), all_tokens(*first));
  EXPECT_EQ(second->key(), first->key());

  opt.enabled = false;
  auto mem = load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);
  EXPECT_EQ(rep.path, "");
  EXPECT_EQ(mem->cache_path(), "");
  EXPECT_EQ(all_tokens(*mem), all_tokens(*first));
}

// LOOM_CACHE_DIR moves the default cache folder (the trainer's and loom eval's) out of the
// working directory.
TEST(DataCache, LoomCacheDirMovesTheDefaultFolder) {
  TempDir dir;
  write_file(dir / "a.jsonl", many_docs(20, "alpha"));
  const char* before = std::getenv("LOOM_CACHE_DIR");
  const std::string saved = before != nullptr ? before : "";
  ::setenv("LOOM_CACHE_DIR", (dir / "elsewhere").c_str(), 1);
  const TokenCacheOptions opt;
  if (before != nullptr)
    ::setenv("LOOM_CACHE_DIR", saved.c_str(), 1);
  else
    ::unsetenv("LOOM_CACHE_DIR");
  const std::string where = (fs::path(dir / "elsewhere") / "tokens").string();
  EXPECT_EQ(opt.dir, where);
  auto tok = ByteTokenizer::make();
  TokenCacheReport rep;
  load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, tokenizer_fingerprint(*tok), opt,
                        &rep);
  EXPECT_EQ(fs::path(rep.path).parent_path().string(), where);
  EXPECT_TRUE(fs::exists(rep.path));
  ::setenv("LOOM_CACHE_DIR", "", 1);
  EXPECT_EQ(default_token_cache_dir(), ".cache/loom/tokens");  // empty: as unset
  if (before != nullptr)
    ::setenv("LOOM_CACHE_DIR", saved.c_str(), 1);
  else
    ::unsetenv("LOOM_CACHE_DIR");
}

// A changed byte misses even with the same size and modification time; so do another tokenizer,
// other reader options, another file set.
TEST(DataCache, InvalidatedByContentTokenizerAndOptions) {
  TempDir dir;
  std::string text = many_docs(200, "beta");
  write_file(dir / "a.jsonl", text);
  auto tok = ByteTokenizer::make();
  const uint64_t fp = tokenizer_fingerprint(*tok);
  TokenCacheOptions opt;
  opt.dir = dir / "cache";
  TokenCacheReport rep;
  const auto src = jsonl_source(dir / "a.jsonl");
  auto before = load_tokenized_source(src, *tok, fp, opt, &rep);
  const auto mtime = fs::last_write_time(dir / "a.jsonl");
  text[text.find("beta document number 17")] = 'B';
  write_file(dir / "a.jsonl", text);
  fs::last_write_time(dir / "a.jsonl", mtime);
  auto after = load_tokenized_source(src, *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);
  EXPECT_NE(after->key().content, before->key().content);
  EXPECT_EQ(after->key().tokenizer, before->key().tokenizer);
  EXPECT_NE(all_tokens(*after), all_tokens(*before));
  load_tokenized_source(src, *tok, fp, opt, &rep);
  EXPECT_TRUE(rep.hit);

  auto tok2 = ByteTokenizer::make(false, {{"b", "e"}});
  const uint64_t fp2 = tokenizer_fingerprint(*tok2);
  EXPECT_NE(fp2, fp);
  auto other_tok = load_tokenized_source(src, *tok2, fp2, opt, &rep);
  EXPECT_FALSE(rep.hit);
  EXPECT_LT(other_tok->num_tokens(), after->num_tokens());

  SourceConfig as_text = src;
  as_text.format = SourceFormat::Text;
  load_tokenized_source(as_text, *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);

  write_file(dir / "b.jsonl", many_docs(3, "gamma"));
  SourceConfig globbed = src;
  globbed.path = dir / "*.jsonl";
  auto both = load_tokenized_source(globbed, *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);
  EXPECT_EQ(both->num_documents(), 203);
  EXPECT_EQ(files_in(dir.path() / "cache").size(), 5u);
}

TEST(DataCache, FingerprintSeesMergesAndVocabulary) {
  auto a = ByteTokenizer::make(false, {{"a", "b"}, {"b", "c"}});
  auto a2 = ByteTokenizer::make(false, {{"a", "b"}, {"b", "c"}});
  auto swapped = ByteTokenizer::make(false, {{"b", "c"}, {"a", "b"}});
  auto bos = ByteTokenizer::make(true, {{"a", "b"}, {"b", "c"}});
  EXPECT_EQ(tokenizer_fingerprint(*a), tokenizer_fingerprint(*a2));
  EXPECT_NE(tokenizer_fingerprint(*a), tokenizer_fingerprint(*bos));
  // Same vocabulary, merges in another order: only the merges' effect tells them apart.
  EXPECT_NE(tokenizer_fingerprint(*a), tokenizer_fingerprint(*swapped));
  // The same tokenizer with an NFC normalizer (Qwen2) tokenizes other ids for decomposed text.
  TokenizerSpec spec = a->spec();
  spec.normalize_nfc = true;
  EXPECT_NE(tokenizer_fingerprint(*a), tokenizer_fingerprint(Tokenizer(std::move(spec))));
}

// The header fields sit where tokenized_source.h says.
TEST(DataCache, FileLayoutAsDocumented) {
  TempDir dir;
  write_file(dir / "i.jsonl",
             "{\"prompt\": \"ab\", \"completion\": \"cde\"}\n"
             "{\"prompt\": \"\", \"completion\": \"f\"}\n");
  SourceConfig c = jsonl_source(dir / "i.jsonl");
  c.format = SourceFormat::Instruct;
  auto tok = ByteTokenizer::make();
  TokenCacheOptions opt;
  opt.dir = dir / "cache";
  TokenCacheReport rep;
  auto src = load_tokenized_source(c, *tok, tokenizer_fingerprint(*tok), opt, &rep);
  const std::string bytes = [&] {
    std::ifstream f(rep.path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }();
  const auto u64 = [&](size_t at) {
    uint64_t v;
    std::memcpy(&v, bytes.data() + at, 8);
    return v;
  };
  const auto u32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, bytes.data() + at, 4);
    return v;
  };
  ASSERT_GE(bytes.size(), 128u);
  EXPECT_EQ(bytes.substr(0, 8), "LOOMTOKC");
  EXPECT_EQ(u32(8), 2u);
  EXPECT_EQ(u32(12), 128u);
  EXPECT_EQ(u64(16), src->key().tokenizer);
  EXPECT_EQ(u64(24), src->key().content);
  EXPECT_EQ(u64(32), src->key().options);
  EXPECT_EQ(u64(40), 2u);  // documents
  EXPECT_EQ(u64(48), 6u);  // tokens: a b c d e f
  EXPECT_EQ(u64(56), 0u);
  const uint64_t offsets_at = u64(64), tokens_at = u64(72), mask_at = u64(80);
  EXPECT_EQ(offsets_at, 128u);
  EXPECT_EQ(u64(offsets_at), 0u);
  EXPECT_EQ(u64(offsets_at + 8), 5u);
  EXPECT_EQ(u64(offsets_at + 16), 6u);
  EXPECT_EQ(tokens_at % 8, 0u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(u32(tokens_at + 4 * i), static_cast<uint32_t>('a' + i));
  // Prompt "ab" untrained, completion "cde" and "f" trained: bits 2..5.
  EXPECT_EQ(static_cast<unsigned char>(bytes[mask_at]), 0b111100u);
  EXPECT_EQ(u64(104), bytes.size());
  EXPECT_EQ(u64(112), hash64(bytes.data(), 112));
  EXPECT_EQ(u64(u64(88)), u64(u64(88)));  // notes section exists (empty here)
  EXPECT_EQ(u64(96), 0u);
  EXPECT_NE(u64(120), 0u);  // the body checksum
}

TEST(DataCache, DamagedFileIsReportedAndRebuilt) {
  TempDir dir;
  write_file(dir / "a.jsonl", many_docs(50, "delta"));
  auto tok = ByteTokenizer::make();
  const uint64_t fp = tokenizer_fingerprint(*tok);
  std::vector<std::string> warnings;
  TokenCacheOptions opt;
  opt.dir = dir / "cache";
  opt.warn = [&](const std::string& m) { warnings.push_back(m); };
  TokenCacheReport rep;
  auto good = load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, fp, opt, &rep);
  const auto expected = all_tokens(*good);
  good.reset();
  fs::resize_file(rep.path, fs::file_size(rep.path) - 3);
  auto rebuilt = load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("truncated"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("rebuilding"), std::string::npos) << warnings[0];
  EXPECT_EQ(all_tokens(*rebuilt), expected);
  // A token id changed in place (still a valid id, the header intact): caught by the checksum.
  rebuilt.reset();
  warnings.clear();
  {
    std::fstream f(rep.path, std::ios::in | std::ios::out | std::ios::binary);
    uint64_t tokens_at = 0;
    f.seekg(72);
    f.read(reinterpret_cast<char*>(&tokens_at), 8);
    const int32_t other = 'z';
    f.seekp(static_cast<std::streamoff>(tokens_at + 4 * 7));
    f.write(reinterpret_cast<const char*>(&other), 4);
  }
  auto again = load_tokenized_source(jsonl_source(dir / "a.jsonl"), *tok, fp, opt, &rep);
  EXPECT_FALSE(rep.hit);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("the checksum of its tokens does not match"), std::string::npos)
      << warnings[0];
  EXPECT_EQ(all_tokens(*again), expected);
  // Not a cache file at all.
  write_file(dir / "junk.tokens", std::string(200, 'x'));
  try {
    TokenizedSource::map_file(dir / "junk.tokens", "junk");
    ADD_FAILURE() << "a junk file was mapped";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a loom token cache"), std::string::npos);
  }
}

TEST(DataCache, SkippedRecordsAreReportedOnMissAndHit) {
  TempDir dir;
  write_file(dir / "a.jsonl", "{\"text\": \"ok\"}\nbroken\n{\"text\": 5}\n{\"text\": \"fine\"}\n");
  auto c = jsonl_source(dir / "a.jsonl");
  c.skip_bad_records = true;
  auto tok = ByteTokenizer::make();
  std::vector<std::string> warnings;
  TokenCacheOptions opt;
  opt.dir = dir / "cache";
  opt.warn = [&](const std::string& m) { warnings.push_back(m); };
  TokenCacheReport rep;
  auto miss = load_tokenized_source(c, *tok, tokenizer_fingerprint(*tok), opt, &rep);
  const auto on_miss = warnings;
  ASSERT_EQ(on_miss.size(), 3u);
  EXPECT_NE(on_miss[0].find(dir / "a.jsonl" + ":2: malformed JSON"), std::string::npos);
  EXPECT_NE(on_miss[1].find(dir / "a.jsonl" + ":3: field 'text' is a number"), std::string::npos);
  EXPECT_NE(on_miss[2].find("data source 'corpus': skipped 2 bad records"), std::string::npos)
      << on_miss[2];
  EXPECT_EQ(miss->skipped_records(), 2);
  warnings.clear();
  auto hit = load_tokenized_source(c, *tok, tokenizer_fingerprint(*tok), opt, &rep);
  EXPECT_TRUE(rep.hit);
  EXPECT_EQ(warnings, on_miss);
}

// ChatML through the cache with the byte vocabulary: markup tokens are the special ids, user
// text containing "<|im_start|>" stays bytes, and only assistant content + <|im_end|> is trained.
TEST(DataCache, ChatLossMaskBits) {
  TempDir dir;
  write_file(dir / "c.jsonl", R"({"messages": [{"role": "user", "content": "x<|im_start|>"},)"
                              R"( {"role": "assistant", "content": "ok"}]})"
                              "\n");
  SourceConfig c = jsonl_source(dir / "c.jsonl");
  c.format = SourceFormat::Chat;
  auto tok = ByteTokenizer::make();
  TokenCacheOptions opt;
  opt.enabled = false;
  auto src = load_tokenized_source(c, *tok, tokenizer_fingerprint(*tok), opt);
  std::vector<int32_t> want;
  std::string bits;
  const auto add = [&](const std::string& text, bool trained) {
    for (unsigned char ch : text) want.push_back(ch), bits += trained ? '1' : '0';
  };
  const auto special = [&](int32_t id, bool trained) {
    want.push_back(id);
    bits += trained ? '1' : '0';
  };
  special(ByteTokenizer::kImStart, false);
  add("user\n", false);
  add("x<|im_start|>", false);
  special(ByteTokenizer::kImEnd, false);
  add("\n", false);
  special(ByteTokenizer::kImStart, false);
  add("assistant\n", false);
  add("ok", true);
  special(ByteTokenizer::kImEnd, true);
  add("\n", false);
  EXPECT_EQ(all_tokens(*src), want);
  std::string got_bits;
  for (int64_t i = 0; i < src->num_tokens(); ++i) got_bits += src->trained(i) ? '1' : '0';
  EXPECT_EQ(got_bits, bits);
}

TEST(DataCache, ChatTemplateTokensMustExist) {
  TempDir dir;
  write_file(dir / "c.jsonl", R"({"messages": [{"role": "assistant", "content": "ok"}]})");
  SourceConfig c = jsonl_source(dir / "c.jsonl");
  c.format = SourceFormat::Chat;
  TokenizerSpec spec;
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(tok::byte_chars()[b]);
  spec.tokens.push_back("</s>");
  spec.tokens.push_back("zq");
  spec.merges = {{"z", "q"}};
  spec.eos_id = 256;
  spec.source = "no-chatml vocabulary";
  Tokenizer tok(std::move(spec));
  TokenCacheOptions opt;
  opt.enabled = false;
  try {
    load_tokenized_source(c, tok, tokenizer_fingerprint(tok), opt);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chat template 'chatml' needs the token '<|im_start|>', "
                                         "which the tokenizer of 'no-chatml vocabulary' does not "
                                         "have"),
              std::string::npos)
        << e.what();
  }
  // The model's own template is Llama 3's: the error says which built-in template fits.
  TokenizerSpec l3;
  for (int b = 0; b < 256; ++b) l3.tokens.push_back(tok::byte_chars()[b]);
  for (const char* t :
       {"<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"})
    l3.tokens.push_back(t);
  l3.tokens.push_back("zq");
  l3.merges = {{"z", "q"}};
  l3.types.assign(l3.tokens.size(), TokenType::Normal);
  std::fill(l3.types.begin() + 256, l3.types.begin() + 260, TokenType::Control);
  l3.eos_id = 259;
  l3.source = "llama3 vocabulary";
  l3.chat_template =
      "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
      "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}";
  Tokenizer tok3(std::move(l3));
  try {
    load_tokenized_source(c, tok3, tokenizer_fingerprint(tok3), opt);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the model's own template is llama3: set chat_template: "
                                         "llama3"),
              std::string::npos)
        << e.what();
  }
  c.chat_template = "llama3";
  EXPECT_NO_THROW(load_tokenized_source(c, tok3, tokenizer_fingerprint(tok3), opt));
}

// ---- with the real SmolLM2 tokenizer ------------------------------------------------------------

std::unique_ptr<Tokenizer> smollm2_tokenizer() {
  const fs::path model = test::source_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) return nullptr;
  return load_tokenizer(GgufFile::open(model.string()));
}

// Segment-by-segment tokenization (what gives exact masks) equals tokenizing the rendered text
// whole with specials parsed, for ChatML on SmolLM2's vocabulary -- except where a message's
// content starts with whitespace: then the whole text merges the header's "\n" with it, while
// segments keep the ids a prompt ending in "assistant\n" gets at inference.
TEST(DataRealTokenizer, ChatSegmentsTokenizeLikeTheWholeText) {
  auto tok = smollm2_tokenizer();
  if (!tok) GTEST_SKIP() << "SKIPPED LOUDLY: models/SmolLM2-135M-Instruct.Q4_1.gguf is missing";
  const std::vector<std::vector<ChatMessage>> chats = {
      {{"system", "You are a helpful assistant."},
       {"user", "What is FOLDOC?"},
       {"assistant", "The Free On-line Dictionary of Computing.\n\nIt has 15,000 entries."}},
      {{"user", "tabs\tand  spaces  "},
       {"assistant", "1. a list\n2. more\n"},
       {"user", "x"},
       {"assistant", "Zürich — 東京 🙂"}},
  };
  for (const auto& chat : chats) {
    std::vector<Segment> segs;
    render_chat(find_chat_template("chatml", "test"), chat, segs);
    std::string whole;
    std::vector<int32_t> by_segment;
    for (const auto& s : segs) {
      whole += s.text;
      tok->encode_append(s.text, false, s.parse_special, by_segment);
    }
    EXPECT_EQ(by_segment, tok->encode(whole, false, true)) << whole;
  }
  std::vector<Segment> segs;
  render_chat(find_chat_template("chatml", "test"), {{"user", "hi"}, {"assistant", "  indented"}},
              segs);
  std::string whole;
  for (const auto& s : segs) whole += s.text;
  const auto header = tok->encode("<|im_start|>assistant\n", false, true);
  const auto content = tok->encode("  indented");
  std::vector<int32_t> by_segment;
  for (const auto& s : segs) tok->encode_append(s.text, false, s.parse_special, by_segment);
  EXPECT_NE(by_segment, tok->encode(whole, false, true));
  EXPECT_TRUE(std::search(by_segment.begin(), by_segment.end(), content.begin(), content.end()) !=
              by_segment.end());
  std::cout << "[ smollm2  ] <|im_start|> = " << tok->find_token("<|im_start|>")
            << ", <|im_end|> = " << tok->find_token("<|im_end|>") << ", eos = " << tok->eos_id()
            << ", bos = " << tok->bos_id() << ", add_bos = " << tok->add_bos() << "\n";
}

// Not a pass/fail figure beyond "well under a minute": tokenizes each installed dictd corpus
// with the real tokenizer on every core, then maps the cache file it wrote.
TEST(DataRealTokenizer, DictdCorporaThroughput) {
  auto tok = smollm2_tokenizer();
  if (!tok) GTEST_SKIP() << "SKIPPED LOUDLY: models/SmolLM2-135M-Instruct.Q4_1.gguf is missing";
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t fp = tokenizer_fingerprint(*tok);
  const double fp_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ speed    ] tokenizer fingerprint: " << fp_s * 1e3 << " ms\n";
  TempDir dir;
  int ran = 0;
  for (const std::string& name : std::vector<std::string>{"foldoc", "gcide", "wn"}) {
    const std::string base = "/usr/share/dictd/" + name;
    if (!fs::exists(base + ".index")) {
      std::cout << "[ speed    ] SKIPPED LOUDLY: " << base << ".index missing (dict-" << name
                << ")\n";
      continue;
    }
    SourceConfig c;
    c.name = name;
    c.path = base;
    c.format = SourceFormat::Dictd;
    c.skip_bad_records = true;
    TokenCacheOptions opt;
    opt.dir = dir / "cache";
    opt.warn = [](const std::string&) {};
    TokenCacheReport miss, hit;
    auto built = load_tokenized_source(c, *tok, fp, opt, &miss);
    const auto h0 = std::chrono::steady_clock::now();
    auto mapped = load_tokenized_source(c, *tok, fp, opt, &hit);
    const double hit_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count();
    EXPECT_FALSE(miss.hit);
    EXPECT_TRUE(hit.hit);
    EXPECT_EQ(mapped->num_tokens(), built->num_tokens());
    EXPECT_LT(miss.read_seconds + miss.tokenize_seconds, 60.0) << name;
    std::cout << "[ speed    ] " << name << ": " << built->num_documents() << " documents, "
              << miss.text_bytes / 1e6 << " MB of text -> " << built->num_tokens() / 1e6
              << " M tokens; read+parse " << miss.read_seconds << " s, tokenize "
              << miss.tokenize_seconds << " s (" << miss.text_bytes / 1e6 / miss.tokenize_seconds
              << " MB/s, " << built->num_tokens() / 1e6 / miss.tokenize_seconds << " M tokens/s, "
              << omp_get_max_threads() << " threads); cache hit " << hit_s << " s\n";
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "SKIPPED LOUDLY: no dictd corpus installed";
}

}  // namespace
}  // namespace loom
