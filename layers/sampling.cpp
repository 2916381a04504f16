// Next-token sampling and stop tokens (layers/sampling.h).
#include "layers/sampling.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/check.h"
#include "layers/tokenizer.h"

namespace loom {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    throw Error(fmt::format("sampling: --temperature must be a finite value >= 0 (0 = greedy), "
                            "got {}",
                            temperature));
  if (top_k < 0)
    throw Error(fmt::format("sampling: --top-k must be >= 0 (0 = no top-k), got {}", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f))
    throw Error(fmt::format("sampling: --top-p must be in (0, 1] (1 = no top-p), got {}", top_p));
}

std::string SamplingParams::describe() const {
  if (temperature == 0.0f) return "greedy (temperature 0)";
  return fmt::format("temperature {}, top-k {}, top-p {}, seed {}", temperature,
                     top_k == 0 ? std::string("off") : std::to_string(top_k),
                     top_p == 1.0f ? std::string("off") : fmt::format("{}", top_p), seed);
}

// ---- random numbers ---------------------------------------------------------------------------

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t state = seed;
  for (uint64_t& s : s_) s = splitmix64(state);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

// ---- the distribution -------------------------------------------------------------------------

int32_t argmax(std::span<const float> logits) {
  LOOM_CHECK(!logits.empty(), "sampling: empty logits");
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

std::vector<TokenProb> sampling_distribution(std::span<const float> logits,
                                             const SamplingParams& params) {
  params.validate();
  LOOM_CHECK(!logits.empty(), "sampling: empty logits");
  for (size_t i = 0; i < logits.size(); ++i)
    LOOM_CHECK(!std::isnan(logits[i]), "sampling: logit of token {} is NaN", i);
  if (params.temperature == 0.0f) return {{argmax(logits), 1.0f}};

  struct Cand {
    int32_t id;
    float logit;
  };
  std::vector<Cand> cands;
  cands.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    if (logits[i] > -std::numeric_limits<float>::infinity())
      cands.push_back({static_cast<int32_t>(i), logits[i]});
  LOOM_CHECK(!cands.empty(), "sampling: every logit is -inf");
  const auto before = [](const Cand& a, const Cand& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  size_t keep = cands.size();
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < keep) keep = static_cast<size_t>(params.top_k);
  std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(keep), cands.end(),
                    before);
  cands.resize(keep);

  // Softmax of logit / temperature over the kept candidates, in double.
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  std::vector<double> p(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp((static_cast<double>(cands[i].logit) - cands[0].logit) * inv_t);
    total += p[i];
  }
  for (double& v : p) v /= total;

  // Nucleus: the shortest prefix (in sorted order) whose probability reaches top_p.
  if (params.top_p < 1.0f) {
    double cum = 0;
    size_t n = 0;
    while (n < keep) {
      cum += p[n++];
      if (cum >= static_cast<double>(params.top_p)) break;
    }
    keep = n;
  }
  double kept_total = 0;
  for (size_t i = 0; i < keep; ++i) kept_total += p[i];
  std::vector<TokenProb> out(keep);
  for (size_t i = 0; i < keep; ++i)
    out[i] = {cands[i].id, static_cast<float>(p[i] / kept_total)};
  return out;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (params_.temperature == 0.0f) return argmax(logits);
  const std::vector<TokenProb> dist = sampling_distribution(logits, params_);
  const double u = rng_.uniform();
  double cum = 0;
  for (const TokenProb& c : dist) {
    cum += c.prob;
    if (u < cum) return c.id;
  }
  return dist.back().id;  // u within rounding of 1
}

// ---- stop tokens ------------------------------------------------------------------------------

std::vector<int32_t> stop_token_ids(const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  if (tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
  for (const char* marker :
       {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>"}) {
    const int32_t id = tokenizer.find_token(marker);
    if (id < 0) continue;
    const TokenType t = tokenizer.token_type(id);
    if (t == TokenType::Control || t == TokenType::UserDefined) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace loom
