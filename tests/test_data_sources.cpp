// Data module, readers: the 64-bit hash, plain text splitting, JSONL / instruct / chat records and
// the ChatML rendering, gzip input, globs and folders, every bad-input case (the error names file
// and line; skip_bad_records counts instead), dictd dictionaries checked entry by entry against
// their index (synthetic, and the real FOLDOC / GCIDE when installed).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "autograd/check.h"
#include "data/chat_template.h"
#include "data/dictd.h"
#include "data/file_io.h"
#include "data/hash.h"
#include "data/sources.h"
#include "data_test_helpers.h"

namespace loom {
namespace {

using test::TempDir;
using test::write_file;

// The text of each document (segments joined).
std::vector<std::string> texts(const SourceDocuments& d) {
  std::vector<std::string> out;
  for (const auto& doc : d.documents) {
    std::string t;
    for (const auto& s : doc.segments) t += s.text;
    out.push_back(t);
  }
  return out;
}

std::vector<uint64_t> lines(const SourceDocuments& d) {
  std::vector<uint64_t> out;
  for (const auto& doc : d.documents) out.push_back(doc.line);
  return out;
}

SourceConfig config(const std::string& path, SourceFormat format) {
  SourceConfig c;
  c.name = "src";
  c.path = path;
  c.format = format;
  return c;
}

// Runs read_source and returns the loom::Error message ("" when it did not throw).
std::string read_error(const SourceConfig& c) {
  try {
    read_source(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- hash ---------------------------------------------------------------------------------------

TEST(DataHash, StreamingEqualsOneShotAndBitsMatter) {
  std::mt19937_64 rng(1);
  std::string data(10000, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  const uint64_t whole = hash64(data);
  for (int trial = 0; trial < 50; ++trial) {
    Hasher64 h;
    size_t pos = 0;
    while (pos < data.size()) {
      const size_t n = std::min<size_t>(data.size() - pos, rng() % 100);
      h.update(data.data() + pos, n);
      pos += n;
    }
    ASSERT_EQ(h.digest(), whole);
  }
  for (size_t len : {0, 1, 7, 8, 31, 32, 33, 100}) {
    EXPECT_EQ(hash64(data.substr(0, len)), hash64(data.substr(0, len)));
    if (len > 0) {
      std::string flipped = data.substr(0, len);
      flipped[len / 2] ^= 1;
      EXPECT_NE(hash64(flipped), hash64(data.substr(0, len))) << len;
    }
  }
  EXPECT_NE(hash64(data, 1), hash64(data, 2));
  EXPECT_EQ(hex64(0xabcull), "0000000000000abc");
  Hasher64 a, b;
  a.update_string("ab");
  a.update_string("c");
  b.update_string("a");
  b.update_string("bc");
  EXPECT_NE(a.digest(), b.digest());
}

// ---- plain text ---------------------------------------------------------------------------------

TEST(DataText, BlankLinesSplitDocumentsWithTheirLines) {
  TempDir dir;
  write_file(dir / "a.txt", "\nfirst doc\nline two\n\n  \t\nsecond\r\n\r\nthird\n");
  const auto d = read_source(config(dir / "a.txt", SourceFormat::Text));
  EXPECT_EQ(texts(d), (std::vector<std::string>{"first doc\nline two", "second\r", "third"}));
  EXPECT_EQ(lines(d), (std::vector<uint64_t>{2, 6, 8}));
  for (const auto& doc : d.documents) {
    ASSERT_EQ(doc.segments.size(), 1u);
    EXPECT_TRUE(doc.segments[0].trained);
    EXPECT_FALSE(doc.segments[0].parse_special);
  }
}

TEST(DataText, LiteralSeparatorAsInFortuneFiles) {
  TempDir dir;
  write_file(dir / "fortunes", "A fortune.\n%\nAnother\none.\n%\n%\nLast 100% true\n%\n");
  auto c = config(dir / "fortunes", SourceFormat::Text);
  set_text_split(c, "%");  // a separator line
  auto d = read_source(c);
  EXPECT_EQ(texts(d), (std::vector<std::string>{"A fortune.", "Another\none.", "Last 100% true"}));
  EXPECT_EQ(lines(d), (std::vector<uint64_t>{1, 3, 7}));
  // A separator with a line break is cut out wherever it occurs.
  write_file(dir / "chapters", "\none\n\n\n\ntwo\nstill two\n\n\nthree");
  c.path = dir / "chapters";
  set_text_split(c, "\n\n\n");
  d = read_source(c);
  EXPECT_EQ(texts(d), (std::vector<std::string>{"one", "two\nstill two", "three"}));
  EXPECT_EQ(lines(d), (std::vector<uint64_t>{2, 6, 10}));
}

TEST(DataText, OneDocumentPerFileInAFolderSorted) {
  TempDir dir;
  write_file(dir / "corpus/b.txt", "bee\n\nstill bee\n");
  write_file(dir / "corpus/a.txt", "ay");
  write_file(dir / "corpus/sub/c.txt", "sea");
  write_file(dir / "corpus/.hidden", "not read");
  auto c = config(dir / "corpus", SourceFormat::Text);
  set_text_split(c, "file");
  const auto d = read_source(c);
  EXPECT_EQ(texts(d), (std::vector<std::string>{"ay", "bee\n\nstill bee\n", "sea"}));
  ASSERT_EQ(d.files.size(), 3u);
  EXPECT_EQ(d.files[0], dir / "corpus/a.txt");
  EXPECT_EQ(d.files[2], dir / "corpus/sub/c.txt");
  set_text_split(c, "");
  EXPECT_EQ(read_source(c).documents.size(), 4u);  // blank lines split b.txt in two
}

TEST(DataText, EmptyFileAsADocumentIsABadRecord) {
  TempDir dir;
  write_file(dir / "c/a.txt", "fine");
  write_file(dir / "c/empty.txt", " \n");
  auto c = config(dir / "c", SourceFormat::Text);
  set_text_split(c, "file");
  const std::string err = read_error(c);
  EXPECT_NE(err.find("data source 'src'"), std::string::npos) << err;
  EXPECT_NE(err.find(dir / "c/empty.txt" + ":1: the file is empty"), std::string::npos) << err;
  c.skip_bad_records = true;
  const auto d = read_source(c);
  EXPECT_EQ(d.documents.size(), 1u);
  EXPECT_EQ(d.bad.count, 1);
}

TEST(DataText, InvalidUtf8NamesFileAndLine) {
  TempDir dir;
  write_file(dir / "t.txt", "good one\n\nbad \xff here\nline\n\nfine\n");
  auto c = config(dir / "t.txt", SourceFormat::Text);
  const std::string err = read_error(c);
  EXPECT_NE(err.find(dir / "t.txt" + ":3: invalid UTF-8 at byte 5 of line 3 (0xff)"),
            std::string::npos)
      << err;
  c.skip_bad_records = true;
  const auto d = read_source(c);
  EXPECT_EQ(texts(d), (std::vector<std::string>{"good one", "fine"}));
  EXPECT_EQ(d.bad.count, 1);
  ASSERT_EQ(d.bad.messages.size(), 1u);
  EXPECT_NE(d.bad.messages[0].find(":3:"), std::string::npos);
}

// ---- JSONL --------------------------------------------------------------------------------------

TEST(DataJsonl, TextFieldAndBlankLines) {
  TempDir dir;
  write_file(dir / "a.jsonl",
             "{\"text\": \"hello\", \"id\": 1}\n\n{\"text\": \"w\\u00f6rld\\n2\"}\r\n   \n"
             "{\"body\": \"x\", \"text\": \"third\"}");
  write_file(dir / "bom.jsonl", "\xEF\xBB\xBF{\"text\": \"after a byte order mark\"}\n");
  EXPECT_EQ(texts(read_source(config(dir / "bom.jsonl", SourceFormat::Jsonl)))[0],
            "after a byte order mark");
  const auto d = read_source(config(dir / "a.jsonl", SourceFormat::Jsonl));
  EXPECT_EQ(texts(d), (std::vector<std::string>{"hello", "w\xc3\xb6rld\n2", "third"}));
  EXPECT_EQ(lines(d), (std::vector<uint64_t>{1, 3, 5}));
  auto c = config(dir / "a.jsonl", SourceFormat::Jsonl);
  c.text_field = "body";
  const std::string err = read_error(c);
  EXPECT_NE(err.find(dir / "a.jsonl" + ":1: missing field 'body' (the object has 'id', 'text')"),
            std::string::npos)
      << err;
}

// Each bad record kind: the error names file and line; skip_bad_records keeps the good records
// and counts every bad one.
TEST(DataJsonl, EveryBadRecordNamesFileAndLine) {
  TempDir dir;
  struct Case {
    std::string line;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"{\"text\": \"unterminated}", "malformed JSON"},
      {"{\"other\": \"x\"}", "missing field 'text' (the object has 'other')"},
      {"{\"text\": 42}", "field 'text' is a number, expected a string"},
      {"{\"text\": \"\"}", "field 'text' is empty"},
      {"[1, 2]", "the line is a JSON array, expected an object"},
      {"{\"text\": \"caf\xe9\"}", "invalid UTF-8 at byte 14 of line 2 (0xe9)"},
  };
  for (const auto& k : cases) {
    write_file(dir / "x.jsonl", "{\"text\": \"ok\"}\n" + k.line + "\n{\"text\": \"ok too\"}\n");
    auto c = config(dir / "x.jsonl", SourceFormat::Jsonl);
    const std::string err = read_error(c);
    EXPECT_NE(err.find("data source 'src': " + dir / "x.jsonl" + ":2: " + k.expect),
              std::string::npos)
        << "line: " << k.line << "\nerror: " << err;
    EXPECT_NE(err.find("skip_bad_records"), std::string::npos) << err;
    c.skip_bad_records = true;
    const auto d = read_source(c);
    EXPECT_EQ(texts(d), (std::vector<std::string>{"ok", "ok too"})) << k.line;
    EXPECT_EQ(d.bad.count, 1) << k.line;
  }
  // Many bad records: all counted, the first few messages kept.
  std::string many;
  for (int i = 0; i < 50; ++i) many += "not json\n{\"text\": \"good\"}\n";
  write_file(dir / "many.jsonl", many);
  auto c = config(dir / "many.jsonl", SourceFormat::Jsonl);
  c.skip_bad_records = true;
  const auto d = read_source(c);
  EXPECT_EQ(d.documents.size(), 50u);
  EXPECT_EQ(d.bad.count, 50);
  EXPECT_EQ(d.bad.messages.size(), BadRecords::kKeptMessages);
  EXPECT_NE(d.bad.messages[1].find(":3: malformed JSON"), std::string::npos) << d.bad.messages[1];
}

TEST(DataJsonl, EmptySourceAndMissingFilesAreErrors) {
  TempDir dir;
  write_file(dir / "empty.jsonl", "\n\n");
  std::string err = read_error(config(dir / "empty.jsonl", SourceFormat::Jsonl));
  EXPECT_NE(err.find("data source 'src': no documents in " + dir / "empty.jsonl"),
            std::string::npos)
      << err;
  write_file(dir / "allbad.jsonl", "nope\n");
  auto c = config(dir / "allbad.jsonl", SourceFormat::Jsonl);
  c.skip_bad_records = true;
  err = read_error(c);
  EXPECT_NE(err.find("no documents"), std::string::npos) << err;
  EXPECT_NE(err.find("all 1 records were bad"), std::string::npos) << err;
  err = read_error(config(dir / "missing.jsonl", SourceFormat::Jsonl));
  EXPECT_NE(err.find("data source 'src': '" + dir / "missing.jsonl" + "' does not exist"),
            std::string::npos)
      << err;
  err = read_error(config(dir / "*.nothing", SourceFormat::Jsonl));
  EXPECT_NE(err.find("matches no files"), std::string::npos) << err;
  EXPECT_NE(read_error(config("", SourceFormat::Jsonl)).find("no path given"), std::string::npos);
}

TEST(DataJsonl, InstructKeepsPromptOutOfTheLoss) {
  TempDir dir;
  write_file(dir / "i.jsonl",
             "{\"prompt\": \"Q: 2+2?\\nA:\", \"completion\": \" 4\"}\n"
             "{\"prompt\": \"\", \"completion\": \"only\"}\n"
             "{\"prompt\": \"Q\"}\n");
  auto c = config(dir / "i.jsonl", SourceFormat::Instruct);
  std::string err = read_error(c);
  EXPECT_NE(err.find(":3: missing field 'completion'"), std::string::npos) << err;
  c.skip_bad_records = true;
  auto d = read_source(c);
  ASSERT_EQ(d.documents.size(), 2u);
  ASSERT_EQ(d.documents[0].segments.size(), 2u);
  EXPECT_EQ(d.documents[0].segments[0].text, "Q: 2+2?\nA:");
  EXPECT_FALSE(d.documents[0].segments[0].trained);
  EXPECT_EQ(d.documents[0].segments[1].text, " 4");
  EXPECT_TRUE(d.documents[0].segments[1].trained);
  ASSERT_EQ(d.documents[1].segments.size(), 1u);
  EXPECT_TRUE(d.documents[1].segments[0].trained);

  c.instruct_as_chat = true;
  d = read_source(c);
  EXPECT_EQ(texts(d)[0],
            "<|im_start|>user\nQ: 2+2?\nA:<|im_end|>\n<|im_start|>assistant\n 4<|im_end|>\n");
}

TEST(DataChat, ChatMlRenderingAndWhatIsTrained) {
  TempDir dir;
  write_file(dir / "c.jsonl",
             R"({"messages": [{"role": "system", "content": "Be brief."},)"
             R"( {"role": "user", "content": "Hi <|im_start|>"},)"
             R"( {"role": "assistant", "content": "Hello."},)"
             R"( {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]})"
             "\n");
  const auto d = read_source(config(dir / "c.jsonl", SourceFormat::Chat));
  ASSERT_EQ(d.documents.size(), 1u);
  EXPECT_EQ(texts(d)[0],
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi "
            "<|im_start|><|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye!<|im_end|>\n");
  std::string trained;
  for (const auto& s : d.documents[0].segments) {
    if (s.trained) trained += "[" + s.text + "]";
    // User text is never parsed for specials; template markup always is.
    if (s.text == "Hi <|im_start|>") {
      EXPECT_FALSE(s.parse_special);
    }
    if (s.text.starts_with("<|im_start|>")) {
      EXPECT_TRUE(s.parse_special);
    }
  }
  EXPECT_EQ(trained, "[Hello.][<|im_end|>][Bye!][<|im_end|>]");
}

// default_system: put first, as a prompt (never trained) system turn, in a conversation without
// a system message (a model's template does so: SmolLM2's), also for instruct_as_chat; a
// conversation that has one keeps it.
TEST(DataChat, DefaultSystemMessageGoesFirstWhereThereIsNone) {
  TempDir dir;
  write_file(
      dir / "c.jsonl",
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})"
      "\n"
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]})"
      "\n");
  SourceConfig c = config(dir / "c.jsonl", SourceFormat::Chat);
  c.default_system = "You are SmolLM";
  const auto d = read_source(c);
  ASSERT_EQ(d.documents.size(), 2u);
  EXPECT_EQ(texts(d)[0],
            "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n");
  EXPECT_EQ(texts(d)[1],
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nYo.<|im_end|>\n");
  for (const auto& s : d.documents[0].segments)
    if (s.text.find("SmolLM") != std::string::npos) {
      EXPECT_FALSE(s.trained) << s.text;
    }

  write_file(dir / "i.jsonl", R"({"prompt": "2+2?", "completion": "4"})"
                              "\n");
  SourceConfig i = config(dir / "i.jsonl", SourceFormat::Instruct);
  i.instruct_as_chat = true;
  i.default_system = "Answer.";
  EXPECT_EQ(texts(read_source(i))[0],
            "<|im_start|>system\nAnswer.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n4<|im_end|>\n");
}

// ShareGPT's layout ("conversations": [{"from": "human" | "gpt" | "system", "value": ...}]),
// with messages_field: conversations, reads as the same conversation written with role / content.
TEST(DataChat, ShareGptLayoutReadsAsRoleAndContent) {
  TempDir dir;
  write_file(dir / "s.jsonl",
             R"({"id": "x1", "conversations": [{"from": "system", "value": "Be brief."},)"
             R"( {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},)"
             R"( {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]})"
             "\n");
  write_file(dir / "m.jsonl",
             R"({"messages": [{"role": "system", "content": "Be brief."},)"
             R"( {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},)"
             R"( {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]})"
             "\n");
  SourceConfig s = config(dir / "s.jsonl", SourceFormat::Chat);
  s.messages_field = "conversations";
  const auto a = read_source(s);
  const auto b = read_source(config(dir / "m.jsonl", SourceFormat::Chat));
  ASSERT_EQ(a.documents.size(), 1u);
  ASSERT_EQ(a.documents[0].segments.size(), b.documents[0].segments.size());
  for (size_t i = 0; i < a.documents[0].segments.size(); ++i) {
    const Segment& x = a.documents[0].segments[i];
    const Segment& y = b.documents[0].segments[i];
    EXPECT_EQ(x.text, y.text) << i;
    EXPECT_EQ(x.trained, y.trained) << i;
    EXPECT_EQ(x.parse_special, y.parse_special) << i;
  }
  EXPECT_NE(texts(a)[0].find("<|im_start|>user\nHi<|im_end|>"), std::string::npos) << texts(a)[0];

  // Left at messages_field: messages, the error says where ShareGPT keeps the turns.
  const std::string err = read_error(config(dir / "s.jsonl", SourceFormat::Chat));
  EXPECT_NE(err.find(":1: missing field 'messages' (the object has 'conversations', 'id'); for "
                     "ShareGPT's layout set the source's messages_field: conversations"),
            std::string::npos)
      << err;
  write_file(dir / "s.jsonl", R"({"conversations": [{"from": "gpt"}]})"
                              "\n");
  EXPECT_NE(read_error(s).find(":1: message 0: missing field 'value'"), std::string::npos)
      << read_error(s);
}

TEST(DataChat, BadChatRecordsAndUnknownTemplates) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"messages": []})", "field 'messages' should be a non-empty array"},
      {R"({"messages": "hi"})",
       "field 'messages' should be a non-empty array of {\"role\", \"content\"} (or ShareGPT's "
       "{\"from\", \"value\"}) objects, found string"},
      {R"({"msgs": []})", "missing field 'messages'"},
      {R"({"messages": [{"role": "user", "content": "hi"}]})", "no message has role \"assistant\""},
      {R"({"messages": [{"role": "assistant"}]})", "message 0: missing field 'content'"},
      {R"({"messages": [{"role": "user x", "content": "a"}, {"role": "assistant", "content": "b"}]})",
       "role 'user x' is not a role name"},
      {R"({"messages": [3]})", "message 0 is number"},
  };
  for (const auto& [line, expect] : cases) {
    write_file(dir / "c.jsonl", "\n" + line + "\n");
    const std::string err = read_error(config(dir / "c.jsonl", SourceFormat::Chat));
    EXPECT_NE(err.find(dir / "c.jsonl" + ":2: " + expect), std::string::npos) << line << "\n"
                                                                              << err;
  }
  write_file(dir / "c.jsonl", R"({"messages": [{"role": "assistant", "content": "b"}]})");
  auto c = config(dir / "c.jsonl", SourceFormat::Chat);
  c.chat_template = "mistral";
  const std::string err = read_error(c);
  EXPECT_NE(err.find("chat template 'mistral' is not built in; built-in templates: chatml, llama3"),
            std::string::npos)
      << err;
  EXPECT_EQ(builtin_chat_template_names(),
            (std::vector<std::string>{"chatml", "llama3", "mistral-v1", "mistral-v3", "llama2"}));
}

// Llama 3's format, written out here from its published layout (the same text llama.cpp's
// llama_chat_apply_template("llama3") gives: tests/interop/test_chat_formats.py):
// <|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>, nothing between
// turns.
TEST(DataChat, Llama3RenderingAndWhatIsTrained) {
  TempDir dir;
  write_file(dir / "c.jsonl",
             R"({"messages": [{"role": "system", "content": " Be brief.\n"},)"
             R"( {"role": "user", "content": "Hi <|eot_id|>"},)"
             R"( {"role": "assistant", "content": "\n\nHello. "},)"
             R"( {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]})"
             "\n");
  auto c = config(dir / "c.jsonl", SourceFormat::Chat);
  c.chat_template = "llama3";
  const auto d = read_source(c);
  ASSERT_EQ(d.documents.size(), 1u);
  EXPECT_EQ(texts(d)[0],
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi <|eot_id|><|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nBye!<|eot_id|>");
  std::string trained;
  for (const auto& s : d.documents[0].segments) {
    if (s.trained) trained += "[" + s.text + "]";
    if (s.text == "Hi <|eot_id|>") {
      EXPECT_FALSE(s.parse_special);  // the user's text stays text
    }
    if (s.text.starts_with("<|start_header_id|>") || s.text == "<|eot_id|>") {
      EXPECT_TRUE(s.parse_special);
    }
  }
  EXPECT_EQ(trained, "[Hello.][<|eot_id|>][Bye!][<|eot_id|>]");

  // An instruct record rendered as a Llama 3 exchange.
  write_file(dir / "i.jsonl", R"({"prompt": "2+2?", "completion": " 4"})");
  auto ic = config(dir / "i.jsonl", SourceFormat::Instruct);
  ic.instruct_as_chat = true;
  ic.chat_template = "llama3";
  EXPECT_EQ(texts(read_source(ic))[0],
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>");
}

// Which built-in format a model's Jinja template writes (`loom generate --chat`, and the hint when
// a recipe's chat_template does not fit the tokenizer).
TEST(DataChat, ModelTemplatesAreRecognized) {
  const ChatTemplate* chatml = detect_chat_template(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
      false);
  ASSERT_NE(chatml, nullptr);
  EXPECT_EQ(chatml->name, "chatml");
  const ChatTemplate* llama3 = detect_chat_template(
      "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
      "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}",
      false);
  ASSERT_NE(llama3, nullptr);
  EXPECT_EQ(llama3->name, "llama3");
  // Mistral's [INST] templates: v1 or v3 by the vocabulary ([INST] a token or plain text).
  const std::string mistral =
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + "
      "m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}";
  ASSERT_NE(detect_chat_template(mistral, false), nullptr);
  EXPECT_EQ(detect_chat_template(mistral, false)->name, "mistral-v1");
  EXPECT_EQ(detect_chat_template(mistral, true)->name, "mistral-v3");
  // Llama 2's <<SYS>> layout; Mistral's v7 [SYSTEM_PROMPT] one is not built in.
  ASSERT_NE(detect_chat_template("[INST] <<SYS>>\\n{{ m }}\\n<</SYS>>\\n\\n [/INST]", false),
            nullptr);
  EXPECT_EQ(detect_chat_template("[INST] <<SYS>>\\n{{ m }}\\n<</SYS>>\\n\\n [/INST]", false)->name,
            "llama2");
  EXPECT_EQ(
      detect_chat_template("[SYSTEM_PROMPT]{{ s }}[/SYSTEM_PROMPT][INST]{{ m }}[/INST]", true),
      nullptr);
  EXPECT_EQ(detect_chat_template("", false), nullptr);
}

// chat_template: model (the default) is the format of the tokenizer's own template; a model
// without one, or with one loom does not render, is an error that lists the formats.
TEST(DataChat, ModelChatTemplateResolvesToTheTokenizersOwnFormat) {
  const auto tok = test::ByteTokenizer::make();
  EXPECT_EQ(resolve_chat_template("model", *tok, "source 'c'"), "chatml");
  EXPECT_EQ(resolve_chat_template("llama3", *tok, "source 'c'"), "llama3");
  EXPECT_THROW(resolve_chat_template("chatm", *tok, "source 'c'"), Error);
  TokenizerSpec spec;
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(tok::byte_chars()[b]);
  spec.tokens.push_back("zq");
  spec.merges = {{"z", "q"}};
  spec.types.assign(spec.tokens.size(), TokenType::Normal);
  spec.kind = TokenizerKind::ByteLevelBpe;
  spec.pre_name = "gpt2";
  spec.source = "base.gguf";
  for (const std::string& jinja : {std::string(), std::string("{{ 'User: ' + m }}")}) {
    spec.chat_template = jinja;
    const Tokenizer base(spec);
    try {
      resolve_chat_template("model", base, "data source 'c'");
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("data source 'c': chat_template is model (the default), but the model "
                       "(base.gguf) has"),
                std::string::npos)
          << m;
      EXPECT_NE(m.find(jinja.empty() ? "no chat template" : "none of loom's formats"),
                std::string::npos)
          << m;
      EXPECT_NE(m.find("chatml, llama3, mistral-v1, mistral-v3, llama2"), std::string::npos) << m;
    }
  }
}

// ---- gzip and globs -----------------------------------------------------------------------------

TEST(DataFiles, GzipAndGlobs) {
  TempDir dir;
  std::string part1, part2;
  for (int i = 0; i < 2000; ++i) part1 += "{\"text\": \"doc " + std::to_string(i) + "\"}\n";
  for (int i = 0; i < 10; ++i) part2 += "{\"text\": \"b " + std::to_string(i) + "\"}\n";
  write_file(dir / "data/a.jsonl.gz", test::gzip_bytes(part1));
  // Two gzip members in one file (as `cat x.gz y.gz` makes).
  write_file(dir / "data/b.jsonl.gz",
             test::gzip_bytes(part2.substr(0, 40)) + test::gzip_bytes(part2.substr(40)));
  write_file(dir / "data/c.jsonl", "{\"text\": \"plain\"}\n");
  write_file(dir / "data/notes.txt", "not jsonl");
  auto c = config(dir / "data/*.jsonl.gz", SourceFormat::Jsonl);
  auto d = read_source(c);
  EXPECT_EQ(d.files, (std::vector<std::string>{dir / "data/a.jsonl.gz", dir / "data/b.jsonl.gz"}));
  ASSERT_EQ(d.documents.size(), 2010u);
  EXPECT_EQ(texts(d)[1999], "doc 1999");
  EXPECT_EQ(texts(d)[2009], "b 9");
  EXPECT_EQ(d.documents[2009].file_index, 1u);
  EXPECT_EQ(d.documents[2009].line, 10u);
  c.path = dir / "data/*.jsonl*";
  EXPECT_EQ(read_source(c).documents.size(), 2011u);

  // gzip is detected by content, whatever the name.
  write_file(dir / "hidden_gzip.jsonl", test::gzip_bytes(part2));
  EXPECT_EQ(read_source(config(dir / "hidden_gzip.jsonl", SourceFormat::Jsonl)).documents.size(),
            10u);

  // Damaged gzip: named, with what to do.
  std::string gz = test::gzip_bytes(part1);
  write_file(dir / "trunc.jsonl.gz", gz.substr(0, gz.size() / 2));
  std::string err = read_error(config(dir / "trunc.jsonl.gz", SourceFormat::Jsonl));
  EXPECT_NE(err.find(dir / "trunc.jsonl.gz" + "': gzip data ends early"), std::string::npos) << err;
  gz[gz.size() / 2] ^= 0x55;
  gz[gz.size() / 2 + 1] ^= 0x55;
  write_file(dir / "bad.jsonl.gz", gz);
  err = read_error(config(dir / "bad.jsonl.gz", SourceFormat::Jsonl));
  EXPECT_NE(err.find(dir / "bad.jsonl.gz"), std::string::npos) << err;
  EXPECT_NE(err.find("damaged"), std::string::npos) << err;
}

// ---- dictd --------------------------------------------------------------------------------------

TEST(DataDictd, Base64Numbers) {
  EXPECT_EQ(decode_dictd_number("A"), 0u);
  EXPECT_EQ(decode_dictd_number("/"), 63u);
  EXPECT_EQ(decode_dictd_number("BA"), 64u);
  EXPECT_EQ(decode_dictd_number("Gb9L"), 6u * 262144 + 27u * 4096 + 61u * 64 + 11u);
  EXPECT_FALSE(decode_dictd_number(""));
  EXPECT_FALSE(decode_dictd_number("a=b"));
  EXPECT_FALSE(decode_dictd_number("//////////////"));
  std::mt19937_64 rng(3);
  for (int i = 0; i < 1000; ++i) {
    const uint64_t v = rng() >> (1 + rng() % 60);
    ASSERT_EQ(decode_dictd_number(encode_dictd_number(v)), v);
  }
  std::string err;
  EXPECT_FALSE(parse_dictd_index_line("word\tBA", &err));
  EXPECT_NE(err.find("fewer than three"), std::string::npos);
  const auto l = parse_dictd_index_line("two words\tBA\tC\torig", &err);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->headword, "two words");
  EXPECT_EQ(l->offset, 64u);
  EXPECT_EQ(l->length, 2u);
}

// A synthetic dictionary: entries in a random order in the .dict, the index sorted by headword,
// some entries named by two headwords, metadata entries. Every document must be its entry's
// bytes, in offset order, named by its first index line.
TEST(DataDictd, EveryEntryMatchesTheIndex) {
  TempDir dir;
  std::mt19937_64 rng(5);
  std::string dict = "00-database-info\nA test dictionary.\n";
  struct Entry {
    std::string head;
    uint64_t off, len;
  };
  std::vector<Entry> entries = {{"00-database-info", 0, dict.size()},
                                {"00-test-info", 0, dict.size()}};
  std::vector<std::pair<uint64_t, uint64_t>> real;
  for (int i = 0; i < 300; ++i) {
    std::string head = "word" + std::to_string(rng() % 100000) + "_" + std::to_string(i);
    std::string body = head + "\n   definition " + std::string(rng() % 200, 'x') + " \xc3\xa9.\n";
    entries.push_back({head, dict.size(), body.size()});
    if (i % 10 == 0) entries.push_back({"alias of " + head, dict.size(), body.size()});
    real.emplace_back(dict.size(), body.size());
    dict += body;
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.head < b.head; });
  std::string index;
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> first_line;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    index += e.head + "\t" + encode_dictd_number(e.off) + "\t" + encode_dictd_number(e.len) + "\n";
    first_line.emplace(std::make_pair(e.off, e.len), i + 1);
  }
  write_file(dir / "test.index", index);
  write_file(dir / "test.dict.dz", test::gzip_bytes(dict, 9));
  for (const std::string& path :
       std::vector<std::string>{dir / "test", dir / "test.index", dir / "test.dict.dz",
                                dir / "*.index", dir.path().string()}) {
    const auto d = read_source(config(path, SourceFormat::Dictd));
    ASSERT_EQ(d.documents.size(), real.size()) << path;
    EXPECT_EQ(d.files, (std::vector<std::string>{dir / "test.index", dir / "test.dict.dz"}));
    for (size_t i = 0; i < real.size(); ++i) {
      const auto [off, len] = real[i];
      ASSERT_EQ(texts(d)[i], dict.substr(off, len)) << i;
      ASSERT_EQ(d.documents[i].line, first_line.at(real[i])) << i;
      ASSERT_EQ(d.documents[i].file_index, 0u);
    }
  }
}

TEST(DataDictd, BadIndexLinesAndMissingPartners) {
  TempDir dir;
  const std::string dict = "alpha\n  first\nbeta\n  second\n";
  write_file(dir / "d.dict", dict);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"beta\tO",
       "expected 'headword<TAB>offset<TAB>length' (dictd base64 numbers), found fewer "
       "than three tab-separated fields"},
      {"beta\tO\tN=", "'N=' is not a dictd base64 number"},
      {"beta\tO\tZZ", "entry 'beta' spans bytes 14..1639, past the end of " + dir / "d.dict"},
  };
  for (const auto& [bad, expect] : cases) {
    write_file(dir / "d.index", "alpha\tA\tO\n" + bad + "\n");
    auto c = config(dir / "d.index", SourceFormat::Dictd);
    const std::string err = read_error(c);
    EXPECT_NE(err.find(dir / "d.index" + ":2: " + expect), std::string::npos) << err;
    c.skip_bad_records = true;
    const auto d = read_source(c);
    EXPECT_EQ(texts(d), (std::vector<std::string>{"alpha\n  first\n"}));
    EXPECT_EQ(d.bad.count, 1);
  }
  write_file(dir / "d.index", "alpha\tA\tO\nbeta\tO\tN\n");
  EXPECT_EQ(read_source(config(dir / "d", SourceFormat::Dictd)).documents.size(), 2u);
  // Invalid UTF-8 inside an entry names the index line of its headword.
  write_file(dir / "u.dict", "ok\nbad \x92 quote\n");
  write_file(dir / "u.index", "bad\tD\tM\nok\tA\tD\n");
  const std::string err = read_error(config(dir / "u.index", SourceFormat::Dictd));
  EXPECT_NE(err.find(dir / "u.index" + ":1: entry 'bad' (bytes 3..15 of " + dir / "u.dict" +
                     "): invalid UTF-8 at byte 5 of line 1 (0x92)"),
            std::string::npos)
      << err;
  write_file(dir / "lonely.index", "a\tA\tB\n");
  const std::string err2 = read_error(config(dir / "lonely.index", SourceFormat::Dictd));
  EXPECT_NE(err2.find("has " + dir / "lonely.index" + " but no " + dir / "lonely.dict.dz"),
            std::string::npos)
      << err2;
}

// The real FOLDOC from Debian's dict-foldoc: every document checked against an independent
// reading of the index (zlib's gzread for the text, a local base64 decoder), and the first and
// last entries of the 2023-01-19 release.
TEST(DataDictd, RealFoldocMatchesItsIndex) {
  const std::string index_path = "/usr/share/dictd/foldoc.index";
  const std::string dict_path = "/usr/share/dictd/foldoc.dict.dz";
  if (!test::fs::exists(index_path) || !test::fs::exists(dict_path)) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << index_path
                 << " is missing (apt-get install dict-foldoc); the real dictd reader check did "
                    "not run";
  }
  const auto d = read_source(config("/usr/share/dictd/foldoc", SourceFormat::Dictd));
  const std::string dict = test::gzread_all(dict_path);
  std::ifstream in(index_path);
  std::string line;
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto b64 = [&](const std::string& s) {
    uint64_t v = 0;
    for (char ch : s) v = v * 64 + alphabet.find(ch);
    return v;
  };
  std::map<std::pair<uint64_t, uint64_t>, std::pair<uint64_t, bool>> ranges;  // -> line, meta
  for (uint64_t n = 1; std::getline(in, line); ++n) {
    const size_t t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    const auto key =
        std::make_pair(b64(line.substr(t1 + 1, t2 - t1 - 1)), b64(line.substr(t2 + 1)));
    auto [it, fresh] = ranges.emplace(key, std::make_pair(n, false));
    if (line.starts_with("00-database-")) it->second.second = true;
  }
  size_t i = 0;
  for (const auto& [range, info] : ranges) {
    if (info.second) continue;
    ASSERT_LT(i, d.documents.size());
    ASSERT_EQ(d.documents[i].segments[0].text, dict.substr(range.first, range.second)) << i;
    ASSERT_EQ(d.documents[i].line, info.first) << i;
    ++i;
  }
  EXPECT_EQ(i, d.documents.size());
  std::cout << "[ foldoc   ] " << d.documents.size() << " entries, " << dict.size()
            << " bytes of text\n";
  if (dict.size() == 5578809) {  // dict-foldoc 20230119-1
    EXPECT_EQ(d.documents.size(), 12014u);
    EXPECT_TRUE(texts(d).front().starts_with("Missing definition\nmissing\n"));
    EXPECT_EQ(d.documents.front().line, 8619u);
    EXPECT_TRUE(texts(d).back().starts_with("Free On-line Dictionary of Computing\n"));
    EXPECT_EQ(d.documents.back().line, 2738u);
  }
}

// GCIDE has three entries with Windows-1252 bytes: an error naming the first, or three skips.
TEST(DataDictd, RealGcideBadEntriesAreCounted) {
  if (!test::fs::exists("/usr/share/dictd/gcide.index")) {
    GTEST_SKIP() << "SKIPPED LOUDLY: /usr/share/dictd/gcide.index is missing "
                    "(apt-get install dict-gcide)";
  }
  auto c = config("/usr/share/dictd/gcide", SourceFormat::Dictd);
  const std::string err = read_error(c);
  EXPECT_NE(err.find("/usr/share/dictd/gcide.index:"), std::string::npos) << err;
  EXPECT_NE(err.find("invalid UTF-8"), std::string::npos) << err;
  c.skip_bad_records = true;
  const auto d = read_source(c);
  std::cout << "[ gcide    ] " << d.documents.size() << " entries, " << d.bad.count
            << " skipped: " << (d.bad.messages.empty() ? "" : d.bad.messages[0]) << "\n";
  EXPECT_GT(d.bad.count, 0);
  EXPECT_EQ(d.bad.count, static_cast<int64_t>(d.bad.messages.size()));
  EXPECT_GT(d.documents.size(), 100000u);
}

}  // namespace
}  // namespace loom
