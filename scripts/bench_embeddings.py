#!/usr/bin/env python3
"""Embedding throughput: Ferry (over HTTP, batches of 32, 2 compute threads) against
sentence-transformers (same model, batch_size=32, torch with 2 threads), in the same run on the
same machine. Prints sentences/s for each and the ratio, and checks that the vectors agree.
Rounds alternate between the two (order swapped every other round); each side's best round
is reported, and the median over rounds of the ratio within a round.

    cargo build --release -p ferry-cli && scripts/fetch-model.sh
    /path/to/venv-with-sentence-transformers/bin/python scripts/bench_embeddings.py

Options: --ferry-bin (default target/release/ferry), --model-dir, --sentences N, --rounds R,
--encoding-format base64|float (default base64: what the official `openai` client asks for when
the caller does not say; float makes the server write and the client parse JSON numbers),
--concurrency N (requests in flight, default 1: one client waiting on each response; with 2 the
server computes one batch while the client reads the previous one, as with several clients).
Only the standard library is needed for the Ferry side; sentence-transformers and torch for the
reference (tested with sentence-transformers 6.2.0, torch 2.15.0).
"""
import argparse
import array
import base64
import json
import os
import pathlib
import random
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORDS = (
    "the a model server vector search query document cat dog river mountain city music science "
    "history language quickly slowly bright dark ancient modern small large engine train data "
    "results shows between under over with without about question answer learning system coffee "
    "morning evening network memory processor weather forecast market price student teacher"
).split()


def corpus(n, seed=0):
    """Deterministic sentences of 5 to 40 words, with some punctuation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([5, 8, 10, 12, 15, 20, 25, 30, 40])
        words = [rng.choice(WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "?", "!", "."]))
    return out


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferry-bin", default=str(ROOT / "target/release/ferry"))
    ap.add_argument("--model-dir", default=str(ROOT / ".ferry-cache/models/all-MiniLM-L6-v2"))
    ap.add_argument("--sentences", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoding-format", choices=["base64", "float"], default="base64")
    ap.add_argument("--concurrency", type=int, default=1)
    a = ap.parse_args()
    texts = corpus(a.sentences)
    batches = [texts[i:i + a.batch] for i in range(0, len(texts), a.batch)]
    name = pathlib.Path(a.model_dir).name

    # --- Ferry ---
    port = free_port()
    env = dict(os.environ, FERRY_HOME=str(ROOT / ".ferry-cache/bench-home"))
    proc = subprocess.Popen(
        [a.ferry_bin, "serve", "--model", a.model_dir, "--port", str(port), "--threads", str(a.threads),
         "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert proc.poll() is None, "ferry serve exited"
            assert time.time() < deadline, "ferry serve did not become ready"
            time.sleep(0.1)
        post(url + "/v1/embeddings", {"model": name, "input": batches[0]})  # warm up

        import sentence_transformers
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(a.threads)
        st = SentenceTransformer(a.model_dir, device="cpu")
        st.encode(batches[0], batch_size=a.batch)

        def embed(b):
            body = {"model": name, "input": b}
            if a.encoding_format == "base64":
                body["encoding_format"] = "base64"
            out = []
            for d in post(url + "/v1/embeddings", body)["data"]:
                e = d["embedding"]
                if isinstance(e, str):
                    # Little-endian f32, as the OpenAI API (and its client's decoder) has it.
                    v = array.array("f")
                    v.frombytes(base64.b64decode(e))
                    e = v.tolist()
                out.append(e)
            return out

        def ferry_round():
            t = time.perf_counter()
            if a.concurrency > 1:
                with ThreadPoolExecutor(a.concurrency) as ex:
                    results = list(ex.map(embed, batches))
            else:
                results = [embed(b) for b in batches]
            rate = len(texts) / (time.perf_counter() - t)
            return rate, [e for r in results for e in r]

        def st_round():
            t = time.perf_counter()
            vecs = st.encode(texts, batch_size=a.batch, convert_to_numpy=True)
            return len(texts) / (time.perf_counter() - t), vecs

        # Rounds alternate between the two (order swapped every other round), so that on a
        # shared machine both see the same background load; a short pause lets the other
        # side's threads stop spinning.
        best_ferry = best_st = 0.0
        ferry_vecs = st_vecs = None
        rounds = []
        for i in range(a.rounds):
            rates = {}
            for side in (("ferry", "st") if i % 2 == 0 else ("st", "ferry")):
                time.sleep(0.3)
                if side == "ferry":
                    rates[side], ferry_vecs = ferry_round()
                else:
                    rates[side], st_vecs = st_round()
            best_ferry = max(best_ferry, rates["ferry"])
            best_st = max(best_st, rates["st"])
            rounds.append(rates)
    finally:
        proc.kill()
        proc.wait()

    worst = min(
        sum(x * float(y) for x, y in zip(f, s)) for f, s in zip(ferry_vecs, st_vecs)
    )
    print(f"sentences: {len(texts)} (batch {a.batch}, {a.threads} threads, best of {a.rounds}; "
          f"encoding_format {a.encoding_format}, {a.concurrency} request(s) in flight)")
    print(f"ferry (HTTP):          {best_ferry:8.1f} sentences/s")
    print(f"sentence-transformers: {best_st:8.1f} sentences/s "
          f"(sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__})")
    print(f"ratio ferry/st:        {best_ferry / best_st:8.2f}x")
    per_round = sorted(r["ferry"] / r["st"] for r in rounds)
    mid = len(per_round) // 2
    median = per_round[mid] if len(per_round) % 2 else (per_round[mid - 1] + per_round[mid]) / 2
    # Each round's two figures come from the same minute: their ratio is the comparison least
    # moved by a shared machine's load, and the median of those the figure least moved by one
    # stalled round on either side.
    print(f"median per-round ratio: {median:8.2f}x")
    print("per round (ferry, st):  " + ", ".join(
        f"{r['ferry']:.1f}/{r['st']:.1f} = {r['ferry'] / r['st']:.2f}x" for r in rounds))
    print(f"worst cosine:          {worst:.6f}")


if __name__ == "__main__":
    main()
