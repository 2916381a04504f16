// Built-in chat templates that turn chat messages into document segments with loss masks.
//
// "chatml" (SmolLM2, Qwen, ...): each message is
//     <|im_start|>{role}\n{content}<|im_end|>\n
// The markup is tokenized with special tokens parsed, the content as plain text (a literal
// "<|im_start|>" typed by a user stays text). Trained on: the content of assistant messages and
// the <|im_end|> closing them (so the model learns to stop); everything else -- system and user
// turns, the "<|im_start|>assistant\n" header and the newline after <|im_end|> -- is prompt.
// Unlike SmolLM2's own Jinja template, no default system message is inserted.
//
// Segments are tokenized one by one, so a token never straddles the prompt / reply boundary, and
// the reply's ids are those a model sees at inference, where the prompt ending in
// "<|im_start|>assistant\n" is tokenized before the reply is generated. Tokenizing the whole text
// at once gives the same ids except where a message's content starts with whitespace (the
// header's "\n" may then merge with it).
//
// Models' Jinja templates are not interpreted; a name that is not built in is an error listing
// the ones that are.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "data/document.h"

namespace loom {

class Tokenizer;

struct ChatMessage {
  std::string role;  // letters, digits, '_' or '-': "system", "user", "assistant", "tool"
  std::string content;
};

struct ChatTemplate {
  std::string name;
  std::string turn_start;                   // before the role
  std::string turn_end;                     // after the content
  std::vector<std::string> special_tokens;  // must each be one token of the tokenizer
};

std::vector<std::string> builtin_chat_template_names();
// Throws naming `what` and listing the built-in names when `name` is not one of them.
const ChatTemplate& find_chat_template(std::string_view name, std::string_view what);

// Appends the rendered messages to `out`. Throws (a plain message, the reader adds file and
// line) when a role is empty or has characters other than letters, digits, '_' and '-'.
void render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                 std::vector<Segment>& out);

// Throws naming the template and the tokenizer when a markup token is not in the vocabulary.
void check_chat_template_tokens(const ChatTemplate& tmpl, const Tokenizer& tokenizer);

}  // namespace loom
