// Data module, end to end: a DataConfig of two sources (a text folder and chat JSONL) loaded
// through the cache with a byte tokenizer, a training stream at the set ratio, the held-out
// evaluation stream, the settings description, and the configuration errors.
#include <gtest/gtest.h>

#include "autograd/check.h"
#include "data/pipeline.h"
#include "data_test_helpers.h"

namespace loom {
namespace {

using test::TempDir;
using test::write_file;

DataConfig two_sources(const TempDir& dir) {
  std::string text, chat;
  for (int i = 0; i < 400; ++i) {
    text += "Domain entry " + std::to_string(i) + ": a term and its definition.\n\n";
    chat += R"({"messages": [{"role": "user", "content": "Question )" + std::to_string(i) +
            R"("}, {"role": "assistant", "content": "Answer."}]})" + "\n";
  }
  write_file(dir / "domain/a.txt", text);
  write_file(dir / "general.jsonl", chat);
  const auto source = [](std::string name, std::string path, SourceFormat format, double weight,
                         double heldout) {
    SourceConfig s;
    s.name = std::move(name);
    s.path = std::move(path);
    s.format = format;
    s.weight = weight;
    s.heldout_fraction = heldout;
    return s;
  };
  DataConfig c;
  c.sources = {source("domain", dir / "domain", SourceFormat::Text, 0.25, 0.1),
               source("general", dir / "general.jsonl", SourceFormat::Chat, 0.75, 0.05)};
  c.seq_len = 64;
  c.batch_size = 4;
  c.seed = 3;
  c.cache.dir = dir / "cache";
  return c;
}

TEST(DataPipeline, LoadTrainEvaluateDescribe) {
  TempDir dir;
  const DataConfig config = two_sources(dir);
  auto tok = test::ByteTokenizer::make();
  const LoadedData data = load_data(config, *tok);
  ASSERT_EQ(data.sources.size(), 2u);
  EXPECT_EQ(data.sources[0].data->num_documents(), 400);
  EXPECT_FALSE(data.cache_reports[0].hit);
  EXPECT_EQ(data.packing.framing.eos_id, test::ByteTokenizer::kEos);

  TrainStream stream = data.train_stream();
  Batch b;
  int64_t counted = 0;
  for (int i = 0; i < 400; ++i) {
    ASSERT_TRUE(stream.next(b));
    counted += b.counted_targets();
  }
  const auto delivered = stream.delivered();
  EXPECT_NEAR(delivered[0].token_fraction, 0.25, 0.01);
  EXPECT_GT(counted, 0);
  const std::string report = describe_delivery(delivered);
  EXPECT_NE(report.find("domain: "), std::string::npos) << report;
  EXPECT_NE(report.find("target 25.00%"), std::string::npos) << report;

  EvalStream eval = data.eval_stream(0);
  EXPECT_GT(eval.num_documents(), 10);
  EXPECT_LT(eval.num_documents(), 80);
  ASSERT_TRUE(eval.next(b));

  const std::string text = describe_data_config(config);
  for (const char* part :
       {"seq_len 64", "batch_size 4", "mix_by tokens", "on_exhausted repeat",
        "max_piece_tokens 512", "source 'domain'", "weight 0.25 (25.0% of the mix)",
        "template chatml", "heldout_fraction 0.05"}) {
    EXPECT_NE(text.find(part), std::string::npos) << part << "\n" << text;
  }
  // A second load maps the caches.
  const LoadedData again = load_data(config, *tok);
  EXPECT_TRUE(again.cache_reports[0].hit);
  EXPECT_TRUE(again.cache_reports[1].hit);
}

TEST(DataPipeline, ConfigurationErrors) {
  TempDir dir;
  DataConfig config = two_sources(dir);
  auto tok = test::ByteTokenizer::make();
  config.sources[1].name = "domain";
  try {
    load_data(config, *tok);
    ADD_FAILURE() << "duplicate names accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("two sources are named 'domain'"), std::string::npos);
  }
  EXPECT_EQ(parse_mix_by("examples", "k"), MixBy::Examples);
  EXPECT_EQ(parse_on_exhausted("stop", "k"), OnExhausted::Stop);
  try {
    parse_mix_by("bytes", "recipe key data.mix_by");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("recipe key data.mix_by: 'bytes' is not a mixing unit; "
                                         "expected tokens or examples"),
              std::string::npos);
  }
  EXPECT_THROW(parse_source_format("csv", "k"), Error);
  EXPECT_EQ(parse_source_format("dictd", "k"), SourceFormat::Dictd);
}

}  // namespace
}  // namespace loom
