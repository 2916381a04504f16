// Plain text reader: documents split at blank lines, at a literal separator, or one per file.
#include <fmt/format.h>

#include <algorithm>

#include "data/source_readers.h"
#include "layers/tokenizer.h"

namespace loom::data_detail {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

bool is_blank(std::string_view s) {
  for (char c : s) {
    if (!is_space(c)) return false;
  }
  return true;
}

uint64_t count_newlines(std::string_view s) {
  uint64_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// One document starting on `line`. `utf8_checked`: the whole file is known to be valid.
void emit(const ReadContext& ctx, std::string_view doc, uint64_t line, bool utf8_checked) {
  if (!utf8_checked) {
    uint64_t bad_line = line;
    const std::string bad = describe_invalid_utf8(doc, line, &bad_line);
    if (!bad.empty()) {
      ctx.bad_record(bad_line, fmt::format("{} (in the document starting on line {})", bad, line));
      return;
    }
  }
  Document d;
  d.segments.push_back({std::string(doc), true, false});
  d.file_index = ctx.file_index;
  d.line = line;
  ctx.out.documents.push_back(std::move(d));
}

void split_blank_lines(const ReadContext& ctx, std::string_view text, bool utf8_checked) {
  size_t pos = 0, doc_begin = std::string_view::npos, doc_end = 0;
  uint64_t line = 1, doc_line = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    if (!is_blank(text.substr(pos, eol - pos))) {
      if (doc_begin == std::string_view::npos) {
        doc_begin = pos;
        doc_line = line;
      }
      doc_end = eol;
    } else if (doc_begin != std::string_view::npos) {
      emit(ctx, text.substr(doc_begin, doc_end - doc_begin), doc_line, utf8_checked);
      doc_begin = std::string_view::npos;
    }
    pos = eol + 1;
    ++line;
  }
  if (doc_begin != std::string_view::npos) {
    emit(ctx, text.substr(doc_begin, doc_end - doc_begin), doc_line, utf8_checked);
  }
}

// A piece between separators starting on `line`, without its leading / trailing line breaks;
// nothing when it is only whitespace.
void emit_trimmed(const ReadContext& ctx, std::string_view piece, uint64_t line,
                  bool utf8_checked) {
  size_t lead = 0;
  while (lead < piece.size() && (piece[lead] == '\n' || piece[lead] == '\r')) {
    line += piece[lead] == '\n';
    ++lead;
  }
  size_t trail = piece.size();
  while (trail > lead && (piece[trail - 1] == '\n' || piece[trail - 1] == '\r')) --trail;
  const std::string_view doc = piece.substr(lead, trail - lead);
  if (!is_blank(doc)) emit(ctx, doc, line, utf8_checked);
}

// A separator without a line break is a separator line: documents are separated by lines that
// are exactly the separator (a trailing CR ignored), as fortune files use "%".
void split_separator_lines(const ReadContext& ctx, std::string_view text, bool utf8_checked) {
  const std::string& sep = ctx.config.separator;
  size_t pos = 0, piece_begin = 0;
  uint64_t line = 1, piece_line = 1;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view l = text.substr(pos, eol - pos);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l == sep) {
      emit_trimmed(ctx, text.substr(piece_begin, pos - piece_begin), piece_line, utf8_checked);
      piece_begin = std::min(eol + 1, text.size());
      piece_line = line + 1;
    }
    pos = eol + 1;
    ++line;
  }
  if (piece_begin < text.size()) {
    emit_trimmed(ctx, text.substr(piece_begin), piece_line, utf8_checked);
  }
}

// A separator with a line break is cut out wherever it occurs.
void split_separator_text(const ReadContext& ctx, std::string_view text, bool utf8_checked) {
  const std::string& sep = ctx.config.separator;
  size_t pos = 0;
  uint64_t line = 1;
  while (pos <= text.size()) {
    size_t end = text.find(sep, pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view piece = text.substr(pos, end - pos);
    emit_trimmed(ctx, piece, line, utf8_checked);
    line += count_newlines(piece);
    if (end == text.size()) break;
    line += count_newlines(sep);
    pos = end + sep.size();
  }
}

}  // namespace

void read_text(const ReadContext& ctx, std::string_view text) {
  const bool utf8_checked = find_invalid_utf8(text) == std::string_view::npos;
  switch (ctx.config.split) {
    case TextSplit::BlankLines:
      split_blank_lines(ctx, text, utf8_checked);
      break;
    case TextSplit::Separator:
      if (ctx.config.separator.empty()) {
        ctx.fail(1,
                 "the text separator is empty; give a separator string, or use blank_lines or "
                 "file");
      }
      if (ctx.config.separator.find('\n') == std::string::npos) {
        split_separator_lines(ctx, text, utf8_checked);
      } else {
        split_separator_text(ctx, text, utf8_checked);
      }
      break;
    case TextSplit::WholeFile:
      if (is_blank(text)) {
        ctx.bad_record(1, "the file is empty (one document per file was asked for)");
      } else {
        emit(ctx, text, 1, utf8_checked);
      }
      break;
  }
}

}  // namespace loom::data_detail
