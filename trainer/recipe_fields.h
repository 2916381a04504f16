// Internal to the recipe code (trainer/recipe*.cpp): the schema's field type, where a value came
// from, and the scalar readers/writers the fields share. Users include trainer/recipe.h.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "trainer/recipe.h"

namespace loom::recipe_detail {

enum class FieldType {
  Int,
  Float,
  Bool,
  String,
  Enum,
  StringList,
  IntList,
  NamedInts,
  NamedFloats,
  SourceList
};
std::string_view type_name(FieldType t);  // "integer", "float", "list of strings", ...

// Where values are being read from: a recipe file (messages say file:line) or one command-line
// override (messages quote it).
struct Origin {
  std::string file;                              // the recipe file, when reading one
  std::string override_text;                     // "train.lr=abc", when applying an override
  std::string at(const YAML::Node& node) const;  // "recipes/q.yaml:12" / "override `train.lr=abc`"
};

// Dotted key -> where its value was set. Keys never set are defaults.
using Origins = std::map<std::string, std::string>;

// What a field's readers get: the origin and the map to record into.
struct ReadContext {
  const Origin& origin;
  Origins& origins;
};

// One key of the schema, bound to a member of Root (Recipe, or DataSourceRecipe for the fields
// of one data source). `path` is dotted and relative to Root.
template <class Root>
struct Field {
  std::string path;
  FieldType type = FieldType::String;
  std::string doc;
  std::vector<std::string> choices;  // Enum values; allowed StringList items (empty = any)
  bool required = false;
  // Reads the whole value from `node` (type-checked) into the member; `key` is the full dotted
  // key for messages and origins.
  std::function<void(Root&, const YAML::Node& node, const std::string& key, ReadContext&)> read;
  // NamedInts / NamedFloats: sets one entry (`entry` is its name).
  std::function<void(Root&, const std::string& entry, const YAML::Node& node,
                     const std::string& key, ReadContext&)>
      read_entry;
  // SourceList: the list itself.
  std::function<std::vector<DataSourceRecipe>&(Root&)> sources;
  // Writes the value (lists and maps in flow style, data sources in block style).
  std::function<void(const Root&, YAML::Emitter&)> write;
};

const std::vector<Field<Recipe>>& recipe_fields();
const std::vector<Field<DataSourceRecipe>>& source_fields();

// Scalar readers: type-checked, with messages "<where>: <key>: expected ..., found ...".
int64_t read_int(const YAML::Node& node, const std::string& key, const Origin& origin);
double read_float(const YAML::Node& node, const std::string& key, const Origin& origin);
bool read_bool(const YAML::Node& node, const std::string& key, const Origin& origin);
std::string read_string(const YAML::Node& node, const std::string& key, const Origin& origin);
std::string read_choice(const YAML::Node& node, const std::string& key, const Origin& origin,
                        const std::vector<std::string>& choices);
// A sequence of scalars, or one scalar holding a comma-separated list ("q_proj,v_proj").
std::vector<YAML::Node> read_list_items(const YAML::Node& node, const std::string& key,
                                        const Origin& origin);
// "the string \"abc\"", "the integer 3", "a list", "a map", "nothing" -- for messages.
std::string describe_node(const YAML::Node& node);

// "a, b, c" (fmt::join trips GCC 12's -Wstringop-overflow at -O3).
std::string join(const std::vector<std::string>& items, std::string_view separator = ", ");

// Shortest text that reads back to the same double; always looks like a float ("32.0").
std::string format_float(double v);

// The candidate nearest to `name` by edit distance (dotted keys: also compares the last part).
std::string nearest_key(const std::string& name, const std::vector<std::string>& candidates);
size_t edit_distance(std::string_view a, std::string_view b);

// Reads a list of data sources (a YAML sequence of maps); `key` is "data.sources".
std::vector<DataSourceRecipe> read_sources(const YAML::Node& node, const std::string& key,
                                           ReadContext& ctx);
// Reads the fields of one source from a map into `source`; `key` is "data.sources.<i>".
void read_source_fields(DataSourceRecipe& source, const YAML::Node& node, const std::string& key,
                        ReadContext& ctx);

// Checks and normalizes a recipe after all values are read: required keys, ranges, source
// names, data.mix applied to the source weights, "all-linear" expanded. Messages name the key
// and where it was set.
void validate_recipe(Recipe& recipe, const Origins& origins, const std::string& source_name);

}  // namespace loom::recipe_detail
