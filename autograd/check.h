// Always-on checks for internal invariants and argument validation. A failed check throws
// loom::Error with file:line and a message, so callers at the edges can report it cleanly.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace loom {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_check(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace loom

// LOOM_CHECK(cond, "fmt {}", args...) -- stays on in every build type.
#define LOOM_CHECK(cond, ...)                                                   \
  do {                                                                          \
    if (!(cond)) ::loom::fail_check(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__)); \
  } while (0)

// LOOM_FAIL("fmt {}", args...) -- unconditional error with location.
#define LOOM_FAIL(...) ::loom::fail_check(__FILE__, __LINE__, nullptr, fmt::format(__VA_ARGS__))
