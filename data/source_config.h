// What one data source is: where its files are, how to read them, and how much of it the mixer
// should deliver. Plain values; the trainer maps a recipe's `data.sources` entries onto them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace loom {

enum class SourceFormat : uint8_t {
  Text,      // plain text; documents split by TextSplit
  Jsonl,     // one JSON object per line, the document in `text_field`
  Instruct,  // JSONL with `prompt_field` and `completion_field`; only the completion is trained
  Chat,      // JSONL with `messages_field` = [{role, content}, ...] (or ShareGPT's [{from, value},
             // ...]: human -> user, gpt -> assistant), rendered by `chat_template`
  Dictd,     // a dictd dictionary: NAME.index + NAME.dict.dz (or NAME.dict); one document per entry
};
std::string_view source_format_name(SourceFormat f);  // "text", "jsonl", ...
// Throws naming `what` and listing the formats when `name` is none of them.
SourceFormat parse_source_format(std::string_view name, std::string_view what);

// How a text file is cut into documents.
enum class TextSplit : uint8_t {
  BlankLines,  // a document is a run of non-blank lines (a blank line holds only spaces/tabs/CR)
  // Documents are separated by `separator`: without a line break it is a separator line (a line
  // that is exactly "%", as in fortune files); with one, the text is cut wherever it occurs
  // ("\n\n\n"). Line breaks around a document and whitespace-only pieces are dropped.
  Separator,
  WholeFile,  // each file is one document
};

struct SourceConfig {
  std::string name;  // how metrics, errors and the cache name the source ("domain")
  std::string path;  // a file, a folder, or a glob ("data/*.jsonl.gz"); gzip is detected by content
  SourceFormat format = SourceFormat::Text;

  // Text
  TextSplit split = TextSplit::BlankLines;
  std::string separator;  // for TextSplit::Separator
  // JSONL
  std::string text_field = "text";
  // Instruct: the document is prompt + completion, concatenated as they are (put any separator or
  // template into the prompt), unless instruct_as_chat renders them as one user / assistant
  // exchange with chat_template.
  std::string prompt_field = "prompt";
  std::string completion_field = "completion";
  bool instruct_as_chat = false;
  // Chat
  std::string messages_field = "messages";
  std::string chat_template = "chatml";  // a built-in template name (chat_template.h); the
                                         // trainer resolves the recipe's "model" into one
  // Chat and instruct_as_chat: put first as a system message in a conversation that has none
  // ("": nothing). The trainer resolves the recipe's default_system into it.
  std::string default_system;

  // A bad record (malformed JSON line, missing field, invalid UTF-8, empty document, broken
  // dictd index line) is an error naming file and line; with skip_bad_records it is left out,
  // with a warning per record (the first few) and a count at the end.
  bool skip_bad_records = false;

  // Mixing (read by the mixer, not the reader).
  double weight = 1.0;
  double heldout_fraction = 0.0;
};

// Maps a recipe's `separator` value onto split/separator: "" or "blank_lines" -> BlankLines,
// "file" -> WholeFile, anything else -> Separator with that literal text.
void set_text_split(SourceConfig& config, std::string_view separator);

}  // namespace loom
