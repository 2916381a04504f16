// TokenizedSource storage (in memory or an mmap of a cache file), and the cache file's writer and
// validating reader (format in tokenized_source.h).
#include "data/tokenized_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <random>

#include "autograd/check.h"
#include "data/hash.h"

namespace loom {
namespace {

constexpr char kMagic[8] = {'L', 'O', 'O', 'M', 'T', 'O', 'K', 'C'};
constexpr uint32_t kVersion = 2;  // 2: the body checksum
constexpr uint64_t kHeaderBytes = 128;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t tokenizer_hash, content_hash, options_hash;
  uint64_t n_documents, n_tokens, skipped_records;
  uint64_t offsets_at, tokens_at, mask_at, notes_at, notes_bytes;
  uint64_t file_bytes;
  uint64_t header_hash;
  uint64_t body_hash;  // of the sections (body_checksum)
};
static_assert(sizeof(Header) == kHeaderBytes);

uint64_t align8(uint64_t n) {
  return (n + 7) & ~uint64_t{7};
}
uint64_t mask_bytes(uint64_t n_tokens) {
  return (n_tokens + 7) / 8;
}

std::string join_notes(const std::vector<std::string>& notes) {
  std::string out;
  for (const auto& n : notes) {
    if (!out.empty()) out += '\n';
    for (char c : n) out += c == '\n' ? ' ' : c;  // one message per line
  }
  return out;
}

// Of the offsets, tokens, mask and notes: a token id changed on disk would otherwise be trained
// on as it is (every id is in range for the tokenizer, so nothing else would notice).
uint64_t body_checksum(std::span<const uint64_t> offsets, std::span<const int32_t> tokens,
                       std::span<const uint8_t> mask, std::string_view notes) {
  uint64_t h = hash64(offsets.data(), offsets.size_bytes());
  h = hash_combine(h, hash64(tokens.data(), tokens.size_bytes()));
  h = hash_combine(h, hash64(mask.data(), mask.size_bytes()));
  return hash_combine(h, hash64(notes));
}

}  // namespace

uint64_t TokenCacheKey::combined() const {
  return hash_combine(hash_combine(tokenizer, content), options);
}

struct TokenizedSource::Storage {
  TokenizedDocs docs;   // in memory
  void* map = nullptr;  // or mapped
  size_t map_bytes = 0;
  ~Storage() {
    if (map != nullptr) munmap(map, map_bytes);
  }
};

TokenizedSource::~TokenizedSource() = default;

std::shared_ptr<const TokenizedSource> TokenizedSource::from_docs(std::string name,
                                                                  TokenizedDocs docs,
                                                                  TokenCacheKey key) {
  LOOM_CHECK(!docs.offsets.empty() && docs.offsets.back() == docs.tokens.size(),
             "tokenized docs of '{}': last offset {} for {} tokens", name,
             docs.offsets.empty() ? 0 : docs.offsets.back(), docs.tokens.size());
  LOOM_CHECK(docs.mask.size() == mask_bytes(docs.tokens.size()), "mask of {} bytes for {} tokens",
             docs.mask.size(), docs.tokens.size());
  std::shared_ptr<TokenizedSource> s(new TokenizedSource());
  s->storage_ = std::make_unique<Storage>();
  s->storage_->docs = std::move(docs);
  const TokenizedDocs& d = s->storage_->docs;
  s->name_ = std::move(name);
  s->key_ = key;
  s->n_docs_ = static_cast<int64_t>(d.offsets.size()) - 1;
  s->n_tokens_ = static_cast<int64_t>(d.tokens.size());
  s->skipped_ = d.skipped_records;
  s->offsets_ = d.offsets.data();
  s->tokens_ = d.tokens.data();
  s->mask_ = d.mask.data();
  s->notes_ = d.notes;
  return s;
}

void write_token_cache(const std::string& path, const TokenCacheKey& key,
                       const TokenizedDocs& docs) {
  const std::string notes = join_notes(docs.notes);
  const uint64_t n_docs = docs.offsets.size() - 1;
  const uint64_t n_tokens = docs.tokens.size();
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.header_bytes = kHeaderBytes;
  h.tokenizer_hash = key.tokenizer;
  h.content_hash = key.content;
  h.options_hash = key.options;
  h.n_documents = n_docs;
  h.n_tokens = n_tokens;
  h.skipped_records = static_cast<uint64_t>(docs.skipped_records);
  h.offsets_at = kHeaderBytes;
  h.tokens_at = align8(h.offsets_at + 8 * (n_docs + 1));
  h.mask_at = align8(h.tokens_at + 4 * n_tokens);
  h.notes_at = align8(h.mask_at + mask_bytes(n_tokens));
  h.notes_bytes = notes.size();
  h.file_bytes = h.notes_at + notes.size();
  h.header_hash = hash64(&h, offsetof(Header, header_hash));
  h.body_hash = body_checksum(docs.offsets, docs.tokens, docs.mask, notes);

  namespace fs = std::filesystem;
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  if (ec) {
    throw Error(
        fmt::format("token cache: cannot create folder '{}': {}; set a writable cache "
                    "folder",
                    target.parent_path().string(), ec.message()));
  }
  std::random_device rd;
  const std::string tmp = fmt::format("{}.tmp.{}.{:08x}", path, getpid(), rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw Error(fmt::format("token cache: cannot create '{}': {}; set a writable cache folder", tmp,
                            std::strerror(errno)));
  }
  uint64_t written = 0;
  const auto put = [&](const void* data, uint64_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        const std::string why = std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error(fmt::format("token cache: writing '{}' failed: {} (disk full?)", tmp, why));
      }
      p += w;
      n -= static_cast<uint64_t>(w);
      written += static_cast<uint64_t>(w);
    }
  };
  const auto pad_to = [&](uint64_t at) {
    static const char zeros[8] = {};
    LOOM_CHECK(at >= written && at - written < 8, "cache layout: at {} written {}", at, written);
    put(zeros, at - written);
  };
  put(&h, sizeof(h));
  put(docs.offsets.data(), 8 * docs.offsets.size());
  pad_to(h.tokens_at);
  put(docs.tokens.data(), 4 * n_tokens);
  pad_to(h.mask_at);
  put(docs.mask.data(), docs.mask.size());
  pad_to(h.notes_at);
  put(notes.data(), notes.size());
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(fmt::format("token cache: flushing '{}' failed: {}", tmp, std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw Error(fmt::format("token cache: renaming '{}' to '{}' failed: {}", tmp, path, why));
  }
}

std::shared_ptr<const TokenizedSource> TokenizedSource::map_file(const std::string& path,
                                                                 std::string name,
                                                                 const TokenCacheKey* expect) {
  const auto bad = [&](const std::string& what) {
    return Error(
        fmt::format("token cache file '{}': {}; delete it to have it rebuilt", path, what));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw Error(fmt::format("token cache file '{}': cannot open: {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw bad(std::strerror(errno));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderBytes) {
    ::close(fd);
    throw bad(fmt::format("{} bytes, shorter than the {}-byte header", size, kHeaderBytes));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw bad(fmt::format("mmap failed: {}", std::strerror(errno)));
  std::shared_ptr<TokenizedSource> s(new TokenizedSource());
  s->storage_ = std::make_unique<Storage>();
  s->storage_->map = map;
  s->storage_->map_bytes = size;

  Header h;
  std::memcpy(&h, map, sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) throw bad("not a loom token cache");
  if (h.version != kVersion || h.header_bytes != kHeaderBytes) {
    throw bad(fmt::format("version {} (header {} bytes), expected version {}", h.version,
                          h.header_bytes, kVersion));
  }
  if (h.header_hash != hash64(&h, offsetof(Header, header_hash))) {
    throw bad("the header checksum does not match");
  }
  if (h.file_bytes != size) {
    throw bad(fmt::format("{} bytes, the header says {} (truncated?)", size, h.file_bytes));
  }
  const bool layout_ok = h.offsets_at == kHeaderBytes && h.n_documents < size / 8 &&
                         h.tokens_at == align8(h.offsets_at + 8 * (h.n_documents + 1)) &&
                         h.n_tokens < size / 4 &&
                         h.mask_at == align8(h.tokens_at + 4 * h.n_tokens) &&
                         h.notes_at == align8(h.mask_at + mask_bytes(h.n_tokens)) &&
                         h.notes_at + h.notes_bytes == size;
  if (!layout_ok) throw bad("the section offsets in the header are inconsistent");
  const TokenCacheKey key{h.tokenizer_hash, h.content_hash, h.options_hash};
  if (expect != nullptr && !(key == *expect)) {
    throw bad(
        fmt::format("its key (tokenizer {}, content {}, options {}) is not the expected one "
                    "(tokenizer {}, content {}, options {})",
                    hex64(key.tokenizer), hex64(key.content), hex64(key.options),
                    hex64(expect->tokenizer), hex64(expect->content), hex64(expect->options)));
  }
  const auto* base = static_cast<const char*>(map);
  s->offsets_ = reinterpret_cast<const uint64_t*>(base + h.offsets_at);
  s->tokens_ = reinterpret_cast<const int32_t*>(base + h.tokens_at);
  s->mask_ = reinterpret_cast<const uint8_t*>(base + h.mask_at);
  if (h.body_hash != body_checksum({s->offsets_, h.n_documents + 1}, {s->tokens_, h.n_tokens},
                                   {s->mask_, mask_bytes(h.n_tokens)},
                                   {base + h.notes_at, h.notes_bytes}))
    throw bad(
        "the checksum of its tokens does not match (the file was changed after it was "
        "written)");
  if (s->offsets_[0] != 0 || s->offsets_[h.n_documents] != h.n_tokens) {
    throw bad("the document offsets do not cover the tokens");
  }
  for (uint64_t d = 0; d < h.n_documents; ++d) {
    if (s->offsets_[d + 1] < s->offsets_[d]) {
      throw bad(fmt::format("document {}'s offsets decrease", d));
    }
  }
  s->name_ = std::move(name);
  s->path_ = path;
  s->key_ = key;
  s->n_docs_ = static_cast<int64_t>(h.n_documents);
  s->n_tokens_ = static_cast<int64_t>(h.n_tokens);
  s->skipped_ = static_cast<int64_t>(h.skipped_records);
  const std::string_view notes(base + h.notes_at, h.notes_bytes);
  size_t pos = 0;
  while (pos < notes.size()) {
    size_t eol = notes.find('\n', pos);
    if (eol == std::string_view::npos) eol = notes.size();
    s->notes_.emplace_back(notes.substr(pos, eol - pos));
    pos = eol + 1;
  }
  return s;
}

}  // namespace loom
