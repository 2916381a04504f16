// Reading a recipe (YAML file + command-line overrides) through the schema table, and writing
// the resolved recipe back out as YAML (trainer/recipe.h).
#include "trainer/recipe.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "autograd/check.h"
#include "trainer/recipe_fields.h"

namespace loom {

using namespace recipe_detail;

namespace {

const Field<Recipe>* find_field(const std::string& key) {
  for (const Field<Recipe>& f : recipe_fields())
    if (f.path == key) return &f;
  return nullptr;
}

template <class Root>
const Field<Root>* find_in(const std::vector<Field<Root>>& fields, const std::string& key) {
  for (const Field<Root>& f : fields)
    if (f.path == key) return &f;
  return nullptr;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// "train" is a section: some key starts with "train.".
bool is_section(const std::string& key) {
  return std::any_of(recipe_fields().begin(), recipe_fields().end(),
                     [&](const Field<Recipe>& f) { return starts_with(f.path, key + "."); });
}

// Every key and section name, for "did you mean".
std::vector<std::string> known_keys() {
  std::set<std::string> keys;
  for (const Field<Recipe>& f : recipe_fields()) {
    keys.insert(f.path);
    for (size_t dot = f.path.find('.'); dot != std::string::npos; dot = f.path.find('.', dot + 1))
      keys.insert(f.path.substr(0, dot));
  }
  return {keys.begin(), keys.end()};
}

// Names directly under `section` ("" = top level), for the list in unknown-key errors.
std::vector<std::string> names_under(const std::string& section) {
  std::vector<std::string> names;
  const std::string prefix = section.empty() ? "" : section + ".";
  for (const Field<Recipe>& f : recipe_fields()) {
    if (!starts_with(f.path, prefix)) continue;
    std::string rest = f.path.substr(prefix.size());
    rest = rest.substr(0, rest.find('.'));
    if (std::find(names.begin(), names.end(), rest) == names.end()) names.push_back(rest);
  }
  return names;
}

// Names other fine-tuning tools use (Hugging Face Trainer, PEFT, torchtune, axolotl), which no
// edit distance maps onto loom's.
std::string key_for_foreign_name(const std::string& name) {
  static const std::map<std::string, std::string> aliases = {
      {"learning_rate", "train.lr"},
      {"lr_scheduler", "train.schedule"},
      {"lr_scheduler_type", "train.schedule"},
      {"scheduler", "train.schedule"},
      {"max_steps", "train.steps"},
      {"num_steps", "train.steps"},
      {"total_steps", "train.steps"},
      {"num_warmup_steps", "train.warmup_steps"},
      {"gradient_accumulation_steps", "train.grad_accum"},
      {"micro_batch_size", "train.batch_size"},
      {"per_device_train_batch_size", "train.batch_size"},
      {"max_grad_norm", "train.clip_grad_norm"},
      {"adam_epsilon", "train.adam_eps"},
      {"r", "lora.rank"},
      {"lora_r", "lora.rank"},
      {"lora_alpha", "lora.alpha"},
      {"lora_dropout", "lora.dropout"},
      {"target_modules", "lora.targets"},
      {"layers_to_transform", "lora.layers"},
      {"init_lora_weights", "lora.init"},
      {"max_seq_len", "data.seq_len"},
      {"max_seq_length", "data.seq_len"},
      {"sequence_len", "data.seq_len"},
      {"save_steps", "checkpoint.every"},
      {"save_total_limit", "checkpoint.keep_last"},
      {"eval_steps", "eval.every"},
      {"output_dir", "output.dir"},
      {"logging_steps", "output.log_every"},
  };
  const size_t dot = name.rfind('.');
  auto it = aliases.find(dot == std::string::npos ? name : name.substr(dot + 1));
  return it == aliases.end() ? "" : it->second;
}

[[noreturn]] void unknown_key(const std::string& key, const std::string& where) {
  const size_t dot = key.rfind('.');
  std::string section = dot == std::string::npos ? "" : key.substr(0, dot);
  if (!section.empty() && !is_section(section)) section.clear();
  std::string suggestion = key_for_foreign_name(key);
  if (suggestion.empty()) suggestion = nearest_key(key, known_keys());
  throw Error(fmt::format(
      "{}: unknown key `{}`; did you mean `{}`? Keys {}: {}. (`loom train --print-config` shows "
      "every key with its value.)",
      where, key, suggestion,
      section.empty() ? std::string("at the top level") : fmt::format("under `{}`", section),
      join(names_under(section))));
}

// Forgets where `key` and everything under it came from (the value is being replaced).
void erase_origins_under(Origins& origins, const std::string& key) {
  origins.erase(key);
  for (auto it = origins.lower_bound(key + ".");
       it != origins.end() && starts_with(it->first, key + ".");)
    it = origins.erase(it);
}

// Reads a YAML map of keys under `prefix` ("" = the whole recipe, "train" = the train section).
void read_section(Recipe& recipe, const YAML::Node& map, const std::string& prefix,
                  ReadContext& ctx) {
  if (map.IsNull()) return;
  if (!map.IsMap()) {
    if (prefix.empty())
      throw Error(
          fmt::format("{}: a recipe is a YAML map of sections (model:, lora:, data:, "
                      "train:, ...), found {}",
                      ctx.origin.at(map), describe_node(map)));
    throw Error(fmt::format("{}: `{}` is a section: expected a map of its keys ({}), found {}",
                            ctx.origin.at(map), prefix, join(names_under(prefix)),
                            describe_node(map)));
  }
  std::map<std::string, std::string> seen;  // name -> where
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node name_node = it->first;  // a copy: the iterator hands out temporaries
    const std::string name = read_string(name_node, prefix.empty() ? "key" : prefix, ctx.origin);
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    const std::string where = ctx.origin.at(name_node);
    if (auto [prev, inserted] = seen.emplace(name, where); !inserted)
      throw Error(
          fmt::format("{}: `{}` appears twice (first at {}); keep one", where, key, prev->second));
    if (const Field<Recipe>* f = find_field(key)) {
      erase_origins_under(ctx.origins, key);
      f->read(recipe, it->second, key, ctx);
      ctx.origins[key] = where;
    } else if (is_section(key)) {
      read_section(recipe, it->second, key, ctx);
    } else {
      unknown_key(key, where);
    }
  }
}

YAML::Node parse_override_value(const std::string& value, const std::string& text) {
  try {
    return YAML::Load(value);
  } catch (const YAML::Exception& e) {
    throw Error(
        fmt::format("command-line override `{}`: the value is not valid YAML ({}); "
                    "lists are written [a, b], maps {{name: value}}",
                    text, e.msg));
  }
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

// data.sources.<index or name>[.<field>]=value
void apply_source_override(std::vector<DataSourceRecipe>& sources, const std::string& rest,
                           const std::string& value, const std::string& list_key,
                           ReadContext& ctx) {
  const std::string& text = ctx.origin.override_text;
  const size_t dot = rest.find('.');
  const std::string selector = rest.substr(0, dot);
  size_t index = sources.size();
  if (!selector.empty() &&
      std::all_of(selector.begin(), selector.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    index = std::stoul(selector);
    if (index > sources.size())
      throw Error(
          fmt::format("command-line override `{}`: {} has {} entries, so index {} is "
                      "past the end; use index {} to add one",
                      text, list_key, sources.size(), index, sources.size()));
  } else {
    for (size_t i = 0; i < sources.size(); ++i)
      if (sources[i].name == selector) index = i;
    if (index == sources.size()) {
      std::vector<std::string> names;
      for (const DataSourceRecipe& s : sources) names.push_back(s.name);
      throw Error(
          fmt::format("command-line override `{}`: no data source named \"{}\" (sources: "
                      "{}); select one by name or by index",
                      text, selector, join(names)));
    }
  }
  if (index == sources.size()) sources.emplace_back();
  const std::string item_key = fmt::format("{}.{}", list_key, index);
  if (dot == std::string::npos) {  // the whole source, as a YAML map
    DataSourceRecipe source;
    erase_origins_under(ctx.origins, item_key);
    read_source_fields(source, parse_override_value(value, text), item_key, ctx);
    sources[index] = std::move(source);
    ctx.origins[item_key] = ctx.origin.at(YAML::Node());
    return;
  }
  const std::string field_name = rest.substr(dot + 1);
  const Field<DataSourceRecipe>* f = find_in(source_fields(), field_name);
  if (f == nullptr) {
    std::vector<std::string> names;
    for (const Field<DataSourceRecipe>& sf : source_fields()) names.push_back(sf.path);
    throw Error(
        fmt::format("command-line override `{}`: a data source has no field `{}`; did "
                    "you mean `{}`? Fields: {}",
                    text, field_name, nearest_key(field_name, names), join(names)));
  }
  const YAML::Node node =
      f->type == FieldType::String ? YAML::Node(value) : parse_override_value(value, text);
  const std::string key = item_key + "." + field_name;
  f->read(sources[index], node, key, ctx);
  ctx.origins[key] = ctx.origin.at(node);
}

void apply_override(Recipe& recipe, const std::string& text, Origins& origins) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || trim(text.substr(0, eq)).empty())
    throw Error(
        fmt::format("command-line override `{}`: expected key=value with a dotted key, "
                    "e.g. train.lr=1e-4 or lora.targets=[q_proj,v_proj]",
                    text));
  std::string key = trim(text.substr(0, eq));
  const std::string value = text.substr(eq + 1);
  if (starts_with(key, "mix.")) key = "data." + key;  // the short form of data.mix.<name>
  // data.sources[1].path is read as data.sources.1.path (the index spelled as in Python / jq).
  for (size_t open = key.find('['); open != std::string::npos; open = key.find('[', open)) {
    const size_t close = key.find(']', open);
    const bool digits = close != std::string::npos && close > open + 1 &&
                        std::all_of(key.begin() + static_cast<std::ptrdiff_t>(open) + 1,
                                    key.begin() + static_cast<std::ptrdiff_t>(close),
                                    [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) break;
    key =
        key.substr(0, open) + "." + key.substr(open + 1, close - open - 1) + key.substr(close + 1);
  }
  const Origin origin{.file = "", .override_text = text};
  ReadContext ctx{origin, origins};

  if (const Field<Recipe>* f = find_field(key)) {
    // A string takes the text verbatim: no YAML reading of '#', ':' or quotes in paths.
    const YAML::Node node =
        f->type == FieldType::String ? YAML::Node(value) : parse_override_value(value, text);
    erase_origins_under(origins, key);
    f->read(recipe, node, key, ctx);
    origins[key] = origin.at(node);
    return;
  }
  for (const Field<Recipe>& f : recipe_fields()) {
    if (!starts_with(key, f.path + ".")) continue;
    const std::string rest = key.substr(f.path.size() + 1);
    if (f.type == FieldType::NamedInts || f.type == FieldType::NamedFloats) {
      f.read_entry(recipe, rest, parse_override_value(value, text), f.path, ctx);
      return;
    }
    if (f.type == FieldType::SourceList) {
      apply_source_override(f.sources(recipe), rest, value, f.path, ctx);
      return;
    }
  }
  if (is_section(key)) {
    read_section(recipe, parse_override_value(value, text), key, ctx);
    return;
  }
  unknown_key(key, origin.at(YAML::Node()));
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(
        fmt::format("cannot open recipe {}: no such file or not readable (`loom recipes` "
                    "lists the shipped recipes)",
                    path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

namespace recipe_detail {

void read_source_fields(DataSourceRecipe& source, const YAML::Node& node, const std::string& key,
                        ReadContext& ctx) {
  std::vector<std::string> names;
  for (const Field<DataSourceRecipe>& f : source_fields()) names.push_back(f.path);
  if (!node.IsMap())
    throw Error(
        fmt::format("{}: {}: expected a map with the fields of a data source ({}), found "
                    "{}",
                    ctx.origin.at(node), key, join(names), describe_node(node)));
  std::map<std::string, std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string name = read_string(it->first, key, ctx.origin);
    const std::string where = ctx.origin.at(it->first);
    if (auto [prev, inserted] = seen.emplace(name, where); !inserted)
      throw Error(fmt::format("{}: `{}.{}` appears twice (first at {}); keep one", where, key, name,
                              prev->second));
    const Field<DataSourceRecipe>* f = find_in(source_fields(), name);
    if (f == nullptr)
      throw Error(
          fmt::format("{}: unknown key `{}.{}`; did you mean `{}`? Fields of a data "
                      "source: {}",
                      where, key, name, nearest_key(name, names), join(names)));
    f->read(source, it->second, key + "." + name, ctx);
    ctx.origins[key + "." + name] = where;
  }
}

std::vector<DataSourceRecipe> read_sources(const YAML::Node& node, const std::string& key,
                                           ReadContext& ctx) {
  std::vector<DataSourceRecipe> sources;
  if (node.IsNull()) return sources;
  if (!node.IsSequence())
    throw Error(
        fmt::format("{}: {}: expected a list of data sources (- name: ..., path: ...), "
                    "found {}",
                    ctx.origin.at(node), key, describe_node(node)));
  for (const YAML::Node& item : node) {
    const std::string item_key = fmt::format("{}.{}", key, sources.size());
    DataSourceRecipe source;
    read_source_fields(source, item, item_key, ctx);
    ctx.origins[item_key] = ctx.origin.at(item);
    sources.push_back(std::move(source));
  }
  return sources;
}

}  // namespace recipe_detail

Recipe parse_recipe(std::string_view yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  // A binary file would otherwise reach the YAML parser, whose message echoes raw bytes.
  const auto starts = [&](std::string_view bom) { return yaml_text.substr(0, bom.size()) == bom; };
  if (starts(std::string_view("\x00\x00\xfe\xff", 4)) || starts("\xff\xfe") || starts("\xfe\xff"))
    throw Error(
        fmt::format("{}: is UTF-16 or UTF-32 text (byte-order mark {}); save the recipe "
                    "as UTF-8",
                    source_name, starts("\xff\xfe") ? "FF FE" : "FE FF"));
  for (size_t i = 0, line = 1; i < yaml_text.size(); ++i) {
    const auto b = static_cast<unsigned char>(yaml_text[i]);
    if (b == '\n') ++line;
    if (b < 0x20 && b != '\n' && b != '\r' && b != '\t')
      throw Error(
          fmt::format("{}:{}: not a text file: control byte 0x{:02x} at offset {}; a "
                      "recipe is YAML text",
                      source_name, line, b, i));
  }
  YAML::Node root;
  try {
    const std::vector<YAML::Node> docs = YAML::LoadAll(std::string(yaml_text));
    if (docs.size() > 1)
      throw Error(
          fmt::format("{}:{}: a second YAML document (after a '---' line): a recipe file "
                      "holds one recipe; put each in its own file",
                      source_name, docs[1].Mark().line + 1));
    if (!docs.empty()) root = docs[0];
  } catch (const YAML::Exception& e) {
    // YAML indents with spaces only; a tab there gets yaml-cpp's "illegal map value" or the
    // like, so the first line indented with a tab is named instead.
    int line = 1;
    for (size_t at = 0; at < yaml_text.size(); ++line) {
      const size_t end = std::min(yaml_text.find('\n', at), yaml_text.size());
      const std::string_view text = yaml_text.substr(at, end - at);
      const size_t indent_end = std::min(text.find_first_not_of(" \t"), text.size());
      if (text.substr(0, indent_end).find('\t') != std::string_view::npos)
        throw Error(fmt::format("{}:{}: a tab in the indentation; YAML indents with spaces only",
                                source_name, line));
      at = end + 1;
    }
    throw Error(fmt::format("{}:{}: not valid YAML: {}", source_name, e.mark.line + 1, e.msg));
  }
  Recipe recipe;
  Origins origins;
  const Origin file_origin{.file = source_name, .override_text = ""};
  ReadContext ctx{file_origin, origins};
  read_section(recipe, root, "", ctx);
  for (const std::string& text : overrides) apply_override(recipe, text, origins);
  if (recipe.output.dir.empty())
    recipe.output.dir = "runs/" + std::filesystem::path(source_name).stem().string();
  validate_recipe(recipe, origins, source_name);
  return recipe;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_recipe(read_text_file(path), path, overrides);
}

std::string recipe_to_yaml(const Recipe& recipe, bool with_docs) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string open_section;
  for (const Field<Recipe>& f : recipe_fields()) {
    const size_t dot = f.path.find('.');
    const std::string section = dot == std::string::npos ? "" : f.path.substr(0, dot);
    if (section != open_section) {
      if (!open_section.empty()) out << YAML::EndMap;
      if (!section.empty()) out << YAML::Key << section << YAML::Value << YAML::BeginMap;
      open_section = section;
    }
    out << YAML::Key << f.path.substr(dot == std::string::npos ? 0 : dot + 1) << YAML::Value;
    if (with_docs && f.type == FieldType::SourceList) out << YAML::Comment(f.doc);
    f.write(recipe, out);
    if (with_docs && f.type != FieldType::SourceList) out << YAML::Comment(f.doc);
  }
  if (!open_section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  LOOM_CHECK(out.good(), "writing the recipe as YAML failed: {}", out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

std::string describe_recipe_keys() {
  const Recipe defaults;
  const DataSourceRecipe source_defaults;
  std::string text;
  auto line = [&](const std::string& key, const auto& f, const auto& root) {
    std::string type =
        f.type == FieldType::Enum ? join(f.choices, "|") : std::string(type_name(f.type));
    std::string value = "required";
    if (!f.required) {
      YAML::Emitter out;
      f.write(root, out);
      value = fmt::format("default {}", out.c_str());
    }
    if (key == "output.dir") value = "default runs/<recipe name>";
    text += fmt::format("{:<30} {:<26} {:<28} {}\n", key, type, value, f.doc);
  };
  for (const Field<Recipe>& f : recipe_fields()) {
    if (f.type == FieldType::SourceList) {
      line(f.path, f, defaults);
      for (const Field<DataSourceRecipe>& sf : source_fields())
        line(f.path + "[]." + sf.path, sf, source_defaults);
    } else {
      line(f.path, f, defaults);
    }
  }
  return text;
}

}  // namespace loom
