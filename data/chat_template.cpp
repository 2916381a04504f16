// The built-in chat templates (chatml) and their rendering into trained / prompt segments.
#include "data/chat_template.h"

#include <fmt/format.h>

#include "autograd/check.h"
#include "layers/tokenizer.h"

namespace loom {
namespace {

const std::vector<ChatTemplate>& templates() {
  static const std::vector<ChatTemplate> all = {
      {"chatml", "<|im_start|>", "<|im_end|>", {"<|im_start|>", "<|im_end|>"}},
  };
  return all;
}

bool valid_role(std::string_view role) {
  if (role.empty()) return false;
  for (char c : role) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> builtin_chat_template_names() {
  std::vector<std::string> names;
  for (const auto& t : templates()) names.push_back(t.name);
  return names;
}

const ChatTemplate& find_chat_template(std::string_view name, std::string_view what) {
  for (const auto& t : templates()) {
    if (t.name == name) return t;
  }
  std::string names;
  for (const auto& n : builtin_chat_template_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error(
      fmt::format("{}: chat template '{}' is not built in; built-in templates: {} (a "
                  "model's own Jinja template is not interpreted)",
                  what, name, names));
}

void render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                 std::vector<Segment>& out) {
  for (const auto& m : messages) {
    if (!valid_role(m.role)) {
      throw Error(
          fmt::format("role '{}' is not a role name (expected letters, digits, '_' or "
                      "'-', e.g. \"user\" or \"assistant\")",
                      m.role));
    }
    const bool assistant = m.role == "assistant";
    out.push_back({tmpl.turn_start + m.role + "\n", false, true});
    if (!m.content.empty()) out.push_back({m.content, assistant, false});
    out.push_back({tmpl.turn_end, assistant, true});
    out.push_back({"\n", false, false});
  }
}

void check_chat_template_tokens(const ChatTemplate& tmpl, const Tokenizer& tokenizer) {
  for (const auto& text : tmpl.special_tokens) {
    if (tokenizer.find_token(text) < 0) {
      throw Error(
          fmt::format("chat template '{}' needs the token '{}', which the tokenizer of "
                      "'{}' does not have; use a template the model was trained with",
                      tmpl.name, text, tokenizer.source()));
    }
  }
}

}  // namespace loom
