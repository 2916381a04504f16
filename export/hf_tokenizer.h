// Hugging Face tokenizer files for a merged export (export/hf_export.h): copied from a Hugging
// Face source folder, or synthesized from a GGUF file's tokenizer.* keys.
//
// Synthesis covers byte-level BPE (tokenizer.ggml.model "gpt2"), which tokenizer.json expresses
// exactly:
//   model          BPE over the GGUF vocabulary (token -> id) and its ranked merges;
//                  ignore_merges as the pre-tokenizer preset says (llama3)
//   pre_tokenizer  the regexes tokenizer.ggml.pre stands for (layers/tokenizer_pretokenize.cpp),
//                  each a Split(Isolated) in turn, written the way Hugging Face's own files say
//                  them where one exists: `\p{N}` as Digits(individual_digits), a final GPT-2
//                  regex as ByteLevel(use_regex); otherwise ByteLevel(use_regex=false) last
//   added_tokens   every control / unknown token (special) and user-defined token (not special)
//   post_processor TemplateProcessing with BOS / EOS when add_bos / add_eos, else ByteLevel
//   decoder        ByteLevel
// tokenizer_config.json names the bos / eos / pad / unk tokens, add_bos_token / add_eos_token,
// the chat template (tokenizer.chat_template), model_max_length, clean_up_tokenization_spaces
// false, and tokenizer_class PreTrainedTokenizerFast (which takes tokenizer.json as it is).
// SentencePiece vocabularies ("llama") are refused: their merges are implied by scores, and a
// tokenizer.json made from them could tokenize differently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loom {

class GgufFile;
class Tokenizer;

struct HfTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string special_tokens_map_json;
};

// Throws naming the file and key when the GGUF has no tokenizer or one that cannot be converted
// faithfully. model_max_length: the model's context length (0: left out).
HfTokenizerFiles hf_tokenizer_from_gguf(const GgufFile& file, int64_t model_max_length);

// The tokenizer files a Hugging Face folder may have, copied as they are when present.
const std::vector<std::string>& hf_tokenizer_file_names();

// Checks a written tokenizer.json (and the tokenizer_config.json beside it), read back with
// loom's own reader, against the tokenizer it was made from: vocabulary, special ids, flags,
// chat template, and the ids of a probe text (specials, digits, contractions, whitespace runs,
// non-Latin scripts). Throws naming the first difference.
void check_hf_tokenizer(const std::string& tokenizer_json_path, const Tokenizer& reference);

}  // namespace loom
