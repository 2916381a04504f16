// Fast non-cryptographic 64-bit hashing for the token cache keys and the data module's
// deterministic choices (held-out split, shuffles). Not a checksum against attacks: it only has
// to change when the bytes change. The bulk loop reads 32-byte stripes into four independent
// multiply-rotate lanes (the structure of XXH64, several GB/s per core), so hashing a 40 MB
// corpus costs a few milliseconds next to the seconds tokenizing it takes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace loom {

// Streaming hasher: update() any number of times, then digest(). Feeding the same bytes in any
// split gives the same digest as hash64() of their concatenation.
class Hasher64 {
 public:
  explicit Hasher64(uint64_t seed = 0);
  void update(const void* data, size_t n);
  void update_u64(uint64_t v);  // the 8 bytes of v, little-endian
  // Length first, then the bytes: ("ab","c") and ("a","bc") hash differently.
  void update_string(std::string_view s);
  uint64_t digest() const;

 private:
  uint64_t seed_;
  uint64_t lanes_[4];
  unsigned char stripe_[32];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

uint64_t hash64(const void* data, size_t n, uint64_t seed = 0);
inline uint64_t hash64(std::string_view s, uint64_t seed = 0) {
  return hash64(s.data(), s.size(), seed);
}

// SplitMix64's finalizer: a bijective scramble of one 64-bit value.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Order-dependent combination of two hashes.
inline uint64_t hash_combine(uint64_t a, uint64_t b) {
  return mix64(a ^ mix64(b + 0x632BE59BD9B4E019ull));
}

std::string hex64(uint64_t v);  // 16 lower-case hex digits

}  // namespace loom
