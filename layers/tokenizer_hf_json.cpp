// load_tokenizer_json(): a TokenizerSpec from a Hugging Face tokenizer.json (and the
// tokenizer_config.json and chat_template.jinja beside it, when there are).
//
// Supported: model.type "BPE" (vocab, merges as "a b" strings or [a, b] pairs, unk_token,
// byte_fallback, ignore_merges); pre_tokenizer ByteLevel (add_prefix_space false), Digits,
// Split (Regex or String pattern, behavior Isolated, not inverted), Metaspace (split false), or
// a Sequence of them; normalizer NFC (Qwen2's; layers/unicode_nfc.h), Prepend("▁") /
// Replace(" " -> "▁") or a Sequence of them;
// added_tokens (special -> control, else user-defined; lstrip / rstrip); a TemplateProcessing
// post-processor that puts a special token first / last (add_bos / add_eos). Anything else is
// an error naming the field and listing what is supported: a tokenizer that quietly differs
// from the reference would be worse.
//
// ByteLevel in the pre-tokenizer makes a byte-level BPE; Metaspace or the Prepend / Replace
// normalizer makes a SentencePiece-style one (with the file's ranked merges).
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/check.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"

namespace loom {

namespace {

using nlohmann::json;

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581 "▁"

struct JsonReader {
  std::string path;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("tokenizer ({}): {}", path, what));
  }

  json parse_file(const std::string& file) const {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail(fmt::format("cannot open {}", file));
    std::stringstream buffer;
    buffer << in.rdbuf();
    try {
      return json::parse(buffer.str());
    } catch (const json::exception& e) {
      fail(fmt::format("{} is not valid JSON: {}", file, e.what()));
    }
  }

  const json& member(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object() || !obj.contains(key)) {
      fail(fmt::format("{} has no '{}'", where, key));
    }
    return obj.at(key);
  }

  std::string string_of(const json& v, const std::string& where) const {
    if (!v.is_string()) fail(fmt::format("{} is {}, expected a string", where, v.type_name()));
    return v.get<std::string>();
  }

  bool bool_or(const json& obj, const char* key, bool fallback, const std::string& where) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_boolean()) {
      fail(fmt::format("{}.{} is {}, expected true or false", where, key, obj.at(key).type_name()));
    }
    return obj.at(key).get<bool>();
  }
};

// What the pre-tokenizer and normalizer say about the text's way to the merges.
struct Pipeline {
  bool byte_level = false;
  bool space_marker = false;  // spaces become "▁" (Metaspace, or the normalizer)
  bool space_prefix = false;  // "▁" in front of the text
  bool nfc = false;           // Unicode NFC first
  std::vector<std::string> regexes;
  std::vector<std::string> steps;  // for pre_name: "Digits(individual)", "ByteLevel", ...
};

// PCRE2 quoting of a literal: \Q...\E, with any \E inside split out.
std::string quote_literal(const std::string& s) {
  std::string out = "\\Q";
  for (size_t i = 0; i < s.size(); ++i) {
    if (s.compare(i, 2, "\\E") == 0) {
      out += "\\E\\\\E\\Q";
      ++i;
    } else {
      out += s[i];
    }
  }
  return out + "\\E";
}

void read_pre_tokenizer(const JsonReader& r, const json& pt, const std::string& where,
                        Pipeline& p) {
  if (pt.is_null()) return;
  const std::string type = r.string_of(r.member(pt, "type", where), where + ".type");
  if (type == "Sequence") {
    const json& list = r.member(pt, "pretokenizers", where);
    for (size_t i = 0; i < list.size(); ++i) {
      read_pre_tokenizer(r, list[i], fmt::format("{}.pretokenizers[{}]", where, i), p);
    }
  } else if (type == "ByteLevel") {
    if (r.bool_or(pt, "add_prefix_space", false, where)) {
      r.fail(
          fmt::format("{}: ByteLevel with add_prefix_space=true is not supported, expected "
                      "false (as Llama 3, Qwen 2 and SmolLM have it)",
                      where));
    }
    p.byte_level = true;
    if (r.bool_or(pt, "use_regex", true, where)) p.regexes.emplace_back(tok::gpt2_regex());
    p.steps.emplace_back("ByteLevel");
  } else if (type == "Digits") {
    const bool individual = r.bool_or(pt, "individual_digits", false, where);
    p.regexes.emplace_back(individual ? R"(\p{N})" : R"(\p{N}+)");
    p.steps.emplace_back(individual ? "Digits(individual)" : "Digits");
  } else if (type == "Split") {
    const json& pattern = r.member(pt, "pattern", where);
    std::string regex;
    if (pattern.contains("Regex")) {
      regex = r.string_of(pattern.at("Regex"), where + ".pattern.Regex");
    } else if (pattern.contains("String")) {
      regex = quote_literal(r.string_of(pattern.at("String"), where + ".pattern.String"));
    } else {
      r.fail(fmt::format("{}.pattern has neither 'Regex' nor 'String'", where));
    }
    const std::string behavior =
        pt.contains("behavior") ? r.string_of(pt.at("behavior"), where) : std::string("Isolated");
    if (behavior != "Isolated" || r.bool_or(pt, "invert", false, where)) {
      r.fail(fmt::format(
          "{}: Split with behavior '{}'{} is not supported; supported: behavior "
          "Isolated, invert false",
          where, behavior, r.bool_or(pt, "invert", false, where) ? " and invert true" : ""));
    }
    p.regexes.push_back(regex);
    p.steps.emplace_back("Split");
  } else if (type == "Metaspace") {
    if (r.bool_or(pt, "split", false, where)) {
      r.fail(fmt::format("{}: Metaspace with split=true is not supported, expected false", where));
    }
    if (pt.contains("replacement") &&
        r.string_of(pt.at("replacement"), where + ".replacement") != kSpaceMarker) {
      r.fail(fmt::format("{}: Metaspace replacement must be \"▁\" (U+2581)", where));
    }
    p.space_marker = true;
    std::string scheme = "always";
    if (pt.contains("prepend_scheme")) {
      scheme = r.string_of(pt.at("prepend_scheme"), where + ".prepend_scheme");
    } else if (!r.bool_or(pt, "add_prefix_space", true, where)) {
      scheme = "never";
    }
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      r.fail(
          fmt::format("{}.prepend_scheme is '{}', expected always, first or never", where, scheme));
    }
    p.space_prefix = scheme != "never";
    p.steps.emplace_back("Metaspace");
  } else {
    r.fail(
        fmt::format("{}: pre-tokenizer type '{}' is not supported; supported: ByteLevel, "
                    "Digits, Split, Metaspace, Sequence",
                    where, type));
  }
}

void read_normalizer(const JsonReader& r, const json& n, const std::string& where, Pipeline& p) {
  if (n.is_null()) return;
  const std::string type = r.string_of(r.member(n, "type", where), where + ".type");
  if (type == "Sequence") {
    const json& list = r.member(n, "normalizers", where);
    for (size_t i = 0; i < list.size(); ++i) {
      read_normalizer(r, list[i], fmt::format("{}.normalizers[{}]", where, i), p);
    }
  } else if (type == "NFC") {
    p.nfc = true;
    p.steps.emplace_back("NFC");
  } else if (type == "Prepend" &&
             r.string_of(r.member(n, "prepend", where), where + ".prepend") == kSpaceMarker) {
    p.space_prefix = true;
  } else if (type == "Replace" && r.member(n, "pattern", where).contains("String") &&
             r.string_of(n.at("pattern").at("String"), where) == " " &&
             r.string_of(r.member(n, "content", where), where + ".content") == kSpaceMarker) {
    p.space_marker = true;
  } else {
    r.fail(
        fmt::format("{}: normalizer '{}' is not supported; supported: NFC, Prepend(\"▁\"), "
                    "Replace(\" \" -> \"▁\"), Sequence of those, or null",
                    where, type));
  }
}

// The special tokens a TemplateProcessing post-processor puts around a single sequence.
void read_post_processor(const JsonReader& r, const json& pp, const std::string& where,
                         TokenizerSpec& spec) {
  if (pp.is_null()) return;
  const std::string type = r.string_of(r.member(pp, "type", where), where + ".type");
  if (type == "Sequence") {
    const json& list = r.member(pp, "processors", where);
    for (size_t i = 0; i < list.size(); ++i) {
      read_post_processor(r, list[i], fmt::format("{}.processors[{}]", where, i), spec);
    }
    return;
  }
  if (type != "TemplateProcessing") return;  // ByteLevel / RobertaProcessing add no tokens here
  const json& single = r.member(pp, "single", where);
  const json& specials = r.member(pp, "special_tokens", where);
  const auto special_id = [&](const json& item, const std::string& item_where) -> int32_t {
    const std::string name =
        r.string_of(r.member(item.at("SpecialToken"), "id", item_where), item_where + ".id");
    const json& entry = r.member(specials, name.c_str(), where + ".special_tokens");
    const json& ids = r.member(entry, "ids", where + ".special_tokens." + name);
    if (!ids.is_array() || ids.size() != 1 || !ids[0].is_number_integer()) {
      r.fail(fmt::format("{}.special_tokens.{}.ids should hold one token id", where, name));
    }
    return ids[0].get<int32_t>();
  };
  for (size_t i = 0; i < single.size(); ++i) {
    if (!single[i].contains("SpecialToken")) continue;
    const std::string item_where = fmt::format("{}.single[{}].SpecialToken", where, i);
    if (i == 0) {
      spec.add_bos = true;
      spec.bos_id = special_id(single[i], item_where);
    } else if (i + 1 == single.size()) {
      spec.add_eos = true;
      spec.eos_id = special_id(single[i], item_where);
    }
  }
}

// tokenizer_config.json names special tokens as a string or as {"content": ...}.
std::string config_token(const JsonReader& r, const json& config, const char* key) {
  if (!config.contains(key) || config.at(key).is_null()) return "";
  const json& v = config.at(key);
  if (v.is_object()) return r.string_of(r.member(v, "content", key), std::string(key) + ".content");
  return r.string_of(v, key);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  const JsonReader r{path};
  const json root = r.parse_file(path);
  TokenizerSpec spec;
  spec.source = path;

  const json& model = r.member(root, "model", "the file");
  const std::string model_type =
      model.contains("type") ? r.string_of(model.at("type"), "model.type") : std::string("BPE");
  if (model_type != "BPE") {
    r.fail(
        fmt::format("model.type is '{}'; supported: 'BPE' (WordPiece, WordLevel and Unigram "
                    "models are not)",
                    model_type));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model.at(key).is_null() &&
        !(model.at(key).is_string() && model.at(key).get<std::string>().empty())) {
      r.fail(fmt::format("model.{} is set, which is not supported (expected null)", key));
    }
  }

  // Vocabulary: model.vocab plus added_tokens, dense ids.
  std::map<int64_t, std::string> by_id;
  const json& vocab = r.member(model, "vocab", "model");
  if (!vocab.is_object()) r.fail("model.vocab is not an object of token -> id");
  for (const auto& [text, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      r.fail(fmt::format("model.vocab['{}'] is {}, expected a token id >= 0", text, id.dump()));
    }
    by_id[id.get<int64_t>()] = text;
  }
  struct Added {
    int64_t id;
    std::string content;
    bool special, lstrip, rstrip;
  };
  std::vector<Added> added;
  if (root.contains("added_tokens")) {
    const json& list = root.at("added_tokens");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = fmt::format("added_tokens[{}]", i);
      const json& t = list[i];
      const json& id = r.member(t, "id", where);
      if (!id.is_number_integer() || id.get<int64_t>() < 0) {
        r.fail(fmt::format("{}.id is {}, expected a token id >= 0", where, id.dump()));
      }
      Added a{id.get<int64_t>(), r.string_of(r.member(t, "content", where), where + ".content"),
              r.bool_or(t, "special", false, where), r.bool_or(t, "lstrip", false, where),
              r.bool_or(t, "rstrip", false, where)};
      if (r.bool_or(t, "single_word", false, where)) {
        r.fail(fmt::format("{} ('{}') has single_word=true, which is not supported", where,
                           a.content));
      }
      const auto it = by_id.find(a.id);
      if (it != by_id.end() && it->second != a.content) {
        r.fail(fmt::format("{} gives id {} to '{}', but model.vocab has '{}' there", where, a.id,
                           a.content, it->second));
      }
      by_id[a.id] = a.content;
      added.push_back(std::move(a));
    }
  }
  if (by_id.empty()) r.fail("the vocabulary is empty");
  const int64_t n = by_id.rbegin()->first + 1;
  if (static_cast<int64_t>(by_id.size()) != n) {
    int64_t missing = 0;
    while (by_id.count(missing)) ++missing;
    r.fail(fmt::format("token ids are not dense: id {} has no token (expected ids 0..{})", missing,
                       n - 1));
  }
  for (auto& [id, text] : by_id) spec.tokens.push_back(std::move(text));
  spec.types.assign(n, TokenType::Normal);
  spec.special_lstrip.assign(n, 0);
  spec.special_rstrip.assign(n, 0);
  for (const Added& a : added) {
    spec.types[a.id] = a.special ? TokenType::Control : TokenType::UserDefined;
    spec.special_lstrip[a.id] = a.lstrip;
    spec.special_rstrip[a.id] = a.rstrip;
  }

  // Merges.
  const json& merges = r.member(model, "merges", "model");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) {
        r.fail(fmt::format("model.merges[{}] is '{}', expected two tokens separated by a space", i,
                           s));
      }
      spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      r.fail(
          fmt::format("model.merges[{}] is {}, expected \"a b\" or [\"a\", \"b\"]", i, m.dump()));
    }
  }
  spec.ignore_merges = r.bool_or(model, "ignore_merges", false, "model");
  spec.byte_fallback = r.bool_or(model, "byte_fallback", false, "model");
  if (model.contains("unk_token") && !model.at("unk_token").is_null()) {
    const std::string unk = r.string_of(model.at("unk_token"), "model.unk_token");
    for (int64_t id = 0; id < n; ++id) {
      if (spec.tokens[id] == unk) spec.unk_id = static_cast<int32_t>(id);
    }
    if (spec.unk_id < 0) r.fail(fmt::format("model.unk_token '{}' is not in the vocabulary", unk));
    if (spec.types[spec.unk_id] == TokenType::Control) spec.types[spec.unk_id] = TokenType::Unknown;
  }

  // How the text reaches the merges.
  Pipeline p;
  if (root.contains("normalizer")) read_normalizer(r, root.at("normalizer"), "normalizer", p);
  if (root.contains("pre_tokenizer")) {
    read_pre_tokenizer(r, root.at("pre_tokenizer"), "pre_tokenizer", p);
  }
  spec.normalize_nfc = p.nfc;
  if (p.byte_level && p.space_marker) {
    r.fail("the pipeline has both ByteLevel and a \"▁\" space marker; expected one of them");
  }
  if (p.byte_level) {
    spec.kind = TokenizerKind::ByteLevelBpe;
    spec.pre_regexes = p.regexes;
    spec.pre_name = "tokenizer.json: " + tok::join(p.steps, ", ");
    spec.add_space_prefix = false;
  } else if (p.space_marker) {
    if (!p.regexes.empty()) {
      r.fail(
          "Split / Digits pre-tokenizers together with a \"▁\" space marker are not "
          "supported");
    }
    spec.kind = TokenizerKind::SentencePieceBpe;
    spec.pre_name = "";
    spec.add_space_prefix = p.space_prefix;
    // tokenizer.json has no token types: the <0xXX> tokens of byte fallback are found by name.
    if (spec.byte_fallback) {
      for (int64_t id = 0; id < n; ++id) {
        if (spec.types[id] == TokenType::Normal && tok::parse_byte_token(spec.tokens[id]) >= 0) {
          spec.types[id] = TokenType::Byte;
        }
      }
    }
  } else {
    r.fail(
        "neither a ByteLevel pre-tokenizer nor a \"▁\" space marker (Metaspace, or a Replace "
        "normalizer): cannot tell how the vocabulary spells spaces");
  }

  if (root.contains("post_processor")) {
    read_post_processor(r, root.at("post_processor"), "post_processor", spec);
  }

  // tokenizer_config.json beside it: the named special tokens and flags win.
  const std::filesystem::path config_path =
      std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const JsonReader rc{config_path.string()};
    const json config = rc.parse_file(config_path.string());
    const auto id_of = [&](const char* key, int32_t& id) {
      const std::string text = config_token(rc, config, key);
      if (text.empty()) return;
      for (int64_t i = 0; i < n; ++i) {
        if (spec.tokens[i] == text) {
          id = static_cast<int32_t>(i);
          return;
        }
      }
      rc.fail(fmt::format("{} is '{}', which is not a token of {}", key, text, path));
    };
    id_of("bos_token", spec.bos_id);
    id_of("eos_token", spec.eos_id);
    id_of("pad_token", spec.pad_id);
    id_of("unk_token", spec.unk_id);
    spec.add_bos = rc.bool_or(config, "add_bos_token", spec.add_bos, "tokenizer_config.json");
    spec.add_eos = rc.bool_or(config, "add_eos_token", spec.add_eos, "tokenizer_config.json");
    if (config.contains("chat_template")) {
      const json& t = config.at("chat_template");
      if (t.is_string()) {
        spec.chat_template = t.get<std::string>();
      } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
        for (const json& entry : t) {
          if (entry.value("name", "") == "default") {
            spec.chat_template = rc.string_of(entry.at("template"), "chat_template[default]");
          }
        }
      }
    }
  }
  // chat_template.jinja beside it (where newer transformers save the template): it wins over
  // tokenizer_config.json's, as transformers reads them.
  const std::filesystem::path jinja_path =
      std::filesystem::path(path).parent_path() / "chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) {
    std::ifstream in(jinja_path, std::ios::binary);
    if (!in)
      JsonReader{jinja_path.string()}.fail(fmt::format("cannot open {}", jinja_path.string()));
    std::stringstream buffer;
    buffer << in.rdbuf();
    spec.chat_template = buffer.str();
  }
  return std::make_unique<Tokenizer>(std::move(spec));
}

}  // namespace loom
