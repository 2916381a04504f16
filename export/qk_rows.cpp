// q/k rows between a GGUF-ordered model and Hugging Face order (qk_rows.h).
#include "export/qk_rows.h"

#include "export/gguf_qk_order.h"

namespace loom {

namespace {

std::vector<float> reorder(const ModelConfig& config, Projection p, std::vector<float> values,
                           int64_t cols, bool to_gguf) {
  if (!qk_rows_in_gguf_order(config) || (p != Projection::Q && p != Projection::K)) return values;
  const int64_t heads = p == Projection::Q ? config.n_heads : config.n_kv_heads;
  const int64_t rows = static_cast<int64_t>(values.size()) / cols;
  return reorder_qk_rows(values, rows, cols, heads, to_gguf);
}

}  // namespace

bool qk_rows_in_gguf_order(const ModelConfig& config) {
  return config.rope.style == RopeStyle::Interleaved;
}

std::vector<float> rows_to_hf_order(const ModelConfig& config, Projection p,
                                    std::vector<float> values, int64_t cols) {
  return reorder(config, p, std::move(values), cols, /*to_gguf=*/false);
}

std::vector<float> rows_to_model_order(const ModelConfig& config, Projection p,
                                       std::vector<float> values, int64_t cols) {
  return reorder(config, p, std::move(values), cols, /*to_gguf=*/true);
}

}  // namespace loom
