// GGUF metadata for a model loaded from a Hugging Face folder, as llama.cpp's
// convert_hf_to_gguf.py writes it for the same folder, so that a merged GGUF can be exported from
// a Hugging Face source without a GGUF file of the model (export/gguf_export.h).
//
// Hyper-parameters: general.architecture ("llama" for llama and mistral, "qwen2"), general.type
// "model", <arch>.context_length (max_position_embeddings), embedding_length,
// feed_forward_length, block_count, attention.head_count, attention.head_count_kv,
// attention.key_length / value_length (the head dim, when config.json names head_dim),
// rope.freq_base, attention.layer_norm_rms_epsilon, vocab_size and rope.dimension_count (llama
// only, as the converter), linear rope scaling as rope.scaling.type / rope.scaling.factor. Llama
// 3's rope scaling is not a key: llama.cpp reads it as a rope_freqs.weight tensor of per-frequency
// divisors (gguf_rope_freq_factors).
//
// Tokenizer (byte-level BPE only): tokenizer.ggml.model "gpt2", tokenizer.ggml.pre (the llama.cpp
// name whose regexes equal the tokenizer.json pre-tokenizer's: gguf_pre_tokenizer_name), tokens,
// token_type (special added tokens control; other added tokens user-defined, or control when
// they look special to the converter: <|...|>, <unused...>, as Qwen2.5's <|fim_prefix|>; the
// rest normal; ids the tokenizer lacks up to the model's vocab_size "[PAD<id>]", unused),
// merges ("a b"),
// bos / eos / unknown / padding token ids where the tokenizer has them (else config.json's
// <name>_token_id, as the converter falls back on it), add_bos_token / add_eos_token where
// tokenizer_config.json has them or the tokenizer adds the token, and tokenizer.chat_template
// when there is one. The tokenizer's NFC normalizer (Qwen2) has no GGUF key: llama.cpp does not
// normalize, for the converter's files either. SentencePiece-style
// tokenizer.json files (Llama 2, Mistral) are refused: llama.cpp's SentencePiece vocabulary
// needs per-token scores, which tokenizer.json does not have.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "layers/gguf.h"

namespace loom {

struct ModelConfig;
class Tokenizer;

using GgufMetadata = std::vector<std::pair<std::string, GgufValue>>;

// The tokenizer.ggml.pre name llama.cpp knows for the regexes of a byte-level BPE tokenizer read
// from tokenizer.json ("smollm", "gpt2", "llama-bpe", "qwen2", ...). Throws naming the tokenizer
// and its regexes when none matches, or when it is not byte-level BPE.
std::string gguf_pre_tokenizer_name(const Tokenizer& tokenizer);

// general.size_label as llama.cpp's converter writes it for a model of `parameters` weights
// ("135M", "1.5B", "8.0B": at least two digits).
std::string gguf_size_label(int64_t parameters);

// The metadata above, with general.name and general.size_label (parameters > 0). Throws naming
// the tokenizer when it cannot be written faithfully, or when it has more tokens than the
// model's vocab_size.
GgufMetadata gguf_metadata_from_hf(const ModelConfig& config, const Tokenizer& tokenizer,
                                   const std::string& name, int64_t parameters);

// llama.cpp's rope_freqs.weight for a model with Llama 3 rope scaling: per rotary frequency, the
// divisor llama.cpp applies to it (the unscaled frequency over the scaled one). Empty when the
// model has no Llama 3 scaling.
std::vector<float> gguf_rope_freq_factors(const ModelConfig& config);

}  // namespace loom
