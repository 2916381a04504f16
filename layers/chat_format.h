// The chat formats loom renders itself, shared by training (data/chat_template.h turns them into
// trained / prompt segments) and `loom generate --chat` (layers/inference.h). loom does not
// evaluate a model's Jinja template; it recognizes the common formats in it and renders them.
// A conversation renders as pieces, each tokenized on its own (special tokens parsed in markup
// only), so a token never straddles a prompt / reply boundary:
//
//   chatml      (SmolLM2, Qwen2, ...)  <|im_start|>{role}\n{content}<|im_end|>\n
//   llama3      (Llama 3, 3.1, 3.2)
//               <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//               the content with its surrounding whitespace dropped, as Llama 3's template
//               (`| trim`) does (Python's whitespace: Unicode spaces too, where llama.cpp's
//               renderer drops ASCII ones only); the tokenizer adds <|begin_of_text|>
//   mistral-v1  (Mistral-7B-Instruct v0.1 / v0.2, Mixtral-8x7B-Instruct: [INST] is plain text)
//               "[INST] {system\n\n}{user} [/INST]" "{assistant}" </s> ...
//   mistral-v3  (Mistral-7B-Instruct v0.3, Mixtral-8x22B-Instruct: [INST] is a control token)
//               [INST] "{system\n\n}{user}" [/INST] "{assistant}" </s> ...
//   llama2      (Llama-2-chat)
//               "[INST] {<<SYS>>\nsystem\n<</SYS>>\n\n}{user} [/INST]" "{assistant} " </s>
//               <s> "[INST] {user} [/INST]" ...: contents trimmed; the first <s> is the
//               tokenizer's BOS
//
// Each quoted piece is text (one SentencePiece call, which puts "▁" in front of it), the rest
// markup. The Mistral formats are those of Mistral's own tokenizer library (mistral_common): the
// system messages go into the first user turn (v1) or the last one (v3), neighbouring messages
// of one role are one turn, v3 drops trailing spaces of replies. llama2 needs the system message
// first and user / assistant turns in turn, as its template does. The [INST] formats have no
// generation prompt (a prompt ends with [/INST]); chatml and llama3 end one with the
// assistant's header. Checked against llama.cpp's llama_chat_apply_template and, for the
// Mistral formats, token by token against mistral_common on Mistral's real tokenizers, and
// llama2 against Llama 2's Hugging Face template and tokenizer class (tests/interop/
// test_chat_formats.py).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

class Tokenizer;

struct ChatMessage {
  std::string role;  // letters, digits, '_' or '-': "system", "user", "assistant", "tool"
  std::string content;
};

// One piece of a rendered conversation.
struct ChatPiece {
  std::string text;
  bool trained = false;        // assistant contents and the turn end closing them
  bool parse_special = false;  // markup: special tokens written in it are parsed
};

enum class ChatLayout : uint8_t {
  RoleHeaders,  // header_start role header_end content turn_end after_turn, per message
  MistralV1,
  MistralV3,
  Llama2,
};

struct ChatTemplate {
  std::string name;
  ChatLayout layout = ChatLayout::RoleHeaders;
  std::string header_start;  // RoleHeaders: before the role; mistral-v3: [INST]; llama2: <s>
  std::string header_end;    // RoleHeaders: after the role; mistral-v3: [/INST]
  std::string turn_end;  // after the content; trained in assistant turns (the model learns to stop)
  std::string after_turn;                   // RoleHeaders: after turn_end; never trained
  bool trim_content = false;                // the content's surrounding whitespace is dropped
  std::vector<std::string> special_tokens;  // each must be one token of the model's vocabulary
  std::vector<std::string> markers;         // all found in a model's Jinja template: this format
};

std::vector<std::string> builtin_chat_template_names();
std::string builtin_chat_template_list();  // "chatml, llama3, mistral-v1, mistral-v3, llama2"
// Throws naming `what` and listing the built-in names when `name` is not one of them.
const ChatTemplate& find_chat_template(std::string_view name, std::string_view what);
// The built-in format a model's Jinja template (tokenizer.chat_template) writes, or nullptr.
// An [INST] template is llama2 with <<SYS>>, else Mistral's: mistral-v3 when the vocabulary has
// [INST] as a token (inst_is_token), else mistral-v1.
const ChatTemplate* detect_chat_template(std::string_view jinja, bool inst_is_token);
// The same for a tokenizer's own template and vocabulary.
const ChatTemplate* detect_chat_template(const Tokenizer& tokenizer);
// A chat_template setting as a built-in name: "model" is the format of the tokenizer's own
// template (throws naming `what` when it has none, or one loom does not render); any other
// name is checked to be built in.
std::string resolve_chat_template(std::string_view name, const Tokenizer& tokenizer,
                                  std::string_view what);

// The default system message a model's Jinja template inserts when a conversation has none, as
// Hugging Face's apply_chat_template and llama.cpp's --jinja mode render it; "" when it has none
// that loom can read. Read only when written literally in a ChatML template
// ('<|im_start|>system\n' + text + '<|im_end|>', no Jinja, quotes or escapes inside the text:
// SmolLM2's "You are a helpful AI assistant named SmolLM, trained by Hugging Face", Qwen2.5's
// "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.").
std::string template_default_system(std::string_view jinja);
// The messages with {"system", system} put first when `system` is not empty and the first
// message is not a system message.
std::vector<ChatMessage> with_default_system(const std::vector<ChatMessage>& messages,
                                             const std::string& system);

// The messages as pieces; with add_generation_prompt, then what opens the assistant's reply (the
// assistant's header; nothing for the Mistral formats). Throws (a plain message) when a role is
// empty or has characters other than letters, digits, '_' and '-', and when the Mistral formats
// get roles other than system / user / assistant or an empty reply, and when llama2's turns are
// out of order.
std::vector<ChatPiece> render_chat_pieces(const ChatTemplate& tmpl,
                                          const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt);
// The pieces' texts joined.
std::string render_chat_text(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt);
// The pieces as token ids, each tokenized on its own as training tokenizes them; the tokenizer's
// BOS first when it adds one.
std::vector<int32_t> encode_chat_pieces(const Tokenizer& tokenizer,
                                        const std::vector<ChatPiece>& pieces);
// Throws when `role` is not a role name (see ChatMessage).
void check_chat_role(std::string_view role);

}  // namespace loom
