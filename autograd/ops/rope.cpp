// Rotary position embedding. Each pair (a, b) of a head vector is rotated by the angle
// position * inv_freq[i]:  a' = a cos - b sin,  b' = a sin + b cos; the vjp rotates the
// gradient back (by -angle). Pairs are (2i, 2i+1) for RopeStyle::Interleaved (llama.cpp on
// GGUF-permuted weights) and (i, i + rotary_dim/2) for RopeStyle::Half (Hugging Face).
//
// Frequencies follow Hugging Face: inv_freq in f32, angle = f32(position) * inv_freq in f32,
// then cos/sin of that angle; Llama-3 scaling as in transformers' _compute_llama3_parameters.
#include <cmath>
#include <numbers>

#include "autograd/ops.h"
#include "autograd/ops/common.h"

namespace loom {

using namespace ops_detail;

std::vector<float> rope_inv_freq(const RopeConfig& config, int64_t head_dim) {
  const int64_t rd = config.rotary_dim == 0 ? head_dim : config.rotary_dim;
  LOOM_CHECK(rd > 0 && rd % 2 == 0 && rd <= head_dim,
             "rope: rotary_dim {} must be even, positive and at most the head dim {}", rd, head_dim);
  LOOM_CHECK(config.theta > 0, "rope: theta must be positive, got {}", config.theta);
  std::vector<float> inv_freq(static_cast<size_t>(rd / 2));
  for (int64_t i = 0; i < rd / 2; ++i) {
    const double exponent = static_cast<double>(2 * i) / static_cast<double>(rd);
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(1.0 / std::pow(static_cast<double>(config.theta), exponent));
  }
  if (config.llama3_scaling) {
    const Llama3RopeScaling& s = *config.llama3_scaling;
    LOOM_CHECK(s.factor > 0 && s.high_freq_factor > s.low_freq_factor && s.low_freq_factor > 0 &&
                   s.original_max_position_embeddings > 0,
               "rope: invalid Llama-3 scaling (factor {}, low_freq_factor {}, high_freq_factor {}, "
               "original_max_position_embeddings {}): need factor > 0 and high > low > 0",
               s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings);
    const double orig = static_cast<double>(s.original_max_position_embeddings);
    const double low_freq_wavelen = orig / s.low_freq_factor;
    const double high_freq_wavelen = orig / s.high_freq_factor;
    for (float& f : inv_freq) {
      const double freq = f;
      const double wavelen = 2.0 * std::numbers::pi / freq;
      double scaled;
      if (wavelen < high_freq_wavelen) {
        scaled = freq;  // high frequencies: unchanged
      } else if (wavelen > low_freq_wavelen) {
        scaled = freq / s.factor;  // low frequencies: interpolated
      } else {
        const double smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        scaled = (1.0 - smooth) * freq / s.factor + smooth * freq;
      }
      f = static_cast<float>(scaled);
    }
  }
  return inv_freq;
}

std::shared_ptr<const RopeTable> make_rope_table(std::span<const int32_t> positions,
                                                 const RopeConfig& config, int64_t head_dim) {
  const std::vector<float> inv_freq = rope_inv_freq(config, head_dim);
  auto table = std::make_shared<RopeTable>();
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  table->style = config.style;
  table->head_dim = head_dim;
  table->rotary_dim = 2 * half;
  table->n_tokens = static_cast<int64_t>(positions.size());
  table->cos.resize(static_cast<size_t>(table->n_tokens * half));
  table->sin.resize(static_cast<size_t>(table->n_tokens * half));
  float* pc = table->cos.data();
  float* ps = table->sin.data();
  const int64_t n = table->n_tokens;
#pragma omp parallel for schedule(static) if (n * half >= 4096)
  for (int64_t t = 0; t < n; ++t) {
    const float pos = static_cast<float>(positions[static_cast<size_t>(t)]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[static_cast<size_t>(i)];
      pc[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      ps[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return table;
}

namespace {

// Rotates every pair of x [B, T, H, D] (dense) into y by +angle (sign 1) or -angle (sign -1).
void rotate(const float* x, float* y, int64_t B, int64_t T, int64_t H, int64_t D,
            const RopeTable& table, float sign) {
  const int64_t half = table.rotary_dim / 2;
  const bool per_batch = table.n_tokens == B * T;
  const int64_t tokens = B * T;
#pragma omp parallel for schedule(static) if (tokens * H * D >= kParallelMinElements)
  for (int64_t tok = 0; tok < tokens; ++tok) {
    const int64_t row = per_batch ? tok : tok % T;
    const float* c = table.cos.data() + row * half;
    const float* s = table.sin.data() + row * half;
    for (int64_t h = 0; h < H; ++h) {
      const float* xv = x + (tok * H + h) * D;
      float* yv = y + (tok * H + h) * D;
      if (table.style == RopeStyle::Half) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = xv[i], b = xv[i + half], sn = sign * s[i];
          yv[i] = a * c[i] - b * sn;
          yv[i + half] = a * sn + b * c[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const float a = xv[2 * i], b = xv[2 * i + 1], sn = sign * s[i];
          yv[2 * i] = a * c[i] - b * sn;
          yv[2 * i + 1] = a * sn + b * c[i];
        }
      }
      for (int64_t j = table.rotary_dim; j < D; ++j) yv[j] = xv[j];  // unrotated tail
    }
  }
}

}  // namespace

Tensor rope(const Tensor& x_in, const std::shared_ptr<const RopeTable>& table, OutputUse use) {
  check_f32("rope", "x", x_in);
  LOOM_CHECK(table != nullptr, "rope: no table given");
  LOOM_CHECK(x_in.dim() == 4, "rope: x must be [B, T, H, D], got {}", shape_str(x_in.shape()));
  const int64_t B = x_in.shape()[0], T = x_in.shape()[1], H = x_in.shape()[2], D = x_in.shape()[3];
  LOOM_CHECK(D == table->head_dim, "rope: x {} has head dim {}, the table was made for {}",
             shape_str(x_in.shape()), D, table->head_dim);
  LOOM_CHECK(table->n_tokens == T || table->n_tokens == B * T,
             "rope: x {} needs T={} or B*T={} positions, got {}", shape_str(x_in.shape()), T, B * T,
             table->n_tokens);
  const Tensor x = contiguous(x_in);
  Tensor y = use == OutputUse::Read ? empty_f32(x.shape()) : graph_only_f32(x.shape());
  if (use == OutputUse::Read) rotate(x.data_f32(), y.data_f32(), B, T, H, D, *table, 1.0f);
  return record(y, "rope", {x}, [table, B, T, H, D](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    Tensor dx = empty_f32(g.shape());
    rotate(g.data_f32(), dx.data_f32(), B, T, H, D, *table, -1.0f);
    return std::vector<Tensor>{dx};
  });
}

Tensor rope(const Tensor& x, std::span<const int32_t> positions, const RopeConfig& config) {
  check_f32("rope", "x", x);
  LOOM_CHECK(x.dim() == 4, "rope: x must be [B, T, H, D], got {}", shape_str(x.shape()));
  return rope(x, make_rope_table(positions, config, x.shape()[3]));
}

}  // namespace loom
