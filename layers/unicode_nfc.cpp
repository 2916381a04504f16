// NFC normalization (UAX #15), see unicode_nfc.h. Text is normalized in segments: a code point
// below U+0300 never reorders and is never the second half of a composition (the table
// generator asserts both), so the text can be cut before each one; only the stretches around
// code points at or above U+0300 go through decomposition, ordering and composition.
#include "layers/unicode_nfc.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "autograd/check.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"

namespace loom {
namespace {

struct CombiningClassRange {
  uint32_t first, last;
  uint8_t combining_class;
};
struct Decomposition {
  uint32_t code_point, first, second;  // second = 0: a singleton
};
struct Composition {
  uint32_t first, second, composite;
};

#include "layers/unicode_nfc_tables.inc"

// Hangul syllables (Unicode 3.12): S = SBase + (L * VCount + V) * TCount + T.
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr uint32_t kSCount = kLCount * kVCount * kTCount;

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = std::end(kCombiningClass);
  const auto* it =
      std::upper_bound(std::begin(kCombiningClass), end, cp,
                       [](uint32_t c, const CombiningClassRange& r) { return c < r.first; });
  if (it == std::begin(kCombiningClass)) return 0;
  --it;
  return cp <= it->last ? it->combining_class : 0;
}

// Appends the full canonical decomposition of cp.
void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / (kVCount * kTCount));
    out.push_back(kVBase + (s % (kVCount * kTCount)) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto* end = std::end(kDecomposition);
  const auto* it =
      std::lower_bound(std::begin(kDecomposition), end, cp,
                       [](const Decomposition& d, uint32_t c) { return d.code_point < c; });
  if (cp < 0xC0 || it == end || it->code_point != cp) {
    out.push_back(cp);
    return;
  }
  decompose(it->first, out);
  if (it->second != 0) decompose(it->second, out);
}

// The primary composite of (first, second), or 0.
uint32_t compose(uint32_t first, uint32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase &&
      second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  const auto* end = std::end(kComposition);
  const auto* it =
      std::lower_bound(std::begin(kComposition), end, std::pair{first, second},
                       [](const Composition& c, const std::pair<uint32_t, uint32_t>& k) {
                         return c.first < k.first || (c.first == k.first && c.second < k.second);
                       });
  return it != end && it->first == first && it->second == second ? it->composite : 0;
}

// Normalizes one segment (valid UTF-8) onto `out`.
void nfc_segment(std::string_view text, std::vector<uint32_t>& buf, std::string& out) {
  buf.clear();
  for (size_t i = 0; i < text.size();
       i += tok::utf8_len_from_lead(static_cast<unsigned char>(text[i]))) {
    decompose(tok::utf8_decode_at(text, i), buf);
  }
  // Canonical ordering: each run of non-starters sorted by combining class, stably.
  for (size_t i = 0; i < buf.size();) {
    if (combining_class(buf[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < buf.size() && combining_class(buf[j]) != 0) ++j;
    std::stable_sort(
        buf.begin() + static_cast<std::ptrdiff_t>(i), buf.begin() + static_cast<std::ptrdiff_t>(j),
        [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition: a character joins the last starter unless something between them
  // blocks it (a starter, or a mark of the same or a higher class).
  size_t kept = 0;
  std::ptrdiff_t starter = -1;
  int last_class = -1;  // class of the last character kept after the starter; -1: none
  for (size_t i = 0; i < buf.size(); ++i) {
    const uint32_t cp = buf[i];
    const int cls = combining_class(cp);
    if (starter >= 0) {
      const bool blocked = last_class != -1 && (last_class == 0 || last_class >= cls);
      if (!blocked) {
        const uint32_t composite = compose(buf[static_cast<size_t>(starter)], cp);
        if (composite != 0) {
          buf[static_cast<size_t>(starter)] = composite;
          continue;
        }
      }
    }
    if (cls == 0) {
      starter = static_cast<std::ptrdiff_t>(kept);
      last_class = -1;
    } else {
      last_class = cls;
    }
    buf[kept++] = cp;
  }
  for (size_t i = 0; i < kept; ++i) tok::append_utf8(buf[i], out);
}

// A UTF-8 lead byte of a code point at or above U+0300.
bool starts_at_or_above_0300(unsigned char c) {
  return c >= 0xCC && c < 0xF8;
}

}  // namespace

bool nfc_trivially_stable(std::string_view text) {
  return std::none_of(text.begin(), text.end(), [](char c) {
    return starts_at_or_above_0300(static_cast<unsigned char>(c));
  });
}

std::string nfc(std::string_view text) {
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    throw Error(fmt::format("nfc: the text is not valid UTF-8 (byte {} of {})", bad, text.size()));
  }
  std::string out;
  out.reserve(text.size());
  std::vector<uint32_t> buf;
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  size_t done = 0;
  while (done < text.size()) {
    size_t first = done;
    while (first < text.size() && !starts_at_or_above_0300(byte(first))) ++first;
    if (first == text.size()) break;
    // The segment starts at the code point before (it may compose with what follows) ...
    size_t start = first;
    if (start > done) {
      --start;
      while (start > done && (byte(start) & 0xC0) == 0x80) --start;
    }
    // ... and ends before the next code point below U+0300.
    size_t end = first;
    while (end < text.size() && starts_at_or_above_0300(byte(end))) {
      end += tok::utf8_len_from_lead(byte(end));
    }
    out.append(text.substr(done, start - done));
    nfc_segment(text.substr(start, end - start), buf, out);
    done = end;
  }
  out.append(text.substr(done));
  return out;
}

const char* nfc_unicode_version() {
  return kUnicodeVersion;
}

}  // namespace loom
