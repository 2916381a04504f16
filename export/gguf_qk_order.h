// Q/K row order between Hugging Face checkpoints and llama.cpp's GGUF files.
//
// llama.cpp's converter permutes the output rows of attn_q / attn_k of `llama` models (Mistral
// is written as `llama` too) so that its rope, which rotates adjacent pairs, applies; `qwen2`
// is left as it is (layers/model_config.h). Per head of head_dim rows, Hugging Face row
// s * (head_dim / 2) + j (s in {0, 1}) becomes GGUF row 2 j + s. A loom model loaded from GGUF
// keeps GGUF's order (RopeStyle::Interleaved); one loaded from a Hugging Face folder keeps
// Hugging Face's (RopeStyle::Half). Anything written for llama.cpp from the latter -- merged
// weights, LoRA lora_b rows -- must be permuted; anything read from llama.cpp into it, un-permuted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/llama.h"

namespace loom {

// general.architecture of a GGUF file for this model ("mistral" is written as "llama").
std::string gguf_architecture(const ModelConfig& config);

// Whether llama.cpp stores this GGUF architecture's q/k rows permuted ("llama": yes).
bool gguf_permutes_qk(const std::string& gguf_arch);

// Whether a projection of this model must have its rows permuted (to_gguf) or un-permuted to
// match a GGUF file of architecture gguf_architecture(config): q/k projections of a llama model
// held in Hugging Face order.
bool qk_rows_need_reorder(const ModelConfig& config, Projection kind);

// Reorders the rows of a row-major [rows x cols] matrix, rows = n_head * head_dim:
// Hugging Face order -> GGUF order (to_gguf) or back. n_head: the model's heads for q, its kv
// heads for k.
std::vector<float> reorder_qk_rows(const std::vector<float>& values, int64_t rows, int64_t cols,
                                   int64_t n_head, bool to_gguf);

// The same for a projection of `config` (q: n_heads, k: n_kv_heads); values unchanged unless
// qk_rows_need_reorder(config, kind).
std::vector<float> reorder_projection_rows(const ModelConfig& config, Projection kind,
                                           std::vector<float> values, int64_t cols, bool to_gguf);

}  // namespace loom
