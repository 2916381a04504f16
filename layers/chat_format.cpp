// The built-in chat formats (layers/chat_format.h).
#include "layers/chat_format.h"

#include <fmt/format.h>

#include "autograd/check.h"
#include "layers/tokenizer.h"

namespace loom {
namespace {

const std::vector<ChatTemplate>& templates() {
  static const std::vector<ChatTemplate> all = {
      {"chatml",
       ChatLayout::RoleHeaders,
       "<|im_start|>",
       "\n",
       "<|im_end|>",
       "\n",
       false,
       {"<|im_start|>", "<|im_end|>"},
       {"<|im_start|>", "<|im_end|>"},
       "SmolLM2, Qwen2"},
      {"llama3",
       ChatLayout::RoleHeaders,
       "<|start_header_id|>",
       "<|end_header_id|>\n\n",
       "<|eot_id|>",
       "",
       true,
       {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
       {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
       "Llama 3"},
      {"mistral-v1",
       ChatLayout::MistralV1,
       "",
       "",
       "</s>",
       "",
       false,
       {"</s>"},
       {"[INST]"},
       "Mistral-7B-Instruct v0.1 / v0.2, Mixtral-8x7B-Instruct"},
      {"mistral-v3",
       ChatLayout::MistralV3,
       "[INST]",
       "[/INST]",
       "</s>",
       "",
       false,
       {"[INST]", "[/INST]", "</s>"},
       {"[INST]"},
       "Mistral-7B-Instruct v0.3, Mixtral-8x22B-Instruct"},
  };
  return all;
}

const ChatTemplate& builtin(std::string_view name) {
  for (const auto& t : templates())
    if (t.name == name) return t;
  throw Error(fmt::format("chat template '{}' is not built in", name));
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// A message's content as the format writes it (trimmed for llama3).
std::string chat_content(const ChatTemplate& tmpl, const std::string& content) {
  if (!tmpl.trim_content) return content;
  size_t begin = 0, end = content.size();
  while (begin < end && is_space(content[begin])) ++begin;
  while (end > begin && is_space(content[end - 1])) --end;
  return content.substr(begin, end - begin);
}

void render_role_headers(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt, std::vector<ChatPiece>& out) {
  for (const ChatMessage& m : messages) {
    const bool assistant = m.role == "assistant";
    out.push_back({tmpl.header_start + m.role + tmpl.header_end, false, true});
    std::string content = chat_content(tmpl, m.content);
    if (!content.empty()) out.push_back({std::move(content), assistant, false});
    out.push_back({tmpl.turn_end, assistant, true});
    if (!tmpl.after_turn.empty()) out.push_back({tmpl.after_turn, false, false});
  }
  if (add_generation_prompt)
    out.push_back({tmpl.header_start + "assistant" + tmpl.header_end, false, true});
}

// Mistral's formats, as mistral_common normalizes and encodes a conversation: the system
// messages' contents (non-empty ones, wherever they are) joined by a blank line into one system
// prompt; neighbouring user (or assistant) messages merged into one turn, joined by a blank line;
// the system prompt put before the first (v1) or last (v3) user turn's content.
void render_mistral(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                    std::vector<ChatPiece>& out) {
  const bool v1 = tmpl.layout == ChatLayout::MistralV1;
  std::string system;
  std::vector<ChatMessage> turns;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw Error(
          fmt::format("message {} has the role '{}'; the {} chat format has only system, "
                      "user and assistant messages",
                      i + 1, m.role, tmpl.name));
    if (m.role == "system") {
      if (!m.content.empty()) system += (system.empty() ? "" : "\n\n") + m.content;
      continue;
    }
    const bool merges = i > 0 && messages[i - 1].role == m.role;
    if (merges)
      turns.back().content += "\n\n" + m.content;
    else
      turns.push_back(m);
  }
  size_t first_user = turns.size(), last_user = turns.size();
  for (size_t i = 0; i < turns.size(); ++i) {
    if (turns[i].role != "user") continue;
    if (first_user == turns.size()) first_user = i;
    last_user = i;
  }
  const size_t system_turn = v1 ? first_user : last_user;
  for (size_t i = 0; i < turns.size(); ++i) {
    const ChatMessage& t = turns[i];
    if (t.role == "user") {
      const std::string content = i == system_turn && !system.empty()
                                      ? fmt::format("{}\n\n{}", system, t.content)
                                      : t.content;
      if (v1) {
        out.push_back({fmt::format("[INST] {} [/INST]", content), false, false});
      } else {
        out.push_back({tmpl.header_start, false, true});
        if (!content.empty()) out.push_back({content, false, false});
        out.push_back({tmpl.header_end, false, true});
      }
      continue;
    }
    std::string reply = t.content;
    if (!v1) {  // mistral_common from v2 on: trailing spaces come off a reply
      while (!reply.empty() && reply.back() == ' ') reply.pop_back();
    }
    if (t.content.empty())
      throw Error(
          fmt::format("an assistant message is empty; the {} chat format (as Mistral's "
                      "tokenizer library) needs a reply in each",
                      tmpl.name));
    if (!reply.empty()) out.push_back({std::move(reply), true, false});
    out.push_back({tmpl.turn_end, true, true});
  }
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

const ChatTemplate* detect_chat_template(std::string_view jinja, bool inst_is_token) {
  auto has = [&](std::string_view text) { return jinja.find(text) != std::string_view::npos; };
  if (has("[INST]")) {
    // Llama 2's <<SYS>> layout and Mistral's v7 [SYSTEM_PROMPT] one are not built in.
    if (has("<<SYS>>") || has("[SYSTEM_PROMPT]")) return nullptr;
    return &builtin(inst_is_token ? "mistral-v3" : "mistral-v1");
  }
  for (const auto& t : templates()) {
    if (t.layout != ChatLayout::RoleHeaders) continue;
    bool all = true;
    for (const auto& m : t.markers) all = all && has(m);
    if (all) return &t;
  }
  return nullptr;
}

const ChatTemplate* detect_chat_template(const Tokenizer& tokenizer) {
  return detect_chat_template(tokenizer.chat_template(), tokenizer.find_token("[INST]") >= 0);
}

std::string template_default_system(std::string_view jinja) {
  const ChatTemplate* format = detect_chat_template(jinja, false);
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

std::vector<ChatPiece> render_chat_pieces(const ChatTemplate& tmpl,
                                          const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt) {
  for (const ChatMessage& m : messages) check_chat_role(m.role);
  std::vector<ChatPiece> out;
  if (tmpl.layout == ChatLayout::RoleHeaders) {
    render_role_headers(tmpl, messages, add_generation_prompt, out);
  } else {
    render_mistral(tmpl, messages, out);
  }
  return out;
}

std::string render_chat_text(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) {
  std::string out;
  for (const ChatPiece& p : render_chat_pieces(tmpl, messages, add_generation_prompt))
    out += p.text;
  return out;
}

std::vector<int32_t> encode_chat_pieces(const Tokenizer& tokenizer,
                                        const std::vector<ChatPiece>& pieces) {
  std::vector<int32_t> ids;
  if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  for (const ChatPiece& p : pieces) tokenizer.encode_append(p.text, false, p.parse_special, ids);
  return ids;
}

}  // namespace loom
