// Reading a data source: its path expanded into files, their raw bytes (what the token cache
// hashes), and the documents the format's reader makes of them.
//
// Errors (loom::Error) start with "data source '<name>': " and name the file and line; bad
// records follow SourceConfig::skip_bad_records. A source that yields no document at all is an
// error whatever skip_bad_records says.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/document.h"
#include "data/source_config.h"

namespace loom {

// A source's files as they are on disk (gzip still compressed).
struct RawSource {
  std::vector<std::string> paths;
  std::vector<std::string> bytes;  // one per path
  uint64_t total_bytes() const;
};

// The files a source reads, sorted. Dictd: NAME.index followed by its NAME.dict.dz (or
// NAME.dict) for every dictionary the path names (NAME, NAME.index, NAME.dict.dz, a folder, or a
// glob such as /usr/share/dictd/*.index).
std::vector<std::string> list_source_files(const SourceConfig& config);
RawSource load_raw_source(const SourceConfig& config);
// A hash of the paths and every byte of the files: the token cache's content key.
uint64_t raw_source_hash(const RawSource& raw);

// Decompresses and reads the documents. Throws on bad input (see above).
SourceDocuments parse_source(const SourceConfig& config, const RawSource& raw);
// load_raw_source + parse_source.
SourceDocuments read_source(const SourceConfig& config);

// "data source 'domain'" -- the prefix of every error about the source.
std::string source_label(const SourceConfig& config);

}  // namespace loom
