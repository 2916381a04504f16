// load_tokenizer(GgufFile): the TokenizerSpec from a GGUF file's tokenizer.* keys, with
// llama.cpp's defaults for keys a file leaves out.
#include <fmt/format.h>

#include "autograd/check.h"
#include "layers/gguf.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"

namespace loom {

namespace {

int32_t token_id_key(const GgufFile& file, std::string_view key, int32_t fallback) {
  if (!file.has(key)) return fallback;
  const int64_t id = file.get_int(key);
  if (id < -1 || id > INT32_MAX) {
    throw Error(fmt::format("tokenizer ({}): {} is {}, expected a token id", file.path(), key, id));
  }
  return static_cast<int32_t>(id);
}

bool bool_key(const GgufFile& file, std::string_view key, bool fallback) {
  return file.has(key) ? file.get_bool(key) : fallback;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const GgufFile& file) {
  TokenizerSpec spec;
  spec.source = file.path();
  if (!file.has("tokenizer.ggml.model")) {
    throw Error(
        fmt::format("tokenizer ({}): the file has no tokenizer (key tokenizer.ggml.model "
                    "is missing); load the tokenizer from a tokenizer.json instead",
                    file.path()));
  }
  const std::string& model = file.get_string("tokenizer.ggml.model");
  if (model == "gpt2") {
    spec.kind = TokenizerKind::ByteLevelBpe;
  } else if (model == "llama") {
    spec.kind = TokenizerKind::SentencePieceBpe;
  } else {
    throw Error(
        fmt::format("tokenizer ({}): tokenizer.ggml.model is '{}'; supported: 'gpt2' "
                    "(byte-level BPE) and 'llama' (SentencePiece BPE)",
                    file.path(), model));
  }

  spec.tokens = file.get_string_array("tokenizer.ggml.tokens");
  if (file.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> types = file.get_int_array("tokenizer.ggml.token_type");
    spec.types.reserve(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 1 || types[i] > 6) {
        throw Error(
            fmt::format("tokenizer ({}): tokenizer.ggml.token_type[{}] is {}, expected "
                        "1..6 (normal, unknown, control, user-defined, unused, byte)",
                        file.path(), i, types[i]));
      }
      spec.types.push_back(static_cast<TokenType>(types[i]));
    }
  }
  if (file.has("tokenizer.ggml.scores")) {
    for (double s : file.get_float_array("tokenizer.ggml.scores")) {
      spec.scores.push_back(static_cast<float>(s));
    }
  }

  if (spec.kind == TokenizerKind::ByteLevelBpe) {
    const std::vector<std::string> merges = file.get_string_array("tokenizer.ggml.merges");
    spec.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      // The separator is the first space after the first character (a part may be a space).
      const size_t space = merges[i].find(' ', 1);
      if (space == std::string::npos) {
        throw Error(
            fmt::format("tokenizer ({}): tokenizer.ggml.merges[{}] is '{}', expected two "
                        "tokens separated by a space",
                        file.path(), i, merges[i]));
      }
      spec.merges.emplace_back(merges[i].substr(0, space), merges[i].substr(space + 1));
    }
    // llama.cpp reads a file without tokenizer.ggml.pre as "default".
    spec.pre_name = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre")
                                                   : std::string("default");
    const tok::PretokenizerPreset& preset = tok::find_pretokenizer(spec.pre_name, file.path());
    spec.pre_regexes = preset.regexes;
    spec.ignore_merges = preset.ignore_merges;
    spec.add_bos = bool_key(file, "tokenizer.ggml.add_bos_token", preset.add_bos);
    spec.add_space_prefix = false;
    spec.bos_id = token_id_key(file, "tokenizer.ggml.bos_token_id", -1);
    spec.eos_id = token_id_key(file, "tokenizer.ggml.eos_token_id", -1);
    spec.unk_id = token_id_key(file, "tokenizer.ggml.unknown_token_id", -1);
  } else {
    spec.pre_name = "";  // no pre-tokenizer: the merges run over the whole fragment
    spec.add_bos = bool_key(file, "tokenizer.ggml.add_bos_token", true);
    spec.add_space_prefix = bool_key(file, "tokenizer.ggml.add_space_prefix", true);
    spec.bos_id = token_id_key(file, "tokenizer.ggml.bos_token_id", 1);
    spec.eos_id = token_id_key(file, "tokenizer.ggml.eos_token_id", 2);
    spec.unk_id = token_id_key(file, "tokenizer.ggml.unknown_token_id", 0);
  }
  spec.pad_id = token_id_key(file, "tokenizer.ggml.padding_token_id", -1);
  spec.add_eos = bool_key(file, "tokenizer.ggml.add_eos_token", false);
  if (file.has("tokenizer.chat_template")) {
    spec.chat_template = file.get_string("tokenizer.chat_template");
  }
  return std::make_unique<Tokenizer>(std::move(spec));
}

}  // namespace loom
