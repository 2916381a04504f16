// Source file listing (dictd pairing), raw loading and hashing, and the dispatch to the format
// readers; also the shared bad-record and UTF-8 reporting of source_readers.h.
#include "data/sources.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "autograd/check.h"
#include "data/file_io.h"
#include "data/hash.h"
#include "data/source_readers.h"
#include "layers/tokenizer.h"

namespace loom {

namespace fs = std::filesystem;

std::string_view source_format_name(SourceFormat f) {
  switch (f) {
    case SourceFormat::Text:
      return "text";
    case SourceFormat::Jsonl:
      return "jsonl";
    case SourceFormat::Instruct:
      return "instruct";
    case SourceFormat::Chat:
      return "chat";
    case SourceFormat::Dictd:
      return "dictd";
  }
  return "?";
}

SourceFormat parse_source_format(std::string_view name, std::string_view what) {
  for (auto f : {SourceFormat::Text, SourceFormat::Jsonl, SourceFormat::Instruct,
                 SourceFormat::Chat, SourceFormat::Dictd}) {
    if (source_format_name(f) == name) return f;
  }
  throw Error(
      fmt::format("{}: format '{}' is not known; expected one of text, jsonl, instruct, "
                  "chat, dictd",
                  what, name));
}

void set_text_split(SourceConfig& config, std::string_view separator) {
  if (separator.empty() || separator == "blank_lines") {
    config.split = TextSplit::BlankLines;
    config.separator.clear();
  } else if (separator == "file") {
    config.split = TextSplit::WholeFile;
    config.separator.clear();
  } else {
    config.split = TextSplit::Separator;
    config.separator = std::string(separator);
  }
}

std::string source_label(const SourceConfig& config) {
  return fmt::format("data source '{}'", config.name);
}

uint64_t RawSource::total_bytes() const {
  uint64_t n = 0;
  for (const auto& b : bytes) n += b.size();
  return n;
}

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// NAME.index + NAME.dict.dz / NAME.dict for every dictionary among `files`.
std::vector<std::string> pair_dictd_files(const std::vector<std::string>& files,
                                          const SourceConfig& config) {
  struct Pair {
    std::string index, dict;
  };
  std::map<std::string, Pair> by_stem;
  for (const auto& f : files) {
    if (ends_with(f, ".index")) {
      by_stem[f.substr(0, f.size() - 6)].index = f;
    } else if (ends_with(f, ".dict.dz")) {
      auto& p = by_stem[f.substr(0, f.size() - 8)];
      p.dict = f;  // the compressed one wins over a plain .dict beside it
    } else if (ends_with(f, ".dict")) {
      auto& p = by_stem[f.substr(0, f.size() - 5)];
      if (p.dict.empty()) p.dict = f;
    }
  }
  std::vector<std::string> out;
  for (auto& [stem, p] : by_stem) {
    if (p.index.empty() || p.dict.empty()) {
      const bool has_index = !p.index.empty();
      // The partner may exist without having been matched by the glob.
      for (const char* ext : {".index", ".dict.dz", ".dict"}) {
        const std::string candidate = stem + ext;
        std::error_code ec;
        if (!fs::is_regular_file(candidate, ec)) continue;
        if (std::string_view(ext) == ".index") {
          if (p.index.empty()) p.index = candidate;
        } else if (p.dict.empty()) {
          p.dict = candidate;
        }
      }
      if (p.index.empty() || p.dict.empty()) {
        throw Error(fmt::format(
            "{}: dictd dictionary '{}' has {} but no {}; a dictd source needs NAME.index and "
            "NAME.dict.dz (install e.g. dict-foldoc, files in /usr/share/dictd/)",
            source_label(config), stem, has_index ? p.index : p.dict,
            has_index ? stem + ".dict.dz" : stem + ".index"));
      }
    }
    out.push_back(p.index);
    out.push_back(p.dict);
  }
  if (out.empty()) {
    throw Error(fmt::format("{}: '{}' names no dictd dictionary (NAME.index + NAME.dict.dz)",
                            source_label(config), config.path));
  }
  return out;
}

}  // namespace

std::vector<std::string> list_source_files(const SourceConfig& config) {
  const std::string what = source_label(config);
  if (config.format != SourceFormat::Dictd) return expand_source_path(config.path, what);
  std::error_code ec;
  if (!has_glob_chars(config.path) && !fs::exists(config.path, ec) &&
      fs::is_regular_file(config.path + ".index", ec)) {
    return pair_dictd_files({config.path + ".index"}, config);  // a bare NAME
  }
  return pair_dictd_files(expand_source_path(config.path, what), config);
}

RawSource load_raw_source(const SourceConfig& config) {
  RawSource raw;
  raw.paths = list_source_files(config);
  raw.bytes.reserve(raw.paths.size());
  for (const auto& p : raw.paths) raw.bytes.push_back(read_file_bytes(p));
  return raw;
}

uint64_t raw_source_hash(const RawSource& raw) {
  Hasher64 h(0x10057A7Aull);
  h.update_u64(raw.paths.size());
  for (size_t i = 0; i < raw.paths.size(); ++i) {
    h.update_string(raw.paths[i]);
    h.update_string(raw.bytes[i]);
  }
  return h.digest();
}

SourceDocuments parse_source(const SourceConfig& config, const RawSource& raw) {
  LOOM_CHECK(raw.paths.size() == raw.bytes.size(), "{} paths, {} byte buffers", raw.paths.size(),
             raw.bytes.size());
  SourceDocuments out;
  out.files = raw.paths;
  const auto text_of = [&](size_t i) {
    std::string text = is_gzip(raw.bytes[i]) ? gunzip(raw.bytes[i], raw.paths[i]) : raw.bytes[i];
    if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);  // a UTF-8 byte order mark
    return text;
  };
  if (config.format == SourceFormat::Dictd) {
    LOOM_CHECK(raw.paths.size() % 2 == 0, "dictd files come in pairs, got {}", raw.paths.size());
    for (size_t i = 0; i < raw.paths.size(); i += 2) {
      const std::string index = text_of(i);
      const std::string dict = text_of(i + 1);
      data_detail::ReadContext ctx{config, out, static_cast<uint32_t>(i), raw.paths[i]};
      data_detail::read_dictd(ctx, index, dict, raw.paths[i + 1]);
    }
  } else {
    for (size_t i = 0; i < raw.paths.size(); ++i) {
      const std::string text = text_of(i);
      data_detail::ReadContext ctx{config, out, static_cast<uint32_t>(i), raw.paths[i]};
      if (config.format == SourceFormat::Text) {
        data_detail::read_text(ctx, text);
      } else {
        data_detail::read_jsonl(ctx, text);
      }
    }
  }
  if (out.documents.empty()) {
    std::string files;
    for (size_t i = 0; i < out.files.size() && i < 5; ++i) {
      files += (i > 0 ? ", " : "") + out.files[i];
    }
    if (out.files.size() > 5) files += fmt::format(", ... ({} files)", out.files.size());
    throw Error(fmt::format(
        "{}: no documents in {} ({} format){}; check the path, the format and the field names",
        source_label(config), files, source_format_name(config.format),
        out.bad.count > 0 ? fmt::format(" -- all {} records were bad, the first: {}", out.bad.count,
                                        out.bad.messages.front())
                          : ""));
  }
  return out;
}

SourceDocuments read_source(const SourceConfig& config) {
  return parse_source(config, load_raw_source(config));
}

namespace data_detail {

void ReadContext::bad_record(uint64_t line, const std::string& message) const {
  std::string full = fmt::format("{}: {}:{}: {}", source_label(config), path, line, message);
  if (!config.skip_bad_records) {
    throw Error(full + " (set skip_bad_records to leave bad records out with a warning)");
  }
  out.bad.add(std::move(full));
}

void ReadContext::fail(uint64_t line, const std::string& message) const {
  throw Error(fmt::format("{}: {}:{}: {}", source_label(config), path, line, message));
}

std::string describe_invalid_utf8(std::string_view text, uint64_t first_line, uint64_t* bad_line) {
  const size_t at = find_invalid_utf8(text);
  if (at == std::string_view::npos) return {};
  uint64_t line = first_line;
  size_t line_start = 0;
  for (size_t i = 0; i < at; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  if (bad_line != nullptr) *bad_line = line;
  return fmt::format(
      "invalid UTF-8 at byte {} of line {} (0x{:02x}); convert the file to UTF-8 "
      "(e.g. iconv -f latin1 -t utf-8)",
      at - line_start + 1, line, static_cast<unsigned char>(text[at]));
}

}  // namespace data_detail
}  // namespace loom
