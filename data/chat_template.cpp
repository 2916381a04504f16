// Chat messages into trained / prompt segments (data/chat_template.h).
#include "data/chat_template.h"

#include <fmt/format.h>

#include "autograd/check.h"
#include "layers/tokenizer.h"

namespace loom {

void render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                 std::vector<Segment>& out) {
  for (const auto& m : messages) {
    check_chat_role(m.role);
    const bool assistant = m.role == "assistant";
    out.push_back({tmpl.header_start + m.role + tmpl.header_end, false, true});
    const std::string content = chat_content(tmpl, m.content);
    if (!content.empty()) out.push_back({content, assistant, false});
    out.push_back({tmpl.turn_end, assistant, true});
    if (!tmpl.after_turn.empty()) out.push_back({tmpl.after_turn, false, false});
  }
}

void check_chat_template_tokens(const ChatTemplate& tmpl, const Tokenizer& tokenizer) {
  for (const auto& text : tmpl.special_tokens) {
    if (tokenizer.find_token(text) >= 0) continue;
    const ChatTemplate* own = detect_chat_template(tokenizer.chat_template());
    throw Error(fmt::format(
        "chat template '{}' needs the token '{}', which the tokenizer of '{}' does not have; {}",
        tmpl.name, text, tokenizer.source(),
        own ? fmt::format("the model's own template is {}: set chat_template: {}", own->name,
                          own->name)
            : std::string("use a template the model was trained with")));
  }
}

}  // namespace loom
