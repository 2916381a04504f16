// q/k rows of a model held in llama.cpp's GGUF order, to and from Hugging Face order -- what a
// Hugging Face export of a GGUF-loaded model needs.
//
// llama.cpp's converter permutes the output rows of q_proj / k_proj of `llama` models (Mistral
// included) for its interleaved rope (layers/model_config.h; the permutation itself is
// export/gguf_qk_order.h reorder_qk_rows). A model loaded from such a file has
// config().rope.style == Interleaved and holds every per-output-row quantity of its q/k --
// weights, biases, LoRA B rows, DoRA magnitudes -- in that order. qwen2 GGUFs and Hugging Face
// checkpoints are not permuted (RopeStyle::Half): for them these functions change nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "layers/llama.h"

namespace loom {

// Whether the model's q/k output rows are in llama.cpp's permuted order.
bool qk_rows_in_gguf_order(const ModelConfig& config);

// Per-output-row values of projection `p` ([out, cols] row-major; cols = 1 for a vector) from
// the model's order to Hugging Face's: un-permuted for q/k of a GGUF-ordered model.
std::vector<float> rows_to_hf_order(const ModelConfig& config, Projection p,
                                    std::vector<float> values, int64_t cols);
// The other way: Hugging Face order to the model's.
std::vector<float> rows_to_model_order(const ModelConfig& config, Projection p,
                                       std::vector<float> values, int64_t cols);

}  // namespace loom
