// A tokenized source: every document's token ids (int32) and loss-mask bits, held in memory or
// mapped read-only from a token cache file.
//
// Cache file format (version 2, little-endian, every section 8-byte aligned):
//   offset  size  field
//        0     8  magic "LOOMTOKC"
//        8     4  u32 version (2)
//       12     4  u32 header size (128)
//       16     8  u64 tokenizer hash     } the cache key (TokenCacheKey); the file name
//       24     8  u64 content hash       } carries their combination, the header the parts
//       32     8  u64 reader-options hash}
//       40     8  u64 n_documents
//       48     8  u64 n_tokens
//       56     8  u64 skipped bad records (under skip_bad_records)
//       64     8  u64 offsets_at: u64[n_documents + 1]; document d is tokens [off[d], off[d+1])
//       72     8  u64 tokens_at:  i32[n_tokens]
//       80     8  u64 mask_at:    u8[ceil(n_tokens / 8)]; token i is trained on iff bit (i % 8)
//                                 of byte i / 8 is set (prompt tokens of instruct / chat: clear)
//       88     8  u64 notes_at:   the first skipped-record messages, UTF-8, '\n'-separated
//       96     8  u64 notes_bytes
//      104     8  u64 file size (a truncation check)
//      112     8  u64 hash64 of header bytes 0..111
//      120     8  u64 checksum of the offsets, tokens, mask and notes (checked on every map)
// BOS / EOS are not stored: packing adds them (packing.h), so one cache serves any framing.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace loom {

struct TokenCacheKey {
  uint64_t tokenizer = 0;  // tokenizer_fingerprint()
  uint64_t content = 0;    // raw_source_hash(): paths and bytes of the files
  uint64_t options = 0;    // reader options (format, fields, separator, template, ...)
  uint64_t combined() const;
  bool operator==(const TokenCacheKey&) const = default;
};

// What tokenize_documents() builds.
struct TokenizedDocs {
  std::vector<uint64_t> offsets{0};  // n_documents + 1
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;       // bits, as in the file
  std::vector<std::string> notes;  // skipped-record messages kept
  int64_t skipped_records = 0;
};

class TokenizedSource {
 public:
  // Keeps `docs` in memory.
  static std::shared_ptr<const TokenizedSource> from_docs(std::string name, TokenizedDocs docs,
                                                          TokenCacheKey key = {});
  // Maps a cache file. Throws loom::Error naming the file when it is not a complete cache file
  // of this version, or (when `expect` is given) its key differs.
  static std::shared_ptr<const TokenizedSource> map_file(const std::string& path, std::string name,
                                                         const TokenCacheKey* expect = nullptr);
  ~TokenizedSource();
  TokenizedSource(const TokenizedSource&) = delete;
  TokenizedSource& operator=(const TokenizedSource&) = delete;

  const std::string& name() const { return name_; }
  int64_t num_documents() const { return n_docs_; }
  int64_t num_tokens() const { return n_tokens_; }
  int64_t document_begin(int64_t doc) const { return static_cast<int64_t>(offsets_[doc]); }
  int64_t document_length(int64_t doc) const {
    return static_cast<int64_t>(offsets_[doc + 1] - offsets_[doc]);
  }
  std::span<const int32_t> document_tokens(int64_t doc) const {
    return {tokens_ + offsets_[doc], tokens_ + offsets_[doc + 1]};
  }
  int32_t token(int64_t i) const { return tokens_[i]; }
  // Loss-mask bit of token i (global index, document_begin(doc) + position).
  bool trained(int64_t i) const { return (mask_[i >> 3] >> (i & 7)) & 1; }
  int64_t skipped_records() const { return skipped_; }
  const std::vector<std::string>& skipped_messages() const { return notes_; }
  const TokenCacheKey& key() const { return key_; }
  const std::string& cache_path() const { return path_; }  // "" when held in memory

 private:
  TokenizedSource() = default;
  struct Storage;
  std::unique_ptr<Storage> storage_;
  std::string name_, path_;
  TokenCacheKey key_;
  int64_t n_docs_ = 0, n_tokens_ = 0, skipped_ = 0;
  const uint64_t* offsets_ = nullptr;
  const int32_t* tokens_ = nullptr;
  const uint8_t* mask_ = nullptr;
  std::vector<std::string> notes_;
};

// Writes the cache file atomically: a temporary file beside it, flushed and fsynced, renamed.
void write_token_cache(const std::string& path, const TokenCacheKey& key,
                       const TokenizedDocs& docs);

}  // namespace loom
