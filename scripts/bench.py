#!/usr/bin/env python3
"""Ferry against llama.cpp on the same machine, in one run, same thread count.

Builds nothing. Measures, alternating Ferry and llama.cpp on every repeat, and prints medians:

* prefill pp512 and decode tg128: `ferry bench --json` against `llama-bench -o json`
  (or, without llama-bench, llama-cpp-python with `use_extra_bufts=False`);
* the HTTP servers at 1, 4 and 16 concurrent streams (64 generated tokens each, EOS banned by
  `logit_bias {"2": -100}` on both): aggregate generated tokens/s and median TTFT, for
  `ferry serve` and `llama-server -np 16 -c 16384 --cont-batching`;
* each server's VmRSS after load and warm-up, and VmHWM at the end;
* decode as a percentage of the memory-bandwidth bound (weight bytes per token from
  `ferry bench --json`, read bandwidth from a multi-threaded numpy sum over 1 GB).

    python3 scripts/bench.py --ferry-bin target/release/ferry \\
        --llama-bench /path/llama-bench --llama-server /path/llama-server \\
        --gguf .ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

Run it with a Python that has numpy (and llama_cpp for --llama-python). Standard library
otherwise. Any peer that is not given is skipped (its column reads "-").

Per quantization type (`--types`): pp512 and tg128 of Ferry and llama-bench on each GGUF made by
`scripts/make-quants.py` (`--quants-dir`, default $FERRY_QUANTS_DIR), alternating, medians,
one table; Q4_1 is the `--gguf` file. `--types all` takes every type in the directory:

    python3 scripts/bench.py --llama-bench /path/llama-bench --no-servers \
        --quants-dir /work/scratch/quants --types all
"""
import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
EOS = 2

LLAMA_PY = r"""
import sys, time, json
import llama_cpp.llama_cpp as C
_d = C.llama_model_default_params
def _p():
    x = _d(); x.use_extra_bufts = False; return x
C.llama_model_default_params = _p
from llama_cpp import Llama
path, t, npp, ntg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = Llama(path, n_threads=t, n_threads_batch=t, n_ctx=npp + ntg + 16, n_batch=npp, verbose=False)
v = m.n_vocab()
prompt = [1000 + (i * 7919) % (v - 2000) for i in range(npp)]
m.reset(); m.eval(prompt[:16])
m.reset(); t0 = time.time(); m.eval(prompt); pp = npp / (time.time() - t0)
m.reset(); m.eval(prompt[:8]); t0 = time.time()
for i in range(ntg):
    m.eval([1000 + i])
print(json.dumps({"prefill_tps": pp, "decode_tps": ntg / (time.time() - t0)}))
"""


def med(v):
    return statistics.median(v) if v else float("nan")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kb(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def ferry_bench(a, model=None, order=None):
    env = dict(os.environ)
    if order:
        env["FERRY_MATMUL_ORDER"] = order
    out = subprocess.run(
        [a.ferry_bin, "bench", model or a.ferry_model, "--threads", str(a.threads), "--json",
         "--repeats", "1", "--prompt-tokens", "512", "--decode-tokens", "128"],
        capture_output=True, text=True, env=env, check=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    if order and d.get("matmul_order") != order:
        # A model with nothing packed (F16, or a CPU without x16 kernels) keeps llama.cpp's order.
        print(f"note: {model or a.ferry_model} ran in matmul order {d.get('matmul_order')}, "
              f"not {order} (no packed block matrices)", file=sys.stderr)
    return d


def llama_bench(a, gguf=None):
    gguf = gguf or a.gguf
    if a.llama_bench:
        cmd = [a.llama_bench, "-m", gguf, "-p", "512", "-n", "128", "-t", str(a.threads),
               "-r", "1", "-o", "json"] + a.llama_bench_extra.split()
        recs = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        pp = [r["avg_ts"] for r in recs if r.get("n_prompt") == 512 and r.get("n_gen") == 0]
        tg = [r["avg_ts"] for r in recs if r.get("n_gen") == 128 and r.get("n_prompt") == 0]
        return {"prefill_tps": pp[0], "decode_tps": tg[0]}
    if a.llama_python:
        out = subprocess.run([a.llama_python, "-c", LLAMA_PY, gguf, str(a.threads), "512",
                              "128"], capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    return None


def read_bandwidth(threads, gb=1.0):
    try:
        import numpy as np
    except ImportError:
        return float("nan")
    n = int(gb * 2**30) // 8
    arr = np.ones(n, dtype=np.uint64)
    parts = np.array_split(arr, threads)

    def run():
        ts = [threading.Thread(target=lambda p=p: np.add.reduce(p, dtype=np.uint64))
              for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return arr.nbytes / (time.perf_counter() - t0)

    run()
    return max(run() for _ in range(3))


def wait_up(port, proc, path, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not come up")


PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe the history of the city of Rome from its founding to the modern day.",
    "List many interesting facts about the ocean and the animals that live in it.",
]


def one_stream(port, model, i, n_tokens, res):
    body = json.dumps({
        # A unique prefix, so that neither server can reuse a cached prompt across requests.
        "model": model, "prompt": f"Request {time.time_ns() % 10**9} {i}. "
        + PROMPTS[i % len(PROMPTS)], "max_tokens": n_tokens,
        "temperature": 0, "stream": True, "logit_bias": {str(EOS): -100},
    }).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, chunks, finish = None, 0, None
    try:
        r = urllib.request.urlopen(req, timeout=600)
    except Exception as e:
        print(f"request failed: {e}", file=sys.stderr)
        res.append((float("nan"), 0))
        return
    with r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            d = json.loads(line[5:])
            for c in d.get("choices", []):
                if c.get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
    res.append((ttft if ttft is not None else float("nan"),
                n_tokens if finish == "length" else chunks))


def load_test(port, model, streams, n_tokens):
    res = []
    ts = [threading.Thread(target=one_stream, args=(port, model, i, n_tokens, res))
          for i in range(streams)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return sum(n for _, n in res) / wall, med([t for t, _ in res])


def start_servers(a):
    servers = {}
    if a.ferry_bin:
        port = free_port()
        p = subprocess.Popen(
            [a.ferry_bin, "serve", "--model", a.ferry_model, "--port", str(port),
             "--threads", str(a.threads), "--kv-cache-tokens", str(a.ctx)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A path is served under its file stem (a directory under its name).
        mp = pathlib.Path(a.ferry_model)
        served = (mp.stem if mp.is_file() else mp.name) if mp.exists() else a.ferry_model
        servers["ferry"] = (p, port, served, "/ready")
    if a.llama_server:
        port = free_port()
        p = subprocess.Popen(
            [a.llama_server, "-m", a.gguf, "--port", str(port), "-t", str(a.threads),
             "-tb", str(a.threads), "-np", "16", "-c", str(a.ctx), "--cont-batching"]
            + a.llama_server_extra.split(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers["llama"] = (p, port, "model", "/health")
    for name, (p, port, model, ready) in servers.items():
        wait_up(port, p, ready)
        load_test(port, model, 1, 8)  # warm-up
    return {k: v[:3] for k, v in servers.items()}


QUANT_TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16", "BF16", "F32"]


def per_type(a, bw):
    """pp512/tg128 of Ferry and llama.cpp on each quantization, alternating; medians."""
    qdir = pathlib.Path(a.quants_dir or os.environ.get("FERRY_QUANTS_DIR", ""))
    types = QUANT_TYPES if a.types == "all" else a.types.split(",")
    files = {}
    for t in types:
        f = pathlib.Path(a.gguf) if t == "Q4_1" else qdir / f"SmolLM2-135M-Instruct.{t}.gguf"
        if not f.is_file():
            if a.types == "all":
                print(f"{t}: {f} not found, skipped", file=sys.stderr)
                continue
            sys.exit(f"{t}: {f} not found (make it with scripts/make-quants.py)")
        files[t] = str(f)
    res = {}
    for r in range(a.repeats):
        for t, f in files.items():
            d = ferry_bench(a, f)
            l = llama_bench(a, f) or {"prefill_tps": float("nan"), "decode_tps": float("nan")}
            # The opt-in block order (FERRY_MATMUL_ORDER=block) in the same alternation.
            b = ferry_bench(a, f, "block") if a.block_order else None
            x = res.setdefault(t, {"f": [], "l": [], "b": [], "bytes": d["weight_bytes"]})
            x["f"].append(d)
            x["l"].append(l)
            if b:
                x["b"].append(b)
            extra = f"  ferry block order {b['prefill_tps']:.1f}/{b['decode_tps']:.1f}" if b else ""
            print(f"repeat {r + 1} {t}: ferry ({d.get('matmul_order')} order) "
                  f"{d['prefill_tps']:.1f}/{d['decode_tps']:.1f}  "
                  f"llama.cpp {l['prefill_tps']:.1f}/{l['decode_tps']:.1f}{extra}  "
                  f"(pp512/tg128 tok/s)", file=sys.stderr)
    bo = " pp512 ferry, block order | ratio | tg128 ferry, block order | ratio |"
    # "paired": the median over repeats of each repeat's own ratio (Ferry and llama.cpp ran
    # within the same minute), which the host's swings move less than medians taken per side.
    print(f"\n| type | MB read/token | pp512 ferry | pp512 llama.cpp | ratio | paired | "
          f"tg128 ferry | tg128 llama.cpp | ratio | paired | ferry decode, % of bw bound |"
          f"{bo if a.block_order else ''}")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if a.block_order else ""))
    for t, x in res.items():
        fp, lp = med([d["prefill_tps"] for d in x["f"]]), med([d["prefill_tps"] for d in x["l"]])
        fd, ld = med([d["decode_tps"] for d in x["f"]]), med([d["decode_tps"] for d in x["l"]])
        pair = lambda k: med([f[k] / l[k] for f, l in zip(x["f"], x["l"])])
        row = (f"| {t} | {x['bytes'] / 1e6:.1f} | {fp:.1f} | {lp:.1f} | {fp / lp:.2f}x | "
               f"{pair('prefill_tps'):.2f}x | {fd:.1f} | {ld:.1f} | {fd / ld:.2f}x | "
               f"{pair('decode_tps'):.2f}x | {100 * fd * x['bytes'] / bw:.0f}% |")
        if x["b"]:
            bp, bd = med([d["prefill_tps"] for d in x["b"]]), med([d["decode_tps"] for d in x["b"]])
            row += f" {bp:.1f} | {bp / lp:.2f}x | {bd:.1f} | {bd / ld:.2f}x |"
        print(row)
    print(f"\nread bandwidth ({a.threads} threads, numpy): {bw / 1e9:.1f} GB/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ferry-bin", default=str(ROOT / "target/release/ferry"))
    ap.add_argument("--ferry-model", default="smollm2-135m-instruct")
    ap.add_argument("--gguf", default=str(ROOT / ".ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llama-bench")
    ap.add_argument("--llama-server")
    ap.add_argument("--llama-python", help="python with llama_cpp, used when no --llama-bench")
    # Repacking off on both: it selects ggml's AMX path, which crashes in VMs without AMX state
    # (and it is what llama-cpp-python's use_extra_bufts=False does).
    ap.add_argument("--llama-bench-extra", default="--repack 0", help="extra llama-bench args")
    ap.add_argument("--llama-server-extra", default="--no-repack",
                    help="extra llama-server args")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=16384)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--no-servers", action="store_true")
    ap.add_argument("--server-repeats", type=int, help="repeats of each HTTP load (default --repeats)")
    ap.add_argument("--no-bench", action="store_true", help="skip pp512/tg128")
    ap.add_argument("--types", help="per-type pp512/tg128 table over these quantizations "
                    f"(comma-separated, or 'all' = {','.join(QUANT_TYPES)}) instead of the "
                    "single-model run")
    ap.add_argument("--block-order", action="store_true",
                    help="per-type table: also run Ferry with FERRY_MATMUL_ORDER=block")
    ap.add_argument("--quants-dir", help="where scripts/make-quants.py wrote the GGUFs "
                    "(default $FERRY_QUANTS_DIR)")
    a = ap.parse_args()
    if a.types:
        per_type(a, read_bandwidth(a.threads))
        return

    rows = []  # (metric, ferry, llama, higher_is_better, target ratio)
    fb = {"prefill_tps": [], "decode_tps": []}
    lb = {"prefill_tps": [], "decode_tps": []}
    wbytes = None
    for r in range(0 if a.no_bench else a.repeats):
        d = ferry_bench(a)
        wbytes = d["weight_bytes"]
        for k in fb:
            fb[k].append(d[k])
        d = llama_bench(a)
        if d:
            for k in lb:
                lb[k].append(d[k])
        print(f"repeat {r + 1}: ferry {fb['prefill_tps'][-1]:.1f}/{fb['decode_tps'][-1]:.1f}"
              f"  llama.cpp {lb['prefill_tps'][-1] if d else float('nan'):.1f}/"
              f"{lb['decode_tps'][-1] if d else float('nan'):.1f}  (pp512/tg128 tok/s)",
              file=sys.stderr)
    if not a.no_bench:
        rows.append(("prefill pp512 tok/s", med(fb["prefill_tps"]), med(lb["prefill_tps"]), True,
                     2.0))
        rows.append(("decode tg128 tok/s", med(fb["decode_tps"]), med(lb["decode_tps"]), True,
                     2.0))

    if not a.no_servers:
        servers = start_servers(a)
        rss = {k: rss_kb(p.pid) / 1024 for k, (p, _, _) in servers.items()}
        res = {}
        try:
            for s in [int(x) for x in a.streams.split(",")]:
                for r in range(a.server_repeats or a.repeats):
                    for name, (p, port, model) in servers.items():
                        tps, ttft = load_test(port, model, s, a.tokens)
                        res.setdefault((name, s), []).append((tps, ttft))
                        print(f"{name} streams {s}: {tps:.1f} tok/s, TTFT {ttft * 1e3:.0f} ms",
                              file=sys.stderr)
            hwm = {k: rss_kb(p.pid, "VmHWM") / 1024 for k, (p, _, _) in servers.items()}
        finally:
            for p, _, _ in servers.values():
                p.terminate()
                p.wait()

        def g(name, s, i):
            v = res.get((name, s))
            return med([x[i] for x in v]) if v else float("nan")

        for s in [int(x) for x in a.streams.split(",")]:
            rows.append((f"HTTP {s} streams, aggregate tok/s", g("ferry", s, 0), g("llama", s, 0),
                         True, 2.0 if s == 16 else None))
            rows.append((f"HTTP {s} streams, median TTFT ms", g("ferry", s, 1) * 1e3,
                         g("llama", s, 1) * 1e3, False, 1.0 if s == 16 else None))
        rows.append(("server VmRSS after load, MiB", rss.get("ferry", float("nan")),
                     rss.get("llama", float("nan")), False, 1.2))
        rows.append(("server VmHWM at end, MiB", hwm.get("ferry", float("nan")),
                     hwm.get("llama", float("nan")), False, 1.2))

    bw = read_bandwidth(a.threads)
    print(f"\n{'metric':<36} {'ferry':>10} {'llama.cpp':>10} {'ratio':>7} {'target':>8}")
    for name, f, l, higher, target in rows:
        ratio = f / l if l == l and l else float("nan")
        tgt = "" if target is None else (f">={target:g}x" if higher else f"<={target:g}x")
        print(f"{name:<36} {f:>10.1f} {l:>10.1f} {ratio:>6.2f}x {tgt:>8}")
    if wbytes:
        dec = med(fb["decode_tps"])
        print(f"\nweights read per token {wbytes / 1e6:.1f} MB; read bandwidth "
              f"({a.threads} threads, numpy) {bw / 1e9:.1f} GB/s; bound {bw / wbytes:.0f} tok/s; "
              f"ferry decode {dec * wbytes / 1e9:.2f} GB/s = {100 * dec * wbytes / bw:.1f}% of it; "
              f"llama.cpp {100 * med(lb['decode_tps']) * wbytes / bw:.1f}%")


if __name__ == "__main__":
    main()
