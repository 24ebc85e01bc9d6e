#!/usr/bin/env python3
"""Benchmark ferry-ml beside scikit-learn, same machine, same run (issue 5).

Measures, on breast_cancer and digits (as shipped in scikit-learn's wheel):

* fit_logreg: time to fit logistic regression on the stratified 75/25 split
  (random_state 42; Ferry selects the same rows), test accuracy;
* fit_mlp:    time to fit an MLP (hidden (100,), relu, adam, lr 1e-3,
  alpha 1e-4, batch 200, 200 epochs) on the same split, test accuracy;
* cv_logreg / cv_mlp: time for 5-fold cross-validation
  (KFold(5, shuffle=True, random_state=0); StandardScaler fit per fold, then
  the model), mean accuracy.

Ferry runs as `cargo run --release -p ferry-ml --example bench`; scikit-learn
runs in a worker process of this script under a Python that has it. The two
alternate on every repeat (order swapped on odd repeats) and the table shows
medians, the ratio Ferry time / scikit-learn time (below 1: Ferry is faster)
and the accuracies.

What is the same and what differs (printed with the table):

* MLP: same architecture, Glorot-uniform init, Adam (0.9, 0.999, 1e-8),
  learning rate, L2 (alpha / batch on the batch mean loss), batch size,
  per-epoch shuffling and number of epochs: scikit-learn's stopping rule is
  switched off (n_iter_no_change = max_iter) so both run every epoch.
* Logistic regression: the same penalised objective (C = 1: mean log-loss +
  ||w||^2 / (2 n)) and the same solver family: scikit-learn's default lbfgs
  (scipy's L-BFGS-B, memory 10, gtol 1e-4, ftol 64 eps, max_iter 1000)
  against Ferry's own L-BFGS (memory 10, the same stopping tests, strong
  Wolfe line search by bisection where scipy uses Moré-Thuente). The
  iteration counts can differ. On digits both fit a multinomial (softmax)
  model. --ferry-logreg-solver adam times Ferry's full-batch Adam instead.
* Threads: ferry-ml is single-threaded by design; scikit-learn's BLAS is
  limited to --sklearn-threads (default 1) with threadpoolctl.
* OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from the scikit-learn
  worker's environment (they can slow numpy here), and the BLAS kernel in use
  is printed.

Usage (from the repository root):

    python3 scripts/bench_ml.py [--python /work/scratch/skvenv/bin/python] \
        [--repeats 5] [--sklearn-threads 1] [--json out.json]

Without --python it uses /work/scratch/skvenv/bin/python when that has
scikit-learn, else creates a venv under --scratch with the pinned
scikit-learn==1.9.1 and numpy==2.4.6.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PINS = ["scikit-learn==1.9.1", "numpy==2.4.6"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ["breast_cancer", "digits"]
TASKS = ["fit_logreg", "fit_mlp", "cv_logreg", "cv_mlp"]


def hyper_args(p):
    p.add_argument("--logreg-max-iter", type=int, default=1000,
                   help="max_iter (sklearn) / epochs (Ferry) for logistic regression")
    p.add_argument("--ferry-logreg-solver", choices=["lbfgs", "adam"], default="lbfgs",
                   help="adam: full-batch Adam (the parity test's 1500 epochs at lr 0.05)")
    p.add_argument("--mlp-hidden", default="100")
    p.add_argument("--mlp-epochs", type=int, default=200)
    p.add_argument("--mlp-batch", type=int, default=200)
    p.add_argument("--mlp-lr", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------
# scikit-learn worker (runs under the venv Python)
# ---------------------------------------------------------------------------


def extract(out_dir):
    """Writes <name>.csv (header, features, integer target last) from the wheel."""
    from sklearn.datasets import load_breast_cancer, load_digits

    os.makedirs(out_dir, exist_ok=True)
    for name, loader in [("breast_cancer", load_breast_cancer), ("digits", load_digits)]:
        b = loader()
        path = os.path.join(out_dir, f"{name}.csv")
        with open(path + ".tmp", "w") as f:
            f.write(",".join([f"f{j}" for j in range(b.data.shape[1])] + ["target"]) + "\n")
            for row, t in zip(b.data, b.target):
                f.write(",".join(repr(float(v)) for v in row) + f",{int(t)}\n")
        os.replace(path + ".tmp", path)


def sklearn_worker(a):
    import warnings

    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_score, train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_info, threadpool_limits

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    hidden = tuple(int(h) for h in a.mlp_hidden.split(","))

    def make(task, n_train):
        if task.endswith("logreg"):
            return LogisticRegression(C=1.0, max_iter=a.logreg_max_iter)
        return MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                             alpha=a.alpha, batch_size=min(a.mlp_batch, n_train),
                             learning_rate_init=a.mlp_lr, max_iter=a.mlp_epochs, shuffle=True,
                             random_state=a.seed, n_iter_no_change=a.mlp_epochs + 1)

    def iters(est):
        n = est.n_iter_
        return int(np.max(n)) if hasattr(n, "__len__") else int(n)

    with threadpool_limits(limits=a.sklearn_threads):
        info = [dict(api=i.get("internal_api"), version=i.get("version"),
                     arch=i.get("architecture"), threads=i.get("num_threads"))
                for i in threadpool_info()]
        print(json.dumps(dict(meta=dict(sklearn=sklearn.__version__, numpy=np.__version__,
                                        python=sys.version.split()[0], blas=info))), flush=True)
        for name in a.datasets.split(","):
            data = np.loadtxt(os.path.join(a.data, f"{name}.csv"), delimiter=",", skiprows=1)
            X, y = data[:, :-1], data[:, -1].astype(int)
            for task in a.tasks.split(","):
                if task.startswith("fit"):
                    idx = np.arange(len(y))
                    tr, te = train_test_split(idx, test_size=0.25, random_state=42, stratify=y)
                    ss = StandardScaler().fit(X[tr])
                    Xtr, Xte = ss.transform(X[tr]), ss.transform(X[te])
                    est = make(task, len(tr))
                    t0, c0 = time.perf_counter(), time.process_time()
                    est.fit(Xtr, y[tr])
                    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                    line = dict(dataset=name, task=task, seconds=secs, cpu_seconds=cpu,
                                accuracy=float(est.score(Xte, y[te])), epochs=iters(est))
                else:
                    est = make_pipeline(StandardScaler(), make(task, len(y) * 4 // 5))
                    cv = KFold(n_splits=5, shuffle=True, random_state=0)
                    t0, c0 = time.perf_counter(), time.process_time()
                    scores = cross_val_score(est, X, y, cv=cv, scoring="accuracy")
                    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                    line = dict(dataset=name, task=task, seconds=secs, cpu_seconds=cpu,
                                accuracy=float(np.mean(scores)))
                print(json.dumps(line), flush=True)


# ---------------------------------------------------------------------------
# driver (standard library only)
# ---------------------------------------------------------------------------


def has_sklearn(python):
    try:
        subprocess.run([python, "-c", "import sklearn, threadpoolctl"], check=True,
                       capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def find_python(a):
    if a.python:
        if not has_sklearn(a.python):
            sys.exit(f"{a.python} cannot import sklearn")
        return a.python
    default = "/work/scratch/skvenv/bin/python"
    if has_sklearn(default):
        return default
    venv = os.path.join(a.scratch, "skvenv")
    py = os.path.join(venv, "bin", "python")
    if not has_sklearn(py):
        print(f"creating {venv} with {' '.join(PINS)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *PINS], check=True)
    return py


def sklearn_env():
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    return env


def common_flags(a):
    return ["--data", a.data, "--datasets", a.datasets, "--tasks", a.tasks,
            "--mlp-hidden", a.mlp_hidden, "--mlp-epochs", str(a.mlp_epochs),
            "--mlp-batch", str(a.mlp_batch), "--mlp-lr", repr(a.mlp_lr), "--alpha", repr(a.alpha),
            "--seed", str(a.seed)]


def run_lines(cmd, env=None):
    load_before = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return lines, (load_before + os.getloadavg()[0]) / 2


def fmt_s(s):
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", help="a Python with scikit-learn and threadpoolctl")
    p.add_argument("--scratch", default="/work/scratch/bench_ml")
    p.add_argument("--ferry-bin", help="prebuilt ferry-ml bench example (default: cargo build)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sklearn-threads", type=int, default=1)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--json", help="write the raw runs and medians here")
    p.add_argument("--worker", choices=["sklearn", "extract"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    hyper_args(p)
    a = p.parse_args()

    if a.worker == "extract":
        return extract(a.data)
    if a.worker == "sklearn":
        return sklearn_worker(a)

    python = find_python(a)
    a.data = os.path.join(a.scratch, "data")
    subprocess.run([python, os.path.abspath(__file__), "--worker", "extract", "--data", a.data],
                   check=True)
    ferry = a.ferry_bin
    if not ferry:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferry-ml", "--example", "bench"],
                       check=True, cwd=ROOT)
        ferry = os.path.join(ROOT, "target", "release", "examples", "bench")
    if a.ferry_logreg_solver == "lbfgs":
        solver = ["--logreg-solver", "lbfgs", "--logreg-max-iter", str(a.logreg_max_iter),
                  "--logreg-lr", "1"]
    else:
        solver = ["--logreg-solver", "adam", "--logreg-max-iter", "1500", "--logreg-lr", "0.05"]
    ferry_cmd = [ferry, *common_flags(a), *solver]
    sk_cmd = [python, os.path.abspath(__file__), "--worker", "sklearn", *common_flags(a),
              "--logreg-max-iter", str(a.logreg_max_iter),
              "--sklearn-threads", str(a.sklearn_threads)]

    runs = {"ferry": [], "sklearn": []}
    loads = []
    meta = None
    for r in range(a.repeats):
        order = ["ferry", "sklearn"] if r % 2 == 0 else ["sklearn", "ferry"]
        for side in order:
            lines, load = run_lines(ferry_cmd if side == "ferry" else sk_cmd,
                                    sklearn_env() if side == "sklearn" else None)
            loads.append(load)
            meta = next((l["meta"] for l in lines if "meta" in l), meta)
            runs[side].append([l for l in lines if "meta" not in l])
            print(f"repeat {r + 1}/{a.repeats} {side}: "
                  + ", ".join(f"{l['dataset']}/{l['task']} {fmt_s(l['seconds'])}"
                              for l in runs[side][-1]), file=sys.stderr, flush=True)

    def med(side, ds, task, key="seconds"):
        vals = [l[key] for run in runs[side] for l in run
                if l["dataset"] == ds and l["task"] == task and l.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    def first(side, ds, task, key):
        for l in runs[side][0]:
            if l["dataset"] == ds and l["task"] == task:
                return l.get(key)

    rows = []
    for ds in a.datasets.split(","):
        for task in a.tasks.split(","):
            f, s = med("ferry", ds, task), med("sklearn", ds, task)
            fe, se = first("ferry", ds, task, "epochs"), first("sklearn", ds, task, "epochs")
            fc, sc = med("ferry", ds, task, "cpu_seconds"), med("sklearn", ds, task, "cpu_seconds")
            rows.append(dict(dataset=ds, task=task, ferry_s=f, sklearn_s=s, ratio=f / s,
                             ferry_cpu_s=fc, sklearn_cpu_s=sc, cpu_ratio=fc / sc,
                             ferry_acc=med("ferry", ds, task, "accuracy"),
                             sklearn_acc=med("sklearn", ds, task, "accuracy"),
                             ferry_epochs=fe, sklearn_iters=se))

    blas = ", ".join("%s %s %s x%s" % (b["api"], b["version"], b["arch"], b["threads"])
                     for b in meta["blas"])
    print(f"\nscikit-learn {meta['sklearn']}, numpy {meta['numpy']}, Python {meta['python']}; "
          f"BLAS: {blas}")
    print(f"medians of {a.repeats} alternating repeats; load average during the runs: "
          f"median {statistics.median(loads):.2f}, max {max(loads):.2f} on {os.cpu_count()} CPUs")
    print("ratio = Ferry time / scikit-learn time (below 1: Ferry faster); wall-clock medians, "
          "and the same for CPU time (steadier on a shared machine)\n")
    print("| dataset | task | Ferry | scikit-learn | ratio | CPU ratio | Ferry acc | sklearn acc "
          "| iterations (Ferry / sklearn) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ep = ""
        if r["task"].startswith("fit"):
            ep = f"{r['ferry_epochs']} / {r['sklearn_iters']}"
        print(f"| {r['dataset']} | {r['task']} | {fmt_s(r['ferry_s'])} | {fmt_s(r['sklearn_s'])} | "
              f"{r['ratio']:.2f}x | {r['cpu_ratio']:.2f}x | {r['ferry_acc']:.4f} | {r['sklearn_acc']:.4f} | {ep} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(meta=meta, loads=loads, runs=runs, rows=rows, args=vars(a)), f, indent=1)


if __name__ == "__main__":
    main()
