// Chat messages into document segments with loss masks, in a built-in chat format
// (layers/chat_format.h: chatml, llama3, mistral-v1, mistral-v3, llama2): one segment per piece.
//
// The markup is tokenized with special tokens parsed, the content as plain text (a literal
// "<|im_start|>" typed by a user stays text). Trained on: the content of assistant messages and
// the turn end closing them (<|im_end|>, <|eot_id|>, </s>: so the model learns to stop);
// everything else -- system and user turns, the assistant's header, what follows the turn end --
// is prompt. Unlike SmolLM2's own Jinja template, no default system message is inserted (the
// reader does that, with default_system).
//
// Segments are tokenized one by one (a SentencePiece tokenizer puts its "▁" in front of each, as
// Mistral's own tokenizer library does with each piece), so a token never straddles the prompt /
// reply boundary, and the reply's ids are those a model sees at inference, where the prompt ending
// in the assistant's header is tokenized before the reply is generated. Tokenizing the whole text
// at once gives the same ids except where a message's content starts with whitespace (chatml: the
// header's "\n" may then merge with it).
#pragma once

#include <vector>

#include "data/document.h"
#include "layers/chat_format.h"

namespace loom {

class Tokenizer;

// Appends the rendered messages to `out`; their texts joined are render_chat_text(tmpl,
// messages, false). Throws (a plain message, the reader adds file and line) when
// render_chat_pieces does: a role that is not a role name, or one the format does not have,
// an empty Mistral reply, llama2 turns out of order.
void render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                 std::vector<Segment>& out);

// Throws naming the template and the tokenizer when a markup token is not in the vocabulary,
// and the format the model's own template writes, when loom has it built in.
void check_chat_template_tokens(const ChatTemplate& tmpl, const Tokenizer& tokenizer);

}  // namespace loom
