// tokenizer.json / tokenizer_config.json from a GGUF byte-level BPE tokenizer, and the check
// that loom reads them back as the same tokenizer (hf_tokenizer.h).
#include "export/hf_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "layers/gguf.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"  // the regexes behind tokenizer.ggml.pre

namespace loom {

namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

bool is_added(TokenType t) {
  return t == TokenType::Control || t == TokenType::Unknown || t == TokenType::UserDefined;
}

json pre_tokenizer(const tok::PretokenizerPreset& preset) {
  json steps = json::array();
  bool byte_level_regex = false;
  for (size_t k = 0; k < preset.regexes.size(); ++k) {
    const std::string& r = preset.regexes[k];
    if (r == R"(\p{N})") {
      steps.push_back({{"type", "Digits"}, {"individual_digits", true}});
    } else if (k + 1 == preset.regexes.size() && r == tok::gpt2_regex()) {
      byte_level_regex = true;  // ByteLevel(use_regex) splits with exactly this regex
    } else {
      steps.push_back({{"type", "Split"},
                       {"pattern", {{"Regex", r}}},
                       {"behavior", "Isolated"},
                       {"invert", false}});
    }
  }
  steps.push_back({{"type", "ByteLevel"},
                   {"add_prefix_space", false},
                   {"trim_offsets", true},
                   {"use_regex", byte_level_regex}});
  if (steps.size() == 1) return steps[0];
  return {{"type", "Sequence"}, {"pretokenizers", steps}};
}

// Qwen2 / Qwen2.5's own tokenizer.json applies NFC before its Split and ByteLevel steps (the
// normalizer transformers' Qwen2 converter writes); a GGUF does not record normalizers, and
// llama.cpp applies none, so the GGUF's 'qwen2' pre-tokenizer name is what tells. Written back,
// the folder tokenizes as the original model does in transformers / vLLM (text with decomposed
// accents included), not as llama.cpp does.
json qwen2_normalizer(const std::string& pre_name) {
  if (pre_name != "qwen2") return nullptr;
  return {{"type", "NFC"}};
}

// TemplateProcessing that puts BOS / EOS around each sequence, as Llama 3's tokenizer.json does:
// single [BOS] A [EOS], pair [BOS] A [EOS] [BOS] B [EOS] (B's with type_id 1).
json template_processing(const Tokenizer& t) {
  json single = json::array(), pair = json::array(), specials = json::object();
  auto sequence = [&](const char* id, int type_id, json& list) {
    auto special = [&](int32_t token, const char* what) {
      if (token < 0 || token >= t.vocab_size())
        throw Error(fmt::format("{}: the tokenizer adds a {} token but its id is {}", t.source(),
                                what, token));
      const std::string& text = t.token_text(token);
      list.push_back({{"SpecialToken", {{"id", text}, {"type_id", type_id}}}});
      specials[text] = {{"id", text}, {"ids", {token}}, {"tokens", {text}}};
    };
    if (t.add_bos()) special(t.bos_id(), "BOS");
    list.push_back({{"Sequence", {{"id", id}, {"type_id", type_id}}}});
    if (t.add_eos()) special(t.eos_id(), "EOS");
  };
  sequence("A", 0, single);
  sequence("A", 0, pair);
  sequence("B", 1, pair);
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", pair},
          {"special_tokens", specials}};
}

json merges_json(const GgufFile& file) {
  const std::vector<std::string> merges = file.get_string_array("tokenizer.ggml.merges");
  bool one_space = true;
  for (const std::string& m : merges)
    one_space = one_space && std::count(m.begin(), m.end(), ' ') == 1;
  json out = json::array();
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i];
    if (one_space) {
      out.push_back(m);  // "a b", the form every tokenizers version reads
      continue;
    }
    const size_t space = m.find(' ', 1);  // a part may itself be a space
    if (space == std::string::npos)
      throw Error(
          fmt::format("{}: tokenizer.ggml.merges[{}] is '{}', expected two tokens "
                      "separated by a space",
                      file.path(), i, m));
    out.push_back({m.substr(0, space), m.substr(space + 1)});
  }
  return out;
}

// The token's text when tokenizer_config.json may name it (an added token), else null: naming
// an ordinary vocabulary entry would make transformers match it as a special token.
ojson named_token(const Tokenizer& t, int32_t id) {
  if (id < 0 || id >= t.vocab_size() || !is_added(t.token_type(id))) return nullptr;
  return t.token_text(id);
}

}  // namespace

const std::vector<std::string>& hf_tokenizer_file_names() {
  static const std::vector<std::string> names = {"tokenizer.json",
                                                 "tokenizer_config.json",
                                                 "special_tokens_map.json",
                                                 "tokenizer.model",
                                                 "vocab.json",
                                                 "merges.txt",
                                                 "added_tokens.json",
                                                 "chat_template.jinja",
                                                 "chat_template.json"};
  return names;
}

HfTokenizerFiles hf_tokenizer_from_gguf(const GgufFile& file, int64_t model_max_length) {
  if (!file.has("tokenizer.ggml.model"))
    throw Error(
        fmt::format("{}: no tokenizer (tokenizer.ggml.model is missing), so there is "
                    "none to export",
                    file.path()));
  const std::string& kind = file.get_string("tokenizer.ggml.model");
  if (kind != "gpt2")
    throw Error(fmt::format(
        "{}: tokenizer.ggml.model is '{}'; only byte-level BPE ('gpt2') converts to a Hugging "
        "Face tokenizer.json faithfully (a SentencePiece vocabulary's merges are implied by its "
        "scores). Export from the model's Hugging Face folder, whose tokenizer files are copied, "
        "or add the original tokenizer files to the export yourself",
        file.path(), kind));
  const std::unique_ptr<Tokenizer> t = load_tokenizer(file);
  const tok::PretokenizerPreset& preset = tok::find_pretokenizer(t->pre_name(), file.path());

  json vocab = json::object();
  json added = json::array();
  for (int32_t id = 0; id < t->vocab_size(); ++id) {
    const std::string& text = t->token_text(id);
    const TokenType type = t->token_type(id);
    if (type == TokenType::Byte)
      throw Error(
          fmt::format("{}: token {} ('{}') has type byte, which a byte-level BPE "
                      "vocabulary does not use; cannot convert it faithfully",
                      file.path(), id, text));
    if (find_invalid_utf8(text) != std::string_view::npos)
      throw Error(fmt::format("{}: token {} is not valid UTF-8, which tokenizer.json (JSON) "
                              "cannot hold; cannot convert the tokenizer faithfully",
                              file.path(), id));
    if (vocab.contains(text))
      throw Error(
          fmt::format("{}: tokens {} and {} are both '{}'; tokenizer.json maps each text "
                      "to one id, so the vocabulary cannot be written faithfully",
                      file.path(), vocab[text].get<int32_t>(), id, text));
    vocab[text] = id;
    if (is_added(type))
      added.push_back({{"id", id},
                       {"content", text},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", type != TokenType::UserDefined}});
  }
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", preset.ignore_merges},
                {"vocab", std::move(vocab)},
                {"merges", merges_json(file)}};
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", true},
                           {"trim_offsets", false},
                           {"use_regex", true}};
  json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added)},
      {"normalizer", qwen2_normalizer(t->pre_name())},
      {"pre_tokenizer", pre_tokenizer(preset)},
      {"post_processor", t->add_bos() || t->add_eos() ? template_processing(*t) : byte_level},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model", std::move(model)}};

  ojson config;
  config["add_bos_token"] = t->add_bos();
  config["add_eos_token"] = t->add_eos();
  config["bos_token"] = named_token(*t, t->bos_id());
  if (!t->chat_template().empty()) config["chat_template"] = t->chat_template();
  config["clean_up_tokenization_spaces"] = false;
  config["eos_token"] = named_token(*t, t->eos_id());
  if (model_max_length > 0) config["model_max_length"] = model_max_length;
  config["pad_token"] = named_token(*t, t->pad_id());
  config["tokenizer_class"] = "PreTrainedTokenizerFast";
  config["unk_token"] = named_token(*t, t->unk_id());

  ojson map = ojson::object();
  for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"})
    if (!config[key].is_null()) map[key] = config[key];

  return {root.dump(2) + "\n", config.dump(2) + "\n", map.dump(2) + "\n"};
}

void check_hf_tokenizer(const std::string& tokenizer_json_path, const Tokenizer& reference) {
  const std::unique_ptr<Tokenizer> written = load_tokenizer_json(tokenizer_json_path);
  auto fail = [&](const std::string& what) {
    throw Error(
        fmt::format("hf export: the tokenizer written ({}) does not read back as {}'s: "
                    "{}; the export is left out",
                    tokenizer_json_path, reference.source(), what));
  };
  if (written->vocab_size() != reference.vocab_size())
    fail(fmt::format("{} tokens, expected {}", written->vocab_size(), reference.vocab_size()));
  auto parsed_as_special = [](TokenType t) {
    return t == TokenType::Control || t == TokenType::Unknown;
  };
  for (int32_t id = 0; id < reference.vocab_size(); ++id) {
    const TokenType a = written->token_type(id), b = reference.token_type(id);
    if (written->token_text(id) != reference.token_text(id) ||
        parsed_as_special(a) != parsed_as_special(b) ||
        (a == TokenType::UserDefined) != (b == TokenType::UserDefined))
      fail(fmt::format("token {} is '{}' ({}), expected '{}' ({})", id, written->token_text(id),
                       token_type_name(a), reference.token_text(id), token_type_name(b)));
  }
  if (written->add_bos() != reference.add_bos() || written->add_eos() != reference.add_eos())
    fail("add_bos / add_eos differ");
  if ((reference.add_bos() && written->bos_id() != reference.bos_id()) ||
      (reference.add_eos() && written->eos_id() != reference.eos_id()))
    fail("the BOS / EOS added around a text differ");
  if (written->chat_template() != reference.chat_template()) fail("the chat template differs");

  std::string probe =
      "Hello world! It's 2024-11-24: 12345 apples, I'LL say don't.\n\n\t  indented   text\r\n"
      "caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xD0\xBF\xD1\x80\xD0\xB8"
      "\xD0\xB2\xD0\xB5\xD1\x82 \xF0\x9F\x99\x82 x=a+b*(c-d)/2; // ";
  int added = 0;
  for (int32_t id = 0; id < reference.vocab_size() && added < 16; ++id)
    if (is_added(reference.token_type(id))) {
      probe += reference.token_text(id) + "text \n" + std::to_string(id) + " ";
      ++added;
    }
  for (bool parse_special : {false, true})
    for (bool add_special : {false, true}) {
      const std::vector<int32_t> a = written->encode(probe, add_special, parse_special);
      const std::vector<int32_t> b = reference.encode(probe, add_special, parse_special);
      if (a == b) continue;
      size_t i = 0;
      while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
      fail(fmt::format(
          "the probe text tokenizes differently (add_special {}, parse_special {}) "
          "from token {}: {} vs {}",
          add_special, parse_special, i, i < a.size() ? a[i] : -1, i < b.size() ? b[i] : -1));
    }
}

}  // namespace loom
