// Documents as the readers produce them, before tokenization. A document is a list of segments;
// each says whether its tokens are trained on (prompt vs completion / assistant turns) and
// whether special tokens written in it are parsed (chat-template markup: yes; user text: no).
// Segments are tokenized one by one and the ids concatenated, so the loss mask is exact.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loom {

struct Segment {
  std::string text;
  bool trained = true;         // loss on this segment's tokens (unless train_on_prompt overrides)
  bool parse_special = false;  // recognise <|im_start|> and the like in the text
};

struct Document {
  std::vector<Segment> segments;
  uint32_t file_index = 0;  // into SourceDocuments::files
  uint64_t line = 0;        // 1-based line (dictd: line of the .index file) where it starts
};

// Records left out under skip_bad_records: how many, and the first messages in full.
struct BadRecords {
  static constexpr size_t kKeptMessages = 20;
  int64_t count = 0;
  std::vector<std::string> messages;
  void add(std::string message) {
    ++count;
    if (messages.size() < kKeptMessages) messages.push_back(std::move(message));
  }
};

struct SourceDocuments {
  std::vector<Document> documents;
  std::vector<std::string> files;  // every file read, in reading order
  BadRecords bad;
};

}  // namespace loom
