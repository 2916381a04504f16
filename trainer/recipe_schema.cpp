// The recipe schema: one table of every key, its type, its one-line description and the member
// of Recipe it binds to. Defaults are the member initializers in trainer/recipe.h; reading,
// writing and the key listing all come from this table, so adding a key is one line here and
// one member there.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <type_traits>

#include "autograd/check.h"
#include "layers/llama.h"
#include "trainer/recipe_fields.h"

namespace loom {

const std::vector<std::string>& llama_linear_modules() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

const std::vector<std::string>& known_export_formats() {
  static const std::vector<std::string> names = {
      "peft",            "gguf-adapter",     "gguf-adapter-f16", "gguf-adapter-q8_0",
      "merged-safetensors", "merged-safetensors-f32", "merged-gguf-f32", "merged-gguf-f16",
      "merged-gguf-bf16", "merged-gguf-q8_0", "merged-gguf-q4_0", "merged-gguf-q4_k",
      "merged-gguf-q6_k"};
  return names;
}

namespace recipe_detail {
namespace {

template <class E>
using EnumTable = std::vector<std::pair<E, std::string>>;

using BaseDType = ModelRecipe::BaseDType;
using LoraInit = LoraRecipe::Init;
using SourceFormat = DataSourceRecipe::Format;
using MixBy = DataRecipe::MixBy;
using OnExhausted = DataRecipe::OnExhausted;

const EnumTable<BaseDType>& enum_names(BaseDType) {
  static const EnumTable<BaseDType> t = {{BaseDType::Keep, "keep"},
                                         {BaseDType::NF4, "nf4"},
                                         {BaseDType::BF16, "bf16"},
                                         {BaseDType::F32, "f32"}};
  return t;
}
const EnumTable<Precision>& enum_names(Precision) {
  static const EnumTable<Precision> t = {
      {Precision::Auto, "auto"}, {Precision::BF16, "bf16"}, {Precision::F32, "f32"}};
  return t;
}
const EnumTable<LoraInit>& enum_names(LoraInit) {
  static const EnumTable<LoraInit> t = {
      {LoraInit::Kaiming, "kaiming"}, {LoraInit::Gaussian, "gaussian"}, {LoraInit::PiSSA, "pissa"}};
  return t;
}
const EnumTable<SourceFormat>& enum_names(SourceFormat) {
  static const EnumTable<SourceFormat> t = {{SourceFormat::Text, "text"},
                                            {SourceFormat::Jsonl, "jsonl"},
                                            {SourceFormat::Instruct, "instruct"},
                                            {SourceFormat::Chat, "chat"},
                                            {SourceFormat::Dictd, "dictd"}};
  return t;
}
const EnumTable<MixBy>& enum_names(MixBy) {
  static const EnumTable<MixBy> t = {{MixBy::Tokens, "tokens"}, {MixBy::Examples, "examples"}};
  return t;
}
const EnumTable<OnExhausted>& enum_names(OnExhausted) {
  static const EnumTable<OnExhausted> t = {{OnExhausted::Repeat, "repeat"},
                                           {OnExhausted::Stop, "stop"}};
  return t;
}
const EnumTable<LrScheduleKind>& enum_names(LrScheduleKind) {
  static const EnumTable<LrScheduleKind> t = {{LrScheduleKind::Constant, "constant"},
                                              {LrScheduleKind::Linear, "linear"},
                                              {LrScheduleKind::Cosine, "cosine"}};
  return t;
}

template <class E>
std::string_view enum_to_string(E v) {
  for (const auto& [value, name] : enum_names(E{}))
    if (value == v) return name;
  LOOM_FAIL("enum value {} has no name in the recipe schema", static_cast<int>(v));
}

template <class E>
std::vector<std::string> enum_choices() {
  std::vector<std::string> out;
  for (const auto& entry : enum_names(E{})) out.push_back(entry.second);
  return out;
}

template <class T>
void write_flow_list(YAML::Emitter& out, const std::vector<T>& items) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const T& item : items) out << item;
  out << YAML::EndSeq;
}

struct FieldOptions {
  std::vector<std::string> choices;  // allowed items of a string list
  bool required = false;
  // String lists: checks one item instead of `choices`; returns what is wrong ("" when fine).
  std::function<std::string(const std::string& item)> check_item = {};
};
const FieldOptions kRequired = {.choices = {}, .required = true};

// Builds the field for the member `ref` returns (a generic lambda `[](auto& r) -> auto& {...}`,
// so one accessor serves reading and writing); the member's type picks the reader and writer.
template <class Root, class Ref>
Field<Root> field(std::string path, Ref ref, std::string doc, FieldOptions options = {}) {
  using T = std::remove_cvref_t<decltype(ref(std::declval<Root&>()))>;
  Field<Root> f;
  f.path = std::move(path);
  f.doc = std::move(doc);
  f.required = options.required;
  f.choices = std::move(options.choices);
  if constexpr (std::is_same_v<T, int64_t>) {
    f.type = FieldType::Int;
    f.read = [ref](Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      ref(r) = read_int(n, key, ctx.origin);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) { out << ref(r); };
  } else if constexpr (std::is_same_v<T, double>) {
    f.type = FieldType::Float;
    f.read = [ref](Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      ref(r) = read_float(n, key, ctx.origin);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) { out << format_float(ref(r)); };
  } else if constexpr (std::is_same_v<T, bool>) {
    f.type = FieldType::Bool;
    f.read = [ref](Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      ref(r) = read_bool(n, key, ctx.origin);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) { out << (ref(r) ? "true" : "false"); };
  } else if constexpr (std::is_same_v<T, std::string>) {
    f.type = FieldType::String;
    f.read = [ref](Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      ref(r) = read_string(n, key, ctx.origin);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) {
      // Quoted when empty so that it reads back as "" rather than as nothing.
      if (ref(r).empty()) out << YAML::DoubleQuoted;
      out << ref(r);
    };
  } else if constexpr (std::is_enum_v<T>) {
    f.type = FieldType::Enum;
    f.choices = enum_choices<T>();
    f.read = [ref, choices = f.choices](Root& r, const YAML::Node& n, const std::string& key,
                                        ReadContext& ctx) {
      const std::string name = read_choice(n, key, ctx.origin, choices);
      for (const auto& [value, value_name] : enum_names(T{}))
        if (value_name == name) ref(r) = value;
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) {
      out << std::string(enum_to_string(ref(r)));
    };
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    f.type = FieldType::StringList;
    f.read = [ref, choices = f.choices, check = options.check_item](
                 Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      std::vector<std::string> values;
      for (const YAML::Node& item : read_list_items(n, key, ctx.origin)) {
        if (check) {
          values.push_back(read_string(item, key, ctx.origin));
          if (const std::string problem = check(values.back()); !problem.empty())
            throw Error(fmt::format("{}: {}: {}", ctx.origin.at(item), key, problem));
        } else {
          values.push_back(choices.empty() ? read_string(item, key, ctx.origin)
                                           : read_choice(item, key, ctx.origin, choices));
        }
      }
      ref(r) = std::move(values);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) { write_flow_list(out, ref(r)); };
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    f.type = FieldType::IntList;
    f.read = [ref](Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      std::vector<int64_t> values;
      for (const YAML::Node& item : read_list_items(n, key, ctx.origin))
        values.push_back(read_int(item, key, ctx.origin));
      ref(r) = std::move(values);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) { write_flow_list(out, ref(r)); };
  } else if constexpr (std::is_same_v<T, NamedInts> || std::is_same_v<T, NamedFloats>) {
    constexpr bool kInts = std::is_same_v<T, NamedInts>;
    f.type = kInts ? FieldType::NamedInts : FieldType::NamedFloats;
    auto read_value = [](const YAML::Node& n, const std::string& key, const Origin& origin) {
      if constexpr (kInts) {
        return read_int(n, key, origin);
      } else {
        return read_float(n, key, origin);
      }
    };
    f.read_entry = [ref, read_value](Root& r, const std::string& entry, const YAML::Node& n,
                                     const std::string& key, ReadContext& ctx) {
      const std::string entry_key = key + "." + entry;
      auto value = read_value(n, entry_key, ctx.origin);
      T& map = ref(r);
      auto it =
          std::find_if(map.begin(), map.end(), [&](const auto& e) { return e.first == entry; });
      if (it == map.end()) {
        map.emplace_back(entry, value);
      } else {
        it->second = value;
      }
      ctx.origins[entry_key] = ctx.origin.at(n);
    };
    f.read = [ref, read_entry = f.read_entry](Root& r, const YAML::Node& n, const std::string& key,
                                              ReadContext& ctx) {
      ref(r).clear();
      if (n.IsNull()) return;
      if (!n.IsMap())
        throw Error(fmt::format("{}: {}: expected a map (name: value, ...), found {}",
                                ctx.origin.at(n), key, describe_node(n)));
      for (auto it = n.begin(); it != n.end(); ++it) {
        const std::string entry = read_string(it->first, key, ctx.origin);
        const bool seen = std::any_of(ref(r).begin(), ref(r).end(),
                                      [&](const auto& e) { return e.first == entry; });
        if (seen)
          throw Error(
              fmt::format("{}: {}: \"{}\" appears twice", ctx.origin.at(it->first), key, entry));
        read_entry(r, entry, it->second, key, ctx);
      }
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) {
      out << YAML::Flow << YAML::BeginMap;
      for (const auto& [name, value] : ref(r)) {
        out << YAML::Key << name << YAML::Value;
        if constexpr (kInts) {
          out << value;
        } else {
          out << format_float(value);
        }
      }
      out << YAML::EndMap;
    };
  } else if constexpr (std::is_same_v<T, std::vector<DataSourceRecipe>>) {
    f.type = FieldType::SourceList;
    f.sources = [ref](Root& r) -> std::vector<DataSourceRecipe>& { return ref(r); };
    f.read = [ref](Root& r, const YAML::Node& n, const std::string& key, ReadContext& ctx) {
      ref(r) = read_sources(n, key, ctx);
    };
    f.write = [ref](const Root& r, YAML::Emitter& out) {
      if (ref(r).empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        return;
      }
      out << YAML::BeginSeq;
      for (const DataSourceRecipe& source : ref(r)) {
        out << YAML::BeginMap;
        for (const Field<DataSourceRecipe>& sf : source_fields()) {
          out << YAML::Key << sf.path << YAML::Value;
          sf.write(source, out);
        }
        out << YAML::EndMap;
      }
      out << YAML::EndSeq;
    };
  } else {
    static_assert(sizeof(T) == 0, "recipe field of a type the schema cannot read");
  }
  return f;
}

}  // namespace

// Accessor for a member path, usable on const and non-const roots.
#define LOOM_MEMBER(member) \
  [](auto& r) -> auto& {    \
    return r.member;        \
  }

const std::vector<Field<Recipe>>& recipe_fields() {
  using R = Recipe;
  static const std::vector<std::string> targets = [] {
    std::vector<std::string> names = llama_linear_modules();
    names.emplace_back(projection_hf_name(Projection::Output));
    names.push_back("all-linear");
    return names;
  }();
  static const std::vector<std::string> target_stems = [] {
    std::vector<std::string> names = llama_linear_modules();
    for (Projection p : kAllProjections) names.emplace_back(projection_gguf_name(p));
    names.emplace_back(projection_hf_name(Projection::Output));
    names.emplace_back(projection_gguf_name(Projection::Output));
    return names;
  }();
  // PEFT's target_modules entries: a module name or a dotted suffix of one ("q_proj",
  // "self_attn.q_proj", "model.layers.3.mlp.up_proj"), a GGUF stem ("attn_q", "blk.3.attn_q"),
  // lm_head / output (the LM head), or all-linear. Here only the last component is checked; which
  // projections an entry matches is decided against the model (lora/targets.h), which names an
  // entry that matches none.
  auto check_target = [](const std::string& item) -> std::string {
    if (item == "all-linear") return "";
    const size_t dot = item.rfind('.');
    const std::string last = dot == std::string::npos ? item : item.substr(dot + 1);
    if (std::find(target_stems.begin(), target_stems.end(), last) != target_stems.end()) return "";
    if (last == "lm_head" || last == "output") return "";  // the LM head
    if (last == "embed_tokens" || last == "token_embd")
      return fmt::format(
          "'{}' is the token embedding, which loom cannot adapt: adapters go on the seven "
          "projections of the blocks ({}, or all-linear) and the LM head (lm_head)",
          item, join(llama_linear_modules()));
    return fmt::format(
        "expected a projection name ({}), a dotted module path ending in one "
        "(e.g. self_attn.q_proj), a GGUF stem (attn_q, ..., ffn_down, output) or all-linear; found "
        "\"{}\" (did you mean {}?)",
        join(targets), item, nearest_key(last, target_stems));
  };
  static const std::vector<Field<R>> fields = {
      field<R>("model.path", LOOM_MEMBER(model.path),
               "GGUF file or Hugging Face model directory to fine-tune", kRequired),
      field<R>("model.base_dtype", LOOM_MEMBER(model.base_dtype),
               "storage of the frozen base: keep as loaded, nf4 (QLoRA), bf16 or f32"),
      field<R>("model.double_quant", LOOM_MEMBER(model.double_quant),
               "with base_dtype nf4: quantize the block absmax values too (QLoRA double quant)"),
      field<R>("model.precision", LOOM_MEMBER(model.precision),
               "matrix-product compute: bf16, f32, or auto (bf16 where the CPU has AVX512_BF16)"),
      field<R>("model.checkpoint_activations", LOOM_MEMBER(model.checkpoint_activations),
               "recompute each block's activations in backward to save memory"),
      field<R>("model.keep_attention", LOOM_MEMBER(model.keep_attention),
               "with checkpoint_activations: keep each block's attention output (and, with "
               "bf16 products, its rounded q, k, v) for its backward instead of recomputing "
               "them (tokens x (q_dim floats + q_dim + 2 kv_dim bf16) per block)"),

      field<R>("lora.rank", LOOM_MEMBER(lora.rank), "adapter rank r"),
      field<R>("lora.alpha", LOOM_MEMBER(lora.alpha),
               "adapter scale is alpha / r (alpha / sqrt(r) with use_rslora)"),
      field<R>("lora.dropout", LOOM_MEMBER(lora.dropout), "dropout on the adapter input"),
      field<R>("lora.targets", LOOM_MEMBER(lora.targets),
               "projections to adapt, PEFT's way: names (q_proj, ..., down_proj), dotted "
               "suffixes of module paths (self_attn.q_proj, model.layers.0.mlp.up_proj), GGUF "
               "stems (attn_q, ..., ffn_down); all-linear = all seven; lm_head = the LM head",
               {.choices = targets, .required = false, .check_item = check_target}),
      field<R>("lora.target_regex", LOOM_MEMBER(lora.target_regex),
               "adapt the projections whose full path matches this regex (PEFT's target_modules "
               "as a string): alone it replaces the default targets, beside an explicit "
               "lora.targets it adds to them"),
      field<R>("lora.layers", LOOM_MEMBER(lora.layers), "block indices to adapt; [] = all"),
      field<R>("lora.use_rslora", LOOM_MEMBER(lora.use_rslora), "scale alpha / sqrt(r) (rsLoRA)"),
      field<R>("lora.use_dora", LOOM_MEMBER(lora.use_dora),
               "DoRA: learn a magnitude vector per output row too"),
      field<R>("lora.init", LOOM_MEMBER(lora.init),
               "as PEFT: kaiming (A Kaiming-uniform, B zero), gaussian (A ~ N(0, 1/r^2)), or "
               "pissa (A, B from the top-r SVD of the base)"),
      field<R>("lora.rank_pattern", LOOM_MEMBER(lora.rank_pattern),
               "module-path regex -> rank, first match wins"),
      field<R>("lora.alpha_pattern", LOOM_MEMBER(lora.alpha_pattern),
               "module-path regex -> alpha, first match wins"),
      field<R>("lora.init_from", LOOM_MEMBER(lora.init_from),
               "keep training this adapter (a loom run or adapter folder, a PEFT adapter folder "
               "or a llama.cpp adapter .gguf): its rank, alpha, targets, patterns, rsLoRA, DoRA "
               "and init replace the keys above; dropout is the recipe's"),

      field<R>("data.sources", LOOM_MEMBER(data.sources),
               "corpora to train on; each: name, path, format, weight, heldout_fraction and the "
               "format's fields",
               kRequired),
      field<R>("data.mix", LOOM_MEMBER(data.mix),
               "source name -> weight, replacing the sources' weights (mix.<name>=w on the "
               "command line)"),
      field<R>("data.mix_by", LOOM_MEMBER(data.mix_by), "mix weights count tokens or examples"),
      field<R>("data.seq_len", LOOM_MEMBER(data.seq_len), "tokens per training sequence"),
      field<R>("data.on_exhausted", LOOM_MEMBER(data.on_exhausted),
               "when a source runs out: start it again (repeat), or end the run there (stop: "
               "the last batches are trained, the run ends normally before train.steps, the "
               "learning-rate schedule spans the steps the data gives)"),
      field<R>("data.train_on_prompt", LOOM_MEMBER(data.train_on_prompt),
               "instruct/chat: count the loss on prompt tokens too"),
      field<R>("data.packing", LOOM_MEMBER(data.packing),
               "pack several documents into one sequence (with a document mask)"),

      field<R>("train.batch_size", LOOM_MEMBER(train.batch_size), "sequences per micro-batch"),
      field<R>("train.grad_accum", LOOM_MEMBER(train.grad_accum),
               "micro-batches accumulated per optimizer step"),
      field<R>("train.steps", LOOM_MEMBER(train.steps),
               "optimizer steps to run (required unless train.epochs is set; then a cap, 0 = "
               "none)"),
      field<R>("train.epochs", LOOM_MEMBER(train.epochs),
               "passes over the training data; the run ends when a source has been trained on "
               "that many times over (in a mix, the one that runs out first), or at train.steps "
               "if that comes first; the schedule spans the steps this gives; 0 = train.steps "
               "alone"),
      field<R>("train.lr", LOOM_MEMBER(train.lr), "peak learning rate"),
      field<R>("train.schedule", LOOM_MEMBER(train.schedule),
               "learning-rate decay after warmup (as Hugging Face transformers' schedules)"),
      field<R>("train.warmup_steps", LOOM_MEMBER(train.warmup_steps),
               "steps of linear warmup from 0 to lr"),
      field<R>("train.min_lr_ratio", LOOM_MEMBER(train.min_lr_ratio),
               "linear/cosine decay ends at lr * min_lr_ratio"),
      field<R>("train.weight_decay", LOOM_MEMBER(train.weight_decay),
               "AdamW decoupled weight decay, on LoRA A and B (DoRA magnitudes: see "
               "decay_dora_magnitude)"),
      field<R>("train.decay_dora_magnitude", LOOM_MEMBER(train.decay_dora_magnitude),
               "with use_dora: apply weight_decay to the magnitude vectors too, as HF Trainer and "
               "torchtune do (false: they keep the adapted rows' norms from shrinking)"),
      field<R>("train.adam_beta1", LOOM_MEMBER(train.adam_beta1), "AdamW first-moment decay"),
      field<R>("train.adam_beta2", LOOM_MEMBER(train.adam_beta2), "AdamW second-moment decay"),
      field<R>("train.adam_eps", LOOM_MEMBER(train.adam_eps),
               "AdamW epsilon, added outside the square root"),
      field<R>("train.clip_grad_norm", LOOM_MEMBER(train.clip_grad_norm),
               "clip the global gradient L2 norm to this; 0 = no clipping"),
      field<R>("train.seed", LOOM_MEMBER(train.seed),
               "seed for adapter init, dropout and data order"),
      field<R>("train.max_skipped_steps", LOOM_MEMBER(train.max_skipped_steps),
               "consecutive steps with a non-finite loss or gradient before the run stops"),

      field<R>("eval.every", LOOM_MEMBER(eval.every),
               "steps between held-out evaluations; 0 = only at the end"),
      field<R>("eval.batches", LOOM_MEMBER(eval.batches),
               "batches per source and evaluation; 0 = no evaluation"),
      field<R>("eval.at_start", LOOM_MEMBER(eval.at_start), "evaluate before the first step"),

      field<R>("checkpoint.every", LOOM_MEMBER(checkpoint.every),
               "steps between checkpoints; 0 = only at the end"),
      field<R>("checkpoint.keep_last", LOOM_MEMBER(checkpoint.keep_last),
               "checkpoints to keep in output.dir"),

      field<R>("output.dir", LOOM_MEMBER(output.dir),
               "run directory (default runs/<recipe file name>)"),
      field<R>("output.export", LOOM_MEMBER(output.export_formats),
               "formats written at the end of the run",
               {.choices = known_export_formats(), .required = false}),
      field<R>("output.base_model_name", LOOM_MEMBER(output.base_model_name),
               "the peft export's base_model_name_or_path: the Hugging Face id of the base "
               "(e.g. HuggingFaceTB/SmolLM2-135M-Instruct); empty = the base model's path"),
      field<R>("output.log_every", LOOM_MEMBER(output.log_every),
               "steps between progress lines when stderr is not a terminal"),

      field<R>("resume", LOOM_MEMBER(resume), "continue from the latest checkpoint in output.dir"),
  };
  return fields;
}

const std::vector<Field<DataSourceRecipe>>& source_fields() {
  using S = DataSourceRecipe;
  static const std::vector<Field<S>> fields = {
      field<S>("name", LOOM_MEMBER(name),
               "unique name (letters, digits, _ and -), used by data.mix and eval", kRequired),
      field<S>("path", LOOM_MEMBER(path), "file or glob", kRequired),
      field<S>("format", LOOM_MEMBER(format), "how records are stored"),
      field<S>("weight", LOOM_MEMBER(weight), "relative share of the training mix"),
      field<S>("heldout_fraction", LOOM_MEMBER(heldout_fraction),
               "share of documents held out for evaluation"),
      field<S>("text_field", LOOM_MEMBER(text_field), "jsonl: field holding the text"),
      field<S>("prompt_field", LOOM_MEMBER(prompt_field), "instruct: field holding the prompt"),
      field<S>("completion_field", LOOM_MEMBER(completion_field),
               "instruct: field holding the completion (the trained part)"),
      field<S>("instruct_as_chat", LOOM_MEMBER(instruct_as_chat),
               "instruct: render as a user/assistant exchange with chat_template"),
      field<S>("messages_field", LOOM_MEMBER(messages_field),
               "chat: field holding [{role, content}, ...], or ShareGPT's [{from, value}, ...] "
               "(human -> user, gpt -> assistant; ShareGPT files name it conversations)"),
      field<S>("chat_template", LOOM_MEMBER(chat_template),
               "chat (and instruct_as_chat): model (the format of the model's own template), "
               "chatml (SmolLM2, Qwen2), llama3 (Llama 3), mistral-v1 (Mistral-7B-Instruct "
               "v0.1 / v0.2), mistral-v3 (v0.3) or llama2 (Llama-2-chat)"),
      field<S>("default_system", LOOM_MEMBER(default_system),
               "chat (and instruct_as_chat): system message of conversations without one: model "
               "= the model template's own default (SmolLM2 has one; as Hugging Face and "
               "llama.cpp --jinja render it), none, or the text itself"),
      field<S>("separator", LOOM_MEMBER(separator),
               "text: \"\" or blank_lines = blank-line separated, file = one document per "
               "file, else that literal separator"),
      field<S>("skip_bad_records", LOOM_MEMBER(skip_bad_records),
               "skip and count unreadable records instead of failing"),
  };
  return fields;
}

#undef LOOM_MEMBER

}  // namespace recipe_detail

std::string_view to_string(ModelRecipe::BaseDType v) {
  return recipe_detail::enum_to_string(v);
}
std::string_view to_string(LoraRecipe::Init v) {
  return recipe_detail::enum_to_string(v);
}
std::string_view to_string(DataSourceRecipe::Format v) {
  return recipe_detail::enum_to_string(v);
}
std::string_view to_string(DataRecipe::MixBy v) {
  return recipe_detail::enum_to_string(v);
}
std::string_view to_string(DataRecipe::OnExhausted v) {
  return recipe_detail::enum_to_string(v);
}
std::string_view to_string(LrScheduleKind v) {
  return recipe_detail::enum_to_string(v);
}

}  // namespace loom
