// The built-in chat formats (layers/chat_format.h).
#include "layers/chat_format.h"

#include <fmt/format.h>

#include "autograd/check.h"

namespace loom {
namespace {

const std::vector<ChatTemplate>& templates() {
  static const std::vector<ChatTemplate> all = {
      {"chatml",
       "<|im_start|>",
       "\n",
       "<|im_end|>",
       "\n",
       false,
       {"<|im_start|>", "<|im_end|>"},
       {"<|im_start|>", "<|im_end|>"}},
      {"llama3",
       "<|start_header_id|>",
       "<|end_header_id|>\n\n",
       "<|eot_id|>",
       "",
       true,
       {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
       {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}},
  };
  return all;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

}  // namespace

std::vector<std::string> builtin_chat_template_names() {
  std::vector<std::string> names;
  for (const auto& t : templates()) names.push_back(t.name);
  return names;
}

std::string builtin_chat_template_list() {
  std::string names;
  for (const auto& n : builtin_chat_template_names()) names += (names.empty() ? "" : ", ") + n;
  return names;
}

const ChatTemplate& find_chat_template(std::string_view name, std::string_view what) {
  for (const auto& t : templates())
    if (t.name == name) return t;
  throw Error(
      fmt::format("{}: chat template '{}' is not built in; built-in templates: {} (a "
                  "model's own Jinja template is not interpreted)",
                  what, name, builtin_chat_template_list()));
}

const ChatTemplate* detect_chat_template(std::string_view jinja) {
  for (const auto& t : templates()) {
    bool all = true;
    for (const auto& m : t.markers) all = all && jinja.find(m) != std::string_view::npos;
    if (all) return &t;
  }
  return nullptr;
}

std::string template_default_system(std::string_view jinja) {
  const ChatTemplate* format = detect_chat_template(jinja);
  if (format == nullptr || format->name != "chatml") return "";
  constexpr std::string_view open = "<|im_start|>system\n";
  const size_t at = jinja.find(open);
  if (at == std::string_view::npos) return "";
  const size_t begin = at + open.size();
  const size_t end = jinja.find("<|im_end|>", begin);
  if (end == std::string_view::npos) return "";
  const std::string_view text = jinja.substr(begin, end - begin);
  for (const char* markup : {"{{", "{%", "'", "\""})
    if (text.find(markup) != std::string_view::npos) return "";
  return std::string(text);
}

std::vector<ChatMessage> with_default_system(const std::vector<ChatMessage>& messages,
                                             const std::string& system) {
  std::vector<ChatMessage> all;
  if (!system.empty() && (messages.empty() || messages.front().role != "system"))
    all.push_back({"system", system});
  all.insert(all.end(), messages.begin(), messages.end());
  return all;
}

std::string chat_content(const ChatTemplate& tmpl, const std::string& content) {
  if (!tmpl.trim_content) return content;
  size_t begin = 0, end = content.size();
  while (begin < end && is_space(content[begin])) ++begin;
  while (end > begin && is_space(content[end - 1])) --end;
  return content.substr(begin, end - begin);
}

void check_chat_role(std::string_view role) {
  bool ok = !role.empty();
  for (char c : role)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-');
  if (!ok)
    throw Error(
        fmt::format("role '{}' is not a role name (expected letters, digits, '_' or "
                    "'-', e.g. \"user\" or \"assistant\")",
                    role));
}

std::string render_chat_text(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages) {
    check_chat_role(m.role);
    out += tmpl.header_start + m.role + tmpl.header_end + chat_content(tmpl, m.content) +
           tmpl.turn_end + tmpl.after_turn;
  }
  if (add_generation_prompt) out += tmpl.header_start + "assistant" + tmpl.header_end;
  return out;
}

}  // namespace loom
