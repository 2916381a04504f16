// GGUF reader tests: small files written here byte by byte (every metadata type, versions 2 and
// 3, alignments 32 and 64), every way a file can be broken, and the real default model when
// scripts/fetch_models.sh has fetched it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "autograd/check.h"
#include "layers/gguf.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

// ---- a tiny GGUF writer, just enough to lay out (and then break) test files -------------------

struct TestTensor {
  std::string name;
  std::vector<uint64_t> ne;  // GGUF order
  uint32_t ggml_type = 0;
  std::string data;  // raw bytes
};

struct Layout {
  std::string bytes;
  size_t header_end = 0;  // after magic, version, counts
  size_t metadata_end = 0;
  size_t infos_end = 0;
  size_t data_offset = 0;
  std::vector<uint64_t> offsets;  // per tensor, from data_offset
};

class Writer {
 public:
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    out += s;
  }
  void raw(const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
  void value(const GgufValue& v) {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>) {
            str(x);
          } else if constexpr (std::is_same_v<T, GgufArray>) {
            u32(static_cast<uint32_t>(x.elem_type));
            u64(x.items.size());
            for (const GgufValue& item : x.items) value(item);
          } else if constexpr (std::is_same_v<T, bool>) {
            uint8_t b = x ? 1 : 0;
            raw(&b, 1);
          } else {
            raw(&x, sizeof(x));
          }
        },
        v.variant());
  }
  void pad_to(size_t align) {
    while (out.size() % align) out.push_back('\0');
  }
  std::string out;
};

using KV = std::vector<std::pair<std::string, GgufValue>>;

Layout build_gguf(uint32_t version, const KV& kv, const std::vector<TestTensor>& tensors,
                  uint64_t alignment = 32) {
  Layout l;
  Writer w;
  w.raw("GGUF", 4);
  w.u32(version);
  w.u64(tensors.size());
  w.u64(kv.size());
  l.header_end = w.out.size();
  for (const auto& [key, value] : kv) {
    w.str(key);
    w.u32(static_cast<uint32_t>(value.type()));
    w.value(value);
  }
  l.metadata_end = w.out.size();
  uint64_t offset = 0;
  for (const TestTensor& t : tensors) {
    w.str(t.name);
    w.u32(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) w.u64(d);
    w.u32(t.ggml_type);
    w.u64(offset);
    l.offsets.push_back(offset);
    offset = (offset + t.data.size() + alignment - 1) / alignment * alignment;
  }
  l.infos_end = w.out.size();
  w.pad_to(alignment);
  l.data_offset = w.out.size();
  for (const TestTensor& t : tensors) {
    w.out += t.data;
    w.pad_to(alignment);
  }
  l.bytes = std::move(w.out);
  return l;
}

// Deterministic filler bytes for tensor data.
std::string pattern_bytes(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  uint32_t x = 2463534242u ^ seed;
  for (char& c : s) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    c = static_cast<char>(x & 0xff);
  }
  return s;
}

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

GgufValue array_of(GgufType elem, std::vector<GgufValue> items) {
  return GgufValue(GgufArray{elem, std::move(items)});
}

class GgufTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("loom_test_gguf_{}", ::getpid());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) {
    std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // Opening `bytes` must throw loom::Error whose message names the file and holds every
  // fragment in `expect`.
  void expect_error(const std::string& name, const std::string& bytes,
                    std::vector<std::string> expect) {
    std::string path = write(name, bytes);
    try {
      GgufFile::open(path);
      ADD_FAILURE() << name << ": opened without error, expected one mentioning " << expect.front();
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
      for (const std::string& frag : expect)
        EXPECT_NE(msg.find(frag), std::string::npos) << "message lacks '" << frag << "': " << msg;
    }
  }

  fs::path dir_;
};

// Every scalar type at its edges, strings (empty, UTF-8, embedded NUL), arrays of every type,
// arrays of strings, an empty array and an array of arrays.
KV all_types_metadata() {
  KV kv;
  kv.emplace_back("general.architecture", GgufValue(std::string("llama")));
  kv.emplace_back("t.u8", GgufValue(uint8_t{255}));
  kv.emplace_back("t.i8", GgufValue(int8_t{-128}));
  kv.emplace_back("t.u16", GgufValue(uint16_t{65535}));
  kv.emplace_back("t.i16", GgufValue(int16_t{-32768}));
  kv.emplace_back("t.u32", GgufValue(uint32_t{4294967295u}));
  kv.emplace_back("t.i32", GgufValue(int32_t{-2147483647 - 1}));
  kv.emplace_back("t.f32", GgufValue(9.999999747378752e-06f));
  kv.emplace_back("t.bool_true", GgufValue(true));
  kv.emplace_back("t.bool_false", GgufValue(false));
  kv.emplace_back("t.string", GgufValue(std::string("h\xc3\xa9llo \xe2\x80\x94 \"w\"\n")));
  kv.emplace_back("t.empty_string", GgufValue(std::string()));
  kv.emplace_back("t.nul_string", GgufValue(std::string("a\0b", 3)));
  kv.emplace_back("t.u64", GgufValue(uint64_t{18446744073709551615ull}));
  kv.emplace_back("t.i64", GgufValue(int64_t{std::numeric_limits<int64_t>::min()}));
  kv.emplace_back("t.f64", GgufValue(-1.0e300));
  kv.emplace_back("t.arr_u8",
                  array_of(GgufType::UINT8, {GgufValue(uint8_t{0}), GgufValue(uint8_t{7})}));
  kv.emplace_back("t.arr_i8", array_of(GgufType::INT8, {GgufValue(int8_t{-1})}));
  kv.emplace_back("t.arr_u16",
                  array_of(GgufType::UINT16, {GgufValue(uint16_t{1}), GgufValue(uint16_t{2})}));
  kv.emplace_back("t.arr_i16", array_of(GgufType::INT16, {GgufValue(int16_t{-3})}));
  kv.emplace_back("t.arr_u32",
                  array_of(GgufType::UINT32, {GgufValue(uint32_t{10}), GgufValue(uint32_t{20}),
                                              GgufValue(uint32_t{30})}));
  kv.emplace_back("t.arr_i32",
                  array_of(GgufType::INT32, {GgufValue(int32_t{-5}), GgufValue(int32_t{5})}));
  kv.emplace_back("t.arr_f32", array_of(GgufType::FLOAT32, {GgufValue(0.5f), GgufValue(-2.25f)}));
  kv.emplace_back("t.arr_bool", array_of(GgufType::BOOL, {GgufValue(true), GgufValue(false)}));
  kv.emplace_back("t.arr_string", array_of(GgufType::STRING,
                                           {GgufValue(std::string("<s>")), GgufValue(std::string()),
                                            GgufValue(std::string("\xc4\xa0the"))}));
  kv.emplace_back("t.arr_u64", array_of(GgufType::UINT64, {GgufValue(uint64_t{1} << 40)}));
  kv.emplace_back("t.arr_i64",
                  array_of(GgufType::INT64, {GgufValue(int64_t{-(int64_t{1} << 40)})}));
  kv.emplace_back("t.arr_f64", array_of(GgufType::FLOAT64, {GgufValue(3.141592653589793)}));
  kv.emplace_back("t.arr_empty", array_of(GgufType::UINT32, {}));
  kv.emplace_back(
      "t.arr_nested",
      array_of(GgufType::ARRAY,
               {array_of(GgufType::INT32, {GgufValue(int32_t{1}), GgufValue(int32_t{2})}),
                array_of(GgufType::INT32, {GgufValue(int32_t{3})})}));
  return kv;
}

// One tensor of each dtype GGUF shares with loom, 1-D to 3-D.
std::vector<TestTensor> all_dtype_tensors() {
  return {
      {"f32.2d", {4, 3}, 0, f32_bytes({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})},
      {"f16.1d", {5}, 1, pattern_bytes(5 * 2, 1)},
      {"bf16.2d", {3, 2}, 30, pattern_bytes(6 * 2, 2)},
      {"q8_0.2d", {64, 2}, 8, pattern_bytes(4 * 34, 3)},
      {"q4_0.2d", {32, 3}, 2, pattern_bytes(3 * 18, 4)},
      {"q4_1.3d", {32, 2, 2}, 3, pattern_bytes(4 * 20, 5)},
      {"q4_k.2d", {256, 1}, 12, pattern_bytes(144, 6)},
      {"q6_k.2d", {256, 2}, 14, pattern_bytes(2 * 210, 7)},
  };
}

// ---- reading well-formed files ----------------------------------------------------------------

class GgufRoundTrip : public GgufTest,
                      public ::testing::WithParamInterface<std::tuple<uint32_t, uint64_t>> {};

TEST_P(GgufRoundTrip, EveryMetadataTypeAndTensorDtype) {
  auto [version, alignment] = GetParam();
  KV kv = all_types_metadata();
  if (alignment != 32)
    kv.emplace_back("general.alignment", GgufValue(static_cast<uint32_t>(alignment)));
  std::vector<TestTensor> tensors = all_dtype_tensors();
  Layout l = build_gguf(version, kv, tensors, alignment);
  std::string path = write(fmt::format("v{}_a{}.gguf", version, alignment), l.bytes);

  Tensor kept;
  {
    GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.version(), version);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset(), l.data_offset);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    EXPECT_EQ(f.file_size(), l.bytes.size());

    ASSERT_EQ(f.metadata().size(), kv.size());
    for (size_t i = 0; i < kv.size(); ++i) {
      EXPECT_EQ(f.metadata()[i].first, kv[i].first);
      EXPECT_TRUE(f.metadata()[i].second == kv[i].second)
          << kv[i].first << ": read " << f.metadata()[i].second.to_display() << ", wrote "
          << kv[i].second.to_display();
      EXPECT_EQ(f.metadata()[i].second.type(), kv[i].second.type()) << kv[i].first;
    }

    // Typed getters.
    EXPECT_EQ(f.architecture(), "llama");
    EXPECT_EQ(f.get_int("t.u8"), 255);
    EXPECT_EQ(f.get_int("t.i8"), -128);
    EXPECT_EQ(f.get_int("t.u16"), 65535);
    EXPECT_EQ(f.get_int("t.i16"), -32768);
    EXPECT_EQ(f.get_int("t.u32"), 4294967295ll);
    EXPECT_EQ(f.get_int("t.i32"), -2147483648ll);
    EXPECT_EQ(f.get_int("t.i64"), std::numeric_limits<int64_t>::min());
    EXPECT_EQ(f.get_float("t.f32"), static_cast<double>(9.999999747378752e-06f));
    EXPECT_EQ(f.get_float("t.f64"), -1.0e300);
    EXPECT_EQ(f.get_float("t.u32"), 4294967295.0);  // integers read as numbers too
    EXPECT_TRUE(f.get_bool("t.bool_true"));
    EXPECT_FALSE(f.get_bool("t.bool_false"));
    EXPECT_EQ(f.get_string("t.string"), "h\xc3\xa9llo \xe2\x80\x94 \"w\"\n");
    EXPECT_EQ(f.get_string("t.empty_string"), "");
    EXPECT_EQ(f.get_string("t.nul_string"), std::string("a\0b", 3));
    EXPECT_EQ(f.get_int_array("t.arr_u32"), (std::vector<int64_t>{10, 20, 30}));
    EXPECT_EQ(f.get_int_array("t.arr_i32"), (std::vector<int64_t>{-5, 5}));
    EXPECT_EQ(f.get_int_array("t.arr_empty"), std::vector<int64_t>{});
    EXPECT_EQ(f.get_float_array("t.arr_f32"), (std::vector<double>{0.5, -2.25}));
    EXPECT_EQ(f.get_float_array("t.arr_f64"), (std::vector<double>{3.141592653589793}));
    EXPECT_EQ(f.get_string_array("t.arr_string"),
              (std::vector<std::string>{"<s>", "", "\xc4\xa0the"}));
    EXPECT_EQ(f.at("t.arr_nested").type_str(), "array of 2 array of 2 int32");
    EXPECT_FALSE(f.has("t.missing"));

    // Tensor infos and bytes.
    ASSERT_EQ(f.tensors().size(), tensors.size());
    const DType dtypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0,
                            DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K};
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TestTensor& want = tensors[i];
      const GgufTensorInfo& info = f.tensors()[i];
      SCOPED_TRACE(want.name);
      EXPECT_EQ(info.name, want.name);
      EXPECT_EQ(info.ne, std::vector<int64_t>(want.ne.begin(), want.ne.end()));
      EXPECT_EQ(info.shape, Shape(want.ne.rbegin(), want.ne.rend()));
      EXPECT_EQ(info.ggml_type, static_cast<int>(want.ggml_type));
      EXPECT_EQ(info.dtype, dtypes[i]);
      EXPECT_EQ(info.offset, l.offsets[i]);
      EXPECT_EQ(info.offset % alignment, 0u);
      EXPECT_EQ(info.nbytes, static_cast<int64_t>(want.data.size()));
      EXPECT_EQ(&f.tensor_info(want.name), &info);
      GgufTensorInfo copy = info;  // a copy of this file's info works as well as the original
      EXPECT_EQ(f.tensor(copy).data_bytes(), f.tensor(info).data_bytes());
      Tensor t = f.tensor(want.name);
      EXPECT_EQ(t.name(), want.name);
      EXPECT_EQ(t.shape(), info.shape);
      EXPECT_EQ(t.dtype(), info.dtype);
      // Borrowed, not copied: the bytes are the file's, at data_offset + offset.
      ASSERT_EQ(t.storage()->nbytes(), info.nbytes);
      EXPECT_EQ(std::memcmp(t.data_bytes(), want.data.data(), want.data.size()), 0);
      EXPECT_EQ(std::memcmp(t.data_bytes(), l.bytes.data() + l.data_offset + info.offset,
                            want.data.size()),
                0);
    }
    EXPECT_EQ(f.tensor("f32.2d").to_vector(),
              (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
    EXPECT_EQ(f.tensor("f32.2d").shape(), (Shape{3, 4}));
    kept = f.tensor("f32.2d");
  }
  // The tensor keeps the mapping alive after the GgufFile is gone.
  EXPECT_EQ(kept.to_vector()[11], 11.0f);
}

INSTANTIATE_TEST_SUITE_P(Versions, GgufRoundTrip,
                         ::testing::Combine(::testing::Values(2u, 3u),
                                            ::testing::Values(uint64_t{32}, uint64_t{64})),
                         [](const auto& info) {
                           return fmt::format("v{}_align{}", std::get<0>(info.param),
                                              std::get<1>(info.param));
                         });

TEST_F(GgufTest, NoTensorsAndNoMetadata) {
  Layout l = build_gguf(3, {}, {});
  GgufFile f = GgufFile::open(write("empty.gguf", l.bytes));
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.alignment(), 32u);
}

TEST_F(GgufTest, TypedGettersNameKeyFileAndTypes) {
  KV kv = all_types_metadata();
  kv.emplace_back("llama.block_count", GgufValue(std::string("thirty")));
  std::string path = write("getters.gguf", build_gguf(3, kv, {}).bytes);
  GgufFile f = GgufFile::open(path);
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_EQ(
      message([&] { f.get_int("llama.block_count"); }),
      fmt::format("gguf: key 'llama.block_count' in {} is a string, expected an integer", path));
  EXPECT_EQ(message([&] { f.get_string("t.i32"); }),
            fmt::format("gguf: key 't.i32' in {} is an int32, expected a string", path));
  EXPECT_EQ(
      message([&] { f.get_bool("t.arr_u32"); }),
      fmt::format("gguf: key 't.arr_u32' in {} is an array of 3 uint32, expected a bool", path));
  EXPECT_EQ(message([&] { f.get_string_array("t.arr_i32"); }),
            fmt::format(
                "gguf: key 't.arr_i32' in {} is an array of 2 int32, expected an array of strings",
                path));
  EXPECT_EQ(
      message([&] { f.get_int_array("t.arr_f32"); }),
      fmt::format(
          "gguf: key 't.arr_f32' in {} is an array of 2 float32, expected an array of integers",
          path));
  EXPECT_EQ(message([&] { f.get_float("t.string"); }),
            fmt::format("gguf: key 't.string' in {} is a string, expected a number", path));
  EXPECT_EQ(
      message([&] { f.get_float_array("t.arr_string"); }),
      fmt::format(
          "gguf: key 't.arr_string' in {} is an array of 3 string, expected an array of numbers",
          path));
  EXPECT_EQ(message([&] { f.get_int("llama.context_length"); }),
            fmt::format("gguf: key 'llama.context_length' not found in {}", path));
  EXPECT_NE(message([&] { f.get_int("t.u64"); }).find("does not fit in int64"), std::string::npos);
  EXPECT_NE(
      message([&] { f.tensor("nope"); }).find(fmt::format("tensor 'nope' not found in {}", path)),
      std::string::npos);
}

TEST_F(GgufTest, DisplayForm) {
  EXPECT_EQ(GgufValue(uint8_t{65}).to_display(), "65");
  EXPECT_EQ(GgufValue(true).to_display(), "true");
  EXPECT_EQ(GgufValue(std::string("a\nb")).to_display(), "\"a\\nb\"");
  EXPECT_EQ(GgufValue(std::string("abcdef")).to_display(6, 3), "\"abc...\" (6 bytes)");
  GgufValue arr = array_of(GgufType::INT32,
                           {GgufValue(int32_t{1}), GgufValue(int32_t{2}), GgufValue(int32_t{3})});
  EXPECT_EQ(arr.to_display(), "[1, 2, 3]");
  EXPECT_EQ(arr.to_display(2), "[1, 2, ... (3 items)]");
}

TEST_F(GgufTest, SummaryListsHyperParametersAndTokenizerKeys) {
  KV kv = {
      {"general.architecture", GgufValue(std::string("llama"))},
      {"general.name", GgufValue(std::string("tiny"))},
      {"llama.block_count", GgufValue(uint32_t{2})},
      {"llama.embedding_length", GgufValue(uint32_t{64})},
      {"llama.rope.freq_base", GgufValue(10000.0f)},
      {"tokenizer.ggml.model", GgufValue(std::string("gpt2"))},
      {"tokenizer.ggml.tokens",
       array_of(GgufType::STRING, {GgufValue(std::string("a")), GgufValue(std::string("b"))})},
      {"tokenizer.ggml.custom_flag", GgufValue(true)},
  };
  std::vector<TestTensor> tensors = {{"w", {32, 2}, 3, pattern_bytes(40, 9)},
                                     {"n", {32}, 0, pattern_bytes(128, 8)}};
  GgufFile f = GgufFile::open(write("summary.gguf", build_gguf(3, kv, tensors).bytes));
  GgufModelSummary s = summarize_gguf(f);
  EXPECT_EQ(s.architecture, "llama");
  EXPECT_EQ(s.name, "tiny");
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(s.hparams, (std::vector<P>{{"llama.block_count", "2"},
                                       {"llama.embedding_length", "64"},
                                       {"llama.rope.freq_base", "10000"}}));
  std::map<std::string, std::pair<bool, std::string>> tok;
  for (const auto& t : s.tokenizer_keys) tok[t.key] = {t.present, t.value};
  EXPECT_EQ(tok["tokenizer.ggml.model"], std::make_pair(true, std::string("\"gpt2\"")));
  EXPECT_EQ(tok["tokenizer.ggml.tokens"], std::make_pair(true, std::string("array of 2 string")));
  EXPECT_EQ(tok["tokenizer.ggml.merges"], std::make_pair(false, std::string()));
  EXPECT_EQ(tok["tokenizer.ggml.custom_flag"], std::make_pair(true, std::string("true")));
  EXPECT_EQ(s.tensor_count, 2);
  EXPECT_EQ(s.parameter_count, 96);
  EXPECT_EQ(s.tensor_bytes, 40 + 128);
  using C = std::pair<std::string, int64_t>;
  EXPECT_EQ(s.tensor_type_counts, (std::vector<C>{{"f32", 1}, {"q4_1", 1}}));
  std::string text = format_gguf_summary(s);
  EXPECT_NE(text.find("llama.block_count"), std::string::npos) << text;
  EXPECT_NE(text.find("(absent)"), std::string::npos) << text;
}

// ---- broken files -----------------------------------------------------------------------------

Layout small_valid_file() {
  KV kv = {
      {"general.architecture", GgufValue(std::string("llama"))},
      {"tokenizer.ggml.tokens", array_of(GgufType::STRING, {GgufValue(std::string("hello")),
                                                            GgufValue(std::string("world"))})}};
  return build_gguf(
      3, kv,
      {{"a.weight", {32, 2}, 3, pattern_bytes(40, 1)}, {"b.weight", {8}, 0, pattern_bytes(32, 2)}});
}

TEST_F(GgufTest, BadMagic) {
  std::string bytes = small_valid_file().bytes;
  bytes.replace(0, 4, "GGML");
  expect_error("bad_magic.gguf", bytes,
               {"not a GGUF file", "expected magic \"GGUF\"", "found \"GGML\""});
}

TEST_F(GgufTest, UnsupportedVersions) {
  std::string bytes = small_valid_file().bytes;
  uint32_t v1 = 1;
  std::memcpy(bytes.data() + 4, &v1, 4);
  expect_error("v1.gguf", bytes, {"version 1", "expected version 2 or 3"});
  uint32_t v4 = 4;
  std::memcpy(bytes.data() + 4, &v4, 4);
  expect_error("v4.gguf", bytes, {"version 4", "expected version 2 or 3"});
  uint32_t big_endian_v3 = 0x03000000u;
  std::memcpy(bytes.data() + 4, &big_endian_v3, 4);
  expect_error("be.gguf", bytes, {"big-endian", "expected version 2 or 3"});
}

TEST_F(GgufTest, TruncatedAtEverySection) {
  Layout l = small_valid_file();
  struct Cut {
    size_t at;
    std::vector<std::string> expect;
  };
  std::vector<Cut> cuts = {
      {0, {"truncated in the header", "expected 4 bytes at offset 0, found 0"}},
      {2, {"truncated in the header", "expected 4 bytes at offset 0, found 2"}},
      {10, {"truncated in the header", "tensor count", "expected 8 bytes at offset 8, found 2"}},
      {l.header_end + 4,
       {"truncated in the metadata", "2 key/value pairs", "expected at least 26 bytes at offset 24",
        "found 4"}},
      {l.header_end + 45 + 8 + 10,
       {"truncated in the metadata", "key #1, string of 21 bytes", "expected 21 bytes",
        "found 10"}},
      {l.header_end + 8 + 20 + 4 + 8 + 2,
       {"truncated in the metadata", "value of key 'general.architecture'", "expected 5 bytes",
        "found 2"}},
      {l.metadata_end - 3,
       {"truncated in the metadata", "tokenizer.ggml.tokens", "item 1", "expected 5 bytes",
        "found 2"}},
      {l.metadata_end + 5,
       {"truncated in the tensor infos", "2 tensor infos", "expected at least 48 bytes",
        "found 5"}},
      {l.metadata_end + 52,
       {"truncated in the tensor infos", "tensor #1 name, string length", "expected 8 bytes",
        "found 4"}},
      {l.infos_end - 1,
       {"truncated in the tensor infos", "tensor #1 'b.weight', data offset", "expected 8 bytes",
        "found 7"}},
      {l.infos_end,
       {"is truncated", "tensor 'b.weight'",
        fmt::format("expected a file of at least {} bytes, found {}", l.bytes.size(),
                    l.infos_end)}},
      {l.bytes.size() - 1,
       {"is truncated", "tensor 'b.weight'",
        fmt::format("expected a file of at least {} bytes, found {} (1 missing)", l.bytes.size(),
                    l.bytes.size() - 1)}},
  };
  for (const Cut& c : cuts) {
    SCOPED_TRACE(fmt::format("cut at {}", c.at));
    expect_error(fmt::format("cut_{}.gguf", c.at), l.bytes.substr(0, c.at), c.expect);
  }
}

TEST_F(GgufTest, CountsLargerThanTheFile) {
  std::string bytes = small_valid_file().bytes;
  uint64_t many = uint64_t{1} << 60;
  std::memcpy(bytes.data() + 16, &many, 8);  // metadata count
  expect_error("many_kv.gguf", bytes,
               {"truncated in the metadata", "1152921504606846976 key/value pairs"});
  Layout l = build_gguf(3, {{"x", array_of(GgufType::UINT64, {GgufValue(uint64_t{1})})}}, {});
  std::memcpy(l.bytes.data() + l.header_end + 8 + 1 + 4 + 4, &many, 8);  // array length
  expect_error("long_array.gguf", l.bytes,
               {"truncated in the metadata", "array of 1152921504606846976 uint64"});
  // A tensor offset beyond all the tensors' bytes is a corrupt table, not a short file.
  Layout v = small_valid_file();
  const uint64_t far = uint64_t{1} << 40;
  std::memcpy(v.bytes.data() + v.infos_end - 8, &far, 8);  // tensor #1's data offset
  expect_error(
      "far_offset.gguf", v.bytes,
      {"tensor 'b.weight' has data offset 1099511627776, past the", "the tensor table is corrupt"});
}

TEST_F(GgufTest, UnsupportedTensorTypes) {
  TestTensor q5_0{"blk.0.attn_q.weight", {32, 2}, 6, pattern_bytes(44, 1)};
  expect_error(
      "q5_0.gguf", build_gguf(3, {}, {q5_0}).bytes,
      {"tensor 'blk.0.attn_q.weight'", "GGML type 6 (Q5_0)", "loom cannot read", "supported"});
  TestTensor unknown{"w", {32}, 99, pattern_bytes(32, 1)};
  expect_error("type99.gguf", build_gguf(3, {}, {unknown}).bytes,
               {"tensor 'w'", "GGML type 99 (unknown)"});
  TestTensor huge_id{"w", {32}, 0xffffffffu, pattern_bytes(32, 1)};
  expect_error("type_max.gguf", build_gguf(3, {}, {huge_id}).bytes,
               {"tensor 'w'", "GGML type 4294967295 (unknown)", "out of range"});
}

TEST_F(GgufTest, DuplicateNames) {
  TestTensor a{"same", {8}, 0, pattern_bytes(32, 1)};
  expect_error("dup_tensor.gguf", build_gguf(3, {}, {a, a}).bytes,
               {"tensor 'same' twice", "tensor infos #0 and #1", "expected unique names"});
  KV kv = {{"general.name", GgufValue(std::string("a"))},
           {"general.name", GgufValue(std::string("b"))}};
  expect_error("dup_key.gguf", build_gguf(3, kv, {}).bytes,
               {"metadata key 'general.name' twice", "expected each key once"});
}

TEST_F(GgufTest, RowLengthNotAMultipleOfTheBlock) {
  TestTensor t{"blk.0.ffn_up.weight", {48, 2}, 3, pattern_bytes(60, 1)};
  expect_error("rows.gguf", build_gguf(3, {}, {t}).bytes,
               {"tensor 'blk.0.ffn_up.weight'", "row length (ne[0]) 48",
                "expected a multiple of the q4_1 block size 32"});
}

TEST_F(GgufTest, BadLayoutValues) {
  KV bad_align = {{"general.alignment", GgufValue(uint32_t{24})}};
  expect_error("align24.gguf", build_gguf(3, bad_align, {}).bytes,
               {"key 'general.alignment'", "is 24, expected a power of two"});
  KV string_align = {{"general.alignment", GgufValue(std::string("32"))}};
  expect_error("align_str.gguf", build_gguf(3, string_align, {}).bytes,
               {"key 'general.alignment'", "is a string, expected an integer"});

  Layout l = small_valid_file();
  uint64_t misaligned = 8;
  std::memcpy(l.bytes.data() + l.infos_end - 8, &misaligned, 8);  // b.weight's offset
  expect_error("misaligned.gguf", l.bytes,
               {"tensor 'b.weight'", "data offset 8", "expected a multiple of the alignment 32"});

  // b.weight's offset moved into a.weight's 40 bytes (aligned, inside the file): refused.
  Layout overlap = small_valid_file();
  uint64_t inside_a = 32;
  std::memcpy(overlap.bytes.data() + overlap.infos_end - 8, &inside_a, 8);
  expect_error("overlap.gguf", overlap.bytes,
               {"tensor 'a.weight' (q4_1 [2, 32], 40 bytes at data offset 0) runs into tensor "
                "'b.weight' at data offset 32",
                "the tensor table is corrupt"});

  Layout five = build_gguf(3, {}, {{"t5", {1, 1, 1, 1, 1}, 0, pattern_bytes(4, 1)}});
  expect_error("dims.gguf", five.bytes, {"tensor 't5'", "has 5 dims, expected at most 4"});

  Layout vt = build_gguf(3, {{"k", GgufValue(uint32_t{1})}}, {});
  uint32_t type13 = 13;
  std::memcpy(vt.bytes.data() + vt.header_end + 8 + 1, &type13, 4);
  expect_error("vtype.gguf", vt.bytes,
               {"key 'k'", "value type 13", "expected a GGUF value type 0..12"});
}

TEST_F(GgufTest, MissingFile) {
  std::string path = (dir_ / "absent.gguf").string();
  try {
    GgufFile::open(path);
    ADD_FAILURE() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open " + path), std::string::npos) << e.what();
  }
}

// ---- the real default model (scripts/fetch_models.sh) -----------------------------------------

TEST(GgufRealModel, SmolLM2_135M_Instruct_Q4_1) {
  std::string path = std::string(LOOM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path))
    GTEST_SKIP() << "SKIPPED: " << path
                 << " is absent; run scripts/fetch_models.sh to test the real model";
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 1536);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 9);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(f.get_int("llama.context_length"), 8192);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 64);
  EXPECT_EQ(f.get_int("llama.vocab_size"), 49152);
  EXPECT_EQ(f.get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_NEAR(f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-12);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 49152u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(tokens[1], "<|im_start|>");
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 2);

  ASSERT_EQ(f.tensors().size(),
            272u);  // 9 per block x 30 + token_embd + output_norm; output is tied
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  const GgufTensorInfo& embd = f.tensor_info("token_embd.weight");
  EXPECT_EQ(embd.shape, (Shape{49152, 576}));
  EXPECT_EQ(embd.dtype, DType::Q8_0);
  EXPECT_EQ(f.tensor_info("blk.0.attn_q.weight").shape, (Shape{576, 576}));
  EXPECT_EQ(f.tensor_info("blk.0.attn_k.weight").shape, (Shape{192, 576}));
  EXPECT_EQ(f.tensor_info("blk.0.ffn_down.weight").shape, (Shape{576, 1536}));
  EXPECT_EQ(f.tensor_info("blk.29.ffn_gate.weight").shape, (Shape{1536, 576}));
  EXPECT_EQ(f.tensor_info("blk.29.ffn_gate.weight").dtype, DType::Q4_1);

  GgufModelSummary s = summarize_gguf(f);
  using C = std::pair<std::string, int64_t>;
  EXPECT_EQ(s.tensor_type_counts, (std::vector<C>{{"f32", 61}, {"q8_0", 1}, {"q4_1", 210}}));
  EXPECT_EQ(s.parameter_count, 134515008);

  Tensor norm = f.tensor("blk.0.attn_norm.weight");
  EXPECT_EQ(norm.shape(), (Shape{576}));
  std::vector<float> w = norm.to_vector();
  for (float x : w) ASSERT_TRUE(std::isfinite(x));
  EXPECT_GT(*std::max_element(w.begin(), w.end()), 0.0f);
}

}  // namespace
}  // namespace loom
