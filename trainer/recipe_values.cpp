// Scalar readers and writers shared by the recipe fields (recipe_fields.h): strict typing with
// messages that say expected vs found and where, float formatting that round-trips, and the
// edit-distance search behind "did you mean".
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

#include "autograd/check.h"
#include "trainer/recipe_fields.h"

namespace loom::recipe_detail {

std::string_view type_name(FieldType t) {
  switch (t) {
    case FieldType::Int:
      return "integer";
    case FieldType::Float:
      return "float";
    case FieldType::Bool:
      return "bool";
    case FieldType::String:
      return "string";
    case FieldType::Enum:
      return "enum";
    case FieldType::StringList:
      return "list of strings";
    case FieldType::IntList:
      return "list of integers";
    case FieldType::NamedInts:
      return "map of regex to integer";
    case FieldType::NamedFloats:
      return "map of name to float";
    case FieldType::SourceList:
      return "list of data sources";
  }
  return "?";
}

std::string Origin::at(const YAML::Node& node) const {
  if (!override_text.empty()) return fmt::format("command-line override `{}`", override_text);
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return file;
  return fmt::format("{}:{}", file, mark.line + 1);
}

namespace {

bool is_quoted(const YAML::Node& node) {
  return node.Tag() == "!";
}

[[noreturn]] void wrong_type(const YAML::Node& node, const std::string& key, const Origin& origin,
                             std::string_view expected) {
  throw Error(fmt::format("{}: {}: expected {}, found {}", origin.at(node), key, expected,
                          describe_node(node)));
}

template <class T>
bool parse_number(std::string_view text, T& out) {
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

bool is_bool_text(const std::string& s, bool& value) {
  if (s == "true" || s == "True" || s == "TRUE") return value = true, true;
  if (s == "false" || s == "False" || s == "FALSE") return value = false, true;
  return false;
}

std::string trim(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

}  // namespace

std::string describe_node(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      return "nothing (an empty value)";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Scalar:
      break;
  }
  const std::string& s = node.Scalar();
  if (is_quoted(node)) return fmt::format("the quoted string \"{}\"", s);
  int64_t i = 0;
  double d = 0;
  bool b = false;
  if (parse_number(s, i)) return fmt::format("the integer {}", s);
  if (parse_number(s, d)) return fmt::format("the number {}", s);
  if (is_bool_text(s, b)) return fmt::format("the bool {}", s);
  return fmt::format("the string \"{}\"", s);
}

int64_t read_int(const YAML::Node& node, const std::string& key, const Origin& origin) {
  int64_t v = 0;
  if (!node.IsScalar() || is_quoted(node) || !parse_number(node.Scalar(), v))
    wrong_type(node, key, origin, "an integer");
  return v;
}

double read_float(const YAML::Node& node, const std::string& key, const Origin& origin) {
  double v = 0;
  // YAML spells infinity and NaN .inf / .nan; from_chars spells them inf / nan.
  const bool yaml_special =
      node.IsScalar() && !is_quoted(node) && !node.Scalar().empty() &&
      (node.Scalar().find(".inf") != std::string::npos ||
       node.Scalar().find(".Inf") != std::string::npos ||
       node.Scalar().find(".INF") != std::string::npos || node.Scalar() == ".nan" ||
       node.Scalar() == ".NaN" || node.Scalar() == ".NAN");
  if (!yaml_special && (!node.IsScalar() || is_quoted(node) || !parse_number(node.Scalar(), v)))
    wrong_type(node, key, origin, "a number");
  if (yaml_special || !std::isfinite(v))
    throw Error(fmt::format("{}: {}: expected a finite number, found {}", origin.at(node), key,
                            node.Scalar()));
  return v;
}

bool read_bool(const YAML::Node& node, const std::string& key, const Origin& origin) {
  bool v = false;
  if (!node.IsScalar() || is_quoted(node) || !is_bool_text(node.Scalar(), v))
    wrong_type(node, key, origin, "true or false");
  return v;
}

std::string read_string(const YAML::Node& node, const std::string& key, const Origin& origin) {
  if (!node.IsScalar()) wrong_type(node, key, origin, "a string");
  return node.Scalar();
}

std::string read_choice(const YAML::Node& node, const std::string& key, const Origin& origin,
                        const std::vector<std::string>& choices) {
  const std::string expected = fmt::format("one of {}", join(choices));
  if (!node.IsScalar()) wrong_type(node, key, origin, expected);
  const std::string& s = node.Scalar();
  if (std::find(choices.begin(), choices.end(), s) == choices.end())
    throw Error(fmt::format("{}: {}: expected {}, found \"{}\" (did you mean {}?)", origin.at(node),
                            key, expected, s, nearest_key(s, choices)));
  return s;
}

std::vector<YAML::Node> read_list_items(const YAML::Node& node, const std::string& key,
                                        const Origin& origin) {
  std::vector<YAML::Node> items;
  if (node.IsNull()) return items;
  if (node.IsSequence()) {
    for (const YAML::Node& item : node) items.push_back(item);
    return items;
  }
  if (!node.IsScalar()) wrong_type(node, key, origin, "a list");
  // "a,b,c" as one scalar: the short form for the command line.
  std::string text = node.Scalar();
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    std::string part = trim(text.substr(start, comma - start));
    if (!part.empty()) items.emplace_back(part);
    start = comma + 1;
  }
  return items;
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    out += items[i];
  }
  return out;
}

std::string format_float(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // 'n': inf/nan stay as they are
  return s;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string nearest_key(const std::string& name, const std::vector<std::string>& candidates) {
  // A key in the wrong section ("train.seq_len" for "data.seq_len") is as near as a typo, so
  // the last parts are compared too, with one extra for the different section.
  const auto last = [](std::string_view s) {
    const size_t dot = s.rfind('.');
    return dot == std::string_view::npos ? s : s.substr(dot + 1);
  };
  const auto section = [](std::string_view s) {
    const size_t dot = s.rfind('.');
    return dot == std::string_view::npos ? std::string_view() : s.substr(0, dot);
  };
  std::string best;
  size_t best_score = SIZE_MAX;
  for (const std::string& c : candidates) {
    size_t score = edit_distance(name, c);
    const size_t by_last =
        edit_distance(last(name), last(c)) + (section(name) == section(c) ? 0 : 1);
    score = 2 * std::min(score, by_last);
    // A part of a longer name ("gguf" for "gguf-adapter") ranks between one and two edits.
    if (last(name).size() >= 3 && c.find(last(name)) != std::string::npos)
      score = std::min<size_t>(score, 3);
    if (score < best_score) best_score = score, best = c;
  }
  return best;
}

}  // namespace loom::recipe_detail
