// JSONL readers: one JSON object per line holding a text (jsonl), a prompt and a completion
// (instruct), or chat messages (chat). Blank lines are allowed; every other line is a record.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "data/chat_template.h"
#include "data/source_readers.h"
#include "data/sources.h"
#include "layers/tokenizer.h"

namespace loom::data_detail {
namespace {

using nlohmann::json;

// A record that cannot be used; `what` says why. Caught per line and turned into bad_record().
struct RecordError {
  std::string what;
};

std::string field_list(const json& obj) {
  std::string names;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!names.empty()) names += ", ";
    names += "'" + it.key() + "'";
    if (names.size() > 200) {
      names += ", ...";
      break;
    }
  }
  return names.empty() ? "none" : names;
}

const std::string& string_field(const json& obj, const std::string& name, bool allow_empty) {
  const auto it = obj.find(name);
  if (it == obj.end()) {
    throw RecordError{
        fmt::format("missing field '{}' (the object has {}); set the source's field "
                    "name to the one the file uses",
                    name, field_list(obj))};
  }
  if (!it->is_string()) {
    throw RecordError{fmt::format("field '{}' is {} {}, expected a string", name,
                                  it->is_array() || it->is_object() ? "an" : "a", it->type_name())};
  }
  const std::string& s = it->get_ref<const std::string&>();
  if (!allow_empty && s.empty()) throw RecordError{fmt::format("field '{}' is empty", name)};
  return s;
}

void chat_document(const ReadContext& ctx, const json& obj, Document& doc) {
  const SourceConfig& c = ctx.config;
  const ChatTemplate& tmpl = find_chat_template(c.chat_template, source_label(c));
  const auto it = obj.find(c.messages_field);
  if (it == obj.end()) {
    // ShareGPT files keep the turns in "conversations".
    const bool sharegpt = c.messages_field == "messages" && obj.contains("conversations");
    throw RecordError{fmt::format("missing field '{}' (the object has {}){}", c.messages_field,
                                  field_list(obj),
                                  sharegpt ? "; for ShareGPT's layout set the source's "
                                             "messages_field: conversations"
                                           : "")};
  }
  if (!it->is_array() || it->empty()) {
    throw RecordError{
        fmt::format("field '{}' should be a non-empty array of {{\"role\", "
                    "\"content\"}} (or ShareGPT's {{\"from\", \"value\"}}) objects, found {}",
                    c.messages_field, it->is_array() ? "an empty array" : it->type_name())};
  }
  std::vector<ChatMessage> messages;
  bool any_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    if (!m.is_object()) {
      throw RecordError{
          fmt::format("message {} is {}, expected an object with \"role\" and "
                      "\"content\"",
                      i, m.type_name())};
    }
    try {
      // ShareGPT's layout: {"from": "human" | "gpt" | "system" | ..., "value": text}, the roles
      // renamed as ShareGPT loaders do (human -> user, gpt -> assistant).
      const bool sharegpt = !m.contains("role") && m.contains("from");
      ChatMessage msg =
          sharegpt ? ChatMessage{string_field(m, "from", false), string_field(m, "value", true)}
                   : ChatMessage{string_field(m, "role", false), string_field(m, "content", true)};
      if (sharegpt && msg.role == "human") msg.role = "user";
      if (sharegpt && msg.role == "gpt") msg.role = "assistant";
      any_assistant = any_assistant || msg.role == "assistant";
      messages.push_back(std::move(msg));
    } catch (const RecordError& e) {
      throw RecordError{fmt::format("message {}: {}", i, e.what)};
    }
  }
  if (!any_assistant) {
    std::vector<std::string> seen;
    std::string roles;
    for (const ChatMessage& m : messages) {
      if (std::find(seen.begin(), seen.end(), m.role) != seen.end()) continue;
      roles += fmt::format("{}\"{}\"", seen.empty() ? "" : ", ", m.role);
      seen.push_back(m.role);
    }
    throw RecordError{fmt::format(
        "no message has role \"assistant\" (the roles are {}): nothing to train on", roles)};
  }
  try {
    render_chat(tmpl, with_default_system(messages, c.default_system), doc.segments);
  } catch (const Error& e) {
    throw RecordError{e.what()};
  }
}

void instruct_document(const ReadContext& ctx, const json& obj, Document& doc) {
  const SourceConfig& c = ctx.config;
  const std::string& prompt = string_field(obj, c.prompt_field, true);
  const std::string& completion = string_field(obj, c.completion_field, false);
  if (c.instruct_as_chat) {
    const ChatTemplate& tmpl = find_chat_template(c.chat_template, source_label(c));
    render_chat(
        tmpl, with_default_system({{"user", prompt}, {"assistant", completion}}, c.default_system),
        doc.segments);
  } else {
    if (!prompt.empty()) doc.segments.push_back({prompt, false, false});
    doc.segments.push_back({completion, true, false});
  }
}

}  // namespace

void read_jsonl(const ReadContext& ctx, std::string_view text) {
  const SourceConfig& c = ctx.config;
  if (c.format == SourceFormat::Chat ||
      (c.format == SourceFormat::Instruct && c.instruct_as_chat)) {
    find_chat_template(c.chat_template, source_label(c));  // an unknown name fails before line 1
  }
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    const uint64_t line_no = lines.number();
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;

    const std::string bad_utf8 = describe_invalid_utf8(line, line_no, nullptr);
    if (!bad_utf8.empty()) {
      ctx.bad_record(line_no, bad_utf8);
      continue;
    }
    json obj;
    try {
      obj = json::parse(line);
    } catch (const json::exception& e) {
      ctx.bad_record(
          line_no, fmt::format("malformed JSON ({}); each line must be one JSON object", e.what()));
      continue;
    }
    if (!obj.is_object()) {
      ctx.bad_record(line_no,
                     fmt::format("the line is a JSON {}, expected an object", obj.type_name()));
      continue;
    }
    Document doc;
    doc.file_index = ctx.file_index;
    doc.line = line_no;
    try {
      switch (c.format) {
        case SourceFormat::Jsonl:
          doc.segments.push_back({string_field(obj, c.text_field, false), true, false});
          break;
        case SourceFormat::Instruct:
          instruct_document(ctx, obj, doc);
          break;
        case SourceFormat::Chat:
          chat_document(ctx, obj, doc);
          break;
        default:
          LOOM_FAIL("read_jsonl called for format {}", source_format_name(c.format));
      }
    } catch (const RecordError& e) {
      ctx.bad_record(line_no, e.what);
      continue;
    }
    ctx.out.documents.push_back(std::move(doc));
  }
}

}  // namespace loom::data_detail
