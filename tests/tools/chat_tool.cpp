// loom_test_chat_tool: loom's renderings of chat messages, for tests/interop/test_chat_formats.py.
//
//   loom_test_chat_tool cases.json
//
// cases.json: [{"format": "llama3", "messages": [{"role": ..., "content": ...}, ...],
// "add_generation_prompt": true}, ...]. Prints a JSON array with, per case, {"text": the
// rendering (layers/chat_format.h), "pieces": [[text, trained, parse_special], ...] of that
// rendering, "segments": the training segments' texts joined (data/chat_template.h; the same
// messages, no generation prompt), "trained": the trained segments' texts joined}. A case with
// "model_template" (a model's Jinja chat template) has the messages rendered as training with
// `default_system: model` renders them: the template's own default system message put first
// when they have none (template_default_system, with_default_system, as the JSONL reader calls
// them). A case with "tokenizer" (a GGUF file with a tokenizer) also gets "ids": the training
// segments tokenized as training tokenizes them, after the tokenizer's BOS, and "trained_ids":
// the ids the loss counts, in order; and "prompt_ids": the generation prompt's ids as `loom
// generate --chat` tokenizes them (encode_chat_pieces).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "layers/gguf.h"
#include "layers/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: loom_test_chat_tool cases.json\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1]);
    const nlohmann::json cases = nlohmann::json::parse(in);
    nlohmann::json out = nlohmann::json::array();
    for (const auto& c : cases) {
      const loom::ChatTemplate& tmpl =
          loom::find_chat_template(c.at("format").get<std::string>(), "case");
      std::vector<loom::ChatMessage> messages;
      for (const auto& m : c.at("messages"))
        messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      if (c.contains("model_template"))
        messages = loom::with_default_system(
            messages, loom::template_default_system(c.at("model_template").get<std::string>()));
      const bool gen = c.at("add_generation_prompt");
      std::vector<loom::Segment> segments;
      loom::render_chat(tmpl, messages, segments);
      std::string joined, trained;
      for (const auto& s : segments) {
        joined += s.text;
        if (s.trained) trained += s.text;
      }
      const std::vector<loom::ChatPiece> pieces = loom::render_chat_pieces(tmpl, messages, gen);
      nlohmann::json piece_list = nlohmann::json::array();
      for (const auto& p : pieces) piece_list.push_back({p.text, p.trained, p.parse_special});
      nlohmann::json result = {{"text", loom::render_chat_text(tmpl, messages, gen)},
                               {"pieces", piece_list},
                               {"segments", joined},
                               {"trained", trained}};
      if (c.contains("tokenizer")) {
        const loom::GgufFile file = loom::GgufFile::open(c.at("tokenizer").get<std::string>());
        const auto tok = loom::load_tokenizer(file);
        loom::check_chat_template_tokens(tmpl, *tok);
        std::vector<int32_t> ids;
        if (tok->add_bos()) ids.push_back(tok->bos_id());
        std::vector<int32_t> trained_ids;
        for (const auto& s : segments) {
          const size_t before = ids.size();
          tok->encode_append(s.text, false, s.parse_special, ids);
          if (s.trained) trained_ids.insert(trained_ids.end(), ids.begin() + before, ids.end());
        }
        result["ids"] = ids;
        result["trained_ids"] = trained_ids;
        result["prompt_ids"] = loom::encode_chat_pieces(*tok, pieces);
      }
      out.push_back(result);
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_test_chat_tool: %s\n", e.what());
    return 1;
  }
}
