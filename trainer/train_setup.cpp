// Setting up a training run: the model and its tokenizer, the adapter config, the data streams.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "data/packing.h"
#include "data/source_config.h"
#include "data/token_cache.h"
#include "data/tokenize.h"
#include "layers/chat_format.h"
#include "layers/gguf.h"
#include "layers/tokenizer.h"
#include "lora/targets.h"
#include "trainer/train_internal.h"

namespace loom {

namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> make_byte_tokenizer(const std::string& source, int32_t bos_id,
                                               int32_t eos_id) {
  TokenizerSpec spec;
  spec.source = source;
  spec.kind = TokenizerKind::SentencePieceBpe;
  spec.add_space_prefix = false;
  spec.byte_fallback = true;
  for (int b = 0; b < 256; ++b) {
    if (b == 0) {
      spec.tokens.push_back("<unk>");
      spec.types.push_back(TokenType::Unknown);
    } else if (b == bos_id) {
      spec.tokens.push_back("<s>");
      spec.types.push_back(TokenType::Control);
    } else if (b == eos_id) {
      spec.tokens.push_back("</s>");
      spec.types.push_back(TokenType::Control);
    } else if (b == ' ') {
      // SentencePiece writes a space as U+2581; this token makes it byte 32 again.
      spec.tokens.push_back("\xE2\x96\x81");
      spec.types.push_back(TokenType::Normal);
    } else {
      spec.tokens.push_back(fmt::format("<0x{:02X}>", b));
      spec.types.push_back(TokenType::Byte);
    }
  }
  spec.scores.assign(256, 0.0f);
  spec.unk_id = 0;
  spec.bos_id = bos_id;
  spec.eos_id = eos_id;
  return std::make_unique<Tokenizer>(std::move(spec));
}

namespace {

int32_t config_token_id(const nlohmann::json& config, const char* key, const std::string& path) {
  if (!config.contains(key) || !config[key].is_number_integer())
    throw Error(fmt::format("{}: no integer '{}'; the byte tokenizer needs the model's {} id",
                            path, key, key));
  const int64_t id = config[key].get<int64_t>();
  if (id < 1 || id > 255)
    throw Error(fmt::format("{}: '{}' is {}, expected 1..255 for a 256-token byte vocabulary",
                            path, key, id));
  return static_cast<int32_t>(id);
}

}  // namespace

TrainingModel load_training_model(const std::string& path, std::string_view label) {
  TrainingModel out;
  if (fs::is_directory(path)) {
    out.model = std::make_unique<LlamaModel>(LlamaModel::from_hf(path));
    const std::string tok = (fs::path(path) / "tokenizer.json").string();
    if (fs::exists(tok)) {
      out.tokenizer = load_tokenizer_json(tok);
      out.tokenizer_description = fmt::format("{} ({} tokens)", tok, out.tokenizer->vocab_size());
      return out;
    }
    if (out.model->config().vocab_size != 256)
      throw Error(
          fmt::format("{} {}: no tokenizer.json in this Hugging Face folder and "
                      "the vocabulary has {} tokens (only a 256-token one can be read as "
                      "bytes); put the model's tokenizer.json there",
                      label, path, out.model->config().vocab_size));
    const std::string config_path = (fs::path(path) / "config.json").string();
    std::ifstream in(config_path);
    const nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) throw Error(fmt::format("{}: not valid JSON", config_path));
    out.tokenizer = make_byte_tokenizer(path + " (bytes)", config_token_id(config, "bos_token_id", config_path),
                                        config_token_id(config, "eos_token_id", config_path));
    out.tokenizer_description = fmt::format(
        "bytes: no tokenizer.json, and the vocabulary is 256 tokens, so token id = byte value "
        "(bos {}, eos {})",
        out.tokenizer->bos_id(), out.tokenizer->eos_id());
    return out;
  }
  if (!fs::exists(path))
    throw Error(
        fmt::format("{} {}: no such file or directory (expected a .gguf file or a "
                    "Hugging Face model folder)",
                    label, path));
  const GgufFile file = GgufFile::open(path);
  out.model = std::make_unique<LlamaModel>(LlamaModel::from_gguf(file));
  out.tokenizer = load_tokenizer(file);
  out.tokenizer_description = fmt::format("{} from the GGUF ({} tokens)",
                                          tokenizer_kind_name(out.tokenizer->kind()),
                                          out.tokenizer->vocab_size());
  return out;
}

namespace {

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$|()[]{}*+?\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

LoraConfig lora_config_from_plan(const TrainPlan& plan) {
  LoraConfig c;
  c.rank = plan.rank;
  c.alpha = plan.alpha;
  c.dropout = static_cast<float>(plan.dropout);
  c.rslora = plan.rslora;
  c.dora = plan.dora;
  c.init = parse_lora_init(plan.init);
  c.rank_pattern = plan.rank_pattern;
  c.alpha_pattern = plan.alpha_pattern;
  c.base_dtype = parse_base_dtype(plan.base_dtype);
  c.seed = plan.seed;
  // The recipe's validation refuses these first, naming the line; a plan built in code gets
  // the same answers here.
  if (plan.base_dtype == "nf4" && !plan.double_quant)
    throw Error("model.double_quant: false is not supported: loom's NF4 base always "
                "double-quantizes its absmax values (lora/qlora.h); set it to true");
  if (plan.target_regex.empty()) {
    c.targets.modules = plan.targets;
    c.targets.layers = plan.layers;
  } else {
    // A regex written beside explicit lora.targets adds to them (the recipe's validation emptied
    // the default list for a regex given alone); LoraTargets takes one regex, so the names become
    // alternatives of it (PEFT's "ends with .name" rule).
    if (!plan.layers.empty())
      throw Error("lora.layers cannot be combined with lora.target_regex (PEFT ignores "
                  "layers_to_transform for a regex target); put the layer numbers in the regex");
    std::string re = "(?:" + plan.target_regex + ")";
    for (const std::string& t : plan.targets) re += "|(?:.*\\.)?" + regex_escape(t);
    c.targets.regex = re;
    c.targets.modules.clear();
  }
  c.validate();
  return c;
}

AdapterCount count_adapter_parameters(LlamaModel& model, const LoraConfig& config) {
  AdapterCount n;
  const std::vector<Linear*> targets =
      select_targets(model.adaptable(), config.targets, model.config().n_layers);
  for (const Linear* l : targets) {
    const int64_t r = pattern_value(config.rank_pattern, l->hf_name, config.rank);
    // B A has rank at most min(in, out): a larger r only adds parameters (and memory: a rank in
    // the thousands would not fit), never expressiveness.
    const int64_t most = std::min(l->in_features(), l->out_features());
    if (r > most)
      throw Error(fmt::format(
          "lora.rank: rank {} for {} ({} -> {}) is more than min(in, out) = {}, the most a "
          "low-rank update of that projection can use; lower lora.rank (or give that module "
          "a rank_pattern entry)",
          r, l->hf_name, l->in_features(), l->out_features(), most));
    n.modules += 1;
    if (l->kind == Projection::Output) {
      check_lm_head_options(config);
      n.head = true;
    }
    n.parameters += r * (l->in_features() + l->out_features()) + (config.dora ? l->out_features() : 0);
  }
  return n;
}

bool renders_chat(const TrainSourcePlan& s) {
  return s.format == "chat" || (s.format == "instruct" && s.instruct_as_chat);
}

std::string source_chat_template(const TrainSourcePlan& s, const Tokenizer& tokenizer) {
  return resolve_chat_template(s.chat_template, tokenizer, fmt::format("data source '{}'", s.name));
}

std::string resolve_default_system(const TrainSourcePlan& s, const Tokenizer& tokenizer) {
  if (s.default_system == "none") return "";
  if (s.default_system != "model") return s.default_system;
  // The model's own default only where its template is the format the source renders with.
  const ChatTemplate* format = detect_chat_template(tokenizer);
  if (format == nullptr || format->name != source_chat_template(s, tokenizer)) return "";
  return template_default_system(tokenizer.chat_template());
}

SourceConfig source_config(const TrainSourcePlan& s, const Tokenizer& tokenizer) {
  SourceConfig sc;
  sc.name = s.name;
  sc.path = s.path;
  sc.format = parse_source_format(s.format, fmt::format("data source '{}' format", s.name));
  set_text_split(sc, s.separator);
  sc.text_field = s.text_field;
  sc.prompt_field = s.prompt_field;
  sc.completion_field = s.completion_field;
  sc.instruct_as_chat = s.instruct_as_chat;
  sc.messages_field = s.messages_field;
  if (renders_chat(s)) {
    sc.chat_template = source_chat_template(s, tokenizer);
    sc.default_system = resolve_default_system(s, tokenizer);
  }
  sc.skip_bad_records = s.skip_bad_records;
  sc.weight = s.weight;
  sc.heldout_fraction = s.heldout_fraction;
  return sc;
}

TrainData build_train_data(const TrainPlan& plan, const Tokenizer& tokenizer) {
  TrainData d;
  const uint64_t tok_hash = tokenizer_fingerprint(tokenizer);
  const DocumentFraming framing = document_framing(tokenizer);
  std::vector<MixSource> mix;
  for (const TrainSourcePlan& s : plan.sources) {
    const SourceConfig sc = source_config(s, tokenizer);
    TokenCacheOptions cache;
    TokenCacheReport report;
    auto src = load_tokenized_source(sc, tokenizer, tok_hash, cache, &report);
    d.cache_notes.push_back(fmt::format(
        "{}: {} documents, {} tokens ({} token cache {}, {:.1f} s)", s.name, src->num_documents(),
        src->num_tokens(), report.hit ? "from" : "built", report.path,
        report.read_seconds + report.tokenize_seconds));
    d.sources.push_back(src);
    mix.push_back(MixSource{src, s.weight, s.heldout_fraction});
  }
  MixerConfig mc;
  if (plan.mix_by == "tokens") mc.mix_by = MixBy::Tokens;
  else if (plan.mix_by == "examples") mc.mix_by = MixBy::Examples;
  else throw Error(fmt::format("data.mix_by: '{}' is not known; expected tokens or examples", plan.mix_by));
  if (plan.on_exhausted == "repeat") mc.on_exhausted = OnExhausted::Repeat;
  else if (plan.on_exhausted == "stop") mc.on_exhausted = OnExhausted::Stop;
  else throw Error(fmt::format("data.on_exhausted: '{}' is not known; expected repeat or stop", plan.on_exhausted));
  mc.max_epochs = plan.epochs;
  mc.seed = plan.seed;
  mc.split_seed = 0;  // held-out documents do not depend on the training seed (heldout.h)
  mc.framing = framing;
  d.packing.seq_len = plan.seq_len;
  d.packing.batch_size = plan.batch_size;
  d.packing.train_on_prompt = plan.train_on_prompt;
  d.packing.one_document_per_row = !plan.packing;  // padded rows, padding never a target
  d.packing.pad_id = tokenizer.pad_id();
  d.packing.framing = framing;
  d.stream = std::make_unique<TrainStream>(mix, mc, d.packing);
  for (int i = 0; i < d.stream->mixer().num_sources(); ++i)
    d.heldout.push_back(d.stream->mixer().split(i).heldout);
  d.mix = std::move(mix);
  d.mixer = mc;
  return d;
}

int64_t count_data_steps(const TrainData& data, const TrainPlan& plan, int64_t cap,
                         const TrainStreamPosition* from) {
  if (data.mixer.on_exhausted == OnExhausted::Repeat && data.mixer.max_epochs <= 0) return -1;
  TrainStream stream(data.mix, data.mixer, data.packing);
  if (from != nullptr) stream.restore(*from);
  const int64_t accum = std::max<int64_t>(1, plan.grad_accum);
  Batch batch;
  int64_t micro = 0;
  while ((cap <= 0 || micro < cap * accum) && stream.next(batch)) ++micro;
  return (micro + accum - 1) / accum;
}

}  // namespace loom
