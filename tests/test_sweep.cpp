// `loom sweep` (trainer/sweep.h, sweep_results.h, plot_svg.h): the grid from the command line
// (value lists, cartesian product, the two-source complement), errors for bad arguments, and a
// real two-point sweep on the tiny model tests/golden/hf_llama: results.csv / results.md hold
// what the runs' summaries say, plot.svg is well-formed XML with its points inside the axes, a
// second invocation skips finished runs, an interrupted run resumes to the same numbers, and a
// run folder of another recipe is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "autograd/check.h"
#include "data_test_helpers.h"
#include "trainer/plot_svg.h"
#include "trainer/sweep.h"

namespace loom {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

// ---- a small XML reader: enough to check that the SVG is well-formed --------------------------

struct XmlElement {
  std::string name;
  std::map<std::string, std::string> attrs;
  std::string text;  // character data directly inside, entities decoded
};

// Parses `doc` (an optional <?xml ...?> declaration, then one root element); every element in
// document order. Fails the test on anything not well-formed: unbalanced or mismatched tags,
// unquoted or repeated attributes, unknown entities, a stray '<' or '&', text after the root.
std::vector<XmlElement> parse_xml(const std::string& doc) {
  std::vector<XmlElement> all;
  std::vector<size_t> open;  // indices into `all`
  size_t i = 0;
  bool root_done = false;
  auto fail = [&](const std::string& why) {
    ADD_FAILURE() << "not well-formed XML at byte " << i << ": " << why << "\n"
                  << doc.substr(i > 40 ? i - 40 : 0, 120);
    throw std::runtime_error("bad xml");
  };
  auto decode = [&](const std::string& s) {
    std::string out;
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] == '<') fail("'<' in text or an attribute value");
      if (s[k] != '&') {
        out += s[k];
        continue;
      }
      const size_t semi = s.find(';', k);
      if (semi == std::string::npos) fail("'&' without ';'");
      const std::string ent = s.substr(k + 1, semi - k - 1);
      static const std::map<std::string, char> known = {
          {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}};
      if (known.count(ent))
        out += known.at(ent);
      else if (!ent.empty() && ent[0] == '#')
        out += '?';
      else
        fail("unknown entity &" + ent + ";");
      k = semi;
    }
    return out;
  };
  auto is_name_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' ||
           c == '.';
  };
  auto skip_space = [&] {
    while (i < doc.size() && std::isspace(static_cast<unsigned char>(doc[i]))) ++i;
  };
  auto read_name = [&] {
    const size_t start = i;
    while (i < doc.size() && is_name_char(doc[i])) ++i;
    if (i == start) fail("expected a name");
    return doc.substr(start, i - start);
  };
  if (doc.compare(0, 5, "<?xml") == 0) {
    i = doc.find("?>");
    if (i == std::string::npos) fail("unterminated declaration");
    i += 2;
  }
  while (i < doc.size()) {
    if (doc[i] != '<') {
      const size_t next = doc.find('<', i);
      const std::string text =
          doc.substr(i, next == std::string::npos ? std::string::npos : next - i);
      if (open.empty()) {
        if (text.find_first_not_of(" \t\r\n") != std::string::npos) fail("text outside the root");
      } else {
        all[open.back()].text += decode(text);
      }
      i = next == std::string::npos ? doc.size() : next;
      continue;
    }
    ++i;
    if (i < doc.size() && doc[i] == '/') {  // closing tag
      ++i;
      const std::string name = read_name();
      skip_space();
      if (i >= doc.size() || doc[i] != '>') fail("expected '>' after </" + name);
      ++i;
      if (open.empty() || all[open.back()].name != name)
        fail("</" + name + "> does not close the open element");
      open.pop_back();
      if (open.empty()) root_done = true;
      continue;
    }
    if (root_done) fail("a second root element");
    XmlElement e;
    e.name = read_name();
    for (;;) {
      skip_space();
      if (i >= doc.size()) fail("unterminated tag <" + e.name);
      if (doc[i] == '>' || doc.compare(i, 2, "/>") == 0) break;
      const std::string attr = read_name();
      skip_space();
      if (i >= doc.size() || doc[i] != '=') fail("attribute " + attr + " without '='");
      ++i;
      skip_space();
      if (i >= doc.size() || (doc[i] != '"' && doc[i] != '\'')) fail("unquoted value of " + attr);
      const char q = doc[i++];
      const size_t end = doc.find(q, i);
      if (end == std::string::npos) fail("unterminated value of " + attr);
      if (!e.attrs.emplace(attr, decode(doc.substr(i, end - i))).second)
        fail("repeated attribute " + attr);
      i = end + 1;
    }
    const bool self_closing = doc[i] == '/';
    i += self_closing ? 2 : 1;
    all.push_back(std::move(e));
    if (self_closing) {
      if (open.empty()) root_done = true;
    } else {
      open.push_back(all.size() - 1);
    }
  }
  if (!open.empty()) fail("<" + all[open.back()].name + "> is never closed");
  if (!root_done) fail("no root element");
  return all;
}

double attr_number(const XmlElement& e, const std::string& name) {
  EXPECT_TRUE(e.attrs.count(name)) << "<" << e.name << "> has no " << name;
  return e.attrs.count(name) ? std::stod(e.attrs.at(name)) : std::nan("");
}

bool has_class(const XmlElement& e, const std::string& cls) {
  if (!e.attrs.count("class")) return false;
  std::istringstream words(e.attrs.at("class"));
  for (std::string w; words >> w;)
    if (w == cls) return true;
  return false;
}

// ---- the tiny model and corpora
// ------------------------------------------------------------------

void write_corpus(const fs::path& path, int paragraphs, uint32_t seed,
                  const std::vector<std::string>& words) {
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int p = 0; p < paragraphs; ++p) {
    for (int w = 0; w < 12; ++w) out << words[rng() % words.size()] << (w % 4 == 3 ? ". " : " ");
    out << "\n\n";
  }
}

std::string tiny_recipe(const fs::path& a, const fs::path& b, const fs::path& out) {
  return "# sweep test recipe on the tiny model\n"
         "model:\n"
         "  path: " +
         (test::source_dir() / "tests/golden/hf_llama").string() +
         "\n"
         "lora:\n"
         "  rank: 4\n"
         "  alpha: 8.0\n"
         "  dropout: 0.0\n"
         "data:\n"
         "  sources:\n"
         "    - name: animals\n"
         "      path: " +
         a.string() +
         "\n"
         "      heldout_fraction: 0.05\n"
         "    - name: tools\n"
         "      path: " +
         b.string() +
         "\n"
         "      heldout_fraction: 0.05\n"
         "  mix: {animals: 0.5, tools: 0.5}\n"
         "  seq_len: 32\n"
         "train:\n"
         "  batch_size: 2\n"
         "  steps: 4\n"
         "  lr: 0.01\n"
         "eval:\n"
         "  every: 0\n"
         "  batches: 2\n"
         "checkpoint:\n"
         "  every: 2\n"
         "  keep_last: 3\n"
         "output:\n"
         "  dir: " +
         out.string() + "\n";
}

struct TinySweep {
  TempDir dir;
  fs::path recipe;
  TinySweep() {
    write_corpus(dir.path() / "animals.txt", 120, 1,
                 {"the cat", "a dog", "the bird", "sat", "ran", "the mat"});
    write_corpus(dir.path() / "tools.txt", 120, 2,
                 {"a hammer", "the saw", "nails", "cut", "drove", "the board"});
    recipe = dir.path() / "tiny.yaml";
    std::ofstream(recipe) << tiny_recipe(dir.path() / "animals.txt", dir.path() / "tools.txt",
                                         dir.path() / "runs/tiny");
  }
  SweepRequest request(std::vector<std::string> assignments) const {
    SweepRequest r;
    r.recipe_path = recipe.string();
    r.assignments = std::move(assignments);
    return r;
  }
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::vector<std::vector<std::string>> read_csv(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::string cell;
    bool quoted = false;
    for (size_t k = 0; k < line.size(); ++k) {
      const char c = line[k];
      if (quoted) {
        if (c == '"' && k + 1 < line.size() && line[k + 1] == '"')
          cell += '"', ++k;
        else if (c == '"')
          quoted = false;
        else
          cell += c;
      } else if (c == '"') {
        quoted = true;
      } else if (c == ',') {
        cells.push_back(cell);
        cell.clear();
      } else {
        cell += c;
      }
    }
    cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---- grid parsing
// ----------------------------------------------------------------------------------

TEST(SweepValues, SplitAtTopLevelCommas) {
  EXPECT_EQ(split_sweep_values("a", "0,0.15, 0.5 ,1.0"),
            (std::vector<std::string>{"0", "0.15", "0.5", "1.0"}));
  EXPECT_EQ(split_sweep_values("a", "[q_proj,v_proj],[q_proj]"),
            (std::vector<std::string>{"[q_proj,v_proj]", "[q_proj]"}));
  EXPECT_EQ(split_sweep_values("a", "{x: 1, y: 2},{x: 3}"),
            (std::vector<std::string>{"{x: 1, y: 2}", "{x: 3}"}));
  EXPECT_EQ(split_sweep_values("a", "'p,q',r"), (std::vector<std::string>{"'p,q'", "r"}));
  EXPECT_EQ(split_sweep_values("a", "1e-4"), (std::vector<std::string>{"1e-4"}));
  EXPECT_NE(error_of([] {
              split_sweep_values("train.lr=1,,2", "1,,2");
            }).find("value 2 of the list is empty"),
            std::string::npos);
  EXPECT_NE(error_of([] { split_sweep_values("train.lr=1,", "1,"); }).find("`train.lr=1,`"),
            std::string::npos);
  EXPECT_NE(error_of([] { split_sweep_values("k=[a,b", "[a,b"); }).find("unclosed bracket"),
            std::string::npos);
  EXPECT_NE(error_of([] { split_sweep_values("k=a]", "a]"); }).find("not opened"),
            std::string::npos);
}

TEST(SweepPlan, CartesianProductFirstKeySlowestWithComplement) {
  TinySweep t;
  const SweepPlan plan =
      make_sweep_plan(t.request({"mix.animals=0,0.15,1", "train.lr=0.01,0.02", "train.steps=3"}));
  ASSERT_EQ(plan.axes.size(), 2u);
  EXPECT_EQ(plan.fixed_overrides, (std::vector<std::string>{"train.steps=3"}));
  EXPECT_EQ(plan.complement_key, "mix.tools");
  EXPECT_EQ(plan.complement_of, "mix.animals");
  EXPECT_EQ(plan.domain, "animals");
  EXPECT_EQ(plan.general, "tools");
  EXPECT_EQ(plan.sweep_dir, (t.dir.path() / "runs/tiny-sweep").string());
  ASSERT_EQ(plan.points.size(), 6u);
  const std::vector<std::string> names = {
      "mix.animals=0_train.lr=0.01",    "mix.animals=0_train.lr=0.02",
      "mix.animals=0.15_train.lr=0.01", "mix.animals=0.15_train.lr=0.02",
      "mix.animals=1_train.lr=0.01",    "mix.animals=1_train.lr=0.02"};
  const double animals[] = {0, 0, 0.15, 0.15, 1, 1};
  const double lrs[] = {0.01, 0.02, 0.01, 0.02, 0.01, 0.02};
  for (size_t i = 0; i < 6; ++i) {
    const SweepPoint& p = plan.points[i];
    EXPECT_EQ(p.name, names[i]);
    EXPECT_EQ(p.dir, (fs::path(plan.sweep_dir) / names[i]).string());
    EXPECT_EQ(p.recipe.output.dir, p.dir);
    EXPECT_EQ(p.recipe.train.steps, 3);
    EXPECT_DOUBLE_EQ(p.recipe.train.lr, lrs[i]);
    ASSERT_EQ(p.recipe.data.sources.size(), 2u);
    EXPECT_DOUBLE_EQ(p.recipe.data.sources[0].weight, animals[i]);
    EXPECT_NEAR(p.recipe.data.sources[1].weight, 1 - animals[i], 1e-12);
    // swept values, then the complement
    ASSERT_EQ(p.values.size(), 3u);
    EXPECT_EQ(p.values[0].first, "mix.animals");
    EXPECT_EQ(p.values[1].first, "train.lr");
    EXPECT_EQ(p.values[2].first, "mix.tools");
  }
  EXPECT_EQ(plan.points[2].values[2].second, "0.85");  // 1 - 0.15, printed as written
  EXPECT_EQ(plan.points[0].values[2].second, "1");
  EXPECT_EQ(plan.points[4].values[2].second, "0");
  const std::string text = describe_sweep_plan(plan);
  EXPECT_NE(text.find("mix.tools = 1 - mix.animals"), std::string::npos) << text;
  EXPECT_NE(text.find("6 points"), std::string::npos) << text;
  EXPECT_NE(text.find("3 steps x 64 tokens"), std::string::npos) << text;
  EXPECT_NE(text.find("unknown until the first run finishes"), std::string::npos) << text;
}

TEST(SweepPlan, NoComplementWhenTheOtherWeightIsGivenOrMoreThanTwoSources) {
  TinySweep t;
  SweepPlan plan = make_sweep_plan(t.request({"mix.animals=1,3", "mix.tools=1"}));
  EXPECT_EQ(plan.complement_key, "");
  EXPECT_DOUBLE_EQ(plan.points[1].recipe.data.sources[0].weight, 3);
  EXPECT_DOUBLE_EQ(plan.points[1].recipe.data.sources[1].weight, 1);
  // A third source: weights stay relative; the general source must be named.
  const std::string third =
      "data.sources.2={name: more, path: " + (t.dir.path() / "tools.txt").string() + "}";
  EXPECT_NE(error_of([&] {
              make_sweep_plan(t.request({"mix.animals=0.2,0.8", third}));
            }).find("pass --general NAME"),
            std::string::npos);
  SweepRequest r = t.request({"mix.animals=0.2,0.8", third});
  r.general = "more";
  plan = make_sweep_plan(r);
  EXPECT_EQ(plan.complement_key, "");
  EXPECT_EQ(plan.general, "more");
  EXPECT_DOUBLE_EQ(plan.points[0].recipe.data.sources[1].weight, 0.5);  // from the recipe file
  EXPECT_NE(describe_sweep_plan(plan).find("relative to the other sources"), std::string::npos);
}

TEST(SweepPlan, BadArgumentsAreClearErrors) {
  TinySweep t;
  auto err = [&](std::vector<std::string> args) {
    return error_of([&] { make_sweep_plan(t.request(std::move(args))); });
  };
  std::string e = err({"train.lrr=0.01,0.02"});
  EXPECT_NE(e.find("unknown key `train.lrr`"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean `train.lr`"), std::string::npos) << e;
  e = err({"mix.animls=0,1"});
  EXPECT_NE(e.find("did you mean \"animals\""), std::string::npos) << e;
  e = err({"train.lr=0.01,,0.02"});
  EXPECT_NE(e.find("empty"), std::string::npos) << e;
  e = err({"train.steps=3"});
  EXPECT_NE(e.find("nothing to sweep"), std::string::npos) << e;
  e = err({"mix.animals=0,1.5"});
  EXPECT_NE(e.find("share in [0, 1]"), std::string::npos) << e;
  EXPECT_NE(e.find("found 1.5"), std::string::npos) << e;
  e = err({"mix.animals=0,abc"});
  EXPECT_NE(e.find("found abc"), std::string::npos) << e;
  e = err({"lora.targets=q_proj,v_proj"});
  EXPECT_NE(e.find("in brackets"), std::string::npos) << e;
  e = err({"train.lr=0.01,0.01"});
  EXPECT_NE(e.find("twice"), std::string::npos) << e;
  e = err({"mix.animals=0,1", "data.mix.animals=0.5"});
  EXPECT_NE(e.find("given twice"), std::string::npos) << e;
  e = err({"mix.animals=0,1", "output.dir=x"});
  EXPECT_NE(e.find("--out"), std::string::npos) << e;
  e = err({"train.lr=0.01,0.02"});
  EXPECT_NE(e.find("pass --domain NAME"), std::string::npos) << e;
  e = err({"mix.animals=0,1", "eval.batches=0"});
  EXPECT_NE(e.find("eval.batches"), std::string::npos) << e;
  SweepRequest r = t.request({"train.steps=2,0"});  // a bad value at one point names the point
  r.domain = "animals";
  e = error_of([&] { make_sweep_plan(r); });
  EXPECT_NE(e.find("point 2/2 (train.steps=0)"), std::string::npos) << e;
  EXPECT_NE(e.find("must be at least 1"), std::string::npos) << e;
  r = t.request({"mix.animals=0,1"});
  r.domain = "tool";
  e = error_of([&] { make_sweep_plan(r); });
  EXPECT_NE(e.find("--domain tool"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean \"tools\""), std::string::npos) << e;
  // A single value is an ordinary override, passed on verbatim (no list parsing of quotes).
  const std::string quoted = (t.dir.path() / "o'brien [1].txt").string();
  const SweepPlan verbatim =
      make_sweep_plan(t.request({"mix.animals=0,1", "data.sources.1.path=" + quoted}));
  EXPECT_EQ(verbatim.points[1].recipe.data.sources[1].path, quoted);
  // Lists are swept in brackets.
  const SweepPlan plan =
      make_sweep_plan(t.request({"mix.animals=0.5,1", "lora.targets=[q_proj,v_proj]"}));
  EXPECT_EQ(plan.points[0].recipe.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
}

// ---- the plot
// ---------------------------------------------------------------------------------------

TEST(SweepPlot, NiceTicksEncloseTheRange) {
  AxisTicks t = nice_ticks(0.3, 9.7);
  EXPECT_DOUBLE_EQ(t.step, 2);
  EXPECT_DOUBLE_EQ(t.first, 0);
  EXPECT_DOUBLE_EQ(t.last, 10);
  EXPECT_EQ(t.values.size(), 6u);
  t = nice_ticks(36.9, 113.6);
  EXPECT_LE(t.first, 36.9);
  EXPECT_GE(t.last, 113.6);
  EXPECT_GE(t.values.size(), 4u);
  EXPECT_LE(t.values.size(), 12u);
  t = nice_ticks(5, 5);  // one value: widened
  EXPECT_LT(t.first, 5);
  EXPECT_GT(t.last, 5);
  EXPECT_EQ(format_tick(2.5, 0.5), "2.5");
  EXPECT_EQ(format_tick(40, 20), "40");
  EXPECT_EQ(format_tick(0.30000000000000004, 0.1), "0.3");
  EXPECT_EQ(format_tick(-1e-17, 0.1), "0.0");
  EXPECT_EQ(xml_escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
}

TEST(SweepPlot, SvgIsWellFormedWithPointsInsideTheAxes) {
  ScatterPlot plot;
  plot.title = "x & y <test>";
  plot.x_label = "domain";
  plot.y_label = "general";
  plot.connect = true;
  plot.points = {{68.6, 113.6, "base model", true},
                 {60.1, 14.2, "mix.foldoc=0", false},
                 {37.0, 14.6, "mix.foldoc=0.15", false},
                 {30.5, 40.0, "mix.foldoc=1 \"all\"", false},
                 {std::nan(""), 10, "broken", false}};
  const auto doc = parse_xml(render_scatter_svg(plot));
  ASSERT_EQ(doc.front().name, "svg");
  const XmlElement* area = nullptr;
  for (const auto& e : doc)
    if (has_class(e, "plot-area")) area = &e;
  ASSERT_NE(area, nullptr);
  const double x0 = attr_number(*area, "x"), y0 = attr_number(*area, "y");
  const double x1 = x0 + attr_number(*area, "width"), y1 = y0 + attr_number(*area, "height");
  int circles = 0, refs = 0, labels = 0, polylines = 0;
  std::vector<std::pair<double, double>> pixel;  // of the circles, in order
  for (const auto& e : doc) {
    if (has_class(e, "point") && e.name == "circle") {
      ++circles;
      const double cx = attr_number(e, "cx"), cy = attr_number(e, "cy");
      EXPECT_GT(cx, x0);
      EXPECT_LT(cx, x1);
      EXPECT_GT(cy, y0);
      EXPECT_LT(cy, y1);
      pixel.emplace_back(cx, cy);
    }
    if (has_class(e, "reference")) {
      ++refs;
      const double cx = attr_number(e, "x") + 5, cy = attr_number(e, "y") + 5;
      EXPECT_GT(cx, x0);
      EXPECT_LT(cx, x1);
      EXPECT_GT(cy, y0);
      EXPECT_LT(cy, y1);
      EXPECT_DOUBLE_EQ(attr_number(e, "data-x"), 68.6);
    }
    if (has_class(e, "label")) ++labels;
    if (e.name == "polyline") ++polylines;
    if (has_class(e, "title")) {
      EXPECT_EQ(e.text, "x & y <test>");
    }
    if (has_class(e, "note")) {
      EXPECT_NE(e.text.find("broken"), std::string::npos);
    }
  }
  EXPECT_EQ(circles, 3);
  EXPECT_EQ(refs, 1);
  EXPECT_EQ(labels, 4);
  EXPECT_EQ(polylines, 1);
  // Larger values lie right (x) and up (smaller y pixel).
  ASSERT_EQ(pixel.size(), 3u);
  EXPECT_GT(pixel[0].first, pixel[1].first);    // 60.1 right of 37.0
  EXPECT_LT(pixel[2].second, pixel[1].second);  // 40.0 above 14.6
  // Tick labels on both axes.
  int xticks = 0, yticks = 0;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (doc[i].name == "g" && has_class(doc[i], "x-ticks")) xticks = 1;
    if (doc[i].name == "g" && has_class(doc[i], "y-ticks")) yticks = 1;
  }
  EXPECT_EQ(xticks + yticks, 2);

  ScatterPlot empty;
  empty.points = {{std::nan(""), 1, "a", false}};
  EXPECT_NE(error_of([&] { render_scatter_svg(empty); }).find("no point has finite"),
            std::string::npos);
}

TEST(SweepPlot, NearbyLabelsDoNotOverlap) {
  // The committed FOLDOC sweep's points: two runs lie close together.
  ScatterPlot plot;
  plot.x_label = "foldoc";
  plot.y_label = "wordnet";
  plot.points = {{58.66, 101.02, "base model", true},
                 {52.05, 11.41, "mix.foldoc=0", false},
                 {30.24, 11.78, "mix.foldoc=0.15", false},
                 {23.31, 12.56, "mix.foldoc=0.5", false},
                 {20.26, 51.64, "mix.foldoc=1.0", false}};
  struct Box {
    double x0, y0, x1, y1;
  };
  std::vector<Box> boxes;  // at about 7 px a character, 12 px high
  for (const auto& e : parse_xml(render_scatter_svg(plot))) {
    if (!has_class(e, "label")) continue;
    const double x = attr_number(e, "x"), y = attr_number(e, "y");
    const double w = 7.0 * static_cast<double>(e.text.size());
    const bool end = e.attrs.at("text-anchor") == "end";
    boxes.push_back({end ? x - w : x, y - 12, end ? x : x + w, y + 3});
  }
  ASSERT_EQ(boxes.size(), 5u);
  for (size_t i = 0; i < boxes.size(); ++i)
    for (size_t j = i + 1; j < boxes.size(); ++j)
      EXPECT_FALSE(boxes[i].x0 < boxes[j].x1 && boxes[j].x0 < boxes[i].x1 &&
                   boxes[i].y0 < boxes[j].y1 && boxes[j].y0 < boxes[i].y1)
          << "labels " << i << " and " << j << " overlap";
}

// ---- a real sweep on the tiny model
// --------------------------------------------------------------

TEST(SweepRun, TableAndPlotFromRealRunsThenSkipResumeAndRefuse) {
  TinySweep t;
  const SweepPlan plan = make_sweep_plan(t.request({"mix.animals=0,1"}));
  SweepOptions quiet;
  quiet.quiet = true;
  const SweepOutcome first = run_sweep(plan, quiet);
  EXPECT_EQ(first.ran, 2);
  EXPECT_EQ(first.skipped, 0);
  EXPECT_TRUE(first.stopped.empty());
  ASSERT_EQ(first.table.runs.size(), 2u);

  // results.csv against the runs' own summaries.
  const auto rows = read_csv(first.results_csv);
  ASSERT_EQ(rows.size(), 3u);
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < rows[0].size(); ++i) col[rows[0][i]] = i;
  for (const char* c :
       {"mix.animals", "mix.tools", "animals_base_ppl", "animals_final_ppl", "animals_gain",
        "animals_gain_pct", "animals_train_tokens", "tools_base_ppl", "tools_final_ppl",
        "tools_gain", "tools_train_tokens", "steps", "wall_seconds", "run_dir"})
    ASSERT_TRUE(col.count(c)) << c;
  for (size_t r = 1; r <= 2; ++r) {
    const auto& row = rows[r];
    ASSERT_EQ(row.size(), rows[0].size());
    const nlohmann::json s =
        nlohmann::json::parse(read_file(fs::path(row[col["run_dir"]]) / "summary.json"));
    for (const std::string src : {"animals", "tools"}) {
      const double base = s["eval"][src]["before"]["perplexity"].get<double>();
      const double fin = s["eval"][src]["after"]["perplexity"].get<double>();
      EXPECT_DOUBLE_EQ(std::stod(row[col[src + "_base_ppl"]]), base);
      EXPECT_DOUBLE_EQ(std::stod(row[col[src + "_final_ppl"]]), fin);
      EXPECT_NEAR(std::stod(row[col[src + "_gain"]]), base - fin, 1e-9 * base);
      EXPECT_NEAR(std::stod(row[col[src + "_gain_pct"]]), 100 * (base - fin) / base, 1e-6);
      EXPECT_EQ(std::stoll(row[col[src + "_train_tokens"]]),
                s["delivered"][src]["tokens"].get<int64_t>());
    }
    EXPECT_EQ(row[col["steps"]], "4");
    EXPECT_GT(std::stod(row[col["wall_seconds"]]), 0);
  }
  // Weight 0 trains nothing on a source; it is still evaluated, and the base is the same.
  EXPECT_EQ(rows[1][col["mix.animals"]], "0");
  EXPECT_EQ(rows[1][col["mix.tools"]], "1");
  EXPECT_EQ(rows[1][col["animals_train_tokens"]], "0");
  EXPECT_GT(std::stoll(rows[1][col["tools_train_tokens"]]), 0);
  EXPECT_EQ(rows[2][col["tools_train_tokens"]], "0");
  EXPECT_GT(std::stoll(rows[2][col["animals_train_tokens"]]), 0);
  EXPECT_EQ(rows[1][col["animals_base_ppl"]], rows[2][col["animals_base_ppl"]]);
  // Training on a source helps it more than training on the other one.
  EXPECT_LT(std::stod(rows[2][col["animals_final_ppl"]]),
            std::stod(rows[1][col["animals_final_ppl"]]));
  EXPECT_LT(std::stod(rows[1][col["tools_final_ppl"]]), std::stod(rows[2][col["tools_final_ppl"]]));

  // results.md: the notes, a header, two rows, the base line.
  const std::string md = read_file(first.results_md);
  EXPECT_NE(md.find("mix.tools = 1 - mix.animals"), std::string::npos) << md;
  EXPECT_NE(md.find("| mix.animals | mix.tools | animals base | animals final | animals gain |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| 0 | 1 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 1 | 0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("Base model (every run's step-0 eval agrees)"), std::string::npos) << md;
  const double a_base = std::stod(rows[1][col["animals_base_ppl"]]);
  EXPECT_NE(md.find(fmt::format("{:.2f}", a_base)), std::string::npos) << md;

  // plot.svg: one point per run at its perplexities, plus the base.
  const auto svg = parse_xml(read_file(first.plot_svg));
  int circles = 0, refs = 0;
  for (const auto& e : svg) {
    if (e.name == "circle" && has_class(e, "point")) {
      const double x = attr_number(e, "data-x"), y = attr_number(e, "data-y");
      const bool run1 = x == std::stod(rows[1][col["animals_final_ppl"]]) &&
                        y == std::stod(rows[1][col["tools_final_ppl"]]);
      const bool run2 = x == std::stod(rows[2][col["animals_final_ppl"]]) &&
                        y == std::stod(rows[2][col["tools_final_ppl"]]);
      EXPECT_TRUE(run1 || run2) << x << ", " << y;
      ++circles;
    }
    if (has_class(e, "reference")) {
      EXPECT_DOUBLE_EQ(attr_number(e, "data-x"), a_base);
      ++refs;
    }
  }
  EXPECT_EQ(circles, 2);
  EXPECT_EQ(refs, 1);

  // Again: both runs finished, nothing runs, the same table.
  const SweepOutcome again = run_sweep(make_sweep_plan(t.request({"mix.animals=0,1"})), quiet);
  EXPECT_EQ(again.ran, 0);
  EXPECT_EQ(again.skipped, 2);
  EXPECT_EQ(read_csv(again.results_csv), rows);
  EXPECT_NE(describe_sweep_plan(plan).find("finished (summary.json): skipped"), std::string::npos);
  EXPECT_NE(describe_sweep_plan(plan).find("nothing left to run"), std::string::npos);

  // Interrupt the second run after its step-2 checkpoint: it resumes from there and ends with
  // the same numbers as the uninterrupted run.
  const fs::path run2 = plan.points[1].dir;
  fs::remove(run2 / "summary.json");
  fs::remove(run2 / "checkpoints/checkpoint-4.h5");
  const SweepPointState state = sweep_point_state(plan.points[1]);
  EXPECT_EQ(state.kind, SweepPointState::Kind::Partial);
  EXPECT_EQ(state.checkpoint_step, 2);
  const std::string text = describe_sweep_plan(plan);
  EXPECT_NE(text.find("resumes from step 2"), std::string::npos) << text;
  EXPECT_NE(text.find("for 2 steps left"), std::string::npos) << text;
  const SweepOutcome resumed = run_sweep(plan, quiet);
  EXPECT_EQ(resumed.ran, 1);
  EXPECT_EQ(resumed.skipped, 1);
  const auto rows2 = read_csv(resumed.results_csv);
  for (const char* c :
       {"animals_base_ppl", "animals_final_ppl", "tools_final_ppl", "animals_train_tokens"})
    EXPECT_EQ(rows2[2][col[c]], rows[2][col[c]]) << c;

  // Another recipe into the same folders is refused, naming the folder.
  const std::string e = error_of([&] {
    const SweepPlan other = make_sweep_plan(t.request({"mix.animals=0,1", "train.lr=0.02"}));
    run_sweep(other, quiet);
  });
  EXPECT_NE(e.find("holds a run of a different recipe"), std::string::npos) << e;
  EXPECT_NE(e.find(plan.points[0].dir), std::string::npos) << e;
  EXPECT_NE(e.find("lr:"), std::string::npos) << e;
}

// Ctrl-C during a sweep (a real SIGINT, raised after step 3 of the first run): that run saves
// its checkpoint, the sweep runs nothing further and says so; the same sweep again resumes the
// run from step 3, then runs the second point.
TEST(SweepRun, CtrlCEndsTheSweepAfterTheRunsCheckpointAndTheSameSweepContinues) {
  std::signal(SIGINT, SIG_DFL);  // as at a terminal, not ignored as in a background job
  TinySweep t;
  const SweepPlan plan = make_sweep_plan(t.request({"mix.animals=0,1"}));
  SweepOptions options;
  options.quiet = true;
  options.after_step = [](int64_t step) {
    if (step == 3) std::raise(SIGINT);
  };
  const SweepOutcome cut = run_sweep(plan, options);
  EXPECT_EQ(cut.interrupted_by, SIGINT);
  EXPECT_EQ(cut.ran, 1);
  EXPECT_TRUE(cut.table.runs.empty());
  const fs::path run1 = plan.points[0].dir;
  EXPECT_FALSE(fs::exists(run1 / "summary.json"));
  EXPECT_TRUE(fs::exists(run1 / "checkpoints/checkpoint-3.h5"));
  EXPECT_FALSE(fs::exists(plan.points[1].dir)) << "the sweep went on after Ctrl-C";
  const SweepPointState state = sweep_point_state(plan.points[0]);
  EXPECT_EQ(state.kind, SweepPointState::Kind::Partial);
  EXPECT_EQ(state.checkpoint_step, 3);

  // results.md of the cut sweep names both points as not finished, and how far each got.
  const std::string md = read_file(cut.results_md);
  EXPECT_NE(md.find("Not finished (2 of 2 points; run the same `loom sweep` command again to "
                    "continue them): " +
                    plan.points[0].name + " (checkpoint at step 3), " + plan.points[1].name +
                    " (not started)."),
            std::string::npos)
      << md;

  options.after_step = nullptr;
  const SweepOutcome rest = run_sweep(plan, options);
  EXPECT_EQ(read_file(rest.results_md).find("Not finished"), std::string::npos);
  EXPECT_EQ(rest.interrupted_by, 0);
  EXPECT_EQ(rest.ran, 2);
  ASSERT_EQ(rest.table.runs.size(), 2u);
  for (const RunOutcome& r : rest.table.runs) EXPECT_EQ(r.steps, 4) << r.name;
}

// A point that fails (here its data file is missing): the sweep stops with an error naming the
// point and where the results so far are; results.md has the finished run and names the failed
// point as not finished.
TEST(SweepRun, AFailingPointStopsTheSweepAndResultsSaySo) {
  TinySweep t;
  const std::string tools = (t.dir.path() / "tools.txt").string();
  const std::string gone = (t.dir.path() / "gone.txt").string();
  SweepRequest request =
      t.request({"mix.animals=0.5", "data.sources.1.path=" + tools + "," + gone});
  request.domain = "animals";
  const SweepPlan plan = make_sweep_plan(request);
  ASSERT_EQ(plan.points.size(), 2u);
  SweepOptions quiet;
  quiet.quiet = true;
  const std::string e = error_of([&] { run_sweep(plan, quiet); });
  EXPECT_NE(e.find("sweep 2/2: " + plan.points[1].name + " failed: "), std::string::npos) << e;
  EXPECT_NE(e.find("gone.txt"), std::string::npos) << e;
  EXPECT_NE(e.find("results.md"), std::string::npos) << e;
  const std::string md = read_file(plan.sweep_dir + "/results.md");
  EXPECT_NE(md.find("Not finished (1 of 2 points"), std::string::npos) << md;
  EXPECT_NE(md.find(plan.points[1].name + " (not started)"), std::string::npos) << md;
  EXPECT_NE(md.find("| " + tools + " |"), std::string::npos) << md;
}

TEST(SweepResults, SummaryErrorsNameTheFile) {
  TempDir d;
  std::string e = error_of([&] { read_run_outcome((d.path() / "none").string()); });
  EXPECT_NE(e.find("summary.json: cannot open"), std::string::npos) << e;
  fs::create_directories(d.path() / "bad");
  std::ofstream(d.path() / "bad/summary.json")
      << "{\"eval\": {\"a\": {\"after\": {\"perplexity\": \"x\"}}}}";
  e = error_of([&] { read_run_outcome((d.path() / "bad").string()); });
  EXPECT_NE(e.find("eval.a.after.perplexity: expected a number"), std::string::npos) << e;
  std::ofstream(d.path() / "bad/summary.json") << "[1, 2]";
  e = error_of([&] { read_run_outcome((d.path() / "bad").string()); });
  EXPECT_NE(e.find("not a JSON object"), std::string::npos) << e;
}

}  // namespace
}  // namespace loom
