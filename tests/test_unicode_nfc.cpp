// loom's NFC normalization (layers/unicode_nfc.h) against Python's unicodedata.normalize("NFC")
// on the cases scripts/make_unicode_nfc.py wrote (tests/golden/nfc_cases.json): every code point
// that decomposes or carries a combining class, alone, after a base letter and before marks out
// of order; the NFD form of every composite; Hangul. The tokenizer that uses it is checked
// against Hugging Face `tokenizers` in test_tokenizer.cpp (Golden.NfcTokenizerJson...).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "autograd/check.h"
#include "layers/unicode_nfc.h"

namespace loom {
namespace {

using json = nlohmann::json;

json read_cases() {
  const std::filesystem::path path =
      std::filesystem::path(LOOM_SOURCE_DIR) / "tests" / "golden" / "nfc_cases.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path.string());
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

std::string code_points(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? c : c & (0x3F >> (len - 1));
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out += (out.empty() ? "" : " ") + std::string("U+") + [&] {
      char buf[16];
      std::snprintf(buf, sizeof buf, "%04X", cp);
      return std::string(buf);
    }();
    i += len;
  }
  return out;
}

TEST(UnicodeNfc, MatchesPythonsUnicodedata) {
  const json golden = read_cases();
  size_t changed = 0;
  for (const json& c : golden["cases"]) {
    const std::string input = c["input"];
    const std::string expected = c["expected"];
    const std::string got = nfc(input);
    if (got != expected) {
      // The first differing code point, to make a failure readable.
      size_t at = 0;
      while (at < got.size() && at < expected.size() && got[at] == expected[at]) ++at;
      const size_t from = at > 12 ? at - 12 : 0;
      ADD_FAILURE() << c["what"].get<std::string>() << ": differs at byte " << at
                    << "\n  loom:     " << code_points(got.substr(from, 40))
                    << "\n  expected: " << code_points(expected.substr(from, 40));
      continue;
    }
    EXPECT_EQ(nfc(got), got) << "NFC is not idempotent on " << c["what"];
    changed += input != expected;
  }
  EXPECT_GT(changed, 100u);  // the cases do exercise the algorithm
  std::cout << "[ nfc      ] " << golden["cases"].size() << " cases (" << changed
            << " changed by NFC) equal to " << golden["reference"].get<std::string>()
            << "; loom's tables: Unicode " << nfc_unicode_version() << "\n";
}

TEST(UnicodeNfc, SegmentsAroundMarksKeepTheTextBetween) {
  // ASCII and Latin-1 are left as they are, and the text around a normalized stretch too.
  const std::string latin = "Plain ASCII, caf\u00e9 and na\u00efve \u00c5ngstr\u00f6m.";
  EXPECT_TRUE(nfc_trivially_stable(latin));
  EXPECT_EQ(nfc(latin), latin);
  EXPECT_FALSE(nfc_trivially_stable("cafe\u0301"));
  EXPECT_EQ(nfc("one cafe\u0301, two A\u030a\u0301 \u212b; \u1100\u1161\u11a8 end"),
            "one caf\u00e9, two \u01fa \u00c5; \uac01 end");
  EXPECT_EQ(nfc("\u0301\u0301x"), "\u0301\u0301x");  // marks first: nothing to join
  EXPECT_EQ(nfc(""), "");
  EXPECT_EQ(nfc("\xf0\x9f\x98\x80 e\u0301"), "\xf0\x9f\x98\x80 \u00e9");
}

TEST(UnicodeNfc, InvalidUtf8IsAnErrorNamingTheByte) {
  try {
    (void)nfc(std::string("ab\xcc", 3));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8 (byte 2 of 3)"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace loom
