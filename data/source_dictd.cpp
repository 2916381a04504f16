// dictd reader: the .index lines parsed and checked against the .dict text, one document per
// distinct entry, metadata entries left out (dictd.h).
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "data/dictd.h"
#include "data/source_readers.h"

namespace loom {

std::optional<uint64_t> decode_dictd_number(std::string_view digits) {
  if (digits.empty() || digits.size() > 11) return std::nullopt;  // 11 digits hold 66 bits
  uint64_t v = 0;
  for (char c : digits) {
    int d;
    if (c >= 'A' && c <= 'Z') {
      d = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      d = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      d = c - '0' + 52;
    } else if (c == '+') {
      d = 62;
    } else if (c == '/') {
      d = 63;
    } else {
      return std::nullopt;
    }
    if (v > (uint64_t{1} << 57)) return std::nullopt;
    v = v * 64 + static_cast<uint64_t>(d);
  }
  if (v > (uint64_t{1} << 63)) return std::nullopt;
  return v;
}

std::string encode_dictd_number(uint64_t value) {
  static constexpr char kDigits[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  do {
    out.insert(out.begin(), kDigits[value % 64]);
    value /= 64;
  } while (value > 0);
  return out;
}

std::optional<DictdIndexLine> parse_dictd_index_line(std::string_view line, std::string* error) {
  const size_t t1 = line.find('\t');
  const size_t t2 = t1 == std::string_view::npos ? t1 : line.find('\t', t1 + 1);
  if (t2 == std::string_view::npos) {
    *error =
        "expected 'headword<TAB>offset<TAB>length' (dictd base64 numbers), found fewer than "
        "three tab-separated fields";
    return std::nullopt;
  }
  size_t t3 = line.find('\t', t2 + 1);
  if (t3 == std::string_view::npos) t3 = line.size();
  DictdIndexLine out;
  out.headword = line.substr(0, t1);
  const std::string_view off = line.substr(t1 + 1, t2 - t1 - 1);
  const std::string_view len = line.substr(t2 + 1, t3 - t2 - 1);
  const auto o = decode_dictd_number(off);
  const auto l = decode_dictd_number(len);
  if (!o || !l) {
    *error =
        fmt::format("'{}' is not a dictd base64 number (digits A-Z a-z 0-9 + /)", !o ? off : len);
    return std::nullopt;
  }
  out.offset = *o;
  out.length = *l;
  return out;
}

bool is_dictd_metadata_headword(std::string_view headword) {
  return headword.starts_with("00-database-") || headword.starts_with("00database");
}

namespace data_detail {

void read_dictd(const ReadContext& ctx, std::string_view index, std::string_view dict,
                const std::string& dict_path) {
  struct Entry {
    uint64_t offset, length, line;
    std::string_view headword;
    bool metadata;
  };
  std::vector<Entry> entries;
  std::string error;
  LineReader lines(index);
  std::string_view line;
  while (lines.next(line)) {
    const uint64_t line_no = lines.number();
    if (line.empty()) continue;
    const auto parsed = parse_dictd_index_line(line, &error);
    if (!parsed) {
      ctx.bad_record(line_no, error);
      continue;
    }
    if (parsed->offset > dict.size() || parsed->length > dict.size() - parsed->offset) {
      ctx.bad_record(line_no,
                     fmt::format("entry '{}' spans bytes {}..{}, past the end of {} ({} bytes "
                                 "uncompressed); the index does not belong to this .dict file",
                                 parsed->headword, parsed->offset, parsed->offset + parsed->length,
                                 dict_path, dict.size()));
      continue;
    }
    entries.push_back({parsed->offset, parsed->length, line_no, parsed->headword,
                       is_dictd_metadata_headword(parsed->headword)});
  }
  // One document per distinct byte range, in file order; the first index line names it.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.offset != b.offset   ? a.offset < b.offset
           : a.length != b.length ? a.length < b.length
                                  : a.line < b.line;
  });
  for (size_t i = 0; i < entries.size();) {
    size_t j = i;
    bool metadata = false;
    const Entry* first = &entries[i];
    for (; j < entries.size() && entries[j].offset == entries[i].offset &&
           entries[j].length == entries[i].length;
         ++j) {
      metadata = metadata || entries[j].metadata;
      if (entries[j].line < first->line) first = &entries[j];
    }
    i = j;
    if (metadata) continue;
    const std::string_view text = dict.substr(first->offset, first->length);
    const std::string where = fmt::format("entry '{}' (bytes {}..{} of {})", first->headword,
                                          first->offset, first->offset + first->length, dict_path);
    if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
      ctx.bad_record(first->line, where + " is empty");
      continue;
    }
    const std::string bad = describe_invalid_utf8(text, 1, nullptr);
    if (!bad.empty()) {
      ctx.bad_record(first->line, fmt::format("{}: {}", where, bad));
      continue;
    }
    Document doc;
    doc.segments.push_back({std::string(text), true, false});
    doc.file_index = ctx.file_index;
    doc.line = first->line;
    ctx.out.documents.push_back(std::move(doc));
  }
}

}  // namespace data_detail
}  // namespace loom
