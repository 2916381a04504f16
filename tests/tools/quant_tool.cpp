// loom_test_quant_tool: a small CLI over autograd/quant for tests/interop/test_quant_vs_gguf.py and
// for timing the dequantizers.
//
//   loom_test_quant_tool quantize   <dtype> in.f32 out.bin
//   loom_test_quant_tool dequantize <dtype> in.bin <n> out.f32 [--ref]   (--ref: scalar path)
//   loom_test_quant_tool dequantize-bf16 <dtype> in.bin <n> out.bf16     (raw uint16 bits)
//   loom_test_quant_tool bench [elements=4194304] [tile=4096]
//
// Files are raw little-endian arrays with no header. bench dequantizes a weight of `elements`
// values tile by tile into one reused buffer, the way the GEMM consumes it, and prints ns/element
// for the scalar reference and the fast path, f32 and bf16 outputs, and the quantizer's ns/element
// (whole weight, OpenMP threads as set by OMP_NUM_THREADS).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "autograd/quant/quant.h"
#include "autograd/quant/quant_kernels.h"

namespace {

using loom::DType;

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw loom::Error(fmt::format("cannot open '{}' for reading", path));
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw loom::Error(fmt::format("cannot write {} bytes to '{}'", bytes, path));
}

int64_t parse_count(const std::string& s, const char* what) {
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
  }
  if (used != s.size() || v < 0)
    throw loom::Error(fmt::format("{}: expected a non-negative integer, got '{}'", what, s));
  return v;
}

int cmd_quantize(const std::vector<std::string>& a) {
  if (a.size() != 3) throw loom::Error("usage: quantize <dtype> in.f32 out.bin");
  const DType t = loom::parse_dtype(a[0]);
  const auto raw = read_file(a[1]);
  if (raw.size() % 4)
    throw loom::Error(fmt::format("'{}': {} bytes is not a whole number of f32", a[1], raw.size()));
  std::vector<float> x(raw.size() / 4);
  std::memcpy(x.data(), raw.data(), raw.size());
  const auto q = loom::quantize(t, x.data(), static_cast<int64_t>(x.size()));
  write_file(a[2], q.data(), q.size());
  return 0;
}

int cmd_dequantize(const std::vector<std::string>& a, bool bf16) {
  if (a.size() < 4 || a.size() > 5 || (a.size() == 5 && (bf16 || a[4] != "--ref")))
    throw loom::Error(bf16 ? "usage: dequantize-bf16 <dtype> in.bin <n> out.bf16"
                           : "usage: dequantize <dtype> in.bin <n> out.f32 [--ref]");
  const DType t = loom::parse_dtype(a[0]);
  const auto raw = read_file(a[1]);
  const int64_t n = parse_count(a[2], "element count");
  const int64_t need = loom::storage_bytes(t, n);
  if (static_cast<int64_t>(raw.size()) != need)
    throw loom::Error(fmt::format("'{}': {} elements of {} take {} bytes, the file has {}", a[1], n,
                                  loom::dtype_name(t), need, raw.size()));
  if (bf16) {
    std::vector<loom::bf16_t> y(static_cast<size_t>(n));
    loom::dequantize_bf16(t, raw.data(), n, 0, n, y.data());
    write_file(a[3], y.data(), y.size() * 2);
  } else {
    std::vector<float> y(static_cast<size_t>(n));
    if (a.size() == 5)
      loom::ref::dequantize(t, raw.data(), n, 0, n, y.data());
    else
      loom::dequantize(t, raw.data(), n, 0, n, y.data());
    write_file(a[3], y.data(), y.size() * 4);
  }
  return 0;
}

// Best of a few passes over the whole weight, in ns per element.
template <class Fn>
double time_per_element(int64_t n, Fn&& pass) {
  pass();  // warm up caches and page in the output
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(
        best, std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(n));
  }
  return best;
}

int cmd_bench(const std::vector<std::string>& a) {
  if (a.size() > 2) throw loom::Error("usage: bench [elements] [tile]");
  int64_t n = a.size() > 0 ? parse_count(a[0], "elements") : int64_t{1} << 22;
  const int64_t tile = a.size() > 1 ? parse_count(a[1], "tile") : 4096;
  if (tile <= 0 || tile % 256 || n % tile)
    throw loom::Error(fmt::format(
        "bench: tile {} must be a positive multiple of 256 dividing elements {}", tile, n));
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = dist(rng);
  std::vector<float> out_f(static_cast<size_t>(tile));
  std::vector<loom::bf16_t> out_b(static_cast<size_t>(tile));
  std::printf("dequantize %lld elements in tiles of %lld (ns/element, best of 5; fast path: %s)\n",
              static_cast<long long>(n), static_cast<long long>(tile),
              loom::quant::dequant_path());
  std::printf("%-6s %12s %12s %12s %12s %12s\n", "dtype", "scalar f32", "fast f32", "scalar bf16",
              "fast bf16", "quantize");
  float sink = 0.0f;
  for (DType t : {DType::NF4, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K,
                  DType::F16, DType::BF16}) {
    std::vector<uint8_t> q;
    const double quant_ns = time_per_element(n, [&] { q = loom::quantize(t, x.data(), n); });
    auto tiles = [&](auto&& one) {
      for (int64_t first = 0; first < n; first += tile) one(first);
      sink += out_f[7] + static_cast<float>(out_b[7]);
    };
    const double ref_f = time_per_element(n, [&] {
      tiles([&](int64_t f) { loom::ref::dequantize(t, q.data(), n, f, tile, out_f.data()); });
    });
    const double fast_f = time_per_element(n, [&] {
      tiles([&](int64_t f) { loom::dequantize(t, q.data(), n, f, tile, out_f.data()); });
    });
    const double ref_b = time_per_element(n, [&] {
      tiles([&](int64_t f) {
        loom::ref::dequantize(t, q.data(), n, f, tile, out_f.data());
        for (int64_t i = 0; i < tile; ++i)
          out_b[static_cast<size_t>(i)] = loom::f32_to_bf16(out_f[static_cast<size_t>(i)]);
      });
    });
    const double fast_b = time_per_element(n, [&] {
      tiles([&](int64_t f) { loom::dequantize_bf16(t, q.data(), n, f, tile, out_b.data()); });
    });
    std::printf("%-6s %12.3f %12.3f %12.3f %12.3f %12.3f\n",
                std::string(loom::dtype_name(t)).c_str(), ref_f, fast_f, ref_b, fast_b, quant_ns);
  }
  std::vector<loom::bf16_t> conv(static_cast<size_t>(tile));
  const double f2b = time_per_element(n, [&] {
    for (int64_t first = 0; first < n; first += tile)
      loom::convert_f32_to_bf16(x.data() + first, conv.data(), tile);
  });
  const double f2b_ref = time_per_element(n, [&] {
    for (int64_t first = 0; first < n; first += tile)
      for (int64_t i = 0; i < tile; ++i)
        conv[static_cast<size_t>(i)] = loom::f32_to_bf16(x[static_cast<size_t>(first + i)]);
  });
  std::printf("f32->bf16 convert: scalar %.3f  fast %.3f ns/element\n", f2b_ref, f2b);
  std::fprintf(stderr, "(checksum %g)\n", static_cast<double>(sink + static_cast<float>(conv[3])));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::fprintf(stderr, "usage: %s quantize|dequantize|dequantize-bf16|bench ...\n", argv[0]);
    return 2;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  try {
    if (cmd == "quantize") return cmd_quantize(args);
    if (cmd == "dequantize") return cmd_dequantize(args, false);
    if (cmd == "dequantize-bf16") return cmd_dequantize(args, true);
    if (cmd == "bench") return cmd_bench(args);
    std::fprintf(stderr,
                 "unknown command '%s': expected quantize, dequantize, dequantize-bf16 or bench\n",
                 cmd.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s %s: %s\n", argv[0], cmd.c_str(), e.what());
    return 1;
  }
}
