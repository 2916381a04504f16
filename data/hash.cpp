// Hasher64: four 64-bit lanes over 32-byte stripes, then a tail and an avalanche step.
#include "data/hash.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace loom {
namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}
inline uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // the project builds for little-endian x86-64 only
}
inline uint32_t load32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t lane_round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = rotl(acc, 31);
  return acc * kP1;
}
inline uint64_t merge_lane(uint64_t h, uint64_t lane) {
  h ^= lane_round(0, lane);
  return h * kP1 + kP4;
}

}  // namespace

Hasher64::Hasher64(uint64_t seed) : seed_(seed) {
  lanes_[0] = seed + kP1 + kP2;
  lanes_[1] = seed + kP2;
  lanes_[2] = seed;
  lanes_[3] = seed - kP1;
}

void Hasher64::update(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (buffered_ > 0) {
    const size_t take = std::min(n, sizeof(stripe_) - buffered_);
    std::memcpy(stripe_ + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < sizeof(stripe_)) return;
    for (int i = 0; i < 4; ++i) lanes_[i] = lane_round(lanes_[i], load64(stripe_ + 8 * i));
    buffered_ = 0;
  }
  uint64_t a = lanes_[0], b = lanes_[1], c = lanes_[2], d = lanes_[3];
  while (n >= 32) {
    a = lane_round(a, load64(p));
    b = lane_round(b, load64(p + 8));
    c = lane_round(c, load64(p + 16));
    d = lane_round(d, load64(p + 24));
    p += 32;
    n -= 32;
  }
  lanes_[0] = a, lanes_[1] = b, lanes_[2] = c, lanes_[3] = d;
  std::memcpy(stripe_, p, n);
  buffered_ = n;
}

void Hasher64::update_u64(uint64_t v) {
  update(&v, sizeof(v));
}

void Hasher64::update_string(std::string_view s) {
  update_u64(s.size());
  update(s.data(), s.size());
}

uint64_t Hasher64::digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = rotl(lanes_[0], 1) + rotl(lanes_[1], 7) + rotl(lanes_[2], 12) + rotl(lanes_[3], 18);
    for (uint64_t lane : lanes_) h = merge_lane(h, lane);
  } else {
    h = seed_ + kP5;
  }
  h += total_;
  const unsigned char* p = stripe_;
  size_t n = buffered_;
  while (n >= 8) {
    h ^= lane_round(0, load64(p));
    h = rotl(h, 27) * kP1 + kP4;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    h ^= uint64_t{load32(p)} * kP1;
    h = rotl(h, 23) * kP2 + kP3;
    p += 4;
    n -= 4;
  }
  while (n > 0) {
    h ^= uint64_t{*p} * kP5;
    h = rotl(h, 11) * kP1;
    ++p;
    --n;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t hash64(const void* data, size_t n, uint64_t seed) {
  Hasher64 h(seed);
  h.update(data, n);
  return h.digest();
}

std::string hex64(uint64_t v) {
  return fmt::format("{:016x}", v);
}

}  // namespace loom
