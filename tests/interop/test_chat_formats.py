#!/usr/bin/env python3
"""loom's chat formats (layers/chat_format.h) against llama.cpp's own renderer,
llama_chat_apply_template, called through llama-cpp-python, and Mistral's against Mistral's own
tokenizer library, on conversations with the cases that differ between formats: system turns,
several turns, whitespace around contents (llama3 trims it, chatml keeps it), markup typed
inside a message, non-ASCII text, with and without the generation prompt.

1. loom's rendering (what `loom generate --chat` tokenizes) is llama.cpp's, byte for byte.
2. loom's training segments joined are the same text without the generation prompt, and the
   trained part is exactly each assistant content (as rendered) followed by the turn end.
3. With SmolLM2's own Jinja template (read from the GGUF with the gguf package) and Qwen2.5's
   rendered by jinja2 as Hugging Face's apply_chat_template renders them, a conversation
   without a system message gets the template's default one; loom's training rendering with
   `default_system: model`, and its generation prompt, are that text, byte for byte
   (conversations with a system message: unchanged).

4. Mistral (mistral-v1, mistral-v3), token by token: Mistral's real SentencePiece tokenizers
   (tokenizer.model.v1 of Mistral-7B-Instruct v0.1 / v0.2, the v3 one of v0.3, carried in the
   mistral_common package) written as GGUF tokenizers; loom's training ids of each conversation
   (BOS, then its segments tokenized one by one) equal mistral_common's encode_chat_completion
   ids, the trained ids equal its encodings of the assistant messages (each reply and its </s>),
   and a conversation ending with a user turn tokenized as `loom generate --chat` tokenizes its
   prompt equals mistral_common's prompt. Where llama.cpp's simpler renderer agrees with
   mistral_common (contents without surrounding whitespace; the system message with the only
   user turn), loom's pieces with the "▁" that SentencePiece puts in front of each written as a
   space equal llama.cpp's mistral-v1 / mistral-v3 text.
5. llama2 (Llama-2-chat), token by token: Llama 2's chat template as Hugging Face ships it,
   rendered by jinja2 and tokenized by transformers' LlamaTokenizer (legacy, as Llama 2's
   tokenizer_config has it) on a Llama-2-style SentencePiece vocabulary (Mistral's v1 one, 32000
   tokens, <s> and </s>: Llama 2's own is not on PyPI), equals loom's training ids; the trained
   ids are what each assistant message adds to the template's rendering of the conversation up
   to it; the generation prompt of a conversation ending with a user turn is the template's.

Exit 0: all agree; 1: a difference; 77: skipped (llama_cpp not importable, or the tool not built).
"""
import ctypes
import json
import os
import subprocess
import tempfile

from interop_common import BUILD_DIR, SOURCE_DIR, skip, fail

try:
    import llama_cpp
except ImportError as e:
    skip(f"llama_cpp (llama-cpp-python) is not importable ({e}); run scripts/setup_python.sh")

TOOL = os.path.join(BUILD_DIR, "tests", "loom_test_chat_tool")
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}

CONVERSATIONS = [
    [("user", "Hi"), ("assistant", "Hello!")],
    [("system", "Be brief."), ("user", "What is FOLDOC?"),
     ("assistant", "The Free On-line Dictionary of Computing.\n\nIt has 15,000 entries.")],
    [("system", "  padded system  "), ("user", "\ttabs and\nnewlines \n"),
     ("assistant", "\n\n  indented reply\n"), ("user", " again "), ("assistant", "ok ")],
    [("user", "markup <|im_start|> and <|eot_id|> typed by a user"),
     ("assistant", "Zürich — 東京 🙂")],
    [("user", "only a user turn")],
    [("user", "x"), ("assistant", "y"), ("user", "z")],
]


def llamacpp_render(name, messages, add_generation_prompt):
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, (role, content) in enumerate(messages):
        r, c = role.encode(), content.encode()
        keep += [r, c]
        chat[i].role, chat[i].content = r, c
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages),
                                            add_generation_prompt, buf, size)
    if n < 0 or n > size:
        fail(f"llama_chat_apply_template({name}) returned {n}")
    return buf.raw[:n].decode()


def run_tool(cases):
    """loom's renderings of the cases (tests/tools/chat_tool.cpp)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
        path = f.name
    try:
        p = subprocess.run([TOOL, path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if p.returncode != 0:
        fail(f"loom_test_chat_tool exited {p.returncode}: {p.stderr}")
    return json.loads(p.stdout)


def main():
    if not os.access(TOOL, os.X_OK):
        skip(f"{TOOL} is not built (scripts/build.sh builds it)")
    cases = []
    for name in TURN_END:
        for conv in CONVERSATIONS:
            for gen in (False, True):
                cases.append({"format": name, "add_generation_prompt": gen,
                              "messages": [{"role": r, "content": c} for r, c in conv]})
    results = run_tool(cases)
    for case, got in zip(cases, results):
        name, gen = case["format"], case["add_generation_prompt"]
        msgs = [(m["role"], m["content"]) for m in case["messages"]]
        want = llamacpp_render(name, msgs, gen)
        if got["text"] != want:
            fail(f"{name}, generation prompt {gen}: loom renders\n{got['text']!r}\nllama.cpp\n"
                 f"{want!r}\nfor {msgs}")
        no_prompt = llamacpp_render(name, msgs, False)
        if got["segments"] != no_prompt:
            fail(f"{name}: the training segments joined are\n{got['segments']!r}\nllama.cpp "
                 f"renders\n{no_prompt!r}")
        # The trained text: each assistant content as llama.cpp renders it (one assistant turn
        # rendered alone, less its header and turn end), then the turn end.
        trained = ""
        for role, content in msgs:
            if role != "assistant":
                continue
            alone = llamacpp_render(name, [(role, content)], False)
            header = llamacpp_render(name, [("user", "h")], True)[len(
                llamacpp_render(name, [("user", "h")], False)):]
            body = alone[len(header):alone.rindex(TURN_END[name])]
            trained += body + TURN_END[name]
        if got["trained"] != trained:
            fail(f"{name}: loom trains on\n{got['trained']!r}\nexpected\n{trained!r}")
    print(f"{len(cases)} renderings (chatml, llama3; {len(CONVERSATIONS)} conversations, with and "
          "without the generation prompt) equal llama.cpp's llama_chat_apply_template")
    check_model_default_system()
    check_mistral()
    check_llama2()
    print("PASS")


def hf_render(template, messages, add_generation_prompt, bos_token="", eos_token=""):
    """A Jinja chat template rendered as transformers' apply_chat_template does (sandboxed
    environment, trim_blocks and lstrip_blocks, raise_exception)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=[{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token)


# Qwen2.5-Instruct's chat template (tokenizer_config.json of its Hugging Face repositories): a
# ChatML template whose default system message is written in its no-tools branch, with Jinja's
# \n escapes in its string literals.
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def check_model_default_system():
    """Section 3 of the module docstring."""
    model = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(model):
        fail(f"{model} is missing: run scripts/fetch_models.sh")
    try:
        import gguf
    except ImportError as e:
        fail(f"the gguf package is not importable ({e}); run scripts/setup_python.sh")
    field = gguf.GGUFReader(model).fields["tokenizer.chat_template"]
    smollm2 = bytes(field.parts[field.data[0]]).decode()
    for name, template, default in (
            ("SmolLM2", smollm2, "You are a helpful AI assistant named SmolLM"),
            ("Qwen2.5", QWEN25_TEMPLATE, "You are Qwen, created by Alibaba Cloud.")):
        # Training's rendering (no generation prompt) and `loom generate --chat`'s (with it).
        cases = [{"format": "chatml", "add_generation_prompt": gen, "model_template": template,
                  "messages": [{"role": r, "content": c} for r, c in conv]}
                 for conv in CONVERSATIONS for gen in (False, True)]
        results = run_tool(cases)
        with_default = 0
        for case, got in zip(cases, results):
            msgs = [(m["role"], m["content"]) for m in case["messages"]]
            gen = case["add_generation_prompt"]
            want = hf_render(template, msgs, gen)
            if (got["text"] if gen else got["segments"]) != want:
                fail(f"{name}'s template, generation prompt {gen}: loom renders\n"
                     f"{got['text'] if gen else got['segments']!r}\napply_chat_template renders\n"
                     f"{want!r}")
            if msgs[0][0] != "system":
                with_default += 1
                if default not in got["text"]:
                    fail(f"{name}'s default system message is missing from {got['text']!r}")
        if with_default == 0:
            fail(f"no case exercised {name}'s default system message")
        print(f"{len(cases)} renderings ({with_default} without a system message) with "
              f"{name}'s default system message equal its Jinja template's rendering")


MISTRAL_CONVERSATIONS = CONVERSATIONS + [
    [("user", "a"), ("system", "a system message between turns"), ("user", "b"),
     ("assistant", "c  ")],
    [("system", "s1"), ("system", "s2"), ("user", "u1"), ("assistant", "r1"), ("assistant", "r2"),
     ("user", "u2"), ("assistant", "r3")],
    [("user", "markup [INST] and </s> typed by a user"), ("assistant", "[/INST] </s> back")],
    # Not opening with a user turn (mistral_common puts an empty one first), empty messages
    # among merged ones, a system message alone.
    [("system", "S"), ("assistant", "a")],
    [("assistant", "a"), ("user", "u"), ("assistant", "b")],
    [("user", ""), ("user", "b"), ("assistant", "x")],
    [("user", "a"), ("user", ""), ("system", ""), ("assistant", "y")],
    [("system", "S")],
]

MISTRAL_TOKENIZERS = {"mistral-v1": "tokenizer.model.v1",
                      "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3"}


def mistral_reference(model_file, conv):
    """mistral_common's ids for the conversation, and its ids of each assistant message."""
    from mistral_common.protocol.instruct.messages import (AssistantMessage, SystemMessage,
                                                           UserMessage)
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    mt = MistralTokenizer.from_file(model_file, mode=ValidationMode.agnostic)
    request = ChatCompletionRequest(messages=[kinds[r](content=c) for r, c in conv])
    ids = mt.encode_chat_completion(request).tokens
    instruct = mt._instruct_request_normalizer.from_chat_completion_request(request)
    trained = []
    for m in instruct.messages:
        if isinstance(m, AssistantMessage):
            trained += mt.instruct_tokenizer.encode_assistant_message(m, False)
    return ids, trained


def check_mistral():
    """Section 4 of the module docstring."""
    try:
        import mistral_common
    except ImportError as e:
        fail(f"the mistral_common package is not importable ({e}); run scripts/setup_python.sh")
    import sys
    sys.path.insert(0, os.path.join(SOURCE_DIR, "scripts"))
    from make_tokenizer_golden import spm_to_gguf
    data = os.path.join(os.path.dirname(mistral_common.__file__), "data")
    with tempfile.TemporaryDirectory() as tmp:
        cases, refs = [], []
        for name, file in MISTRAL_TOKENIZERS.items():
            model = os.path.join(data, file)
            gguf_path = os.path.join(tmp, file + ".gguf")
            spm_to_gguf(model, gguf_path)
            for conv in MISTRAL_CONVERSATIONS:
                cases.append({"format": name, "add_generation_prompt": conv[-1][0] == "user",
                              "tokenizer": gguf_path,
                              "messages": [{"role": r, "content": c} for r, c in conv]})
                refs.append((name, conv) + mistral_reference(model, conv))
        results = run_tool(cases)
        # A format that does not fit the vocabulary is refused, naming the one that does.
        for name, other, says in (("mistral-v1", "mistral-v3", "set chat_template: mistral-v3"),
                                  ("mistral-v3", "mistral-v1", "does not have")):
            wrong = {"format": name, "add_generation_prompt": False,
                     "tokenizer": os.path.join(tmp, MISTRAL_TOKENIZERS[other] + ".gguf"),
                     "messages": [{"role": "user", "content": "a"}]}
            with open(os.path.join(tmp, "wrong.json"), "w") as f:
                json.dump([wrong], f)
            p = subprocess.run([TOOL, os.path.join(tmp, "wrong.json")], capture_output=True,
                               text=True)
            if p.returncode == 0 or says not in p.stderr:
                fail(f"{name} on {other}'s tokenizer: expected a refusal saying {says!r}, got "
                     f"exit {p.returncode}: {p.stderr}")
    llamacpp_checked = 0
    for got, (name, conv, want_ids, want_trained) in zip(results, refs):
        if got["ids"] != want_ids:
            fail(f"{name}: loom's training ids\n{got['ids']}\nmistral_common's\n{want_ids}\n"
                 f"for {conv}")
        if got["trained_ids"] != want_trained:
            fail(f"{name}: loom trains on the ids\n{got['trained_ids']}\nmistral_common's "
                 f"assistant messages are\n{want_trained}\nfor {conv}")
        if conv[-1][0] == "user" and got["prompt_ids"] != want_ids:
            fail(f"{name}: loom's generation prompt\n{got['prompt_ids']}\nmistral_common's\n"
                 f"{want_ids}\nfor {conv}")
        # llama.cpp's renderer writes the system message where it stands, trims v3 replies and
        # adds no user turn; compare where mistral_common agrees with it.
        roles = [r for r, _ in conv]
        plain = all(c and c == c.strip() for _, c in conv)
        system_first = ("system" not in roles[1:] and roles.count("user") == 1 and
                        [r for r in roles if r != "system"][0] == "user")
        if plain and system_first:
            explicit = "".join(text if special else " " + text
                               for text, _, special in got["pieces"])
            want = llamacpp_render(name, conv, True)
            if explicit != want:
                fail(f"{name}: loom's pieces with SentencePiece's word-start spaces are\n"
                     f"{explicit!r}\nllama.cpp renders\n{want!r}\nfor {conv}")
            llamacpp_checked += 1
    if llamacpp_checked < 4:
        fail(f"only {llamacpp_checked} Mistral conversations were compared with llama.cpp")
    print(f"{len(cases)} conversations in mistral-v1 / mistral-v3 on Mistral's tokenizers: loom's "
          "training ids, trained ids and generation prompts equal mistral_common's; "
          f"{llamacpp_checked} renderings equal llama.cpp's")


# Llama-2-chat's chat template (tokenizer_config.json of Meta's Hugging Face repositories).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


def check_llama2():
    """Section 5 of the module docstring."""
    import mistral_common
    import sys
    from transformers import LlamaTokenizer
    sys.path.insert(0, os.path.join(SOURCE_DIR, "scripts"))
    from make_tokenizer_golden import spm_to_gguf
    model = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    hf = LlamaTokenizer(vocab_file=model, legacy=True, add_bos_token=False, add_eos_token=False)

    def reference(msgs):
        return hf.encode(hf_render(LLAMA2_TEMPLATE, msgs, True, "<s>", "</s>"),
                         add_special_tokens=False)

    convs = CONVERSATIONS + [
        [("system", "\n sys with spaces \n"), ("user", "  u  "), ("assistant", "  a  ")],
        [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")],
        # Python's strip() (the template's) takes Unicode spaces off too: NBSP, U+3000, U+2028,
        # U+0085, U+001F; not U+200B (a format character).
        [("user", "\u00a0\u3000nbsp and ideographic\u2028"), ("assistant", "\x85 r \x1f\u00a0"),
         ("user", "\u200bzero width\u200b")],
    ]
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = os.path.join(tmp, "llama2-style.gguf")
        spm_to_gguf(model, gguf_path)
        cases = [{"format": "llama2", "add_generation_prompt": conv[-1][0] == "user",
                  "tokenizer": gguf_path, "messages": [{"role": r, "content": c} for r, c in conv]}
                 for conv in convs]
        results = run_tool(cases)
    for conv, got in zip(convs, results):
        want = reference(conv)
        if got["ids"] != want:
            fail(f"llama2: loom's training ids\n{got['ids']}\nthe template + LlamaTokenizer give\n"
                 f"{want}\nfor {conv}")
        trained = []
        for i, (role, _) in enumerate(conv):
            if role != "assistant":
                continue
            before, upto = reference(conv[:i]), reference(conv[:i + 1])
            if upto[:len(before)] != before:
                fail(f"llama2 reference: the rendering up to message {i} is not a prefix")
            trained += upto[len(before):]
        if got["trained_ids"] != trained:
            fail(f"llama2: loom trains on\n{got['trained_ids']}\nthe assistant messages add\n"
                 f"{trained}\nfor {conv}")
        if conv[-1][0] == "user" and got["prompt_ids"] != want:
            fail(f"llama2: loom's generation prompt\n{got['prompt_ids']}\nthe template's\n{want}")
    print(f"{len(convs)} conversations in llama2: loom's training ids, trained ids and generation "
          "prompts equal Llama 2's template tokenized by transformers' LlamaTokenizer")


if __name__ == "__main__":
    main()
