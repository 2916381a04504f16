// loom_test_chat_tool: loom's renderings of chat messages, for tests/interop/test_chat_formats.py.
//
//   loom_test_chat_tool cases.json
//
// cases.json: [{"format": "llama3", "messages": [{"role": ..., "content": ...}, ...],
// "add_generation_prompt": true}, ...]. Prints a JSON array with, per case, {"text": the
// rendering (layers/chat_format.h), "segments": the training segments' texts joined
// (data/chat_template.h; the same messages, no generation prompt), "trained": the trained
// segments' texts joined}. A case with "model_template" (a model's Jinja chat template) has the
// messages rendered as training with `default_system: model` renders them: the template's own
// default system message put first when they have none (template_default_system,
// with_default_system, as the JSONL reader calls them).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/chat_template.h"

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
      std::vector<loom::Segment> segments;
      loom::render_chat(tmpl, messages, segments);
      std::string joined, trained;
      for (const auto& s : segments) {
        joined += s.text;
        if (s.trained) trained += s.text;
      }
      out.push_back(
          {{"text", loom::render_chat_text(tmpl, messages, c.at("add_generation_prompt"))},
           {"segments", joined},
           {"trained", trained}});
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_test_chat_tool: %s\n", e.what());
    return 1;
  }
}
