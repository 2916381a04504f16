// GGUF metadata: value type names, typed access with clear errors, display form, and the
// GgufFile's key lookups and typed getters (gguf.h).
#include <fmt/format.h>

#include <limits>

#include "autograd/check.h"
#include "layers/gguf.h"

namespace loom {

std::string_view gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
      return "uint8";
    case GgufType::INT8:
      return "int8";
    case GgufType::UINT16:
      return "uint16";
    case GgufType::INT16:
      return "int16";
    case GgufType::UINT32:
      return "uint32";
    case GgufType::INT32:
      return "int32";
    case GgufType::FLOAT32:
      return "float32";
    case GgufType::BOOL:
      return "bool";
    case GgufType::STRING:
      return "string";
    case GgufType::ARRAY:
      return "array";
    case GgufType::UINT64:
      return "uint64";
    case GgufType::INT64:
      return "int64";
    case GgufType::FLOAT64:
      return "float64";
  }
  return "unknown";
}

std::string GgufValue::type_str() const {
  if (const auto* a = std::get_if<GgufArray>(&v_)) {
    std::string elem(gguf_type_name(a->elem_type));
    if (a->elem_type == GgufType::ARRAY && !a->items.empty()) elem = a->items.front().type_str();
    return fmt::format("array of {} {}", a->items.size(), elem);
  }
  return std::string(gguf_type_name(type()));
}

namespace {

bool is_integer_type(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool GgufValue::is_integer() const {
  return is_integer_type(type());
}

bool GgufValue::is_float() const {
  return type() == GgufType::FLOAT32 || type() == GgufType::FLOAT64;
}

namespace {

// "a string", "an int32", "an array of 3 uint32".
std::string with_article(const std::string& s) {
  bool vowel = !s.empty() && (s[0] == 'a' || s[0] == 'i' || s[0] == 'e' || s[0] == 'o');
  return (vowel ? "an " : "a ") + s;
}

[[noreturn]] void wrong_type(std::string_view what, const GgufValue& v, std::string_view expected) {
  throw Error(
      fmt::format("gguf: {} is {}, expected {}", what, with_article(v.type_str()), expected));
}

std::string quoted(const std::string& s, size_t max_chars) {
  std::string out = "\"";
  size_t shown = 0;
  for (char c : s) {
    if (shown == max_chars) {
      out += fmt::format("...\" ({} bytes)", s.size());
      return out;
    }
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        else
          out += c;
    }
    ++shown;
  }
  return out + "\"";
}

}  // namespace

int64_t GgufValue::as_int(std::string_view what) const {
  if (const auto* u = std::get_if<uint64_t>(&v_)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw Error(fmt::format("gguf: {} is uint64 {}, which does not fit in int64", what, *u));
    return static_cast<int64_t>(*u);
  }
  if (!is_integer()) wrong_type(what, *this, "an integer");
  return std::visit(
      [](const auto& x) -> int64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
          return static_cast<int64_t>(x);
        else
          return 0;  // unreachable: is_integer() checked above
      },
      v_);
}

double GgufValue::as_float(std::string_view what) const {
  if (const auto* f = std::get_if<float>(&v_)) return *f;
  if (const auto* d = std::get_if<double>(&v_)) return *d;
  if (is_integer()) {
    if (const auto* u = std::get_if<uint64_t>(&v_)) return static_cast<double>(*u);
    return static_cast<double>(as_int(what));
  }
  wrong_type(what, *this, "a number");
}

bool GgufValue::as_bool(std::string_view what) const {
  if (const auto* b = std::get_if<bool>(&v_)) return *b;
  wrong_type(what, *this, "a bool");
}

const std::string& GgufValue::as_string(std::string_view what) const {
  if (const auto* s = std::get_if<std::string>(&v_)) return *s;
  wrong_type(what, *this, "a string");
}

const GgufArray& GgufValue::as_array(std::string_view what) const {
  if (const auto* a = std::get_if<GgufArray>(&v_)) return *a;
  wrong_type(what, *this, "an array");
}

std::vector<int64_t> GgufValue::as_int_array(std::string_view what) const {
  const auto* a = std::get_if<GgufArray>(&v_);
  if (!a || !is_integer_type(a->elem_type)) wrong_type(what, *this, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(a->items.size());
  for (size_t i = 0; i < a->items.size(); ++i)
    out.push_back(a->items[i].as_int(fmt::format("{} item {}", what, i)));
  return out;
}

std::vector<double> GgufValue::as_float_array(std::string_view what) const {
  const auto* a = std::get_if<GgufArray>(&v_);
  if (!a || a->elem_type == GgufType::BOOL || a->elem_type == GgufType::STRING ||
      a->elem_type == GgufType::ARRAY)
    wrong_type(what, *this, "an array of numbers");
  std::vector<double> out;
  out.reserve(a->items.size());
  for (size_t i = 0; i < a->items.size(); ++i)
    out.push_back(a->items[i].as_float(fmt::format("{} item {}", what, i)));
  return out;
}

std::vector<std::string> GgufValue::as_string_array(std::string_view what) const {
  const auto* a = std::get_if<GgufArray>(&v_);
  if (!a || a->elem_type != GgufType::STRING) wrong_type(what, *this, "an array of strings");
  std::vector<std::string> out;
  out.reserve(a->items.size());
  for (const GgufValue& item : a->items) out.push_back(std::get<std::string>(item.v_));
  return out;
}

std::string GgufValue::to_display(size_t max_items, size_t max_chars) const {
  return std::visit(
      [&](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return quoted(x, max_chars);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          std::string out = "[";
          for (size_t i = 0; i < x.items.size() && i < max_items; ++i)
            out += (i ? ", " : "") + x.items[i].to_display(max_items, max_chars);
          if (x.items.size() > max_items) out += fmt::format(", ... ({} items)", x.items.size());
          return out + "]";
        } else if constexpr (std::is_same_v<T, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t>) {
          return fmt::format("{}", static_cast<int>(x));  // not as a character
        } else {
          return fmt::format("{}", x);
        }
      },
      v_);
}

// ---- GgufFile metadata lookups ------------------------------------------------------------

std::string GgufFile::key_context(std::string_view key) const {
  return fmt::format("key '{}' in {}", key, path_);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufValue& GgufFile::at(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) throw Error(fmt::format("gguf: key '{}' not found in {}", key, path_));
  return *v;
}

int64_t GgufFile::get_int(std::string_view key) const {
  return at(key).as_int(key_context(key));
}
double GgufFile::get_float(std::string_view key) const {
  return at(key).as_float(key_context(key));
}
bool GgufFile::get_bool(std::string_view key) const {
  return at(key).as_bool(key_context(key));
}
const std::string& GgufFile::get_string(std::string_view key) const {
  return at(key).as_string(key_context(key));
}
std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  return at(key).as_int_array(key_context(key));
}
std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  return at(key).as_float_array(key_context(key));
}
std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  return at(key).as_string_array(key_context(key));
}

}  // namespace loom
