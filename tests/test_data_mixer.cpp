// Data module, mixing: the delivered ratio in every 200k-token window (by tokens, with long
// documents cut in pieces, and by examples), determinism from the seed, exact resume from a saved
// position (mid-piece, across epochs, with Stop), per-epoch reshuffles, Stop and max_epochs ending
// the stream,
// weight-0 sources, the held-out split (deterministic, never trained on, evaluated whole) and the
// configuration errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "autograd/check.h"
#include "data/heldout.h"
#include "data/mixer.h"
#include "data/train_stream.h"
#include "data_test_helpers.h"

namespace loom {
namespace {

using test::synthetic_source;
constexpr int32_t kEos = 7;

MixerConfig mixer_config(uint64_t seed = 1, MixBy by = MixBy::Tokens,
                         OnExhausted on = OnExhausted::Repeat) {
  MixerConfig m;
  m.seed = seed;
  m.mix_by = by;
  m.on_exhausted = on;
  m.framing = {-1, kEos};
  return m;
}

PackingConfig packing(int64_t T, int64_t B) {
  PackingConfig p;
  p.seq_len = T;
  p.batch_size = B;
  p.framing = {-1, kEos};
  return p;
}

std::vector<MixSource> domain_general(double domain_weight, int64_t max_len = 800,
                                      double heldout = 0.0) {
  return {{synthetic_source("domain", 300, 20, max_len, 1, 1), domain_weight, heldout},
          {synthetic_source("general", 3000, 20, max_len, 2, 2), 1.0 - domain_weight, heldout}};
}

// Running count of source-0 tokens over the first `total` input tokens of the stream:
// prefix[i] = source-0 tokens among the first i.
std::vector<int64_t> source0_prefix(TrainStream& stream, int64_t total) {
  std::vector<int64_t> prefix = {0};
  Batch b;
  while (static_cast<int64_t>(prefix.size()) <= total && stream.next(b)) {
    for (int32_t s : b.source_ids) {
      if (s >= 0) prefix.push_back(prefix.back() + (s == 0));
    }
  }
  prefix.resize(static_cast<size_t>(std::min<int64_t>(total + 1, prefix.size())));
  return prefix;
}

// Every 200k-token window starting at a multiple of 25k tokens (not only the aligned ones).
void expect_ratio_in_every_window(double target, int64_t max_len, int64_t max_piece,
                                  int64_t min_domain_epochs) {
  auto cfg = mixer_config(42);
  cfg.max_piece_tokens = max_piece;
  TrainStream stream(domain_general(target, max_len), cfg, packing(1024, 8));
  constexpr int64_t kTotal = 4'000'000, kWindow = 200'000, kStep = 25'000;
  const auto prefix = source0_prefix(stream, kTotal);
  ASSERT_EQ(static_cast<int64_t>(prefix.size()), kTotal + 1);
  double worst = 0;
  int windows = 0;
  for (int64_t start = 0; start + kWindow <= kTotal; start += kStep, ++windows) {
    const double f = static_cast<double>(prefix[start + kWindow] - prefix[start]) / kWindow;
    EXPECT_NEAR(f, target, 0.01) << "window at token " << start;
    worst = std::max(worst, std::abs(f - target));
  }
  EXPECT_EQ(windows, 153);
  const auto d = stream.delivered();
  EXPECT_NEAR(d[0].token_fraction, target, 0.002);
  EXPECT_EQ(d[0].name, "domain");
  EXPECT_NEAR(d[0].target_weight, target, 1e-12);
  EXPECT_GE(d[0].epoch, min_domain_epochs);  // the small domain source was repeated
  std::cout << "[ ratio    ] target " << target << ", documents up to " << max_len
            << " tokens, pieces <= " << max_piece << ": worst deviation over " << windows
            << " 200k-token windows " << worst << ", overall " << d[0].token_fraction << " of "
            << d[0].tokens + d[1].tokens << " tokens\n";
}

TEST(DataMixer, RatioHoldsInEvery200kTokenWindow) {
  expect_ratio_in_every_window(0.15, 800, 512, 3);
  expect_ratio_in_every_window(0.5, 800, 512, 10);
}

TEST(DataMixer, RatioHoldsWithLongDocumentsCutInPieces) {
  expect_ratio_in_every_window(0.15, 6000, 512, 0);
}

TEST(DataMixer, RatioByExamples) {
  Mixer mixer(domain_general(0.15), mixer_config(3, MixBy::Examples));
  int window = 0, in_window = 0;
  Piece p;
  for (int i = 0; i < 20000; ++i) {
    ASSERT_TRUE(mixer.next(p));
    ASSERT_EQ(p.begin, 0);  // whole documents
    ASSERT_EQ(p.end, framed_length(*mixer.source(p.source).data, p.doc, mixer.config().framing));
    in_window += p.source == 0;
    if (++window == 2000) {
      EXPECT_NEAR(in_window / 2000.0, 0.15, 0.01);
      window = in_window = 0;
    }
  }
  EXPECT_EQ(mixer.position().sources[0].drawn_examples, 3000);
}

TEST(DataMixer, SameSeedSameStreamOtherSeedOtherStream) {
  TrainStream a(domain_general(0.3), mixer_config(5), packing(256, 4));
  TrainStream b(domain_general(0.3), mixer_config(5), packing(256, 4));
  TrainStream c(domain_general(0.3), mixer_config(6), packing(256, 4));
  Batch x, y, z;
  bool any_difference = false;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(a.next(x));
    ASSERT_TRUE(b.next(y));
    ASSERT_TRUE(c.next(z));
    ASSERT_EQ(x.tokens, y.tokens) << i;
    ASSERT_EQ(x.targets, y.targets) << i;
    ASSERT_EQ(x.positions, y.positions) << i;
    ASSERT_EQ(x.document_ids, y.document_ids) << i;
    ASSERT_EQ(x.source_ids, y.source_ids) << i;
    any_difference = any_difference || x.tokens != z.tokens;
  }
  EXPECT_TRUE(any_difference);
}

// Saves the position after `skip` batches (through the integer form), restores it into a fresh
// stream, and checks the next `check` batches and the delivered counts are identical.
void expect_exact_resume(std::vector<MixSource> sources, MixerConfig cfg, PackingConfig pack,
                         int skip, int check) {
  TrainStream original(sources, cfg, pack);
  Batch b, r;
  for (int i = 0; i < skip; ++i) ASSERT_TRUE(original.next(b));
  const std::vector<int64_t> saved = original.position().to_ints();
  TrainStream resumed(sources, cfg, pack);
  resumed.restore(TrainStreamPosition::from_ints(saved));
  EXPECT_EQ(resumed.position(), original.position());
  const auto d0 = original.delivered(), d1 = resumed.delivered();
  for (size_t s = 0; s < d0.size(); ++s) {
    EXPECT_EQ(d0[s].tokens, d1[s].tokens);
    EXPECT_EQ(d0[s].examples, d1[s].examples);
  }
  for (int i = 0; i < check; ++i) {
    const bool more = original.next(b);
    ASSERT_EQ(resumed.next(r), more) << "batch " << skip + i;
    if (!more) break;
    ASSERT_EQ(b.tokens, r.tokens) << "batch " << skip + i;
    ASSERT_EQ(b.targets, r.targets);
    ASSERT_EQ(b.positions, r.positions);
    ASSERT_EQ(b.document_ids, r.document_ids);
    ASSERT_EQ(b.source_ids, r.source_ids);
  }
}

TEST(DataMixer, ResumeContinuesTheExactStream) {
  for (int skip : {0, 1, 7, 33, 120}) {
    expect_exact_resume(domain_general(0.15), mixer_config(9), packing(512, 3), skip, 40);
  }
  // Long documents (a piece in flight at every save), tiny sources (epochs roll over), Stop.
  auto long_docs = mixer_config(10);
  long_docs.max_piece_tokens = 100;
  expect_exact_resume(domain_general(0.4, 3000), long_docs, packing(333, 2), 17, 60);
  std::vector<MixSource> tiny = {{synthetic_source("a", 5, 1, 30, 3), 0.5, 0.0},
                                 {synthetic_source("b", 3, 1, 30, 4), 0.5, 0.0}};
  for (int skip : {3, 10, 25})
    expect_exact_resume(tiny, mixer_config(11), packing(16, 2), skip, 50);
  auto stop = mixer_config(12, MixBy::Tokens, OnExhausted::Stop);
  for (int skip : {0, 2, 4}) expect_exact_resume(tiny, stop, packing(16, 2), skip, 50);
}

TEST(DataMixer, PositionErrors) {
  Mixer a(domain_general(0.15), mixer_config(1));
  Mixer b(domain_general(0.2), mixer_config(1));
  try {
    b.seek(a.position());
    ADD_FAILURE() << "a position of another configuration was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another data configuration"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(MixerPosition::from_ints(std::vector<int64_t>{1, 2, 3}), Error);
  auto ints = a.position().to_ints();
  ints.pop_back();
  EXPECT_THROW(MixerPosition::from_ints(ints), Error);
  EXPECT_EQ(MixerPosition::from_ints(a.position().to_ints()), a.position());
}

TEST(DataMixer, EachEpochIsAFreshShuffleOfTheTrainingDocuments) {
  std::vector<MixSource> one = {{synthetic_source("only", 50, 1, 10, 5), 1.0, 0.0}};
  Mixer mixer(one, mixer_config(2));
  std::vector<std::vector<int64_t>> epochs(3);
  Piece p;
  for (auto& e : epochs) {
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(mixer.next(p));
      e.push_back(p.doc);
    }
  }
  for (auto& e : epochs) {
    std::vector<int64_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < 50; ++i) ASSERT_EQ(sorted[i], i);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  EXPECT_EQ(mixer.position().sources[0].epoch, 3);
}

TEST(DataMixer, StopEndsTheStreamWhenASourceRunsOut) {
  auto small = synthetic_source("small", 10, 5, 50, 6);
  auto big = synthetic_source("big", 1000, 5, 50, 7);
  TrainStream stream({{small, 0.5, 0.0}, {big, 0.5, 0.0}},
                     mixer_config(3, MixBy::Tokens, OnExhausted::Stop), packing(64, 4));
  Batch b;
  int batches = 0;
  while (stream.next(b)) ++batches;
  EXPECT_GT(batches, 0);
  EXPECT_FALSE(stream.next(b));
  const auto d = stream.delivered();
  // Every document of the small source, each with its EOS (the very last token may be left over).
  EXPECT_GE(d[0].tokens + 1, small->num_tokens() + small->num_documents());
  EXPECT_EQ(d[0].examples, 10);
  EXPECT_NEAR(d[0].token_fraction, 0.5, 0.05);
  // One complete pass over the small source, which ran out; the big one did not.
  EXPECT_EQ(d[0].epoch, 1);
  EXPECT_TRUE(d[0].exhausted);
  EXPECT_EQ(d[1].epoch, 0);
  EXPECT_FALSE(d[1].exhausted);
}

// max_epochs N: one source alone is drawn exactly N times over, each pass a permutation of its
// training documents, then the stream ends; in a mix, the stream ends when the source that runs
// out first has run out N times, and the same stream under Repeat (no limit) has the very same
// pieces up to there. A position saved at the end, sought by a mixer allowed more epochs, goes
// on exactly as the stream that was never limited.
TEST(DataMixer, MaxEpochsEndsTheStreamAfterThatManyPasses) {
  std::vector<MixSource> one = {{synthetic_source("only", 40, 1, 10, 5), 1.0, 0.1}};
  auto three = mixer_config(2);
  three.max_epochs = 3;
  Mixer m(one, three);
  std::map<int64_t, int> times;
  Piece p;
  int64_t pieces = 0;
  while (m.next(p)) {
    ++times[p.doc];
    ++pieces;
  }
  const size_t n_train = m.split(0).train.size();
  EXPECT_EQ(pieces, static_cast<int64_t>(3 * n_train));
  EXPECT_EQ(times.size(), n_train);
  for (const auto& [doc, n] : times) EXPECT_EQ(n, 3) << "document " << doc;
  EXPECT_FALSE(m.next(p));
  EXPECT_TRUE(m.position().ended);

  auto small = synthetic_source("small", 12, 5, 50, 6);
  auto big = synthetic_source("big", 400, 5, 50, 7);
  const std::vector<MixSource> mix = {{small, 0.5, 0.0}, {big, 0.5, 0.0}};
  auto two = mixer_config(3);
  two.max_epochs = 2;
  Mixer limited(mix, two), unlimited(mix, mixer_config(3));
  Piece a, b;
  while (limited.next(a)) {
    ASSERT_TRUE(unlimited.next(b));
    ASSERT_EQ(std::tie(a.source, a.doc, a.begin, a.end), std::tie(b.source, b.doc, b.begin, b.end));
  }
  EXPECT_EQ(limited.position().sources[0].epoch, 1);  // its second pass, drawn to the end
  EXPECT_EQ(limited.position().sources[0].next_doc, 12);
  EXPECT_EQ(limited.position().sources[1].epoch, 0);  // the big one is far from its end
  TrainStream ended(mix, two, packing(64, 4));
  Batch batch;
  while (ended.next(batch)) {
  }
  const auto d = ended.delivered();
  EXPECT_EQ(d[0].epoch, 2);
  EXPECT_TRUE(d[0].exhausted);
  EXPECT_EQ(d[1].epoch, 0);

  auto four = mixer_config(3);
  four.max_epochs = 4;
  Mixer more(mix, four);
  more.seek(limited.position());  // max_epochs is not part of the position's hash
  int64_t small_pieces = 0;
  while (more.next(a)) {
    ASSERT_TRUE(unlimited.next(b));
    ASSERT_EQ(std::tie(a.source, a.doc, a.begin, a.end), std::tie(b.source, b.doc, b.begin, b.end))
        << small_pieces;
    small_pieces += a.source == 0;
  }
  EXPECT_EQ(small_pieces, 24);  // its third and fourth passes (documents of one piece each)
}

TEST(DataMixer, WeightZeroSourcesAreNotTrainedOn) {
  TrainStream stream(domain_general(0.0), mixer_config(4), packing(256, 2));
  Batch b;
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(stream.next(b));
    for (int32_t s : b.source_ids) ASSERT_NE(s, 0);
  }
  EXPECT_EQ(stream.delivered()[0].tokens, 0);
  EXPECT_EQ(stream.delivered()[0].target_weight, 0.0);
}

TEST(DataMixer, ConfigurationErrors) {
  auto s = synthetic_source("s", 10, 1, 5, 1);
  const auto message = [](std::vector<MixSource> sources) -> std::string {
    try {
      Mixer m(std::move(sources), mixer_config());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message({{s, 0.0, 0.0}}).find("every source has weight 0"), std::string::npos);
  EXPECT_NE(message({{s, -1.0, 0.0}}).find("source 's' has weight -1"), std::string::npos);
  EXPECT_NE(message({{s, 1.0, 1.0}}).find("no training documents"), std::string::npos);
  EXPECT_NE(message({{s, 1.0, 1.5}}).find("heldout_fraction 1.5 is outside [0, 1]"),
            std::string::npos);
  EXPECT_NE(message({}).find("no data sources"), std::string::npos);
  EXPECT_EQ(message({{s, 0.0, 1.0}, {s, 1.0, 0.0}}), "");  // an evaluation-only source is fine
}

// ---- held-out split -------------------------------------------------------------------------

TEST(DataHeldout, DeterministicByDocumentAndSplitSeed) {
  const auto a = split_documents(10000, 0.2, 0, "t");
  const auto b = split_documents(10000, 0.2, 0, "t");
  const auto c = split_documents(10000, 0.2, 1, "t");
  EXPECT_EQ(a.heldout, b.heldout);
  EXPECT_NE(a.heldout, c.heldout);
  EXPECT_NEAR(a.heldout.size() / 10000.0, 0.2, 0.02);
  EXPECT_EQ(a.train.size() + a.heldout.size(), 10000u);
  EXPECT_TRUE(std::is_sorted(a.heldout.begin(), a.heldout.end()));
  // A longer corpus keeps the split of the documents it shares with the shorter one.
  const auto longer = split_documents(20000, 0.2, 0, "t");
  EXPECT_TRUE(std::equal(a.heldout.begin(), a.heldout.end(), longer.heldout.begin()));
  // Both sides get a document whenever they can.
  EXPECT_EQ(split_documents(2, 0.001, 0, "t").heldout.size(), 1u);
  EXPECT_EQ(split_documents(2, 0.999, 0, "t").train.size(), 1u);
  EXPECT_EQ(split_documents(5, 0.0, 0, "t").heldout.size(), 0u);
  EXPECT_EQ(split_documents(5, 1.0, 0, "t").train.size(), 0u);
}

TEST(DataHeldout, HeldoutDocumentsAreNeverTrainedOnAndEvaluatedWhole) {
  auto sources = domain_general(0.5, 200, 0.1);
  auto cfg = mixer_config(8);
  cfg.split_seed = 77;
  Mixer mixer(sources, cfg);
  for (int s = 0; s < 2; ++s) {
    const auto& split = mixer.split(s);
    EXPECT_EQ(split.heldout,
              split_documents(sources[s].data->num_documents(), 0.1, 77, "x").heldout);
    // The training seed does not move the split.
    auto other = mixer_config(9);
    other.split_seed = 77;
    EXPECT_EQ(Mixer(sources, other).split(s).heldout, split.heldout);
  }
  std::set<std::pair<int, int64_t>> trained;
  Piece p;
  for (int i = 0; i < 20000; ++i) {  // several epochs of the domain source
    ASSERT_TRUE(mixer.next(p));
    trained.insert({p.source, p.doc});
  }
  for (int s = 0; s < 2; ++s) {
    for (int64_t d : mixer.split(s).heldout) ASSERT_EQ(trained.count({s, d}), 0u) << s << " " << d;
  }
  // The eval stream delivers exactly the held-out documents' tokens, each followed by EOS.
  const auto& src = *sources[0].data;
  EvalStream eval(sources[0].data, mixer.split(0).heldout, packing(128, 4));
  std::vector<int32_t> expected, got;
  for (int64_t d : mixer.split(0).heldout) {
    const auto t = src.document_tokens(d);
    expected.insert(expected.end(), t.begin(), t.end());
    expected.push_back(kEos);
  }
  Batch b;
  int64_t counted = 0;
  while (eval.next(b)) {
    for (int64_t r = 0; r < b.batch; ++r) {
      for (int64_t i = 0; i < b.seq_len; ++i) {
        const size_t at = static_cast<size_t>(r * b.seq_len + i);
        if (b.source_ids[at] < 0) continue;
        got.push_back(b.tokens[at]);
      }
    }
    counted += b.counted_targets();
  }
  // Rows share a token: the inputs are the stream once; the last EOS may have no row of its own.
  if (got.size() + 1 == expected.size()) got.push_back(kEos);
  EXPECT_EQ(got, expected);
  // Every token but the first of each document is a target (EOS included).
  EXPECT_EQ(counted, static_cast<int64_t>(expected.size() - mixer.split(0).heldout.size()));
}

}  // namespace
}  // namespace loom
