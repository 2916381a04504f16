// Internal to the data module: the per-format readers behind parse_source() (sources.cpp) and
// the one place that turns a bad record into an error or a counted warning.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "data/document.h"
#include "data/source_config.h"

namespace loom::data_detail {

// Where the reader is: for error messages and Document::file_index / line.
struct ReadContext {
  const SourceConfig& config;
  SourceDocuments& out;
  uint32_t file_index;
  const std::string& path;  // the file named in messages (dictd: the .index file)

  // "data source 'x': path:line: message". Throws it, or records it under skip_bad_records.
  void bad_record(uint64_t line, const std::string& message) const;
  [[noreturn]] void fail(uint64_t line, const std::string& message) const;
};

// The lines of a text in order, 1-based numbers, without the '\n' and a trailing '\r'.
class LineReader {
 public:
  explicit LineReader(std::string_view text) : text_(text) {}
  bool next(std::string_view& line) {
    if (pos_ >= text_.size()) return false;
    size_t eol = text_.find('\n', pos_);
    if (eol == std::string_view::npos) eol = text_.size();
    line = text_.substr(pos_, eol - pos_);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos_ = eol + 1;
    ++number_;
    return true;
  }
  uint64_t number() const { return number_; }  // of the line next() gave last

 private:
  std::string_view text_;
  size_t pos_ = 0;
  uint64_t number_ = 0;
};

// "invalid UTF-8 at byte 17 of line 3 (0x92); ..." or "" when `text` is valid. `first_line` is
// the line `text` starts on.
std::string describe_invalid_utf8(std::string_view text, uint64_t first_line, uint64_t* bad_line);

void read_text(const ReadContext& ctx, std::string_view text);
void read_jsonl(const ReadContext& ctx, std::string_view text);  // Jsonl, Instruct and Chat
// `index` and `dict` are the decompressed .index and .dict texts; dict_path is named in messages.
void read_dictd(const ReadContext& ctx, std::string_view index, std::string_view dict,
                const std::string& dict_path);

}  // namespace loom::data_detail
