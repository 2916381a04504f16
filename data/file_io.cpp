// Whole-file reads, gzip via zlib's inflate (all members), and source path expansion (glob(3) and
// std::filesystem walks).
#include "data/file_io.h"

#include <glob.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "autograd/check.h"

namespace loom {

namespace fs = std::filesystem;

std::string read_file_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    throw Error(fmt::format("cannot open '{}': {}; check the path and its permissions", path,
                            std::strerror(errno)));
  }
  std::string out;
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (!ec) out.reserve(size);
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw Error(fmt::format("read error on '{}'", path));
  return out;
}

bool is_gzip(std::string_view bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

std::string gunzip(std::string_view bytes, const std::string& path) {
  std::string out;
  if (bytes.size() >= 18) {
    // ISIZE, the last member's size mod 2^32: a good first guess for single-member files.
    uint32_t isize;
    std::memcpy(&isize, bytes.data() + bytes.size() - 4, 4);
    out.reserve(isize);
  }
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
    throw Error(fmt::format("'{}': zlib inflateInit2 failed", path));
  }
  const auto* base = reinterpret_cast<const Bytef*>(bytes.data());
  size_t pos = 0;  // compressed bytes handed to zlib so far
  const auto refill = [&] {
    const size_t n = std::min<size_t>(bytes.size() - pos, std::numeric_limits<uInt>::max());
    zs.next_in = const_cast<Bytef*>(base + pos);
    zs.avail_in = static_cast<uInt>(n);
    pos += n;
  };
  const auto fail = [&](const std::string& what) {
    inflateEnd(&zs);
    throw Error(
        fmt::format("'{}': {}; the file is damaged or incomplete -- re-download or "
                    "re-compress it",
                    path, what));
  };
  refill();
  bool member_open = true;
  char buf[1 << 16];
  while (member_open) {
    if (zs.avail_in == 0 && pos < bytes.size()) refill();
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - zs.avail_out);
    if (rc == Z_STREAM_END) {
      // Another member may follow (cat a.gz b.gz); trailing zero padding is allowed.
      size_t at = static_cast<size_t>(zs.next_in - base);
      while (at < bytes.size() && bytes[at] == '\0') ++at;
      if (at >= bytes.size()) {
        member_open = false;
      } else {
        inflateReset(&zs);
        pos = at;
        refill();
      }
    } else if (rc == Z_BUF_ERROR && zs.avail_in == 0 && pos >= bytes.size()) {
      fail(fmt::format("gzip data ends early (truncated after {} compressed bytes)", bytes.size()));
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      fail(fmt::format("corrupt gzip data near compressed byte {} ({})",
                       static_cast<size_t>(zs.next_in - base),
                       zs.msg != nullptr ? zs.msg : "zlib error"));
    }
  }
  inflateEnd(&zs);
  return out;
}

std::string read_maybe_gzip(const std::string& path) {
  std::string bytes = read_file_bytes(path);
  if (is_gzip(bytes)) return gunzip(bytes, path);
  return bytes;
}

bool has_glob_chars(std::string_view path) {
  return path.find_first_of("*?[") != std::string_view::npos;
}

namespace {

void add_path(const fs::path& p, std::vector<std::string>& out) {
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    for (auto it =
             fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file()) out.push_back(it->path().string());
    }
    if (ec) throw Error(fmt::format("cannot list folder '{}': {}", p.string(), ec.message()));
  } else if (fs::is_regular_file(p, ec)) {
    out.push_back(p.string());
  }
}

}  // namespace

std::vector<std::string> expand_source_path(const std::string& path, std::string_view what) {
  if (path.empty()) {
    throw Error(
        fmt::format("{}: no path given; set the source's path to a file, folder or glob", what));
  }
  std::vector<std::string> out;
  if (has_glob_chars(path)) {
    glob_t g{};
    const int rc = glob(path.c_str(), GLOB_ERR, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) add_path(g.gl_pathv[i], out);
    }
    globfree(&g);
    if (rc != 0 && rc != GLOB_NOMATCH) {
      throw Error(fmt::format("{}: cannot expand glob '{}' (a folder on the way is unreadable)",
                              what, path));
    }
    if (out.empty()) {
      throw Error(
          fmt::format("{}: glob '{}' matches no files; check the pattern and the working "
                      "folder ('{}')",
                      what, path, fs::current_path().string()));
    }
  } else {
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      throw Error(
          fmt::format("{}: '{}' does not exist; check the path (relative paths start at "
                      "'{}')",
                      what, path, fs::current_path().string()));
    }
    add_path(path, out);
    if (out.empty()) {
      throw Error(fmt::format("{}: '{}' holds no regular files", what, path));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace loom
