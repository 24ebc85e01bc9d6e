#!/usr/bin/env python3
"""Make other quantizations of the default model with llama.cpp's own quantizer.

Pinned versions (the committed goldens and sha256s were produced with exactly these):

    python            3.11
    llama-cpp-python  0.3.36, built natively:
                          CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36
    numpy             2.4.6

Source: SmolLM2-135M-Instruct Q4_1 GGUF (sha256 b179c952...db53, verified), requantized with
`llama_model_quantize(allow_requantize=True)`. No higher-precision GGUF of this model is in
the project's cache, so every output inherits Q4_1's rounding first; that is fine for what
these files are for (exercising each weight type's kernels against llama.cpp on the same
file), not for judging quantization quality.

Usage (from the repository root):

    /work/scratch/llamavenv/bin/python scripts/make-quants.py \
        [--source path/to/SmolLM2-135M-Instruct.Q4_1.gguf] [--out DIR] [--types Q4_0,Q8_0,...]

Writes DIR/SmolLM2-135M-Instruct.<TYPE>.gguf for each type and DIR/quants.json with every
file's sha256, size, and the tensor types it holds. Exits non-zero on any failure. The
quantizer is deterministic: a rerun with the pinned versions reproduces the sha256s in
`crates/ferry-models/tests/data/quants.json` (checked at the end; a mismatch is an error).

DIR defaults to $FERRY_QUANTS_DIR, else .ferry-cache/quants under the repository root.

Without building llama-cpp-python: the `llama-quantize` target of the same vendored llama.cpp
(built next to `llama-bench`, see docs/PERFORMANCE.md) gives the same files, byte for byte
(every sha256 in quants.json reproduced, 2026-11-29):

    for t in Q4_0 Q8_0 Q4_K_M Q5_K_M Q6_K F16 BF16 F32; do
        llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf \
            DIR/SmolLM2-135M-Instruct.$t.gguf $t 2
    done
"""

import argparse
import ctypes
import hashlib
import json
import os
import sys
import time

import llama_cpp

SOURCE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(REPO, ".ferry-cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
COMMITTED = os.path.join(REPO, "crates", "ferry-models", "tests", "data", "quants.json")

# The types issue 3 names. K-quant mixes: this model's rows of 576 are not a multiple of 256,
# so llama.cpp's quantizer falls back to a 32-block type for those tensors (as it does for
# every user of this model); `quants.json` records what each file really holds.
TYPES = {
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
}

GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
                   10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_types(path):
    """Count of tensors per ggml type, read from the GGUF header (v3, little-endian)."""
    import struct

    with open(path, "rb") as f:
        data = f.read(4 << 20)
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize("<" + fmt)
        return v[0]

    def skip_value(t):
        nonlocal off
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if t in sizes:
            off += sizes[t]
        elif t == 8:
            n = take("Q")  # (`off += take(..)` would read `off` before `take` moves it)
            off += n
        elif t == 9:
            et = take("I")
            n = take("Q")
            for _ in range(n):
                skip_value(et)
        else:
            raise ValueError(f"unknown GGUF value type {t}")

    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    off = 4
    take("I")
    n_tensors = take("Q")
    n_kv = take("Q")
    for _ in range(n_kv):
        n = take("Q")
        off += n
        skip_value(take("I"))
    counts = {}
    for _ in range(n_tensors):
        n = take("Q")
        off += n
        nd = take("I")
        off += 8 * nd
        t = take("I")
        off += 8
        name = GGML_TYPE_NAMES.get(t, str(t))
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=os.environ.get("FERRY_TEST_GGUF", DEFAULT_SOURCE))
    ap.add_argument("--out", default=os.environ.get(
        "FERRY_QUANTS_DIR", os.path.join(REPO, ".ferry-cache", "quants")))
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    if llama_cpp.__version__ != "0.3.36":
        sys.exit(f"llama-cpp-python {llama_cpp.__version__}, expected 0.3.36")
    digest = sha256(args.source)
    if digest != SOURCE_SHA256:
        sys.exit(f"{args.source}: sha256 {digest}, expected {SOURCE_SHA256}")
    os.makedirs(args.out, exist_ok=True)

    out = {"source": {"file": os.path.basename(args.source), "sha256": SOURCE_SHA256,
                      "llama_cpp_python": llama_cpp.__version__,
                      "script": "scripts/make-quants.py", "allow_requantize": True},
           "files": {}}
    for name in args.types.split(","):
        if name not in TYPES:
            sys.exit(f"unknown type {name}; known: {', '.join(TYPES)}")
        dst = os.path.join(args.out, f"SmolLM2-135M-Instruct.{name}.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.nthread = args.threads
        params.ftype = TYPES[name]
        params.allow_requantize = True
        t0 = time.time()
        rc = llama_cpp.llama_model_quantize(args.source.encode(), dst.encode(), ctypes.byref(params))
        if rc != 0:
            sys.exit(f"llama_model_quantize({name}) failed with {rc}")
        h = sha256(dst)
        info = {"sha256": h, "bytes": os.path.getsize(dst), "tensor_types": tensor_types(dst)}
        out["files"][name] = info
        print(f"{name:7} {info['bytes']:>10} bytes  {h}  {info['tensor_types']}  "
              f"{time.time() - t0:.1f}s", flush=True)
    with open(os.path.join(args.out, "quants.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    if os.path.exists(COMMITTED):
        with open(COMMITTED) as f:
            want = json.load(f)["files"]
        bad = [n for n, i in out["files"].items()
               if n in want and want[n]["sha256"] != i["sha256"]]
        if bad:
            sys.exit(f"sha256 differs from {COMMITTED} for {', '.join(bad)}: "
                     "not the pinned versions?")
        print(f"sha256s match {os.path.relpath(COMMITTED, REPO)}")


if __name__ == "__main__":
    main()
