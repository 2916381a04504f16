// Shared helpers of the data module tests (tests/test_data_*.cpp), besides tests/test_helpers.h
// (source_dir, TempDir): file and gzip writers, a byte-level tokenizer (one token per byte plus ChatML specials and an EOS), and
// synthetic tokenized sources.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "data/tokenized_source.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"
#include "tests/test_helpers.h"

namespace loom::test {

namespace fs = std::filesystem;

inline void write_file(const std::string& path, std::string_view bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// Gzip-compressed `bytes` (one member), made with zlib's deflate.
inline std::string gzip_bytes(std::string_view bytes, int level = 6) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, bytes.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// A whole gzip file read with zlib's own gz* file interface (independent of data/file_io.cpp).
inline std::string gzread_all(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return out;
}

// Byte-level vocabulary: token b (0..255) is byte b; then <|im_start|>, <|im_end|> (control) and
// <|endoftext|> (control, EOS); then one token per merge. Without merges given, the single merge
// "z"+"q" (byte-level BPE needs one; test texts avoid "zq"), so text is one token per byte. Its
// chat template is a plain ChatML one (no default system message): chat sources left at
// chat_template: model render ChatML.
struct ByteTokenizer {
  static constexpr int32_t kImStart = 256, kImEnd = 257, kEos = 258;
  static std::unique_ptr<Tokenizer> make(
      bool add_bos = false, std::vector<std::pair<std::string, std::string>> merges = {}) {
    TokenizerSpec spec;
    for (int b = 0; b < 256; ++b) spec.tokens.push_back(tok::byte_chars()[b]);
    spec.types.assign(256, TokenType::Normal);
    for (const char* special : {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}) {
      spec.tokens.push_back(special);
      spec.types.push_back(TokenType::Control);
    }
    if (merges.empty()) merges = {{"z", "q"}};
    for (const auto& [a, b] : merges) {
      spec.merges.emplace_back(a, b);
      spec.tokens.push_back(a + b);
      spec.types.push_back(TokenType::Normal);
    }
    spec.kind = TokenizerKind::ByteLevelBpe;
    spec.pre_name = "gpt2";
    spec.eos_id = kEos;
    spec.bos_id = kImStart;
    spec.add_bos = add_bos;
    spec.source = "test byte vocabulary";
    spec.chat_template =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    return std::make_unique<Tokenizer>(std::move(spec));
  }
};

// A source of n documents with lengths uniform in [min_len, max_len]; token ids encode
// (source_tag, document, position) loosely so mix-ups show; every token trained.
inline std::shared_ptr<const TokenizedSource> synthetic_source(const std::string& name,
                                                               int64_t n_docs, int64_t min_len,
                                                               int64_t max_len, uint64_t seed,
                                                               int32_t tag = 0) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> len(min_len, max_len);
  TokenizedDocs docs;
  for (int64_t d = 0; d < n_docs; ++d) {
    const int64_t n = len(rng);
    for (int64_t i = 0; i < n; ++i) {
      docs.tokens.push_back(tag * 1000000 + static_cast<int32_t>((d * 7 + i) % 100000));
    }
    docs.offsets.push_back(docs.tokens.size());
  }
  docs.mask.assign((docs.tokens.size() + 7) / 8, 0xFF);
  return TokenizedSource::from_docs(name, std::move(docs));
}

}  // namespace loom::test
