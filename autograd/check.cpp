// Formatting of failed checks (see check.h).
#include "autograd/check.h"

namespace loom {

void fail_check(const char* file, int line, const char* cond, const std::string& msg) {
  std::string where = fmt::format("{}:{}", file, line);
  if (cond) throw Error(fmt::format("{} ({}: check `{}` failed)", msg, where, cond));
  throw Error(fmt::format("{} ({})", msg, where));
}

}  // namespace loom
