// Counter-based random numbers for LoRA inits and dropout seeds: every value is a hash of
// (key, index), so results do not depend on call order, thread count or attach order.
// The hash is SplitMix64's finalizer, chained over the key's words.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

namespace loom {

inline uint64_t lora_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint64_t lora_hash(std::initializer_list<uint64_t> words) {
  uint64_t h = 0x6c6f6f6d6c6f7261ULL;  // "loomlora"
  for (uint64_t w : words) h = lora_mix64(h ^ w);
  return h;
}

// Uniform in [0, 1) with 53 random bits.
inline double lora_uniform(uint64_t key, uint64_t index) {
  return static_cast<double>(lora_mix64(key ^ lora_mix64(index)) >> 11) * 0x1.0p-53;
}

// Standard normal (Box-Muller on two uniforms of the same index).
inline double lora_normal(uint64_t key, uint64_t index) {
  const double u1 = 1.0 - lora_uniform(key, 2 * index);  // (0, 1]: log is finite
  const double u2 = lora_uniform(key, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace loom
