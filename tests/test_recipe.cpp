// Recipes (trainer/recipe.h): schema checks with file/line/nearest-key messages, wrong types,
// `key=value` overrides of every type, validation, print -> load round trips, and every shipped
// recipe in recipes/ parsing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "autograd/check.h"
#include "trainer/recipe.h"

namespace loom {
namespace {

const char* kMinimal = R"(# a minimal recipe
model:
  path: models/smollm2.gguf
data:
  sources:
    - name: wiki
      path: data/wiki/*.txt
train:
  steps: 20
)";

// The message of the loom::Error that parsing throws (fails the test if none).
std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe(yaml, "recipes/test.yaml", overrides);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error for:\n" << yaml;
  return "";
}

Recipe parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return parse_recipe(yaml, "recipes/test.yaml", overrides);
}

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(Recipe, MinimalRecipeGetsDefaults) {
  const Recipe r = parse(kMinimal);
  EXPECT_EQ(r.model.path, "models/smollm2.gguf");
  EXPECT_EQ(r.model.base_dtype, ModelRecipe::BaseDType::Keep);
  EXPECT_EQ(r.lora.rank, 16);
  EXPECT_DOUBLE_EQ(r.lora.alpha, 32.0);
  EXPECT_EQ(r.lora.targets, llama_linear_modules());
  ASSERT_EQ(r.data.sources.size(), 1u);
  EXPECT_EQ(r.data.sources[0].format, DataSourceRecipe::Format::Text);
  EXPECT_DOUBLE_EQ(r.data.sources[0].weight, 1.0);
  EXPECT_EQ(r.train.steps, 20);
  EXPECT_DOUBLE_EQ(r.train.lr, 2e-4);
  EXPECT_EQ(r.train.schedule, LrScheduleKind::Cosine);
  EXPECT_EQ(r.checkpoint.keep_last, 2);
  EXPECT_EQ(r.output.dir, "runs/test");  // from the recipe file name
  EXPECT_FALSE(r.resume);
}

TEST(Recipe, UnknownKeyNamesFileLineAndNearestKey) {
  std::string yaml = std::string(kMinimal) + "  warmup_step: 10\n";
  std::string msg = parse_error(yaml);
  EXPECT_HAS(msg, "recipes/test.yaml:10");
  EXPECT_HAS(msg, "unknown key `train.warmup_step`");
  EXPECT_HAS(msg, "did you mean `train.warmup_steps`");
  EXPECT_HAS(msg, "batch_size");  // lists the keys of the section

  msg = parse_error(std::string(kMinimal) + "trian:\n  lr: 1e-3\n");
  EXPECT_HAS(msg, "recipes/test.yaml:10");
  EXPECT_HAS(msg, "did you mean `train`");

  // A key in the wrong section: the right one is the nearest.
  msg = parse_error(std::string(kMinimal) + "  seq_len: 256\n");
  EXPECT_HAS(msg, "did you mean `data.seq_len`");

  // Names from other tools, a truncated name, a part of a name.
  EXPECT_HAS(parse_error(kMinimal, {"train.learning_rate=1e-4"}), "did you mean `train.lr`");
  EXPECT_HAS(parse_error(kMinimal, {"gradient_accumulation_steps=4"}),
             "did you mean `train.grad_accum`");
  EXPECT_HAS(parse_error(kMinimal, {"train.step=4"}), "did you mean `train.steps`");
  EXPECT_HAS(parse_error(kMinimal, {"output.export=gguf"}), "(did you mean gguf-adapter?)");

  // Inside a data source.
  msg = parse_error(R"(model: {path: m.gguf}
train: {steps: 1}
data:
  sources:
    - name: a
      path: x.txt
      wieght: 2
)");
  EXPECT_HAS(msg, "recipes/test.yaml:7");
  EXPECT_HAS(msg, "data.sources.0.wieght");
  EXPECT_HAS(msg, "did you mean `weight`");
}

TEST(Recipe, WrongTypeSaysExpectedAndFound) {
  const auto with_train = [](const std::string& line) {
    return std::string(kMinimal) + "  " + line + "\n";
  };
  std::string msg = parse_error(with_train("batch_size: four"));
  EXPECT_HAS(msg, "recipes/test.yaml:10");
  EXPECT_HAS(msg, "train.batch_size: expected an integer, found the string \"four\"");
  msg = parse_error(with_train("batch_size: 2.5"));
  EXPECT_HAS(msg, "expected an integer, found the number 2.5");
  msg = parse_error(with_train("lr: \"1e-4\""));
  EXPECT_HAS(msg, "train.lr: expected a number, found the quoted string \"1e-4\"");
  msg = parse_error(with_train("lr: [1, 2]"));
  EXPECT_HAS(msg, "expected a number, found a list");
  msg = parse_error(with_train("lr:"));
  EXPECT_HAS(msg, "expected a number, found nothing");
  msg = parse_error(with_train("lr: .inf"));
  EXPECT_HAS(msg, "finite");
  msg = parse_error(with_train("schedule: cosin"));
  EXPECT_HAS(msg, "train.schedule: expected one of constant, linear, cosine, found \"cosin\"");
  EXPECT_HAS(msg, "did you mean cosine");
  msg = parse_error(std::string(kMinimal) + "lora:\n  use_dora: 1\n");
  EXPECT_HAS(msg, "recipes/test.yaml:11");
  EXPECT_HAS(msg, "lora.use_dora: expected true or false, found the integer 1");
  msg = parse_error(std::string(kMinimal) + "lora:\n  targets: [q_proj, qv_proj]\n");
  EXPECT_HAS(msg, "did you mean q_proj");
  msg = parse_error(std::string(kMinimal) + "lora:\n  targets: [self_attn.q_prj]\n");
  EXPECT_HAS(msg, "recipes/test.yaml:11");
  EXPECT_HAS(msg, "found \"self_attn.q_prj\" (did you mean q_proj?)");
  msg = parse_error(std::string(kMinimal) + "lora:\n  targets: [q_proj, embed_tokens]\n");
  EXPECT_HAS(msg, "lora.targets: 'embed_tokens' is the token embedding, which loom cannot adapt");
  EXPECT_EQ(parse(kMinimal, {"lora.targets=[q_proj, lm_head]"}).lora.targets,
            (std::vector<std::string>{"q_proj", "lm_head"}));
  // PEFT's other spellings of a projection: a dotted suffix, a whole name, a GGUF stem.
  EXPECT_EQ(parse(kMinimal, {"lora.targets=[self_attn.q_proj, model.layers.3.mlp.up_proj, attn_v]"})
                .lora.targets,
            (std::vector<std::string>{"self_attn.q_proj", "model.layers.3.mlp.up_proj", "attn_v"}));
  msg = parse_error(std::string(kMinimal) + "eval: 3\n");
  EXPECT_HAS(msg, "`eval` is a section: expected a map of its keys");
  msg = parse_error("model: {path: m.gguf\n");
  EXPECT_HAS(msg, "not valid YAML");
  msg =
      parse_error(std::string("model:\n  path: \x7f"
                              "ELF\x02\x01\x01",
                              20));
  EXPECT_HAS(msg, "recipes/test.yaml:2: not a text file: control byte 0x02 at offset 19");
  msg = parse_error(std::string("\xff\xfem\0o\0d\0", 8));
  EXPECT_HAS(msg, "recipes/test.yaml: is UTF-16 or UTF-32 text (byte-order mark FF FE)");
  // A UTF-8 byte-order mark and CRLF line ends are fine.
  std::string crlf = "\xef\xbb\xbf" + std::string(kMinimal);
  for (size_t at = crlf.find('\n'); at != std::string::npos; at = crlf.find('\n', at + 2))
    crlf.insert(at, "\r");
  EXPECT_EQ(parse(crlf).train.steps, 20);
}

// yaml-cpp's Load reads the first document only: the second would be ignored without a word.
TEST(Recipe, ASecondYamlDocumentIsAnError) {
  const std::string msg = parse_error(std::string(kMinimal) + "---\ntrain:\n  steps: 99\n");
  EXPECT_HAS(msg, "recipes/test.yaml:11: a second YAML document");
  EXPECT_EQ(parse(std::string("---\n") + kMinimal).train.steps, 20);  // a leading '---' is fine
}

TEST(Recipe, ATabInTheIndentationIsNamed) {
  const std::string msg = parse_error(std::string(kMinimal) + "lora:\n\trank: 4\n");
  EXPECT_HAS(msg, "recipes/test.yaml:11: a tab in the indentation; YAML indents with spaces only");
  EXPECT_EQ(parse(std::string(kMinimal) + "# a\tcomment\n").train.steps, 20);  // tabs elsewhere
}

TEST(Recipe, DuplicateKeyIsAnError) {
  const std::string msg = parse_error(std::string(kMinimal) + "  steps: 30\n");
  EXPECT_HAS(msg, "recipes/test.yaml:10");
  EXPECT_HAS(msg, "`train.steps` appears twice (first at recipes/test.yaml:9)");
}

TEST(Recipe, ValidationNamesTheKeyAndWhereItWasSet) {
  std::string msg = parse_error("train: {steps: 3}\ndata: {sources: [{name: a, path: b}]}\n");
  EXPECT_HAS(msg, "model.path is required");
  msg = parse_error("model: {path: m}\ndata: {sources: [{name: a, path: b}]}\n");
  EXPECT_HAS(msg, "train.steps is required");
  EXPECT_HAS(msg, "the number of optimizer steps to run, or set train.epochs");
  msg = parse_error("model: {path: m}\ntrain: {steps: 3}\n");
  EXPECT_HAS(msg, "data.sources is required");
  // train.epochs instead of train.steps (which then caps it, 0 = no cap); never with stop.
  const Recipe by_epochs =
      parse("model: {path: m}\ndata: {sources: [{name: a, path: b}]}\ntrain: {epochs: 2}\n");
  EXPECT_EQ(by_epochs.train.epochs, 2);
  EXPECT_EQ(by_epochs.train.steps, 0);
  EXPECT_EQ(parse(kMinimal, {"train.epochs=3"}).train.steps, 20);
  EXPECT_EQ(parse(kMinimal, {"train.epochs=3", "train.steps=0"}).train.steps, 0);
  msg = parse_error(kMinimal, {"train.steps=0"});
  EXPECT_HAS(msg, "train.steps must be at least 1, found 0");
  msg = parse_error(kMinimal, {"train.epochs=-1"});
  EXPECT_HAS(msg, "train.epochs must be at least 0, found -1");
  msg = parse_error(kMinimal, {"train.epochs=2", "data.on_exhausted=stop"});
  EXPECT_HAS(msg,
             "train.epochs (2) needs data.on_exhausted: repeat (set at command-line override "
             "`data.on_exhausted=stop` to stop");
  // A warmup cannot be checked against the data's steps here: the run does that.
  EXPECT_EQ(parse(kMinimal, {"train.epochs=1", "train.steps=0", "train.warmup_steps=50"})
                .train.warmup_steps,
            50);
  msg = parse_error(std::string(kMinimal) + "  lr: -0.1\n");
  EXPECT_HAS(msg, "recipes/test.yaml:10: train.lr must be positive, found -0.1");
  msg = parse_error(std::string(kMinimal) + "  warmup_steps: 50\n");
  EXPECT_HAS(msg,
             "train.warmup_steps (50) is more than train.steps (20, set at recipes/test.yaml:");
  // The other key of the pair, set on the command line, is named where it was set.
  msg = parse_error(std::string(kMinimal) + "  warmup_steps: 5\n", {"train.steps=1"});
  EXPECT_HAS(msg, "is more than train.steps (1, set at command-line override `train.steps=1`)");
  msg = parse_error(kMinimal, {"lora.dropout=1.5"});
  EXPECT_HAS(msg, "command-line override `lora.dropout=1.5`: lora.dropout must be in [0, 1)");
  msg = parse_error(std::string(kMinimal) + "  mix:\n    wikk: 0.5\n", {});
  EXPECT_HAS(msg, "unknown key");  // mix sits under data, not train
  msg = parse_error(kMinimal, {"mix.wikk=0.5"});
  EXPECT_HAS(msg, "data.mix.wikk names no data source; did you mean \"wiki\"?");
  msg = parse_error(kMinimal, {"data.sources.1={name: wiki, path: y}"});
  EXPECT_HAS(msg, "\"wiki\" names two data sources");
  msg = parse_error(kMinimal, {"data.sources.0.name=has.dot"});
  EXPECT_HAS(msg, "may only hold letters");
  msg = parse_error(kMinimal, {"checkpoint.keep_last=0"});
  EXPECT_HAS(msg, "checkpoint.keep_last must be at least 1, found 0");
  // An error a command-line override causes names the override, not the recipe file.
  msg = parse_error(kMinimal, {"mix.wiki=0"});
  EXPECT_HAS(msg, "command-line override `mix.wiki=0`: data.mix gives every source weight 0");
  msg = parse_error(kMinimal, {"model.path="});
  EXPECT_HAS(msg, "command-line override `model.path=`: model.path is required");
  // A chat setting on a source that renders no chat would be silently ignored: refused.
  msg = parse_error(kMinimal,
                    {"data.sources.0.format=instruct", "data.sources.0.chat_template=llama3"});
  EXPECT_HAS(msg,
             "data.sources.0.chat_template applies to format chat, or instruct with "
             "instruct_as_chat: true; source 'wiki' is format instruct without instruct_as_chat");
  msg = parse_error(kMinimal, {"data.sources.0.default_system=none"});
  EXPECT_HAS(msg, "data.sources.0.default_system applies to format chat");
  // The defaults, as a printed recipe lists them for every source, are not an error (chatml:
  // the default in recipes printed before it became model).
  parse(kMinimal, {"data.sources.0.chat_template=model", "data.sources.0.default_system=model"});
  parse(kMinimal, {"data.sources.0.chat_template=chatml"});
  msg = parse_error(kMinimal, {"data.sources.0.default_system=Be brief."});
  EXPECT_HAS(msg, "data.sources.0.default_system applies to format chat");
  EXPECT_EQ(
      parse(kMinimal, {"data.sources.0.format=instruct", "data.sources.0.instruct_as_chat=true",
                       "data.sources.0.chat_template=llama3"})
          .data.sources[0]
          .chat_template,
      "llama3");
}

TEST(Recipe, OverridesOfEveryType) {
  const Recipe r =
      parse(kMinimal, {
                          "train.batch_size=8",                  // int
                          "train.lr=1e-4",                       // float
                          "lora.use_rslora=true",                // bool
                          "model.path=/models/a b#1: x.gguf",    // string, verbatim
                          "train.schedule=linear",               // enum
                          "model.base_dtype=nf4",                // enum
                          "lora.targets=[q_proj, v_proj]",       // string list
                          "output.export=peft,gguf-adapter",     // comma form
                          "lora.layers=[0, 2, 5]",               // int list
                          "lora.rank_pattern.self_attn\\..*=8",  // map entry
                          "lora.alpha_pattern={mlp: 4.0}",       // whole map
                          "data.sources.1={name: code, path: c/*.jsonl, format: jsonl}",
                          "data.sources.wiki.weight=0.3",         // by name
                          "data.sources.1.heldout_fraction=0.1",  // by index
                          "mix.code=0.7",                         // short mix form
                          "train={grad_accum: 4, seed: 7}",       // a section
                          "resume=true",                          // top level
                      });
  EXPECT_EQ(r.train.batch_size, 8);
  EXPECT_DOUBLE_EQ(r.train.lr, 1e-4);
  EXPECT_TRUE(r.lora.use_rslora);
  EXPECT_EQ(r.model.path, "/models/a b#1: x.gguf");
  EXPECT_EQ(r.train.schedule, LrScheduleKind::Linear);
  EXPECT_EQ(r.model.base_dtype, ModelRecipe::BaseDType::NF4);
  EXPECT_EQ(r.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(r.output.export_formats, (std::vector<std::string>{"peft", "gguf-adapter"}));
  EXPECT_EQ(r.lora.layers, (std::vector<int64_t>{0, 2, 5}));
  EXPECT_EQ(r.lora.rank_pattern, (NamedInts{{"self_attn\\..*", 8}}));
  EXPECT_EQ(r.lora.alpha_pattern, (NamedFloats{{"mlp", 4.0}}));
  ASSERT_EQ(r.data.sources.size(), 2u);
  EXPECT_EQ(r.data.sources[1].name, "code");
  EXPECT_EQ(r.data.sources[1].format, DataSourceRecipe::Format::Jsonl);
  EXPECT_DOUBLE_EQ(r.data.sources[0].weight, 0.3);
  EXPECT_DOUBLE_EQ(r.data.sources[1].heldout_fraction, 0.1);
  EXPECT_DOUBLE_EQ(r.data.sources[1].weight, 0.7);  // data.mix applied
  EXPECT_EQ(r.data.mix, (NamedFloats{{"code", 0.7}}));
  EXPECT_EQ(r.train.grad_accum, 4);
  EXPECT_EQ(r.train.seed, 7);
  EXPECT_EQ(r.train.steps, 20);  // a section override keeps the keys it does not name
  EXPECT_TRUE(r.resume);

  // An index in brackets, as Python / jq write it, is the same key as the dotted index.
  const Recipe br = parse(kMinimal, {"data.sources[0].heldout_fraction=0.25"});
  EXPECT_DOUBLE_EQ(br.data.sources[0].heldout_fraction, 0.25);

  // all-linear expands to the seven projections; later overrides win.
  EXPECT_EQ(parse(kMinimal, {"lora.targets=all-linear"}).lora.targets, llama_linear_modules());
  EXPECT_EQ(parse(kMinimal, {"train.lr=1e-3", "train.lr=5e-4"}).train.lr, 5e-4);
  EXPECT_EQ(parse(kMinimal, {"lora.layers=3"}).lora.layers, (std::vector<int64_t>{3}));
  EXPECT_TRUE(parse(kMinimal, {"lora.layers=[]"}).lora.layers.empty());
}

// PEFT's target_modules is a list or a regex: a regex given alone must not also adapt the
// default list, and the pairs loom refuses are refused before a model loads, naming the line.
TEST(Recipe, TargetRegexAloneReplacesTheDefaultTargets) {
  const Recipe alone = parse(std::string(kMinimal) + "lora:\n  target_regex: \".*\\\\.v_proj\"\n");
  EXPECT_TRUE(alone.lora.targets.empty());
  EXPECT_EQ(alone.lora.target_regex, ".*\\.v_proj");
  // Printed and read back (a checkpoint's resolved recipe), it means the same modules.
  EXPECT_EQ(parse_recipe(recipe_to_yaml(alone), "printed.yaml"), alone);
  const Recipe both = parse(std::string(kMinimal) +
                            "lora:\n  targets: [q_proj]\n  target_regex: \".*\\\\.v_proj\"\n");
  EXPECT_EQ(both.lora.targets, std::vector<std::string>{"q_proj"});
  const Recipe by_override = parse(kMinimal, {"lora.target_regex=.*up_proj"});
  EXPECT_TRUE(by_override.lora.targets.empty());

  std::string msg =
      parse_error(std::string(kMinimal) + "lora:\n  target_regex: \".*v_proj\"\n  layers: [0]\n");
  EXPECT_HAS(msg, "recipes/test.yaml:12");
  EXPECT_HAS(msg,
             "lora.layers cannot be combined with lora.target_regex (set at recipes/test.yaml:11)");
  // Regexes that do not compile are named with their line before any model loads.
  msg = parse_error(std::string(kMinimal) + "lora:\n  target_regex: \"model\\\\.(\"\n");
  EXPECT_HAS(msg, "recipes/test.yaml:11");
  EXPECT_HAS(msg,
             "lora.target_regex 'model\\.(' is not a valid regex: missing closing parenthesis");
  msg = parse_error(std::string(kMinimal) + "lora:\n  rank_pattern:\n    \"q_[\": 4\n");
  EXPECT_HAS(msg, "lora.rank_pattern.q_[ 'q_[' is not a valid regex");
  msg = parse_error(R"(model:
  path: m.gguf
  base_dtype: nf4
  double_quant: false
data:
  sources: [{name: a, path: a.txt}]
)");
  EXPECT_HAS(msg, "recipes/test.yaml:4: model.double_quant is false");
  msg = parse_error(kMinimal, {"model.base_dtype=nf4", "model.double_quant=false"});
  EXPECT_HAS(msg, "command-line override `model.double_quant=false`");
}

TEST(Recipe, OverrideErrors) {
  std::string msg = parse_error(kMinimal, {"train.lerning_rate=1"});
  EXPECT_HAS(msg, "command-line override `train.lerning_rate=1`: unknown key");
  msg = parse_error(kMinimal, {"train.steps=ten"});
  EXPECT_HAS(msg, "command-line override `train.steps=ten`: train.steps: expected an integer");
  msg = parse_error(kMinimal, {"train.steps"});
  EXPECT_HAS(msg, "expected key=value");
  msg = parse_error(kMinimal, {"data.sources.5.weight=1"});
  EXPECT_HAS(msg, "index 5 is past the end; use index 1 to add one");
  msg = parse_error(kMinimal, {"data.sources.books.weight=1"});
  EXPECT_HAS(msg, "no data source named \"books\"");
  msg = parse_error(kMinimal, {"data.sources.0.wieght=1"});
  EXPECT_HAS(msg, "did you mean `weight`");
  msg = parse_error(kMinimal, {"lora.targets=[q_proj"});
  EXPECT_HAS(msg, "not valid YAML");
  msg = parse_error(kMinimal, {"data.sources.1.weight=0.5"});  // a new source without name/path
  EXPECT_HAS(msg, "data.sources.1.name is required");
}

// Every key set away from its default, so a round trip exercises every writer.
const char* kFull = R"(model:
  path: "/models/with: colon #hash.gguf"
  base_dtype: nf4
  precision: f32
  checkpoint_activations: false
lora:
  rank: 8
  alpha: 16.5
  dropout: 0.1
  targets: [q_proj, v_proj]
  target_regex: "blk\\.[0-3]\\..*"
  use_rslora: true
  use_dora: true
  init: pissa
  rank_pattern: {"q_proj$": 4, "v_proj": 12}
  alpha_pattern: {"q_proj$": 2.5}
data:
  sources:
    - name: foldoc
      path: /usr/share/dictd/foldoc.dict.dz
      format: dictd
      weight: 0.25
      heldout_fraction: 0.05
      skip_bad_records: true
    - name: chat-data
      path: data/*.jsonl
      format: chat
      text_field: messages
      separator: "\n\n"
  mix: {foldoc: 0.4, chat-data: 0.6}
  mix_by: examples
  seq_len: 256
  on_exhausted: stop
  train_on_prompt: true
  packing: false
train:
  batch_size: 2
  grad_accum: 3
  steps: 100
  lr: 3.0e-5
  schedule: linear
  warmup_steps: 10
  min_lr_ratio: 0.1
  weight_decay: 0.01
  adam_beta1: 0.8
  adam_beta2: 0.95
  adam_eps: 1.0e-6
  clip_grad_norm: 0.0
  seed: 1234567
  max_skipped_steps: 2
eval:
  every: 25
  batches: 4
  at_start: false
checkpoint:
  every: 50
  keep_last: 3
output:
  dir: runs/full
  export: [peft, merged-gguf-q8_0]
  log_every: 5
resume: true
)";

TEST(Recipe, PrintLoadRoundTrip) {
  const Recipe full = parse(kFull);
  EXPECT_EQ(full.model.path, "/models/with: colon #hash.gguf");
  EXPECT_EQ(full.data.sources[1].separator, "\n\n");
  EXPECT_DOUBLE_EQ(full.data.sources[0].weight, 0.4);
  EXPECT_DOUBLE_EQ(full.train.lr, 3e-5);
  for (bool with_docs : {false, true}) {
    const std::string yaml = recipe_to_yaml(full, with_docs);
    const Recipe again = parse_recipe(yaml, "printed.yaml");
    EXPECT_EQ(again, full) << yaml;
    EXPECT_EQ(recipe_to_yaml(again, with_docs), yaml);  // printing is stable
  }
  const Recipe minimal = parse(kMinimal);
  const Recipe again = parse_recipe(recipe_to_yaml(minimal), "printed.yaml");
  EXPECT_EQ(again, minimal);
  // The two keys kFull cannot hold beside its nf4 base and regex (they are refused there).
  const Recipe other = parse(kMinimal, {"lora.layers=[1, 3]", "model.double_quant=false"});
  EXPECT_EQ(parse_recipe(recipe_to_yaml(other), "printed.yaml"), other);
  // Awkward floats survive exactly.
  const Recipe odd = parse(kMinimal, {"train.lr=0.1", "lora.alpha=1e-300", "lora.dropout=0.3"});
  EXPECT_EQ(parse_recipe(recipe_to_yaml(odd), "printed.yaml"), odd);
}

TEST(Recipe, PrintedYamlShowsDefaultsAndDocs) {
  const std::string yaml = recipe_to_yaml(parse(kMinimal), true);
  EXPECT_HAS(yaml, "lr: 0.0002  # peak learning rate");
  EXPECT_HAS(yaml, "targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]");
  EXPECT_HAS(yaml, "keep_last: 2");
  EXPECT_HAS(yaml, "target_regex: \"\"");
}

TEST(Recipe, KeyListingCoversEveryKey) {
  const std::string keys = describe_recipe_keys();
  for (const char* key : {"model.path", "model.base_dtype", "lora.rank", "lora.rank_pattern",
                          "data.sources[].weight", "data.mix", "train.max_skipped_steps",
                          "eval.at_start", "checkpoint.keep_last", "output.export", "resume"})
    EXPECT_HAS(keys, key);
  EXPECT_HAS(keys, "constant|linear|cosine");
  EXPECT_HAS(keys, "required");
}

TEST(Recipe, LoadsFromFile) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("loom_recipe_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "quick.yaml").string();
  std::ofstream(path) << kMinimal << "  lr: oops\n";
  try {
    load_recipe(path);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), path + ":10: train.lr");
  }
  std::ofstream(path) << kMinimal;
  EXPECT_EQ(load_recipe(path, {"train.steps=5"}).train.steps, 5);
  EXPECT_EQ(load_recipe(path).output.dir, "runs/quick");
  EXPECT_THROW(load_recipe((dir / "missing.yaml").string()), Error);
  std::filesystem::remove_all(dir);
}

// Every recipe the project ships parses and validates (model files need not exist).
TEST(Recipe, ShippedRecipesParse) {
  const std::filesystem::path dir = std::filesystem::path(LOOM_SOURCE_DIR) / "recipes";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no recipes/ directory";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml" && entry.path().extension() != ".yml") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW({
      const Recipe r = load_recipe(entry.path().string());
      EXPECT_EQ(parse_recipe(recipe_to_yaml(r), "printed.yaml"), r);
    });
    ++count;
  }
  RecordProperty("recipes", count);
}

}  // namespace
}  // namespace loom
