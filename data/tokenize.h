// Tokenizing a source's documents, in parallel over documents (OpenMP), and the tokenizer
// fingerprint that keys the token cache.
#pragma once

#include <cstdint>

#include "data/document.h"
#include "data/tokenized_source.h"

namespace loom {

class Tokenizer;

// Each document's segments are encoded one by one (specials parsed where the segment says so)
// and concatenated; a token's mask bit is its segment's `trained`. No BOS / EOS is added.
// threads <= 0: OpenMP's default (every core). `what` ("data source 'x'") and `files` name the
// document's file and line in errors. The skipped-record count and messages are carried over.
TokenizedDocs tokenize_documents(const SourceDocuments& docs, const Tokenizer& tokenizer,
                                 int threads, const std::string& what);

// A 64-bit hash of everything that decides the tokenizer's output that its public interface
// shows: kind, pre-tokenizer name, every token's text, type and score, the special ids and
// add_bos / add_eos flags. The ranked merges are not visible through that interface, so their
// effect is hashed instead: the ids that encoding each token's own text gives (a changed merge
// list changes how some token's text splits) and the ids of a fixed multilingual probe text.
uint64_t tokenizer_fingerprint(const Tokenizer& tokenizer);

}  // namespace loom
