// Q/K row order between Hugging Face and GGUF (gguf_qk_order.h).
#include "export/gguf_qk_order.h"

#include <fmt/format.h>

#include <algorithm>

#include "autograd/check.h"

namespace loom {

std::string gguf_architecture(const ModelConfig& config) {
  return config.architecture == "mistral" ? std::string("llama") : config.architecture;
}

bool gguf_permutes_qk(const std::string& gguf_arch) {
  return gguf_arch == "llama";
}

bool qk_rows_need_reorder(const ModelConfig& config, Projection kind) {
  if (kind != Projection::Q && kind != Projection::K) return false;
  const bool held_permuted = config.rope.style == RopeStyle::Interleaved;
  return gguf_permutes_qk(gguf_architecture(config)) && !held_permuted;
}

std::vector<float> reorder_qk_rows(const std::vector<float>& values, int64_t rows, int64_t cols,
                                   int64_t n_head, bool to_gguf) {
  LOOM_CHECK(n_head > 0 && rows % n_head == 0 && (rows / n_head) % 2 == 0,
             "q/k reorder: {} rows do not split into {} heads of an even size", rows, n_head);
  LOOM_CHECK(static_cast<int64_t>(values.size()) == rows * cols,
             "q/k reorder: {} values for {} x {}", values.size(), rows, cols);
  const int64_t head_dim = rows / n_head, half = head_dim / 2;
  std::vector<float> out(values.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t hf_row = h * head_dim + s * half + j;
        const int64_t gguf_row = h * head_dim + 2 * j + s;
        const int64_t from = to_gguf ? hf_row : gguf_row, to = to_gguf ? gguf_row : hf_row;
        std::copy_n(values.begin() + from * cols, cols, out.begin() + to * cols);
      }
    }
  }
  return out;
}

std::vector<float> reorder_projection_rows(const ModelConfig& config, Projection kind,
                                           std::vector<float> values, int64_t cols, bool to_gguf) {
  if (!qk_rows_need_reorder(config, kind)) return values;
  const int64_t n_head = kind == Projection::Q ? config.n_heads : config.n_kv_heads;
  const int64_t rows = static_cast<int64_t>(values.size()) / cols;
  return reorder_qk_rows(values, rows, cols, n_head, to_gguf);
}

}  // namespace loom
