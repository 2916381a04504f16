// Hyper-parameters of a Llama-family model (llama, mistral, qwen2), read from a GGUF file's
// `<arch>.*` keys or from a Hugging Face config.json.
//
// Rotary embedding layout depends on where the weights came from, not only on the architecture:
//   - Hugging Face checkpoints store Q/K for rotate_half: RopeStyle::Half, for every arch.
//   - llama.cpp's converter permutes the Q/K rows of `llama` models (Mistral is written as
//     `llama` too) so that its "normal" rope, which rotates adjacent pairs (2i, 2i+1), applies:
//     RopeStyle::Interleaved. It leaves `qwen2` unpermuted and uses its NeoX rope, which rotates
//     (i, i + n_rot/2): RopeStyle::Half. (llama.cpp's llama_model_rope_type: LLM_ARCH_LLAMA ->
//     LLAMA_ROPE_TYPE_NORM, LLM_ARCH_QWEN2 -> LLAMA_ROPE_TYPE_NEOX.)
// So a GGUF-loaded llama has its Q/K output rows in llama.cpp's permuted order; an adapter
// exported for Hugging Face from such a model must undo that permutation on its q/k rows.
//
// Errors name the file and the key, what was expected and what was found.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "autograd/ops.h"

namespace loom {

class GgufFile;

struct ModelConfig {
  std::string source;        // file the values came from, for error messages
  std::string architecture;  // "llama", "mistral" or "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // D
  int64_t intermediate_size = 0;  // SwiGLU width
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // grouped-query attention: n_heads is a multiple of it
  int64_t head_dim = 0;    // usually D / n_heads; Mistral and GGUF key_length may say otherwise
  float rms_norm_eps = 1e-5f;
  // Rotary embedding: theta, rotated dims (0 = whole head), layout, optional Llama-3 scaling.
  RopeConfig rope;
  // Linear rope scaling (HF rope_type "linear", GGUF rope.scaling.type "linear"): positions
  // are divided by this factor. 1 means none.
  float rope_linear_factor = 1.0f;
  int64_t max_position_embeddings = 0;
  // Sliding-window attention span in tokens (Mistral v0.1, Qwen2 with use_sliding_window);
  // 0 when the model attends to the whole context. loom's attention has no window, so a
  // sequence longer than the window is refused rather than computed differently.
  int64_t sliding_window = 0;
  bool tie_word_embeddings = false;  // the output projection is the token embedding
  bool attention_qkv_bias = false;   // q/k/v projections have biases (qwen2; llama attention_bias)
  bool attention_out_bias = false;   // o projection has a bias (llama attention_bias)

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  // Checks the values against each other (positive sizes, heads divisible by kv heads, even
  // rotary dims, ...); throws naming `source`.
  void validate() const;
  // Multi-line "key: value" listing, as the start of a run prints it.
  std::string describe() const;
};

// The architectures loom runs, as named in config.json's model_type / GGUF general.architecture.
const std::vector<std::string>& supported_architectures();
// Those a GGUF file may name ("llama", "qwen2"): llama.cpp writes Mistral models as "llama".
const std::vector<std::string>& supported_gguf_architectures();

// From a GGUF file's general.architecture and `<arch>.*` keys. Whether the output projection
// is tied (no output.weight) and whether the attention has biases are read from the tensor
// table. Per-frequency rope factors (a rope_freqs.weight tensor, as Llama 3.1 GGUFs carry) are
// the model loader's business (layers/llama.h).
ModelConfig config_from_gguf(const GgufFile& file);

// From a Hugging Face config.json file, or from its text (`source` names it in errors).
ModelConfig config_from_hf_json(const std::string& path);
ModelConfig config_from_hf_json_text(const std::string& text, const std::string& source);

}  // namespace loom
