// Choosing the next token from a row of logits: greedy, temperature, top-k, top-p (nucleus),
// with a seeded random generator whose stream is fixed by this file (xoshiro256**, seeded by
// splitmix64), so a seed gives the same tokens on every platform and standard library.
//
// The order of the filters is llama.cpp's default sampler chain minus its extras: top-k on the
// raw logits, then the temperature, then softmax, then top-p on the sorted probabilities, then a
// draw from what is left (renormalised). Temperature 0 means greedy: the arg-max, ties to the
// lowest id, whatever top-k and top-p say.
//
// Also here: which tokens end a generation (EOS and the chat end markers of the vocabulary).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace loom {

class Tokenizer;

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // keep the k largest logits; 0: all
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability reaches p; 1: all
  uint64_t seed = 0;

  void validate() const;        // throws naming the option (--temperature, --top-k, --top-p)
  std::string describe() const; // "greedy" or "temperature 0.7, top-k 40, top-p 0.95, seed 1"
};

// A deterministic generator: xoshiro256** seeded through splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1), 53 random bits

 private:
  uint64_t s_[4];
};

// A candidate that survived the filters, with its renormalised probability.
struct TokenProb {
  int32_t id;
  float prob;
};

// Index of the largest logit, the lowest index on ties.
int32_t argmax(std::span<const float> logits);

// The distribution the sampler draws from: the kept candidates sorted by decreasing probability
// (ties by increasing id), probabilities summing to 1. Temperature 0 gives the arg-max alone.
std::vector<TokenProb> sampling_distribution(std::span<const float> logits,
                                             const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t sample(std::span<const float> logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  Rng rng_;
};

// Ids that end a generation: the tokenizer's EOS plus whichever of the usual end-of-turn markers
// the vocabulary holds as special tokens (<|im_end|>, <|endoftext|>, <|eot_id|>, <|end|>, </s>,
// <end_of_turn>). Sorted, without duplicates.
std::vector<int32_t> stop_token_ids(const Tokenizer& tokenizer);

}  // namespace loom
