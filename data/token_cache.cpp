// load_tokenized_source(): key the source, map a cache hit, or read + tokenize + write on a miss.
#include "data/token_cache.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "autograd/check.h"
#include "data/chat_template.h"
#include "data/hash.h"
#include "data/sources.h"
#include "data/tokenize.h"
#include "layers/tokenizer.h"

namespace loom {

std::string default_token_cache_dir() {
  const char* env = std::getenv("LOOM_CACHE_DIR");
  if (env != nullptr && *env != '\0') return (std::filesystem::path(env) / "tokens").string();
  return ".cache/loom/tokens";
}
namespace {

// Bump when a reader's output changes for the same input, so old cache files miss.
// 2: chat messages in ShareGPT's {from, value} layout; 3: the Mistral formats' rendering fixed
// (conversations not opening with a user turn, empty messages merged).
constexpr uint64_t kReaderVersion = 3;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string file_safe(const std::string& name) {
  std::string out;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    out += ok ? c : '_';
  }
  return out.empty() ? "source" : out;
}

void report_skipped(const SourceConfig& config, const TokenizedSource& src,
                    const WarningSink& warn) {
  if (src.skipped_records() == 0) return;
  for (const auto& m : src.skipped_messages()) warn("skipped bad record: " + m);
  warn(fmt::format("{}: skipped {} bad record{} ({} shown above); {} documents kept",
                   source_label(config), src.skipped_records(),
                   src.skipped_records() == 1 ? "" : "s", src.skipped_messages().size(),
                   src.num_documents()));
}

}  // namespace

uint64_t reader_options_hash(const SourceConfig& c) {
  Hasher64 h(kReaderVersion);
  h.update_u64(static_cast<uint64_t>(c.format));
  switch (c.format) {
    case SourceFormat::Text:
      h.update_u64(static_cast<uint64_t>(c.split));
      h.update_string(c.separator);
      break;
    case SourceFormat::Jsonl:
      h.update_string(c.text_field);
      break;
    case SourceFormat::Instruct:
      h.update_string(c.prompt_field);
      h.update_string(c.completion_field);
      h.update_u64(c.instruct_as_chat ? 1 : 0);
      if (c.instruct_as_chat) {
        h.update_string(c.chat_template);
        h.update_string(c.default_system);
      }
      break;
    case SourceFormat::Chat:
      h.update_string(c.messages_field);
      h.update_string(c.chat_template);
      h.update_string(c.default_system);
      break;
    case SourceFormat::Dictd:
      break;
  }
  h.update_u64(c.skip_bad_records ? 1 : 0);
  return h.digest();
}

std::shared_ptr<const TokenizedSource> load_tokenized_source(const SourceConfig& config,
                                                             const Tokenizer& tokenizer,
                                                             uint64_t tokenizer_hash,
                                                             const TokenCacheOptions& options,
                                                             TokenCacheReport* report) {
  const WarningSink warn = options.warn ? options.warn : [](const std::string& m) {
    std::fprintf(stderr, "warning: %s\n", m.c_str());
  };
  TokenCacheReport local;
  TokenCacheReport& rep = report != nullptr ? *report : local;
  rep = TokenCacheReport{};
  const auto t0 = std::chrono::steady_clock::now();

  RawSource raw = load_raw_source(config);
  rep.raw_bytes = raw.total_bytes();
  const TokenCacheKey key{tokenizer_hash, raw_source_hash(raw), reader_options_hash(config)};
  std::string path;
  if (options.enabled) {
    path = (std::filesystem::path(options.dir) /
            fmt::format("{}-{}.tokens", file_safe(config.name), hex64(key.combined())))
               .string();
    rep.path = path;
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      try {
        auto src = TokenizedSource::map_file(path, config.name, &key);
        rep.hit = true;
        rep.read_seconds = seconds_since(t0);
        report_skipped(config, *src, warn);
        return src;
      } catch (const Error& e) {
        warn(fmt::format("{}: {} -- rebuilding it", source_label(config), e.what()));
      }
    }
  }

  if (config.format == SourceFormat::Chat ||
      (config.format == SourceFormat::Instruct && config.instruct_as_chat)) {
    check_chat_template_tokens(find_chat_template(config.chat_template, source_label(config)),
                               tokenizer);
  }
  SourceDocuments docs = parse_source(config, raw);
  raw = RawSource{};
  for (const auto& d : docs.documents) {
    for (const auto& s : d.segments) rep.text_bytes += s.text.size();
  }
  rep.read_seconds = seconds_since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  TokenizedDocs tokenized =
      tokenize_documents(docs, tokenizer, options.threads, source_label(config));
  rep.tokenize_seconds = seconds_since(t1);
  docs = SourceDocuments{};

  std::shared_ptr<const TokenizedSource> src;
  if (options.enabled) {
    write_token_cache(path, key, tokenized);
    tokenized = TokenizedDocs{};
    src = TokenizedSource::map_file(path, config.name, &key);
  } else {
    src = TokenizedSource::from_docs(config.name, std::move(tokenized), key);
  }
  report_skipped(config, *src, warn);
  return src;
}

}  // namespace loom
