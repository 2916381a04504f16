// Chat messages into trained / prompt segments (data/chat_template.h).
#include "data/chat_template.h"

#include <fmt/format.h>

#include "autograd/check.h"
#include "layers/tokenizer.h"

namespace loom {

void render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                 std::vector<Segment>& out) {
  for (ChatPiece& p : render_chat_pieces(tmpl, messages, /*add_generation_prompt=*/false))
    out.push_back({std::move(p.text), p.trained, p.parse_special});
}

void check_chat_template_tokens(const ChatTemplate& tmpl, const Tokenizer& tokenizer) {
  for (const auto& text : tmpl.special_tokens) {
    if (tokenizer.find_token(text) >= 0) continue;
    const ChatTemplate* own = detect_chat_template(tokenizer);
    throw Error(fmt::format(
        "chat template '{}' needs the token '{}', which the tokenizer of '{}' does not have; {}",
        tmpl.name, text, tokenizer.source(),
        own ? fmt::format("the model's own template is {}: set chat_template: {}", own->name,
                          own->name)
            : std::string("use a template the model was trained with")));
  }
  if (tmpl.layout == ChatLayout::MistralV1 && tokenizer.find_token("[INST]") >= 0)
    throw Error(fmt::format(
        "chat template 'mistral-v1' writes [INST] as plain text, but the tokenizer of '{}' has "
        "[INST] as a token (Mistral's v3 vocabulary): set chat_template: mistral-v3",
        tokenizer.source()));
}

}  // namespace loom
