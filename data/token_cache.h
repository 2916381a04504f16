// The token cache: each source is read and tokenized once, into a file keyed by the tokenizer,
// the bytes of the source's files and the reader options; later runs (and resumes) map it.
//
// The file is <dir>/<source name>-<16 hex digits of the key>.tokens (format in
// tokenized_source.h). Any change to a file's bytes, to the set of files, to the tokenizer or to
// the reader options gives another key, hence a miss and a rebuild; file sizes and times are not
// trusted. The old file is left for runs that still use it. A damaged cache file is reported
// and rebuilt.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "data/source_config.h"
#include "data/tokenized_source.h"

namespace loom {

class Tokenizer;

// Receives warnings (bad records left out, a damaged cache file). Empty: printed to stderr.
using WarningSink = std::function<void(const std::string&)>;

// $LOOM_CACHE_DIR/tokens when that variable is set (and not empty), else .cache/loom/tokens
// (relative: under the working directory).
std::string default_token_cache_dir();

struct TokenCacheOptions {
  std::string dir = default_token_cache_dir();
  bool enabled = true;  // false: tokenize in memory every time, write nothing
  int threads = 0;      // tokenization threads; <= 0: every core
  WarningSink warn;
};

// What loading did, for logs and the throughput figures.
struct TokenCacheReport {
  bool hit = false;
  std::string path;         // the cache file ("" when disabled)
  uint64_t raw_bytes = 0;   // bytes of the source's files as on disk
  uint64_t text_bytes = 0;  // bytes of document text tokenized (0 on a hit)
  double read_seconds = 0;  // reading + hashing (+ parsing on a miss)
  double tokenize_seconds = 0;
};

// Hash of the SourceConfig fields that decide what the reader produces.
uint64_t reader_options_hash(const SourceConfig& config);

// Reads, tokenizes and caches the source, or maps its cache file. `tokenizer_hash` is
// tokenizer_fingerprint(tokenizer), computed once by the caller for all sources. Reader errors
// propagate (sources.h); skipped records are passed to options.warn on a miss and on a hit alike.
std::shared_ptr<const TokenizedSource> load_tokenized_source(const SourceConfig& config,
                                                             const Tokenizer& tokenizer,
                                                             uint64_t tokenizer_hash,
                                                             const TokenCacheOptions& options,
                                                             TokenCacheReport* report = nullptr);

}  // namespace loom
