// DataConfig -> LoadedData (sources tokenized, mixer and packing configured), and descriptions.
#include "data/pipeline.h"

#include <fmt/format.h>

#include <set>

#include "autograd/check.h"
#include "data/sources.h"
#include "data/tokenize.h"
#include "layers/tokenizer.h"

namespace loom {
namespace {

// "\n%\n" as it would be written in a recipe.
std::string escaped(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string_view mix_by_name(MixBy m) {
  return m == MixBy::Tokens ? "tokens" : "examples";
}
std::string_view on_exhausted_name(OnExhausted o) {
  return o == OnExhausted::Repeat ? "repeat" : "stop";
}

MixBy parse_mix_by(std::string_view name, std::string_view what) {
  if (name == "tokens") return MixBy::Tokens;
  if (name == "examples") return MixBy::Examples;
  throw Error(
      fmt::format("{}: '{}' is not a mixing unit; expected tokens or examples", what, name));
}

OnExhausted parse_on_exhausted(std::string_view name, std::string_view what) {
  if (name == "repeat") return OnExhausted::Repeat;
  if (name == "stop") return OnExhausted::Stop;
  throw Error(
      fmt::format("{}: '{}' is not an on_exhausted policy; expected repeat or stop", what, name));
}

TrainStream LoadedData::train_stream() const {
  return TrainStream(sources, mixer, packing);
}

EvalStream LoadedData::eval_stream(int source) const {
  LOOM_CHECK(source >= 0 && static_cast<size_t>(source) < sources.size(), "source {} of {}", source,
             sources.size());
  const MixSource& s = sources[source];
  const std::string what = fmt::format("data source '{}'", s.data->name());
  return EvalStream(
      s.data,
      split_documents(s.data->num_documents(), s.heldout_fraction, mixer.split_seed, what).heldout,
      packing);
}

LoadedData load_data(const DataConfig& config, const Tokenizer& tokenizer) {
  if (config.sources.empty()) {
    throw Error("data: no sources; a recipe needs at least one entry under data.sources");
  }
  if (config.seq_len < 1 || config.batch_size < 1) {
    throw Error(fmt::format("data: seq_len ({}) and batch_size ({}) must be at least 1",
                            config.seq_len, config.batch_size));
  }
  std::set<std::string> names;
  for (const auto& s : config.sources) {
    if (s.name.empty()) throw Error(fmt::format("data: the source at '{}' has no name", s.path));
    if (!names.insert(s.name).second) {
      throw Error(
          fmt::format("data: two sources are named '{}'; names must be unique (they key "
                      "the metrics, the cache and the mix)",
                      s.name));
    }
  }
  LoadedData out;
  const DocumentFraming framing = document_framing(tokenizer);
  out.mixer.mix_by = config.mix_by;
  out.mixer.on_exhausted = config.on_exhausted;
  out.mixer.seed = config.seed;
  out.mixer.split_seed = config.split_seed;
  out.mixer.max_piece_tokens = config.max_piece_tokens;
  out.mixer.framing = framing;
  out.packing.seq_len = config.seq_len;
  out.packing.batch_size = config.batch_size;
  out.packing.train_on_prompt = config.train_on_prompt;
  out.packing.one_document_per_row = !config.packing;
  out.packing.framing = framing;
  out.packing.pad_id = tokenizer.pad_id();
  const uint64_t tokenizer_hash = tokenizer_fingerprint(tokenizer);
  for (const auto& s : config.sources) {
    TokenCacheReport report;
    out.sources.push_back(
        {load_tokenized_source(s, tokenizer, tokenizer_hash, config.cache, &report), s.weight,
         s.heldout_fraction});
    out.cache_reports.push_back(std::move(report));
  }
  return out;
}

std::string describe_data_config(const DataConfig& c) {
  std::string out = fmt::format(
      "data: seq_len {}, batch_size {}, packing {}, train_on_prompt {}, mix_by {}, on_exhausted "
      "{}, seed {}, split_seed {}, max_piece_tokens {}, cache {}\n",
      c.seq_len, c.batch_size, c.packing ? "on" : "off (one document per row)",
      c.train_on_prompt ? "on" : "off", mix_by_name(c.mix_by), on_exhausted_name(c.on_exhausted),
      c.seed, c.split_seed, c.max_piece_tokens, c.cache.enabled ? c.cache.dir : "off");
  double total = 0;
  for (const auto& s : c.sources) total += s.weight;
  for (const auto& s : c.sources) {
    std::string reader;
    switch (s.format) {
      case SourceFormat::Text:
        reader = s.split == TextSplit::BlankLines ? "documents split at blank lines"
                 : s.split == TextSplit::WholeFile
                     ? "one document per file"
                     : fmt::format("documents split at \"{}\"", escaped(s.separator));
        break;
      case SourceFormat::Jsonl:
        reader = fmt::format("text_field '{}'", s.text_field);
        break;
      case SourceFormat::Instruct:
        reader = fmt::format("prompt_field '{}', completion_field '{}'{}", s.prompt_field,
                             s.completion_field,
                             s.instruct_as_chat ? ", rendered with " + s.chat_template : "");
        break;
      case SourceFormat::Chat:
        reader = fmt::format("messages_field '{}', template {}, default system message {}",
                             s.messages_field, s.chat_template,
                             s.default_system.empty()
                                 ? std::string("none")
                                 : fmt::format("\"{}\"", escaped(s.default_system)));
        break;
      case SourceFormat::Dictd:
        reader = "one document per entry";
        break;
    }
    out += fmt::format(
        "  source '{}': {} ({}; {}), weight {} ({:.1f}% of the mix), heldout_fraction {}, "
        "skip_bad_records {}\n",
        s.name, s.path, source_format_name(s.format), reader, s.weight,
        total > 0 ? 100.0 * s.weight / total : 0.0, s.heldout_fraction,
        s.skip_bad_records ? "on" : "off");
  }
  return out;
}

std::string describe_delivery(const std::vector<SourceDelivery>& delivered) {
  std::string out;
  for (const auto& d : delivered) {
    out += fmt::format(
        "  {}: {} tokens ({:.2f}%, target {:.2f}%), {} documents ({:.2f}%), {} "
        "complete epoch{}\n",
        d.name, d.tokens, 100.0 * d.token_fraction, 100.0 * d.target_weight, d.examples,
        100.0 * d.example_fraction, d.epoch, d.epoch == 1 ? "" : "s");
  }
  return out;
}

}  // namespace loom
