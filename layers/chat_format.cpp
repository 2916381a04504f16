// The built-in chat formats (layers/chat_format.h).
#include "layers/chat_format.h"

#include <fmt/format.h>

#include <cstdint>

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
       {"<|im_start|>", "<|im_end|>"}},
      {"llama3",
       ChatLayout::RoleHeaders,
       "<|start_header_id|>",
       "<|end_header_id|>\n\n",
       "<|eot_id|>",
       "",
       true,
       {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
       {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}},
      {"mistral-v1", ChatLayout::MistralV1, "", "", "</s>", "", false, {"</s>"}, {"[INST]"}},
      {"mistral-v3",
       ChatLayout::MistralV3,
       "[INST]",
       "[/INST]",
       "</s>",
       "",
       false,
       {"[INST]", "[/INST]", "</s>"},
       {"[INST]"}},
      {"llama2",
       ChatLayout::Llama2,
       "<s>",
       "",
       "</s>",
       "",
       true,
       {"<s>", "</s>"},
       {"[INST]", "<<SYS>>"}},
  };
  return all;
}

const ChatTemplate& builtin(std::string_view name) {
  for (const auto& t : templates())
    if (t.name == name) return t;
  throw Error(fmt::format("chat template '{}' is not built in", name));
}

// Whitespace as Python's str.strip() sees it (Jinja's trim and the templates' .strip() are
// Python's): ASCII \t-\r, \x1c-\x1f and space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
// U+2029, U+202F, U+205F, U+3000.
bool is_space_code_point(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

// The code point of the UTF-8 sequence text[at, at + n) (n = 1..3 bytes: every whitespace code
// point above is at most 3 bytes), or UINT32_MAX when it is not one well-formed sequence.
uint32_t code_point(std::string_view text, size_t at, size_t n) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(text[at + i]); };
  if (n == 1) return b(0) < 0x80 ? b(0) : UINT32_MAX;
  for (size_t i = 1; i < n; ++i)
    if ((b(i) & 0xc0) != 0x80) return UINT32_MAX;
  if (n == 2 && (b(0) & 0xe0) == 0xc0) return ((b(0) & 0x1fu) << 6) | (b(1) & 0x3fu);
  if (n == 3 && (b(0) & 0xf0) == 0xe0)
    return ((b(0) & 0x0fu) << 12) | ((b(1) & 0x3fu) << 6) | (b(2) & 0x3fu);
  return UINT32_MAX;
}

// The text without its surrounding whitespace, as Python's str.strip() (llama3's and llama2's
// templates trim contents).
std::string trimmed(const std::string& text) {
  // The length of the whitespace code point starting at (ending at) a position; 0 if none.
  auto space_at = [&](size_t at, size_t limit) -> size_t {
    for (size_t n = 1; n <= 3 && at + n <= limit; ++n)
      if (is_space_code_point(code_point(text, at, n))) return n;
    return 0;
  };
  auto space_before = [&](size_t end, size_t limit) -> size_t {
    for (size_t n = 1; n <= 3 && end >= limit + n; ++n)
      if (is_space_code_point(code_point(text, end - n, n))) return n;
    return 0;
  };
  size_t begin = 0, end = text.size();
  while (begin < end) {
    const size_t n = space_at(begin, end);
    if (n == 0) break;
    begin += n;
  }
  while (end > begin) {
    const size_t n = space_before(end, begin);
    if (n == 0) break;
    end -= n;
  }
  return text.substr(begin, end - begin);
}

std::string chat_content(const ChatTemplate& tmpl, const std::string& content) {
  return tmpl.trim_content ? trimmed(content) : content;
}

void check_system_user_assistant(const ChatTemplate& tmpl,
                                 const std::vector<ChatMessage>& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant")
      throw Error(
          fmt::format("message {} has the role '{}'; the {} chat format has only system, "
                      "user and assistant messages",
                      i + 1, role, tmpl.name));
  }
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
  check_system_user_assistant(tmpl, messages);
  auto join = [](std::string& to, const std::string& text) {  // empty texts are left out
    if (!text.empty()) to += (to.empty() ? "" : "\n\n") + text;
  };
  std::string system;
  std::vector<ChatMessage> turns;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "system") {
      join(system, m.content);
      continue;
    }
    if (m.role == "assistant" && m.content.empty())
      throw Error(
          fmt::format("message {} is an empty assistant message; the {} chat format (as "
                      "Mistral's tokenizer library) needs a reply in each",
                      i + 1, tmpl.name));
    if (i == 0 || messages[i - 1].role != m.role) turns.push_back({m.role, ""});
    join(turns.back().content, m.content);
  }
  // A conversation that does not open with a user turn gets an empty one first (the system
  // prompt goes there when there is no other).
  if (turns.empty() || turns.front().role != "user") turns.insert(turns.begin(), {"user", ""});
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
    if (!reply.empty()) out.push_back({std::move(reply), true, false});
    out.push_back({tmpl.turn_end, true, true});
  }
}

// Llama 2's chat format, as Meta's reference code and the Hugging Face template write it: an
// optional system message first, folded into the first user turn between <<SYS>> markers, then
// user and assistant turns in turn; each exchange is <s>[INST] {user} [/INST] {reply} </s>, with
// the contents' surrounding whitespace dropped. The first <s> is the tokenizer's BOS.
void render_llama2(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                   std::vector<ChatPiece>& out) {
  check_system_user_assistant(tmpl, messages);
  const bool has_system = !messages.empty() && messages[0].role == "system";
  for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool user_turn = (i - (has_system ? 1 : 0)) % 2 == 0;
    if (m.role != (user_turn ? "user" : "assistant"))
      throw Error(fmt::format(
          "message {} is a {} message where the llama2 chat format needs a{} {} one: after an "
          "optional system message first, user and assistant messages take turns",
          i + 1, m.role, user_turn ? "" : "n", user_turn ? "user" : "assistant"));
    if (user_turn) {
      const bool first = i == (has_system ? 1 : 0);
      if (!first) out.push_back({tmpl.header_start, false, true});
      const std::string content = first && has_system ? fmt::format("<<SYS>>\n{}\n<</SYS>>\n\n{}",
                                                                    messages[0].content, m.content)
                                                      : m.content;
      out.push_back({fmt::format("[INST] {} [/INST]", trimmed(content)), false, false});
    } else {
      out.push_back({trimmed(m.content) + " ", true, false});
      out.push_back({tmpl.turn_end, true, true});
    }
  }
}

// The Jinja tag ({% ... %}) that ends last before `at` with only whitespace and the opening of
// one {{ ... }} expression between it and `at`; "" when there is none.
std::string_view tag_right_before(std::string_view jinja, size_t at) {
  const size_t expr = jinja.rfind("{{", at);
  if (expr == std::string_view::npos) return {};
  for (size_t i = expr + 2; i < at; ++i)
    if (!is_space_code_point(static_cast<uint8_t>(jinja[i])) && jinja[i] != '-' &&
        jinja[i] != '\'' && jinja[i] != '"')
      return {};
  const size_t close = jinja.rfind("%}", expr);
  if (close == std::string_view::npos) return {};
  for (size_t i = close + 2; i < expr; ++i)
    if (!is_space_code_point(static_cast<uint8_t>(jinja[i]))) return {};
  const size_t open = jinja.rfind("{%", close);
  if (open == std::string_view::npos) return {};
  return jinja.substr(open, close + 2 - open);
}

// The tag's keyword (if, elif, else, ...), after "{%", an optional "-" and spaces.
std::string_view tag_keyword(std::string_view tag) {
  if (tag.size() < 4) return {};
  size_t i = 2;
  while (i < tag.size() && (tag[i] == '-' || tag[i] == ' ' || tag[i] == '\n' || tag[i] == '\t'))
    ++i;
  size_t j = i;
  while (j < tag.size() && tag[j] >= 'a' && tag[j] <= 'z') ++j;
  return tag.substr(i, j - i);
}

// Whether the expression writing the system header at `at` is in a branch taken when the
// conversation has no system message (template_default_system).
bool in_no_system_branch(std::string_view jinja, size_t at) {
  auto has = [](std::string_view tag, std::string_view a, std::string_view b) {
    return tag.find(a) != std::string_view::npos || tag.find(b) != std::string_view::npos;
  };
  const std::string_view tag = tag_right_before(jinja, at);
  const std::string_view keyword = tag_keyword(tag);
  if (keyword == "if" || keyword == "elif") return has(tag, "!= 'system'", "!= \"system\"");
  if (keyword != "else") return false;
  // The if (or elif) the else belongs to: the tag right before it (an endif, for, set ... there
  // means nested blocks: not read).
  const size_t else_at = static_cast<size_t>(tag.data() - jinja.data());
  if (else_at == 0) return false;
  const size_t open = jinja.rfind("{%", else_at - 1);
  if (open == std::string_view::npos) return false;
  const std::string_view before = jinja.substr(open, jinja.find("%}", open) + 2 - open);
  const std::string_view k = tag_keyword(before);
  return (k == "if" || k == "elif") && has(before, "== 'system'", "== \"system\"");
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
    if (has("<<SYS>>")) return &builtin("llama2");
    // Mistral's v7 layout ([SYSTEM_PROMPT]) is not built in.
    if (has("[SYSTEM_PROMPT]")) return nullptr;
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

std::string resolve_chat_template(std::string_view name, const Tokenizer& tokenizer,
                                  std::string_view what) {
  if (name != "model") return find_chat_template(name, what).name;
  if (const ChatTemplate* own = detect_chat_template(tokenizer)) return own->name;
  throw Error(fmt::format(
      "{}: chat_template is model (the default), but the model ({}) has {}; set chat_template "
      "(loom eval: --chat-template) to the format to train it in: {}",
      what, tokenizer.source(),
      tokenizer.chat_template().empty() ? std::string("no chat template")
                                        : std::string("a chat template none of loom's formats"),
      builtin_chat_template_list()));
}

std::string template_default_system(std::string_view jinja) {
  const ChatTemplate* format = detect_chat_template(jinja, false);
  if (format == nullptr || format->name != "chatml") return "";
  // The header's newline is a newline in some templates (SmolLM2's) and Jinja's \n escape in
  // others (Qwen2.5's). The default is a system header followed by literal text, written in the
  // branch taken when the conversation has no system message: right after
  // `{% if ... != 'system' %}` (SmolLM2, Qwen2) or after the `{% else %}` of
  // `{% if messages[0]['role'] == 'system' %}` (Qwen2.5, whose first system headers are in its
  // tools branch and write messages[0]['content']). A literal in any other branch (say one taken
  // when tools are given) is not a default.
  for (std::string_view open : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    for (size_t at = jinja.find(open); at != std::string_view::npos;
         at = jinja.find(open, at + 1)) {
      const size_t begin = at + open.size();
      const size_t end = jinja.find("<|im_end|>", begin);
      if (end == std::string_view::npos) break;
      const std::string_view text = jinja.substr(begin, end - begin);
      bool literal = !text.empty();
      for (const char* markup : {"{{", "{%", "'", "\"", "\\"})
        literal = literal && text.find(markup) == std::string_view::npos;
      if (literal && in_no_system_branch(jinja, at)) return std::string(text);
    }
  }
  return "";
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
  } else if (tmpl.layout == ChatLayout::Llama2) {
    render_llama2(tmpl, messages, out);
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
