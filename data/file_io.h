// Files for the corpus readers: whole-file reads, gzip decompression (zlib; .gz and dictd's
// .dict.dz, which is gzip with a random-access table in the header), and the expansion of a
// source's path -- one file, a folder (every regular file under it, recursively), or a glob such
// as `data/*.jsonl.gz` -- into a sorted list of files. Errors name the path and say what to do.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace loom {

// The bytes of a file as they are on disk.
std::string read_file_bytes(const std::string& path);

// Gzip data starts with the bytes 1f 8b; the readers decompress by content, not by file name.
bool is_gzip(std::string_view bytes);
// Every member of a (possibly multi-member) gzip stream, concatenated. `path` is named in errors.
std::string gunzip(std::string_view bytes, const std::string& path);
// The content of a file, decompressed when it is gzip.
std::string read_maybe_gzip(const std::string& path);

// True when the path has glob characters (* ? [).
bool has_glob_chars(std::string_view path);
// Expands a source path: a glob matches files (and folders, which are walked); a folder gives
// every regular file under it whose name does not start with '.'; a plain file gives itself.
// Sorted by path, no duplicates. Throws naming `what` (e.g. "data source 'domain'") when the path
// does not exist, the glob matches nothing, or only empty folders are found.
std::vector<std::string> expand_source_path(const std::string& path, std::string_view what);

}  // namespace loom
