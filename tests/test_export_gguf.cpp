// GGUF exports (export/): the writer (every metadata type, every tensor type, alignment, atomic
// writes under injected failures), merged model export (weights equal the merge formula computed
// here in double, types follow llama-quantize's rules, metadata carried over, the re-read model's
// logits equal the adapter model's), llama.cpp LoRA adapters (layout, alpha / rsLoRA /
// alpha_pattern folding, q/k row order, round trip into a LoraModel, DoRA refused) -- all on tiny
// models written by the writer and read back by layers/gguf.h. The q/k row permutation is checked
// independently of our own code: a llama model with Hugging Face row order and rotate-half rope
// must compute the same logits as the permuted model with interleaved rope.
// llama.cpp and the gguf package check the same files in tests/interop/test_export_gguf.py.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "autograd/quant/quant.h"
#include "autograd/tape.h"
#include "export/atomic_file.h"
#include "export/export_dir.h"
#include "export/gguf_adapter_read.h"
#include "export/gguf_export.h"
#include "export/gguf_hf_metadata.h"
#include "export/gguf_qk_order.h"
#include "export/gguf_writer.h"
#include "layers/gguf.h"
#include "layers/llama.h"
#include "layers/tokenizer.h"
#include "lora/lora_model.h"
#include "lora/random.h"
#include "tests/test_helpers.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// A fresh, empty folder per test.

std::vector<float> normal_values(int64_t n, uint64_t seed, double scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(scale * lora_normal(seed, i));
  return v;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data_bytes());
  return {p, p + storage_bytes(t.dtype(), t.numel())};
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// ---- tiny llama models, written by the writer ----------------------------------------------

struct TinyDims {
  int64_t vocab = 64, hidden = 256, ffn = 512, layers = 2, heads = 4, kv_heads = 2;
  DType weight_type = DType::Q4_1;
  DType embd_type = DType::Q8_0;
  bool tied = true;
};

// Writes a llama GGUF of random weights (q/k already in llama.cpp's order, as any GGUF llama),
// with tokenizer keys (not used by the model) and keys the export must drop.
void write_tiny_llama(const std::string& path, const TinyDims& d) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.type", "model");
  w.set_string("general.name", "tiny test llama");
  w.set_u32("llama.block_count", static_cast<uint32_t>(d.layers));
  w.set_u32("llama.context_length", 256);
  w.set_u32("llama.embedding_length", static_cast<uint32_t>(d.hidden));
  w.set_u32("llama.feed_forward_length", static_cast<uint32_t>(d.ffn));
  w.set_u32("llama.attention.head_count", static_cast<uint32_t>(d.heads));
  w.set_u32("llama.attention.head_count_kv", static_cast<uint32_t>(d.kv_heads));
  w.set_f32("llama.rope.freq_base", 10000.0f);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(d.hidden / d.heads));
  w.set_u32("llama.vocab_size", static_cast<uint32_t>(d.vocab));
  w.set_u32("general.file_type", llama_file_type(d.weight_type));
  w.set_string("tokenizer.ggml.model", "gpt2");
  GgufArray tokens{GgufType::STRING, {}};
  for (int64_t i = 0; i < d.vocab; ++i) tokens.items.emplace_back(fmt::format("tok{}", i));
  w.set("tokenizer.ggml.tokens", GgufValue(tokens));
  w.set_string("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m }}{% endfor %}");
  w.set_string("quantize.imatrix.file", "imatrix.dat");  // describes the source file only
  w.set_u32("general.quantization_version", 2);

  const int64_t D = d.hidden, head_dim = d.hidden / d.heads, kv = d.kv_heads * head_dim;
  uint64_t seed = 100;
  w.add_tensor_values("token_embd.weight", {d.vocab, D}, d.embd_type,
                      normal_values(d.vocab * D, seed++, 0.2));  // logits of a few units
  w.add_tensor_values("rope_freqs.weight", {head_dim / 2}, DType::F32,
                      std::vector<float>(static_cast<size_t>(head_dim / 2), 1.0f));
  for (int64_t l = 0; l < d.layers; ++l) {
    const auto norm = [&](const std::string& name) {
      std::vector<float> v = normal_values(D, seed++, 0.1);
      for (float& x : v) x += 1.0f;
      w.add_tensor_values(fmt::format("blk.{}.{}", l, name), {D}, DType::F32, v);
    };
    const auto weight = [&](const std::string& name, int64_t out, int64_t in) {
      w.add_tensor_values(fmt::format("blk.{}.{}.weight", l, name), {out, in}, d.weight_type,
                          normal_values(out * in, seed++, 1.5 / std::sqrt(double(in))));
    };
    norm("attn_norm.weight");
    weight("attn_q", D, D);
    weight("attn_k", kv, D);
    weight("attn_v", kv, D);
    weight("attn_output", D, D);
    norm("ffn_norm.weight");
    weight("ffn_gate", d.ffn, D);
    weight("ffn_up", d.ffn, D);
    weight("ffn_down", D, d.ffn);
  }
  std::vector<float> out_norm(static_cast<size_t>(D), 1.0f);
  w.add_tensor_values("output_norm.weight", {D}, DType::F32, out_norm);
  if (!d.tied)
    w.add_tensor_values("output.weight", {d.vocab, D}, d.weight_type,
                        normal_values(d.vocab * D, seed++, 1.0 / std::sqrt(double(D))));
  w.write(path);
}

// Random non-zero A and B for every module (B starts at zero after attach).
void randomize_adapters(LoraModel& lora, uint64_t seed) {
  uint64_t k = seed;
  for (const LoraParameter& p : lora.parameters())
    lora.set_parameter(p.name, normal_values(p.tensor.numel(), k++, 0.05));
}

LoraConfig all_linear(int64_t rank, double alpha) {
  LoraConfig c;
  c.rank = rank;
  c.alpha = alpha;
  c.targets.modules = {"all-linear"};
  c.seed = 3;
  return c;
}

const std::vector<int32_t> kIds = {1, 5, 9, 17, 33, 2, 60, 7, 11, 42, 3, 8, 19, 23, 31, 4};

std::vector<float> logits_of(const LlamaModel& model, const std::vector<int32_t>& ids = kIds) {
  NoGradGuard no_grad;
  TokenBatch b;
  b.ids = ids;
  b.seq_len = static_cast<int64_t>(ids.size());
  ForwardOptions o;
  o.checkpoint_blocks = false;
  o.precision = Precision::F32;
  return model.logits(model.forward_hidden(b, o), Precision::F32).to_vector();
}

// W + s B A in double, the merge formula written out independently of lora/merge.cpp.
std::vector<float> merge_formula(const LoraAdapter& a, const std::vector<float>& w) {
  const int64_t out = a.out_features(), in = a.in_features(), r = a.rank();
  const std::vector<float> A = a.lora_a().to_vector(), B = a.lora_b().to_vector();
  std::vector<float> m(static_cast<size_t>(out * in));
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double s = 0;
      for (int64_t k = 0; k < r; ++k) s += double(B[i * r + k]) * A[k * in + j];
      m[i * in + j] = static_cast<float>(w[i * in + j] + a.scale() * s);
    }
  return m;
}

// ---- writer ---------------------------------------------------------------------------------

TEST(GgufWriter, MetadataOfEveryTypeRoundTrips) {
  TempDir dir;
  GgufWriter w;
  w.set("u8", GgufValue(uint8_t{200}));
  w.set("i8", GgufValue(int8_t{-100}));
  w.set("u16", GgufValue(uint16_t{60000}));
  w.set("i16", GgufValue(int16_t{-30000}));
  w.set("u32", GgufValue(uint32_t{4000000000u}));
  w.set("i32", GgufValue(int32_t{-2000000000}));
  w.set("f32", GgufValue(1.25e-7f));
  w.set("bool", GgufValue(true));
  w.set("string", GgufValue(std::string("héllo \"gguf\"\n")));
  w.set("empty", GgufValue(std::string()));
  w.set("u64", GgufValue(uint64_t{18000000000000000000ull}));
  w.set("i64", GgufValue(int64_t{-9000000000000000000ll}));
  w.set("f64", GgufValue(3.141592653589793));
  w.set("strings", GgufValue(GgufArray{GgufType::STRING,
                                       {GgufValue(std::string("a")), GgufValue(std::string("")),
                                        GgufValue(std::string("Ġthe"))}}));
  w.set("ints",
        GgufValue(GgufArray{GgufType::INT32, {GgufValue(int32_t{3}), GgufValue(int32_t{-1})}}));
  w.set("empty_array", GgufValue(GgufArray{GgufType::FLOAT32, {}}));
  w.set("nested",
        GgufValue(GgufArray{
            GgufType::ARRAY,
            {GgufValue(GgufArray{GgufType::UINT8, {GgufValue(uint8_t{1})}}),
             GgufValue(GgufArray{GgufType::BOOL, {GgufValue(false), GgufValue(true)}})}}));
  w.set_u32("u32", 7);  // replaced in place, keeps its position
  w.add_tensor_values("t", {2, 32}, DType::F32, normal_values(64, 1, 1.0));
  w.write(dir / "m.gguf");

  const GgufFile f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(f.version(), 3u);
  ASSERT_EQ(f.metadata().size(), w.metadata().size());
  for (size_t i = 0; i < f.metadata().size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, w.metadata()[i].first);
    EXPECT_TRUE(f.metadata()[i].second == w.metadata()[i].second) << f.metadata()[i].first;
  }
  EXPECT_EQ(f.get_int("u32"), 7);
  EXPECT_EQ(f.metadata()[4].first, "u32");
}

TEST(GgufWriter, TensorsOfEveryTypeAreStoredAsTheQuantizerMakesThem) {
  TempDir dir;
  const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0,
                         DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K};
  GgufWriter w;
  std::vector<std::vector<float>> inputs;
  for (DType t : types) {
    inputs.push_back(normal_values(3 * 512, 10 + static_cast<uint64_t>(t), 2.0));
    w.add_tensor_values(fmt::format("w.{}", dtype_name(t)), {3, 512}, t, inputs.back());
  }
  w.add_tensor_values("vector", {7}, DType::F32, normal_values(7, 2, 1.0));  // odd size: padding
  w.write(dir / "types.gguf");

  const GgufFile f = GgufFile::open(dir / "types.gguf");
  ASSERT_EQ(f.tensors().size(), std::size(types) + 1);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  for (size_t i = 0; i < std::size(types); ++i) {
    const GgufTensorInfo& info = f.tensors()[i];
    SCOPED_TRACE(info.name);
    EXPECT_EQ(info.dtype, types[i]);
    EXPECT_EQ(info.ggml_type, dtype_info(types[i]).ggml_type);
    EXPECT_EQ(info.shape, (Shape{3, 512}));
    EXPECT_EQ(info.ne, (std::vector<int64_t>{512, 3}));
    EXPECT_EQ(info.offset % 32, 0u);
    EXPECT_EQ(bytes_of(f.tensor(info)), quantize(types[i], inputs[i].data(), 3 * 512));
    // and the values are the input, up to the format's rounding
    const float tolerance = types[i] == DType::F32 ? 0.0f : is_quantized(types[i]) ? 1.2f : 0.05f;
    EXPECT_LE(max_abs_diff(f.tensor(info).to_vector(), inputs[i]), tolerance);
  }
  EXPECT_EQ(f.tensor("vector").to_vector(), normal_values(7, 2, 1.0));
  EXPECT_EQ(f.file_size() % 32, 0u);  // each tensor padded, the last too
}

TEST(GgufWriter, AlignmentComesFromGeneralAlignment) {
  TempDir dir;
  GgufWriter w;
  w.set_u32("general.alignment", 256);
  w.add_tensor_values("a", {5}, DType::F32, normal_values(5, 1, 1.0));
  w.add_tensor_values("b", {2, 32}, DType::Q8_0, normal_values(64, 2, 1.0));
  w.write(dir / "a.gguf");
  const GgufFile f = GgufFile::open(dir / "a.gguf");
  EXPECT_EQ(f.alignment(), 256u);
  EXPECT_EQ(f.data_offset() % 256, 0u);
  EXPECT_EQ(f.tensor_info("b").offset, 256u);

  GgufWriter bad;
  bad.set_u32("general.alignment", 48);
  EXPECT_THROW(bad.alignment(), Error);
}

TEST(GgufWriter, RefusesWhatGgufCannotHold) {
  GgufWriter w;
  const auto source = [] { return std::vector<uint8_t>(); };
  EXPECT_THROW(w.add_tensor(std::string(64, 'x'), {32}, DType::F32, source), Error);
  EXPECT_THROW(w.add_tensor("q", {2, 48}, DType::Q4_K, source), Error);  // row not 256-aligned
  EXPECT_THROW(w.add_tensor("nf4", {2, 64}, DType::NF4, source), Error);
  EXPECT_THROW(w.add_tensor("scalar", {}, DType::F32, source), Error);
  w.add_tensor("x", {32}, DType::F32, source);
  EXPECT_THROW(w.add_tensor("x", {32}, DType::F32, source), Error);
  try {
    w.set("mixed", GgufValue(GgufArray{GgufType::INT32, {GgufValue(uint8_t{1})}}));
    TempDir dir;
    w.write(dir / "mixed.gguf");
    FAIL() << "an array with a wrong item type was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'mixed'"), std::string::npos) << e.what();
  }
}

// ---- atomic writes ----------------------------------------------------------------------------

GgufWriter writer_with_failing_source(int64_t fail_at_tensor) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  for (int64_t i = 0; i < 4; ++i)
    w.add_tensor(fmt::format("t{}", i), {64, 256}, DType::F32, [i, fail_at_tensor] {
      if (i == fail_at_tensor) throw Error("injected failure in a tensor source");
      return std::vector<uint8_t>(64 * 256 * 4, 0x3c);
    });
  return w;
}

TEST(GgufWriter, AFailingTensorSourceLeavesNoFile) {
  TempDir dir;
  const std::string path = dir / "out.gguf";
  EXPECT_THROW(writer_with_failing_source(2).write(path), Error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  // An older file under the final name stays as it was.
  writer_with_failing_source(-1).write(path);
  const auto size = fs::file_size(path);
  EXPECT_THROW(writer_with_failing_source(3).write(path), Error);
  EXPECT_EQ(fs::file_size(path), size);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(GgufFile::open(path).tensors().size(), 4u);
}

TEST(GgufWriter, ASourceOfTheWrongSizeLeavesNoFile) {
  TempDir dir;
  GgufWriter w;
  w.add_tensor("t", {4, 32}, DType::Q8_0, [] { return std::vector<uint8_t>(10); });
  try {
    w.write(dir / "out.gguf");
    FAIL() << "a short tensor was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gave 10 bytes, expected 136"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(GgufWriter, AnUnwritableFolderIsAClearError) {
  TempDir dir;
  std::ofstream(dir / "file") << "in the way";
  try {
    writer_with_failing_source(-1).write(dir / "file/sub/out.gguf");
    FAIL() << "wrote below a regular file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create the folder"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "file/sub/out.gguf"));
}

// A write error part-way (the file size limit stands in for a full disk: write() fails with
// EFBIG once the file reaches it) leaves neither the file nor its temporary.
TEST(GgufWriter, AWriteErrorMidFileLeavesNoFile) {
  TempDir dir;
  const std::string path = dir / "out.gguf";
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  void (*old_handler)(int) = ::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 100000;  // the file is ~256 KB
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    writer_with_failing_source(-1).write(path);
  } catch (const Error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("disk full"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(AtomicFileWriter, WithoutCommitNothingRemains) {
  TempDir dir;
  {
    AtomicFileWriter out(dir / "x.bin");
    out.write("abc", 3);
    EXPECT_TRUE(fs::exists(dir / "x.bin.tmp"));
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
  AtomicFileWriter out(dir / "x.bin");
  out.write("abc", 3);
  out.pad_to(8);
  out.commit();
  EXPECT_EQ(fs::file_size(dir / "x.bin"), 8u);
  EXPECT_FALSE(fs::exists(dir / "x.bin.tmp"));
}

// Ctrl-C under an export's guard (autograd/interrupt.h): the next write throws Interrupted and
// the temporary goes with the writer. Outside such a guard, or under the training loop's (which
// only asks the loop to stop after its step), writes go on.
TEST(AtomicFileWriter, CtrlCUnderAnExportGuardRemovesTheTemporary) {
  std::signal(SIGINT, SIG_DFL);  // as at a terminal (ctest's background jobs start it ignored)
  TempDir dir;
  const std::string path = dir / "big.gguf";
  try {
    const InterruptGuard guard(InterruptMode::Cancel);
    AtomicFileWriter out(path);
    out.write("abc", 3);
    std::raise(SIGINT);
    out.write("def", 3);
    FAIL() << "a write after Ctrl-C went on";
  } catch (const Interrupted& e) {
    EXPECT_EQ(e.signal(), SIGINT);
    EXPECT_NE(std::string(e.what()).find("interrupted by SIGINT (Ctrl-C)"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(fs::is_empty(dir.path())) << "a temporary file was left behind";
  EXPECT_EQ(std::signal(SIGINT, SIG_DFL), SIG_DFL) << "the guard did not restore the handler";
  {
    const InterruptGuard guard(InterruptMode::FinishStep);
    AtomicFileWriter out(path);
    std::raise(SIGINT);
    EXPECT_EQ(guard.signal(), SIGINT);
    out.write("abc", 3);  // the training loop polls the signal itself; a checkpoint is saved
    out.commit();
  }
  EXPECT_EQ(fs::file_size(path), 3u);
  EXPECT_NO_THROW(throw_if_interrupted());  // no guard: nothing to cancel
}

// A staging folder a dead process left (killed, or a second Ctrl-C) is removed by the next
// export of the same name; one of a live process is not touched.
TEST(StagingDir, LeftoversOfProcessesThatAreGoneAreRemoved) {
  TempDir dir;
  const pid_t child = ::fork();
  if (child == 0) std::_Exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);  // its pid now names no process
  const fs::path dead = dir / fmt::format(".merged.partial-{}", child);
  const fs::path dead_old = dir / fmt::format(".merged.old-{}", child);
  const fs::path live = dir / fmt::format(".merged.partial-{}", ::getppid());
  const fs::path other = dir / fmt::format(".peft.partial-{}", child);
  for (const fs::path& p : {dead, dead_old, live, other}) {
    fs::create_directories(p);
    std::ofstream(p / "model.safetensors") << "half";
  }
  StagingDir stage(dir / "merged", false);
  stage.write_text("config.json", "{}");
  stage.commit();
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(dead_old));
  EXPECT_TRUE(fs::exists(live)) << "the staging folder of a running process was removed";
  EXPECT_TRUE(fs::exists(other)) << "another export's folder was removed";
  EXPECT_TRUE(fs::exists(dir / "merged/config.json"));
}

// ---- q/k row order ----------------------------------------------------------------------------

TEST(GgufQkOrder, PermutationMatchesLlamaCppConvention) {
  // One head of 8 rows: HF rows (0..3 | 4..7) are the two rotate-half halves; llama.cpp
  // interleaves them: GGUF row 2j + s = HF row s * 4 + j.
  std::vector<float> hf(8 * 2);
  for (int64_t r = 0; r < 8; ++r) hf[r * 2] = hf[r * 2 + 1] = static_cast<float>(r);
  const std::vector<float> gguf = reorder_qk_rows(hf, 8, 2, 1, true);
  const float expected[] = {0, 4, 1, 5, 2, 6, 3, 7};
  for (int64_t r = 0; r < 8; ++r) EXPECT_EQ(gguf[r * 2], expected[r]);
  EXPECT_EQ(reorder_qk_rows(gguf, 8, 2, 1, false), hf);
}

// The same weights in Hugging Face order with rotate-half rope give the logits the GGUF-ordered
// weights give with interleaved rope: an independent check of the permutation (the two ropes
// are separate code in autograd/ops).
LlamaModel hf_order_copy(const LlamaModel& gguf_model) {
  ModelConfig c = gguf_model.config();
  c.rope.style = RopeStyle::Half;
  LlamaWeights w = gguf_model.weights();
  w.rope_freq_factors.clear();
  for (LlamaBlock& b : w.blocks) {
    for (Linear* p : b.projections()) {
      p->adapter.reset();
      if (p->kind != Projection::Q && p->kind != Projection::K) continue;
      const int64_t heads = p->kind == Projection::Q ? c.n_heads : c.n_kv_heads;
      const std::vector<float> v =
          reorder_qk_rows(tensor_values_f32(p->weight), p->out_features(), p->in_features(), heads,
                          /*to_gguf=*/false);
      p->weight = Tensor::from_vector(p->weight.shape(), v).set_name(p->weight.name());
    }
  }
  return LlamaModel(c, std::move(w));
}

TEST(GgufQkOrder, HfOrderWithHalfRopeEqualsGgufOrderWithInterleavedRope) {
  TempDir dir;
  TinyDims d;
  d.weight_type = DType::F32;
  write_tiny_llama(dir / "tiny.gguf", d);
  const LlamaModel gguf_model = LlamaModel::from_gguf(dir / "tiny.gguf");
  const LlamaModel hf_model = hf_order_copy(gguf_model);
  EXPECT_LT(max_abs_diff(logits_of(gguf_model), logits_of(hf_model)), 2e-4f);
  EXPECT_TRUE(qk_rows_need_reorder(hf_model.config(), Projection::Q));
  EXPECT_FALSE(qk_rows_need_reorder(gguf_model.config(), Projection::Q));
  EXPECT_FALSE(qk_rows_need_reorder(hf_model.config(), Projection::V));
}

// ---- merged model ---------------------------------------------------------------------------

TEST(GgufMergedExport, TypesFollowLlamaQuantize) {
  // 1-D and norms stay f32
  EXPECT_EQ(merged_tensor_type("blk.0.attn_norm.weight", {576}, DType::Q4_K, true), DType::F32);
  EXPECT_EQ(merged_tensor_type("blk.0.attn_q.bias", {576}, DType::F16, true), DType::F32);
  // the tied embedding is the output projection: q6_k when its rows fit 256, else q8_0
  EXPECT_EQ(merged_tensor_type("token_embd.weight", {49152, 576}, DType::Q4_0, true), DType::Q8_0);
  EXPECT_EQ(merged_tensor_type("token_embd.weight", {32000, 4096}, DType::Q4_0, true), DType::Q6_K);
  EXPECT_EQ(merged_tensor_type("token_embd.weight", {32000, 4096}, DType::Q8_0, true), DType::Q8_0);
  EXPECT_EQ(merged_tensor_type("token_embd.weight", {32000, 4096}, DType::Q4_0, false),
            DType::Q4_0);
  EXPECT_EQ(merged_tensor_type("output.weight", {32000, 4096}, DType::Q4_K, false), DType::Q6_K);
  EXPECT_EQ(merged_tensor_type("token_embd.weight", {32000, 4096}, DType::F16, true), DType::F16);
  // fallbacks for rows that do not fit the block
  EXPECT_EQ(merged_tensor_type("blk.0.attn_q.weight", {576, 576}, DType::Q4_K, true), DType::Q4_1);
  EXPECT_EQ(merged_tensor_type("blk.0.ffn_down.weight", {576, 1536}, DType::Q4_K, true),
            DType::Q4_K);
  EXPECT_EQ(merged_tensor_type("blk.0.attn_q.weight", {576, 576}, DType::Q6_K, true), DType::Q8_0);
  EXPECT_EQ(merged_tensor_type("blk.0.attn_q.weight", {40, 40}, DType::Q8_0, true), DType::F16);
  EXPECT_EQ(merged_tensor_type("blk.0.attn_q.weight", {576, 576}, DType::BF16, true), DType::BF16);
}

TEST(GgufMergedExport, F32MergeEqualsTheMergeFormulaAndTheAdapterModel) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  const GgufFile source = GgufFile::open(dir / "base.gguf");
  LlamaModel model = LlamaModel::from_gguf(source);
  LoraModel lora(model, all_linear(4, 8.0));
  randomize_adapters(lora, 77);
  lora.set_training(false);
  const std::vector<float> adapter_logits = logits_of(model);

  MergedGgufOptions o;
  o.type = DType::F32;
  const GgufExportResult r = export_merged_gguf(model, &lora, source, dir / "merged.gguf", o);
  EXPECT_EQ(r.merged_modules, 14);
  EXPECT_EQ(r.tensors, static_cast<int64_t>(source.tensors().size()));
  const GgufFile merged = GgufFile::open(dir / "merged.gguf");
  EXPECT_EQ(static_cast<uint64_t>(fs::file_size(dir / "merged.gguf")), r.bytes);

  for (const LoraModule& m : lora.modules()) {
    SCOPED_TRACE(m.linear->hf_name);
    const Tensor t = merged.tensor(m.linear->gguf_name + ".weight");
    EXPECT_EQ(t.dtype(), DType::F32);
    const std::vector<float> expected =
        merge_formula(*m.adapter, source.tensor(m.linear->gguf_name + ".weight").to_vector());
    EXPECT_LE(max_abs_diff(t.to_vector(), expected), 1e-6f);
  }
  // Everything else: the source's values (the tied Q8_0 embedding re-typed to f32 exactly).
  for (const char* name : {"token_embd.weight", "blk.1.ffn_norm.weight", "rope_freqs.weight"})
    EXPECT_EQ(merged.tensor(name).to_vector(), source.tensor(name).to_vector()) << name;
  // Metadata: carried over in order, file type set, the imatrix key dropped.
  EXPECT_EQ(merged.get_int("general.file_type"), 0);
  EXPECT_FALSE(merged.has("quantize.imatrix.file"));
  EXPECT_EQ(merged.get_string("tokenizer.chat_template"),
            source.get_string("tokenizer.chat_template"));
  EXPECT_EQ(merged.get_string_array("tokenizer.ggml.tokens"),
            source.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(merged.metadata().front().first, "general.architecture");

  const LlamaModel reread = LlamaModel::from_gguf(merged);
  EXPECT_LT(max_abs_diff(logits_of(reread), adapter_logits), 2e-4f);
}

LoraConfig with_head(int64_t rank, double alpha) {
  LoraConfig c = all_linear(rank, alpha);
  c.targets.modules = {"q_proj", "v_proj", "lm_head"};
  return c;
}

// A tied model (SmolLM2's layout) with an adapted LM head: the merged file gets an output.weight
// of its own (W_embd + s B A), the embedding is written unchanged, and llama.cpp's rule for the
// output projection now applies to output.weight.
TEST(GgufMergedExport, AnAdaptedLmHeadOfATiedModelGetsItsOwnOutputWeight) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  const GgufFile source = GgufFile::open(dir / "base.gguf");
  ASSERT_EQ(source.find_tensor("output.weight"), nullptr);
  LlamaModel model = LlamaModel::from_gguf(source);
  ASSERT_TRUE(model.output_tied());
  LoraModel lora(model, with_head(4, 8.0));
  ASSERT_NE(lora.head_module(), nullptr);
  randomize_adapters(lora, 78);
  lora.set_training(false);
  const std::vector<float> adapter_logits = logits_of(model);
  const std::vector<float> base_logits = logits_of(LlamaModel::from_gguf(source));

  MergedGgufOptions o;
  o.type = DType::F32;
  const GgufExportResult r = export_merged_gguf(model, &lora, source, dir / "merged.gguf", o);
  EXPECT_EQ(r.merged_modules, 5);  // q and v of two blocks, the LM head
  EXPECT_EQ(r.tensors, static_cast<int64_t>(source.tensors().size()) + 1);
  const GgufFile merged = GgufFile::open(dir / "merged.gguf");
  EXPECT_EQ(merged.tensor("token_embd.weight").to_vector(),
            source.tensor("token_embd.weight").to_vector());
  const std::vector<float> head =
      merge_formula(*lora.head_module()->adapter, source.tensor("token_embd.weight").to_vector());
  EXPECT_LE(max_abs_diff(merged.tensor("output.weight").to_vector(), head), 1e-6f);
  const LlamaModel reread = LlamaModel::from_gguf(merged);
  EXPECT_FALSE(reread.output_tied());
  EXPECT_LT(max_abs_diff(logits_of(reread), adapter_logits), 2e-4f);
  EXPECT_GT(max_abs_diff(base_logits, adapter_logits), 0.05f);  // the adapters act

  // q4_k: the output projection gets llama-quantize's q6_k; the embedding, no longer the
  // output, takes the plain type (tied, it would be q6_k too).
  o.type = DType::Q4_K;
  export_merged_gguf(model, &lora, source, dir / "merged_q4k.gguf", o);
  const GgufFile q = GgufFile::open(dir / "merged_q4k.gguf");
  EXPECT_EQ(q.tensor_info("output.weight").dtype, DType::Q6_K);
  EXPECT_EQ(q.tensor_info("token_embd.weight").dtype, DType::Q4_K);

  // A llama.cpp adapter cannot hold it: llama.cpp's tied model has no output.weight.
  try {
    export_gguf_adapter(model, lora, dir / "a.gguf");
    ADD_FAILURE() << "a tied LM head adapter was written as a GGUF adapter";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no output.weight"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "a.gguf"));
}

// An untied model: the LM head adapter goes into the GGUF adapter as output.weight.lora_a/b
// (llama.cpp's name) and reads back.
TEST(GgufAdapterExport, AnLmHeadAdapterOfAnUntiedModelRoundTrips) {
  TempDir dir;
  TinyDims d;
  d.tied = false;
  write_tiny_llama(dir / "base.gguf", d);
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  LoraConfig c = with_head(4, 8.0);
  c.rank_pattern = {{"lm_head", 2}};
  LoraModel lora(model, c);
  randomize_adapters(lora, 79);
  lora.set_training(false);
  const std::vector<float> expected = logits_of(model);
  export_gguf_adapter(model, lora, dir / "a.gguf");
  const GgufFile f = GgufFile::open(dir / "a.gguf");
  EXPECT_EQ(f.tensor_info("output.weight.lora_a").shape, (Shape{2, d.hidden}));
  EXPECT_EQ(f.tensor_info("output.weight.lora_b").shape, (Shape{d.vocab, 2}));
  lora.detach();

  LlamaModel fresh = LlamaModel::from_gguf(dir / "base.gguf");
  GgufAdapterContents contents;
  LoraModel back = load_gguf_adapter(dir / "a.gguf", fresh, &contents);
  EXPECT_EQ(contents.config.targets.modules,
            (std::vector<std::string>{"q_proj", "v_proj", "lm_head"}));
  ASSERT_NE(back.head_module(), nullptr);
  EXPECT_EQ(back.head_module()->adapter->rank(), 2);
  EXPECT_LT(max_abs_diff(logits_of(fresh), expected), 1e-5f);
  back.detach();

  // The same file on a tied base: refused, naming why.
  write_tiny_llama(dir / "tied.gguf", TinyDims{});
  LlamaModel tied = LlamaModel::from_gguf(dir / "tied.gguf");
  try {
    load_gguf_adapter(dir / "a.gguf", tied);
    ADD_FAILURE() << "an output.weight adapter was applied to a tied model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no output.weight"), std::string::npos) << e.what();
  }
}

TEST(GgufMergedExport, QuantizedTypesStoreTheQuantizedMerge) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  const GgufFile source = GgufFile::open(dir / "base.gguf");
  LlamaModel model = LlamaModel::from_gguf(source);
  LoraModel lora(model, all_linear(4, 8.0));
  randomize_adapters(lora, 5);
  lora.set_training(false);
  const std::vector<float> adapter_logits = logits_of(model);
  float logit_scale = 0;
  for (float x : adapter_logits) logit_scale = std::max(logit_scale, std::fabs(x));
  std::map<DType, float> rel;
  for (DType type : {DType::F16, DType::BF16, DType::Q8_0, DType::Q6_K, DType::Q4_K, DType::Q4_0}) {
    SCOPED_TRACE(dtype_name(type));
    MergedGgufOptions o;
    o.type = type;
    const std::string path = dir / fmt::format("merged_{}.gguf", dtype_name(type));
    export_merged_gguf(model, &lora, source, path, o);
    const GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.get_int("general.file_type"), llama_file_type(type));
    const LoraModule& q = lora.modules().front();
    const Tensor t = f.tensor(q.linear->gguf_name + ".weight");
    ASSERT_EQ(t.dtype(), type);
    const std::vector<float> merged = merged_weight_values(*q.linear, *q.adapter);
    EXPECT_EQ(bytes_of(t), quantize(type, merged.data(), static_cast<int64_t>(merged.size())));
    EXPECT_EQ(f.tensor("blk.0.attn_norm.weight").dtype(), DType::F32);
    // The tied embedding (rows of 256): q6_k for the 4/6-bit types, q8_0 for q8_0, else as asked.
    const DType embd = f.tensor("token_embd.weight").dtype();
    EXPECT_EQ(embd, !is_quantized(type) ? type : type == DType::Q8_0 ? DType::Q8_0 : DType::Q6_K);
    // The re-read model runs and moves from the adapter model by the format's rounding.
    rel[type] = max_abs_diff(logits_of(LlamaModel::from_gguf(f)), adapter_logits) / logit_scale;
    std::cout << "[ merged ] " << dtype_name(type) << ": max logit diff vs the adapter model "
              << rel[type] * 100 << "% of the largest logit " << logit_scale << "\n";
  }
  EXPECT_LT(rel[DType::F16], 0.002f);  // f16 keeps 11 bits of every weight
  EXPECT_LT(rel[DType::BF16], 0.02f);  // bf16 keeps 8
  EXPECT_LT(rel[DType::Q8_0], 0.05f);
  EXPECT_LT(rel[DType::F16], rel[DType::Q8_0]);
  EXPECT_LT(rel[DType::Q8_0], rel[DType::Q4_0]);
  EXPECT_LT(rel[DType::Q6_K], rel[DType::Q4_K]);
}

TEST(GgufMergedExport, SameTypeWeightsAreCopiedAndFallbacksReported) {
  TempDir dir;
  TinyDims d;
  d.hidden = 96;  // rows of 96: no K-quant fits
  d.ffn = 128;
  d.heads = 3;
  d.kv_heads = 1;
  d.weight_type = DType::Q8_0;
  write_tiny_llama(dir / "base.gguf", d);
  const GgufFile source = GgufFile::open(dir / "base.gguf");
  LlamaModel model = LlamaModel::from_gguf(source);
  LoraConfig c = all_linear(2, 4.0);
  c.targets.modules = {"q_proj"};
  LoraModel lora(model, c);
  randomize_adapters(lora, 9);

  MergedGgufOptions o;
  o.type = DType::Q8_0;
  export_merged_gguf(model, &lora, source, dir / "q8.gguf", o);
  const GgufFile q8 = GgufFile::open(dir / "q8.gguf");
  // Not adapted and already q8_0: the very bytes of the source.
  EXPECT_EQ(bytes_of(q8.tensor("blk.0.attn_v.weight")),
            bytes_of(source.tensor("blk.0.attn_v.weight")));
  EXPECT_NE(bytes_of(q8.tensor("blk.0.attn_q.weight")),
            bytes_of(source.tensor("blk.0.attn_q.weight")));

  o.type = DType::Q4_K;
  const GgufExportResult r = export_merged_gguf(model, &lora, source, dir / "q4k.gguf", o);
  const GgufFile q4k = GgufFile::open(dir / "q4k.gguf");
  EXPECT_EQ(q4k.tensor("blk.0.attn_q.weight").dtype(), DType::Q4_1);
  EXPECT_EQ(q4k.tensor("token_embd.weight").dtype(), DType::Q8_0);
  bool noted = false;
  for (const std::string& n : r.notes) noted |= n.find("instead of q4_k") != std::string::npos;
  EXPECT_TRUE(noted);
}

// A model held in Hugging Face row order, exported with a GGUF of the same model as the source:
// the written q/k rows are in llama.cpp's order, so loom's GGUF loader computes what the HF-order
// model with its adapter computed.
TEST(GgufMergedExport, HfOrderModelIsPermutedOnTheWayOut) {
  TempDir dir;
  TinyDims d;
  d.weight_type = DType::F32;
  write_tiny_llama(dir / "base.gguf", d);
  const GgufFile source = GgufFile::open(dir / "base.gguf");
  LlamaModel hf_model = hf_order_copy(LlamaModel::from_gguf(source));
  LoraModel lora(hf_model, all_linear(4, 8.0));
  randomize_adapters(lora, 61);
  lora.set_training(false);
  MergedGgufOptions o;
  o.type = DType::F32;
  export_merged_gguf(hf_model, &lora, source, dir / "merged.gguf", o);
  const LlamaModel reread = LlamaModel::from_gguf(dir / "merged.gguf");
  EXPECT_LT(max_abs_diff(logits_of(reread), logits_of(hf_model)), 2e-4f);
  // The untouched v rows are the source's; the q rows are not in the HF model's order.
  const LoraModule& q = lora.modules().front();
  const std::vector<float> merged_q = merged_weight_values(*q.linear, *q.adapter);
  EXPECT_EQ(reread.weights().blocks[0].wq.weight.to_vector(),
            reorder_qk_rows(merged_q, 256, 256, 4, /*to_gguf=*/true));
}

TEST(GgufMergedExport, DoraMergesIntoTheExport) {
  TempDir dir;
  TinyDims d;
  d.weight_type = DType::F32;
  write_tiny_llama(dir / "base.gguf", d);
  const GgufFile source = GgufFile::open(dir / "base.gguf");
  LlamaModel model = LlamaModel::from_gguf(source);
  LoraConfig c = all_linear(4, 8.0);
  c.dora = true;
  LoraModel lora(model, c);
  randomize_adapters(lora, 13);  // magnitude too
  lora.set_training(false);
  MergedGgufOptions o;
  o.type = DType::F32;
  export_merged_gguf(model, &lora, source, dir / "merged.gguf", o);
  const LlamaModel reread = LlamaModel::from_gguf(dir / "merged.gguf");
  EXPECT_LT(max_abs_diff(logits_of(reread), logits_of(model)), 2e-4f);
}

TEST(GgufMergedExport, RefusesAMismatchedSourceAndHfFolders) {
  TempDir dir;
  write_tiny_llama(dir / "a.gguf", TinyDims{});
  TinyDims other;
  other.ffn = 768;
  write_tiny_llama(dir / "b.gguf", other);
  LlamaModel model = LlamaModel::from_gguf(dir / "a.gguf");
  try {
    export_merged_gguf(model, nullptr, GgufFile::open(dir / "b.gguf"), dir / "out.gguf");
    FAIL() << "exported against the wrong source";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match its source"), std::string::npos)
        << e.what();
  }
  try {
    export_merged_gguf(model, nullptr, dir.path().string(), dir / "out.gguf");
    FAIL() << "exported from a folder without tokenizer.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "out.gguf"));
  EXPECT_THROW(parse_merged_gguf_type("q4_1"), Error);
  EXPECT_EQ(parse_merged_gguf_type("q4_k"), DType::Q4_K);
}

// ---- LoRA adapter -----------------------------------------------------------------------------

TEST(GgufAdapterExport, LayoutIsWhatLlamaCppLoads) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  LoraConfig c = all_linear(4, 8.0);
  c.targets.modules = {"q_proj", "down_proj"};
  LoraModel lora(model, c);
  randomize_adapters(lora, 21);
  export_gguf_adapter(model, lora, dir / "adapter.gguf");

  const GgufFile f = GgufFile::open(dir / "adapter.gguf");
  EXPECT_EQ(f.get_string("general.type"), "adapter");
  EXPECT_EQ(f.get_string("adapter.type"), "lora");
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.at("adapter.lora.alpha").type(), GgufType::FLOAT32);
  EXPECT_EQ(f.get_float("adapter.lora.alpha"), 8.0);
  ASSERT_EQ(f.tensors().size(), 8u);
  const GgufTensorInfo& a = f.tensor_info("blk.1.ffn_down.weight.lora_a");
  const GgufTensorInfo& b = f.tensor_info("blk.1.ffn_down.weight.lora_b");
  // llama.cpp: a->ne[0] == base ne[0] (in), b->ne[1] == base ne[1] (out), a->ne[1] == b->ne[0]
  EXPECT_EQ(a.ne, (std::vector<int64_t>{512, 4}));
  EXPECT_EQ(b.ne, (std::vector<int64_t>{4, 256}));
  const LoraModule& m = lora.modules().back();
  EXPECT_EQ(f.tensor(a).to_vector(), m.adapter->lora_a().to_vector());
  EXPECT_EQ(f.tensor(b).to_vector(), m.adapter->lora_b().to_vector());
}

TEST(GgufAdapterExport, RoundTripIntoALoraModel) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  LoraModel lora(model, all_linear(4, 16.0));
  randomize_adapters(lora, 31);
  lora.set_training(false);
  const std::vector<float> expected = logits_of(model);
  export_gguf_adapter(model, lora, dir / "a32.gguf");
  GgufAdapterOptions half;
  half.type = DType::F16;
  export_gguf_adapter(model, lora, dir / "a16.gguf", half);
  GgufAdapterOptions q8;
  q8.type = DType::Q8_0;
  const GgufExportResult rq8 = export_gguf_adapter(model, lora, dir / "aq8.gguf", q8);
  lora.detach();

  LlamaModel fresh = LlamaModel::from_gguf(dir / "base.gguf");
  const std::vector<float> base_logits = logits_of(fresh);
  GgufAdapterContents contents;
  LoraModel back = load_gguf_adapter(dir / "a32.gguf", fresh, &contents);
  EXPECT_EQ(contents.config.rank, 4);
  EXPECT_EQ(contents.config.alpha, 16.0);
  EXPECT_EQ(back.modules().size(), 14u);
  // All seven projections of both blocks: read back as the seven names over every layer (as
  // PEFT's target_modules would say it), not 14 module paths.
  EXPECT_EQ(contents.config.targets.modules,
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"}));
  EXPECT_TRUE(contents.config.targets.layers.empty());
  // `loom inspect` says it is an adapter, without the (absent) tokenizer and hyper-parameters.
  const GgufModelSummary summary = summarize_gguf(GgufFile::open(dir / "a32.gguf"));
  EXPECT_TRUE(summary.adapter);
  EXPECT_TRUE(summary.tokenizer_keys.empty());
  EXPECT_TRUE(summary.hparams.empty());
  std::map<std::string, std::string> keys(summary.adapter_keys.begin(), summary.adapter_keys.end());
  EXPECT_EQ(keys["adapter.type"], "\"lora\"");
  EXPECT_EQ(keys["adapter.lora.alpha"], "16");
  const std::string text = format_gguf_summary(summary);
  EXPECT_NE(text.find("LoRA adapter"), std::string::npos) << text;
  EXPECT_NE(text.find("28 tensors (14 A/B pairs)"), std::string::npos) << text;
  for (const LoraParameter& p : lora.parameters())
    EXPECT_EQ(back.parameter(p.name).to_vector(), p.tensor.to_vector()) << p.name;
  EXPECT_LT(max_abs_diff(logits_of(fresh), expected), 1e-5f);
  back.detach();

  // f16: values rounded to f16; q8_0: lora_a q8_0, lora_b (rows of r = 4) f16 as the converter.
  const GgufFile fq8 = GgufFile::open(dir / "aq8.gguf");
  EXPECT_EQ(fq8.tensor_info("blk.0.attn_q.weight.lora_a").dtype, DType::Q8_0);
  EXPECT_EQ(fq8.tensor_info("blk.0.attn_q.weight.lora_b").dtype, DType::F16);
  EXPECT_FALSE(rq8.notes.empty());
  // The adapter's effect on the logits, and how much of it the rounding of A and B moves.
  const float effect = max_abs_diff(base_logits, expected);
  for (const char* file : {"a16.gguf", "aq8.gguf"}) {
    LlamaModel m = LlamaModel::from_gguf(dir / "base.gguf");
    LoraModel l = load_gguf_adapter(dir / file, m);
    const float d = max_abs_diff(logits_of(m), expected);
    std::cout << "[ adapter ] " << file << ": max logit diff " << d
              << " (the adapter moves them by " << effect << ")\n";
    // f16 keeps 11 bits of A and B; q8_0 rounds A to 8 bits per block of 32
    EXPECT_LT(d, (std::string(file) == "a16.gguf" ? 0.002f : 0.03f) * effect) << file;
  }
}

// rsLoRA and alpha_pattern: llama.cpp applies alpha_file / r to every module, so the trained
// scales must come back through the file's alpha and the factors folded into lora_b.
TEST(GgufAdapterExport, PerModuleScalesAreFoldedSoLlamaCppScalingReproducesThem) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  LoraConfig c = all_linear(8, 4.0);
  c.rslora = true;
  c.alpha_pattern = {{"v_proj", 32.0}};
  c.rank_pattern = {{"layers\\.1\\.mlp\\.up_proj", 2}};
  LoraModel lora(model, c);
  randomize_adapters(lora, 41);
  lora.set_training(false);
  const std::vector<float> expected = logits_of(model);
  const GgufExportResult r = export_gguf_adapter(model, lora, dir / "a.gguf");
  const GgufFile f = GgufFile::open(dir / "a.gguf");
  const double file_alpha = f.get_float("adapter.lora.alpha");
  EXPECT_NEAR(file_alpha, 4.0 * std::sqrt(8.0), 1e-5);
  EXPECT_EQ(f.get_int("loom.lora.folded_modules"), 3);  // two v_proj and the rank-2 up_proj
  // What llama.cpp computes for one folded module: (alpha_file / r) * lora_b_file * lora_a.
  const LoraModule* v = nullptr;
  for (const LoraModule& m : lora.modules())
    if (m.linear->kind == Projection::V && m.linear->layer == 0) v = &m;
  ASSERT_NE(v, nullptr);
  const std::vector<float> b_file = f.tensor("blk.0.attn_v.weight.lora_b").to_vector();
  const std::vector<float> b = v->adapter->lora_b().to_vector();
  const double trained = 32.0 / std::sqrt(8.0);
  for (size_t i = 0; i < b.size(); ++i)
    EXPECT_NEAR(float(file_alpha) / 8.0 * b_file[i], trained * b[i], 1e-6 * (1 + std::fabs(b[i])));
  lora.detach();

  LlamaModel fresh = LlamaModel::from_gguf(dir / "base.gguf");
  GgufAdapterContents contents;
  LoraModel back = load_gguf_adapter(dir / "a.gguf", fresh, &contents);
  EXPECT_EQ(contents.config.rank, 8);
  ASSERT_EQ(contents.config.rank_pattern.size(), 1u);
  EXPECT_EQ(contents.config.rank_pattern[0].second, 2);
  EXPECT_LT(max_abs_diff(logits_of(fresh), expected), 1e-4f);
  (void)r;
}

// An adapter trained on a Hugging Face-ordered llama: the file must hold lora_b rows in
// llama.cpp's order, so that the GGUF-ordered model with it computes what the HF model did.
TEST(GgufAdapterExport, QkRowsOfAHfOrderModelAreWrittenInLlamaCppOrder) {
  TempDir dir;
  TinyDims d;
  d.weight_type = DType::F32;
  write_tiny_llama(dir / "base.gguf", d);
  const LlamaModel gguf_model = LlamaModel::from_gguf(dir / "base.gguf");
  LlamaModel hf_model = hf_order_copy(gguf_model);
  LoraModel lora(hf_model, all_linear(4, 8.0));
  randomize_adapters(lora, 51);
  lora.set_training(false);
  const std::vector<float> expected = logits_of(hf_model);
  export_gguf_adapter(hf_model, lora, dir / "a.gguf");
  // The file's q lora_b is the HF one permuted.
  const GgufFile f = GgufFile::open(dir / "a.gguf");
  const LoraModule& q = lora.modules().front();
  ASSERT_EQ(q.linear->kind, Projection::Q);
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.lora_b").to_vector(),
            reorder_qk_rows(q.adapter->lora_b().to_vector(), 256, 4, 4, true));

  LlamaModel target = LlamaModel::from_gguf(dir / "base.gguf");
  LoraModel back = load_gguf_adapter(dir / "a.gguf", target);
  EXPECT_LT(max_abs_diff(logits_of(target), expected), 2e-4f);
  // And read into the HF-ordered model it is un-permuted back to the trained values.
  lora.detach();
  LoraModel again = load_gguf_adapter(dir / "a.gguf", hf_model);
  EXPECT_EQ(again.parameter(q.adapter->lora_b().name()).to_vector(),
            q.adapter->lora_b().to_vector());
}

// PiSSA trains A, B against the residual W - s B0 A0, but llama.cpp adds the adapter to the
// original W: the file must carry s (B A - B0 A0), and the original base with it must compute
// what the trained model did.
TEST(GgufAdapterExport, PissaAdapterAppliesToTheOriginalBase) {
  TempDir dir;
  TinyDims d;
  d.weight_type = DType::F32;  // an f32 residual: W - s B0 A0 + s B0 A0 = W to f32 rounding
  write_tiny_llama(dir / "base.gguf", d);
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  LoraConfig c = all_linear(4, 8.0);
  c.init = LoraInit::Pissa;
  c.rank_pattern = {{"layers\\.1\\.mlp\\.up_proj", 2}};
  LoraModel lora(model, c);
  randomize_adapters(lora, 61);  // "trained": A, B moved away from A0, B0
  lora.set_training(false);
  const std::vector<float> expected = logits_of(model);
  const GgufExportResult r = export_gguf_adapter(model, lora, dir / "a.gguf");
  bool noted = false;
  for (const std::string& n : r.notes) noted |= n.find("PiSSA") != std::string::npos;
  EXPECT_TRUE(noted);

  const GgufFile f = GgufFile::open(dir / "a.gguf");
  EXPECT_EQ(f.get_int("loom.lora.pissa_modules"), 14);
  EXPECT_EQ(f.tensor_info("blk.0.attn_q.weight.lora_a").ne, (std::vector<int64_t>{256, 8}));
  EXPECT_EQ(f.tensor_info("blk.1.ffn_up.weight.lora_b").ne, (std::vector<int64_t>{4, 512}));

  LlamaModel original = LlamaModel::from_gguf(dir / "base.gguf");
  const std::vector<float> base_logits = logits_of(original);
  LoraModel back = load_gguf_adapter(dir / "a.gguf", original);
  const float d_back = max_abs_diff(logits_of(original), expected);
  std::cout << "[ pissa ] adapter moves the logits by " << max_abs_diff(base_logits, expected)
            << "; original base + exported adapter is off by " << d_back << "\n";
  EXPECT_LT(d_back, 1e-4f);
}

TEST(GgufAdapterExport, DoraIsRefused) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  LoraConfig c = all_linear(4, 8.0);
  c.dora = true;
  LoraModel lora(model, c);
  try {
    export_gguf_adapter(model, lora, dir / "a.gguf");
    FAIL() << "a DoRA adapter was exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DoRA"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "a.gguf"));
  GgufAdapterOptions o;
  o.type = DType::Q4_0;
  LlamaModel other = LlamaModel::from_gguf(dir / "base.gguf");
  LoraModel plain(other, all_linear(4, 8.0));
  EXPECT_THROW(export_gguf_adapter(other, plain, dir / "a.gguf", o), Error);
}

// Adapters as llama.cpp's converter lays them out (written here with the writer), and the
// problems the reader must name.
TEST(GgufAdapterRead, ConverterLayoutAndClearErrors) {
  TempDir dir;
  write_tiny_llama(dir / "base.gguf", TinyDims{});
  LlamaModel model = LlamaModel::from_gguf(dir / "base.gguf");
  const auto adapter = [&](const std::string& name, const std::string& arch,
                           const std::string& extra, bool with_alpha) {
    GgufWriter w;
    w.set_string("general.architecture", arch);
    w.set_string("general.type", "adapter");
    w.set_string("adapter.type", "lora");
    if (with_alpha) w.set_f32("adapter.lora.alpha", 16.0f);
    w.add_tensor_values("blk.0.attn_k.weight.lora_a", {8, 256}, DType::F16,
                        normal_values(2048, 1, 0.1));
    w.add_tensor_values("blk.0.attn_k.weight.lora_b", {128, 8}, DType::F16,
                        normal_values(1024, 2, 0.1));
    w.add_tensor_values("blk.1.ffn_up.weight.lora_a", {4, 256}, DType::F32,
                        normal_values(1024, 3, 0.1));
    w.add_tensor_values("blk.1.ffn_up.weight.lora_b", {512, 4}, DType::F32,
                        normal_values(2048, 4, 0.1));
    w.add_tensor_values("blk.0.attn_norm.weight", {256}, DType::F32, normal_values(256, 5, 0.1));
    if (!extra.empty())
      w.add_tensor_values(extra, {4, 256}, DType::F32, normal_values(1024, 6, 0.1));
    w.write(dir / name);
    return dir / name;
  };
  GgufAdapterContents c = read_gguf_adapter(adapter("ok.gguf", "llama", "", true), model);
  // Not a full product of projections and layers: each module's path.
  EXPECT_EQ(c.config.targets.modules, (std::vector<std::string>{"model.layers.0.self_attn.k_proj",
                                                                "model.layers.1.mlp.up_proj"}));
  EXPECT_EQ(c.config.rank, 8);  // first of the tied ranks
  EXPECT_EQ(c.config.alpha, 16.0);
  EXPECT_EQ(c.ignored, (std::vector<std::string>{"blk.0.attn_norm.weight"}));
  {
    LoraModel l(model, c.config);
    l.load_parameters(c.values);
    for (const LoraModule& m : l.modules())  // llama.cpp: alpha / r per module
      EXPECT_DOUBLE_EQ(m.adapter->scale(), 16.0 / m.adapter->rank());
    l.detach();
  }
  // No alpha: llama.cpp scales by 1.
  c = read_gguf_adapter(adapter("noalpha.gguf", "llama", "", false), model);
  {
    LoraModel l(model, c.config);
    for (const LoraModule& m : l.modules()) EXPECT_DOUBLE_EQ(m.adapter->scale(), 1.0);
    l.detach();
  }
  const auto error_of = [&](const std::string& path) {
    try {
      read_gguf_adapter(path, model);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(adapter("q2.gguf", "qwen2", "", true))
                .find("'general.architecture' is 'qwen2', expected 'llama'"),
            std::string::npos);
  EXPECT_NE(error_of(adapter("emb.gguf", "llama", "token_embd.weight.lora_a", true))
                .find("token_embd.weight"),
            std::string::npos);
  EXPECT_NE(
      error_of(adapter("odd.gguf", "llama", "blk.0.attn_q.weight.lora_c", true)).find("lora_c"),
      std::string::npos);
  EXPECT_NE(error_of(dir / "base.gguf").find("general.type"), std::string::npos);
}

// ---- merged GGUF from a Hugging Face folder -----------------------------------------------------

namespace {

// GPT-2's byte -> character table (the printable bytes stand for themselves, the others from
// U+0100 on), the alphabet of byte-level BPE vocabularies.
std::vector<std::string> gpt2_byte_alphabet() {
  std::vector<std::string> out(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : next++;
    std::string utf8;
    if (cp < 0x80) {
      utf8 += static_cast<char>(cp);
    } else {
      utf8 += static_cast<char>(0xC0 | (cp >> 6));
      utf8 += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out[static_cast<size_t>(b)] = utf8;
  }
  return out;
}

// A byte-level tokenizer.json of 256 tokens with `pre_tokenizer`: the byte tokens but 0xFF's,
// and "Ġt" made by the one merge "Ġ t".
void write_byte_tokenizer_json(const fs::path& path, const std::string& pre_tokenizer,
                               bool ignore_merges = false) {
  std::vector<std::string> alphabet = gpt2_byte_alphabet();
  alphabet.back() = alphabet[' '] + "t";
  std::string vocab;
  for (size_t id = 0; id < alphabet.size(); ++id) {
    std::string escaped;
    for (const char c : alphabet[id]) {
      if (c == '"' || c == '\\') escaped += '\\';
      escaped += c;
    }
    vocab += fmt::format("{}\"{}\": {}", id ? ", " : "", escaped, id);
  }
  std::ofstream(path) << fmt::format(
      R"({{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {},
"post_processor": null, "decoder": {{"type": "ByteLevel"}},
"model": {{"type": "BPE", "ignore_merges": {}, "vocab": {{{}}}, "merges": ["{} t"]}}}})",
      pre_tokenizer, ignore_merges ? "true" : "false", vocab, alphabet[' ']);
}

constexpr const char* kByteLevelPre =
    R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})";

// A copy of a golden Hugging Face folder with a byte-level tokenizer.json beside it.
fs::path golden_folder_with_tokenizer(const TempDir& dir, const std::string& golden) {
  const fs::path folder = dir / golden;
  fs::create_directories(folder);
  for (const auto& e : fs::directory_iterator(test::source_dir() / "tests" / "golden" / golden))
    fs::copy_file(e.path(), folder / e.path().filename());
  write_byte_tokenizer_json(folder / "tokenizer.json", kByteLevelPre);
  return folder;
}

}  // namespace

// Each architecture's Hugging Face folder (llama; Llama 3 rope scaling -> rope_freqs.weight; tied
// embeddings with attention biases; qwen2 with q/k/v biases; mistral with its own head dim),
// exported merged with an adapter on every projection, loads back through loom's GGUF loader as
// the model it was exported from: same logits. (The GGUF loader is held to llama.cpp by the
// LlamaCpp tests; interop.test_export_gguf_hf holds the whole file to llama.cpp's converter.)
TEST(GgufMergedExport, FromHfFoldersLoadsBackAsTheSameModel) {
  for (const std::string golden :
       {"hf_llama", "hf_llama3", "hf_llama_tied", "hf_qwen2", "hf_mistral"}) {
    SCOPED_TRACE(golden);
    TempDir dir;
    const fs::path folder = golden_folder_with_tokenizer(dir, golden);
    LlamaModel hf_model = LlamaModel::from_hf(folder.string());
    LoraModel lora(hf_model, all_linear(4, 8.0));
    randomize_adapters(lora, 71);
    lora.set_training(false);
    MergedGgufOptions o;
    o.type = DType::F32;
    const GgufExportResult r =
        export_merged_gguf(hf_model, &lora, folder.string() + "/", dir / "merged.gguf", o);
    EXPECT_EQ(r.merged_modules, static_cast<int64_t>(lora.modules().size()));
    const GgufFile file = GgufFile::open(dir / "merged.gguf");
    EXPECT_EQ(file.get_string("general.name"), golden);
    EXPECT_EQ(file.get_string("tokenizer.ggml.pre"), "gpt2");
    EXPECT_EQ(file.get_string_array("tokenizer.ggml.tokens").size(), 256u);
    EXPECT_EQ(file.find_tensor("rope_freqs.weight") != nullptr, golden == "hf_llama3");
    EXPECT_EQ(file.find_tensor("output.weight") == nullptr, golden == "hf_llama_tied");
    const LlamaModel reread = LlamaModel::from_gguf(file);
    EXPECT_EQ(reread.config().architecture, golden == "hf_qwen2" ? "qwen2" : "llama");
    EXPECT_LT(max_abs_diff(logits_of(reread), logits_of(hf_model)), 2e-4f);
  }
}

// Llama 3 scaling's rope_freqs are the divisors that turn each unscaled frequency into the
// scaled one loom computes from config.json.
TEST(GgufMergedExport, RopeFreqFactorsGiveTheScaledFrequencies) {
  ModelConfig c;
  c.head_dim = 128;
  c.rope.theta = 500000.0f;
  EXPECT_TRUE(gguf_rope_freq_factors(c).empty());
  c.rope.llama3_scaling = Llama3RopeScaling{};  // Llama 3.1: 8, 1, 4, 8192
  const std::vector<float> factors = gguf_rope_freq_factors(c);
  const std::vector<float> scaled = rope_inv_freq(c.rope, c.head_dim);
  RopeConfig plain = c.rope;
  plain.llama3_scaling.reset();
  const std::vector<float> unscaled = rope_inv_freq(plain, c.head_dim);
  ASSERT_EQ(factors.size(), 64u);
  int interpolated = 0, kept = 0;
  for (size_t i = 0; i < factors.size(); ++i) {
    EXPECT_NEAR(unscaled[i] / factors[i], scaled[i], 1e-6 * scaled[i]) << i;
    interpolated += factors[i] == 8.0f;
    kept += factors[i] == 1.0f;
  }
  EXPECT_GT(interpolated, 0);  // all three bands occur
  EXPECT_GT(kept, 0);
  EXPECT_LT(interpolated + kept, 64);
}

// general.size_label: the values are what gguf-py's size_label() gives for these counts.
TEST(GgufMergedExport, SizeLabelIsTheConvertersOwn) {
  EXPECT_EQ(gguf_size_label(134515008), "135M");
  EXPECT_EQ(gguf_size_label(1543714304), "1.5B");
  EXPECT_EQ(gguf_size_label(8030261248), "8.0B");
  EXPECT_EQ(gguf_size_label(70553706496), "71B");
  EXPECT_EQ(gguf_size_label(360000), "360K");
  EXPECT_EQ(gguf_size_label(12345), "12K");
  EXPECT_EQ(gguf_size_label(999), "1.0K");
}

// The pre-tokenizer name comes from the tokenizer.json's regexes (Hugging Face's spellings of
// them), and anything llama.cpp has no name for is refused naming the regexes.
TEST(GgufMergedExport, PreTokenizerNamesFromTokenizerJson) {
  TempDir dir;
  const auto name_of = [&](const std::string& pre, bool ignore_merges = false) {
    write_byte_tokenizer_json(dir / "tokenizer.json", pre, ignore_merges);
    return gguf_pre_tokenizer_name(*load_tokenizer_json(dir / "tokenizer.json"));
  };
  EXPECT_EQ(name_of(kByteLevelPre), "gpt2");
  EXPECT_EQ(name_of(fmt::format(R"({{"type": "Sequence", "pretokenizers": [{{"type": "Digits",
      "individual_digits": true}}, {}]}})",
                                kByteLevelPre)),
            "smollm");
  // Llama 3's and Qwen 2's tokenizer.json, as they ship.
  const std::string llama3_regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+)";
  const auto split_then_bytes = [](const std::string& regex) {
    return fmt::format(
        R"({{"type": "Sequence", "pretokenizers": [{{"type": "Split", "pattern": {{"Regex":
        "{}"}}, "behavior": "Isolated", "invert": false}}, {{"type": "ByteLevel",
        "add_prefix_space": false, "trim_offsets": true, "use_regex": false}}]}})",
        regex);
  };
  EXPECT_EQ(name_of(split_then_bytes(llama3_regex), /*ignore_merges=*/true), "llama-bpe");
  EXPECT_EQ(name_of(split_then_bytes(llama3_regex), /*ignore_merges=*/false), "dbrx");
  std::string qwen2_regex = llama3_regex;
  qwen2_regex.replace(qwen2_regex.find(R"(\\p{N}{1,3})"), 11, R"(\\p{N})");
  EXPECT_EQ(name_of(split_then_bytes(qwen2_regex)), "qwen2");
  try {
    name_of(split_then_bytes(R"(\\p{N}{1,2}| ?\\p{L}+)"));
    FAIL() << "named an unknown pre-tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(R"(\p{N}{1,2}| ?\p{L}+)"), std::string::npos) << e.what();
  }
  // SentencePiece-style tokenizer.json: no scores for a GGUF "llama" vocabulary.
  try {
    gguf_pre_tokenizer_name(*load_tokenizer_json(
        (test::source_dir() / "tests" / "golden" / "tiny_spm.tokenizer.json").string()));
    FAIL() << "named a SentencePiece tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("SentencePiece"), std::string::npos) << e.what();
  }
}

// Keys written as llama.cpp's converter decides from the folder's JSON files (its
// convert_hf_to_gguf.py and gguf-py's SpecialVocab): key_length / value_length only when
// config.json names head_dim, vocab_size only for llama, special ids from config.json where the
// tokenizer has none, add_bos_token / add_eos_token only when tokenizer_config.json has them or
// the tokenizer adds the token.
TEST(GgufMergedExport, FromHfFolderKeysFollowWhatTheConverterReads) {
  TempDir dir;
  const auto keys_of = [](const GgufMetadata& m) {
    std::map<std::string, GgufValue> out;
    for (const auto& [k, v] : m) out.emplace(k, v);
    return out;
  };
  const fs::path qwen = golden_folder_with_tokenizer(dir, "hf_qwen2");
  {
    const LlamaModel model = LlamaModel::from_hf(qwen.string());
    const auto m = keys_of(gguf_metadata_from_hf(
        model.config(), *load_tokenizer_json((qwen / "tokenizer.json").string()), "x", 0));
    EXPECT_EQ(m.count("qwen2.attention.key_length"), 0u);  // no head_dim in its config.json
    EXPECT_EQ(m.count("qwen2.vocab_size"), 0u);
    EXPECT_EQ(m.count("qwen2.rope.dimension_count"), 0u);
    EXPECT_EQ(m.count("tokenizer.ggml.bos_token_id"), 0u);
    EXPECT_EQ(m.count("tokenizer.ggml.add_bos_token"), 0u);
    EXPECT_EQ(m.count("tokenizer.ggml.add_eos_token"), 0u);
  }
  // config.json's ids fill in (an id past the tokenizer is left out, as the converter does);
  // tokenizer_config.json's flags are written as they are.
  nlohmann::json config = nlohmann::json::parse(std::ifstream(qwen / "config.json"));
  config["bos_token_id"] = 7;
  config["eos_token_id"] = 9999;
  config["head_dim"] = 16;
  std::ofstream(qwen / "config.json") << config.dump();
  std::ofstream(qwen / "tokenizer_config.json") << R"({"add_bos_token": false})";
  {
    const LlamaModel model = LlamaModel::from_hf(qwen.string());
    const auto m = keys_of(gguf_metadata_from_hf(
        model.config(), *load_tokenizer_json((qwen / "tokenizer.json").string()), "x", 0));
    ASSERT_EQ(m.count("tokenizer.ggml.bos_token_id"), 1u);
    EXPECT_EQ(m.at("tokenizer.ggml.bos_token_id").as_int("bos"), 7);
    EXPECT_EQ(m.count("tokenizer.ggml.eos_token_id"), 0u);
    ASSERT_EQ(m.count("tokenizer.ggml.add_bos_token"), 1u);
    EXPECT_FALSE(m.at("tokenizer.ggml.add_bos_token").as_bool("add_bos"));
    EXPECT_EQ(m.count("tokenizer.ggml.add_eos_token"), 0u);
    ASSERT_EQ(m.count("qwen2.attention.key_length"), 1u);
    EXPECT_EQ(m.at("qwen2.attention.key_length").as_int("key_length"), 16);
  }
  const fs::path llama = golden_folder_with_tokenizer(dir, "hf_llama");
  const LlamaModel model = LlamaModel::from_hf(llama.string());
  const auto m = keys_of(gguf_metadata_from_hf(
      model.config(), *load_tokenizer_json((llama / "tokenizer.json").string()), "x", 0));
  EXPECT_EQ(m.count("llama.vocab_size"), 1u);
  EXPECT_EQ(m.count("llama.rope.dimension_count"), 1u);
  EXPECT_EQ(m.count("llama.attention.key_length"), 1u);  // its config.json has head_dim
}

// Added tokens that tokenizer.json does not call special are user-defined in the GGUF, unless
// they look special to the converter (<|...|>, <unused...>, ...): control, as Qwen2.5's
// <|fim_prefix|> and <|repo_name|> are in its GGUFs.
TEST(GgufMergedExport, FromHfFolderAddedTokensTypedAsTheConverterDoes) {
  TempDir dir;
  const fs::path folder = golden_folder_with_tokenizer(dir, "hf_qwen2");
  nlohmann::json tj = nlohmann::json::parse(std::ifstream(folder / "tokenizer.json"));
  const auto added = [](int id, const char* content, bool special) {
    return nlohmann::json{{"id", id},          {"content", content}, {"single_word", false},
                          {"lstrip", false},   {"rstrip", false},    {"normalized", false},
                          {"special", special}};
  };
  tj["added_tokens"] = {added(256, "<|fim_prefix|>", false), added(257, "<tool_call>", false),
                        added(258, "<|im_start|>", true), added(259, "<|>", false)};
  std::ofstream(folder / "tokenizer.json") << tj.dump();
  const LlamaModel model = LlamaModel::from_hf(folder.string());
  ModelConfig bigger = model.config();
  bigger.vocab_size = 261;
  const std::unique_ptr<Tokenizer> t = load_tokenizer_json((folder / "tokenizer.json").string());
  ASSERT_EQ(t->vocab_size(), 260);
  EXPECT_EQ(t->token_type(256), TokenType::UserDefined);  // loom's own tokenizer: as tokenizers
  for (const auto& [key, value] : gguf_metadata_from_hf(bigger, *t, "x", 0)) {
    if (key != "tokenizer.ggml.token_type") continue;
    const std::vector<int64_t> types = value.as_int_array(key);
    ASSERT_EQ(types.size(), 261u);
    EXPECT_EQ(types[255], 1);  // normal
    EXPECT_EQ(types[256], 3);  // looks special: control
    EXPECT_EQ(types[257], 4);  // user-defined
    EXPECT_EQ(types[258], 3);  // special: control
    EXPECT_EQ(types[259], 3);  // "<|>": Python's startswith / endswith overlap
    EXPECT_EQ(types[260], 5);  // [PAD260]
  }
}

// A folder whose tokenizer has more tokens than the model's vocabulary is refused; one with
// fewer gets llama.cpp's converter's "[PAD<id>]" unused tokens up to it.
TEST(GgufMergedExport, FromHfFolderPadsOrRefusesTheVocabulary) {
  TempDir dir;
  const fs::path folder = golden_folder_with_tokenizer(dir, "hf_llama");
  const LlamaModel model = LlamaModel::from_hf(folder.string());
  const std::unique_ptr<Tokenizer> t = load_tokenizer_json((folder / "tokenizer.json").string());
  ModelConfig bigger = model.config();
  bigger.vocab_size = 260;
  const GgufMetadata m = gguf_metadata_from_hf(bigger, *t, "x", 0);
  for (const auto& [key, value] : m) {
    if (key == "tokenizer.ggml.tokens") {
      const std::vector<std::string> tokens = value.as_string_array(key);
      ASSERT_EQ(tokens.size(), 260u);
      EXPECT_EQ(tokens[259], "[PAD259]");
    }
    if (key == "tokenizer.ggml.token_type") {
      const std::vector<int64_t> types = value.as_int_array(key);
      ASSERT_EQ(types.size(), 260u);
      EXPECT_EQ(types[255], 1);  // normal
      EXPECT_EQ(types[256], 5);  // unused
    }
  }
  ModelConfig smaller = model.config();
  smaller.vocab_size = 200;
  EXPECT_THROW(gguf_metadata_from_hf(smaller, *t, "x", 0), Error);
}

}  // namespace
}  // namespace loom
