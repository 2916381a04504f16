// dictd dictionaries (Debian's dict-* packages, /usr/share/dictd/): NAME.dict.dz is the entries'
// text, gzip-compatible (dictzip); NAME.index has one line per headword,
//     headword TAB offset TAB length [TAB original headword]
// with offset and length in bytes of the uncompressed text, written in dictd's base64 number
// form: digits A-Z a-z 0-9 + / worth 0..63, most significant first ("Gb9L" = 6*64^3+27*64^2+...).
//
// The reader makes one document per distinct (offset, length) entry, in offset order: several
// headwords naming one entry give one document. Entries named by a metadata headword
// ("00-database-*", or the older "00database*") -- the dictionary's own description, URL, etc.
// -- are left out, and so are other headwords sharing those bytes (GCIDE's "00-gcide-*").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace loom {

// nullopt for an empty string, a character outside the alphabet, or a value over 2^63.
std::optional<uint64_t> decode_dictd_number(std::string_view digits);
std::string encode_dictd_number(uint64_t value);  // "A" for 0

struct DictdIndexLine {
  std::string_view headword;
  uint64_t offset = 0;
  uint64_t length = 0;
};
// nullopt with *error set when the line is not headword TAB number TAB number [TAB ...].
std::optional<DictdIndexLine> parse_dictd_index_line(std::string_view line, std::string* error);

bool is_dictd_metadata_headword(std::string_view headword);

}  // namespace loom
