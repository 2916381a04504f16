// The chat formats loom renders itself, shared by training (data/chat_template.h turns them into
// trained / prompt segments) and `loom generate --chat` (layers/inference.h). loom does not
// evaluate a model's Jinja template; it recognizes the common formats in it and renders them:
//
//   chatml  (SmolLM2, Qwen2, ...)   <|im_start|>{role}\n{content}<|im_end|>\n
//   llama3  (Llama 3, 3.1, 3.2) <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//           the content with its surrounding whitespace dropped, as Llama 3's template
//           (`| trim`) and llama.cpp's renderer do; the tokenizer adds <|begin_of_text|>
//
// A generation prompt ends with the assistant's header. Each rendering is checked against
// llama.cpp's llama_chat_apply_template (tests/interop/test_chat_formats.py).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace loom {

struct ChatMessage {
  std::string role;  // letters, digits, '_' or '-': "system", "user", "assistant", "tool"
  std::string content;
};

struct ChatTemplate {
  std::string name;
  std::string header_start;  // before the role
  std::string header_end;    // after the role
  std::string turn_end;  // after the content; trained in assistant turns (the model learns to stop)
  std::string after_turn;                   // after turn_end; never trained
  bool trim_content = false;                // the content's surrounding whitespace is dropped
  std::vector<std::string> special_tokens;  // each must be one token of the model's vocabulary
  std::vector<std::string> markers;         // all found in a model's Jinja template: this format
};

std::vector<std::string> builtin_chat_template_names();
std::string builtin_chat_template_list();  // "chatml, llama3"
// Throws naming `what` and listing the built-in names when `name` is not one of them.
const ChatTemplate& find_chat_template(std::string_view name, std::string_view what);
// The built-in format a model's Jinja template (tokenizer.chat_template) writes, or nullptr.
const ChatTemplate* detect_chat_template(std::string_view jinja);

// The default system message a model's Jinja template inserts when a conversation has none, as
// Hugging Face's apply_chat_template and llama.cpp's --jinja mode render it; "" when it has none
// that loom can read. Read only when written literally in a ChatML template
// ('<|im_start|>system\n' + text + '<|im_end|>', no Jinja inside the text: SmolLM2's "You are a
// helpful AI assistant named SmolLM, trained by Hugging Face").
std::string template_default_system(std::string_view jinja);
// The messages with {"system", system} put first when `system` is not empty and the first
// message is not a system message.
std::vector<ChatMessage> with_default_system(const std::vector<ChatMessage>& messages,
                                             const std::string& system);

// A message's content as the format writes it (trimmed for llama3).
std::string chat_content(const ChatTemplate& tmpl, const std::string& content);
// The messages as text; with add_generation_prompt, then the assistant's header. Throws (a plain
// message) when a role is empty or has characters other than letters, digits, '_' and '-'.
std::string render_chat_text(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt);
// Throws when `role` is not a role name (see ChatMessage).
void check_chat_role(std::string_view role);

}  // namespace loom
