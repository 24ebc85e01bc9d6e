#!/usr/bin/env python3
"""Generate scikit-learn parity goldens for the `ferry-ml` crate.

Pinned versions (the goldens were produced with exactly these):

    python       3.11
    scikit-learn 1.9.1
    numpy        2.4.6
    scipy        1.17.1   (pulled in by scikit-learn)

How to run (from the repository root; the venv lives outside the repo):

    python3 -m venv /work/scratch/skvenv
    /work/scratch/skvenv/bin/pip install scikit-learn==1.9.1 numpy==2.4.6
    /work/scratch/skvenv/bin/python scripts/goldens/make_sklearn_goldens.py

It writes, under `crates/ferry-ml/tests/data/`:

* `iris.csv`, `wine.csv`, `breast_cancer.csv`, `diabetes.csv`: the datasets
  bundled with scikit-learn (`sklearn/datasets/data/`), with a header row, the
  target as the last column (class *names* for the classifiers), and about 5%
  of the feature cells blanked out deterministically (to exercise imputation).
* `rng.json`: numpy legacy `RandomState` outputs (permutation, random_sample,
  randint, standard_normal, shuffle, array seeds).
* `splits.json`: `train_test_split` (plain, stratified, unshuffled) indices,
  `KFold` / `StratifiedKFold` folds.
* `transforms.json`: `SimpleImputer`, `StandardScaler`, `MinMaxScaler`,
  `OneHotEncoder`, `LabelEncoder`, `OrdinalEncoder` outputs.
* `metrics.json`: classification / regression metrics on fixed predictions,
  including zero-division cases and `classification_report` texts.
* `models.json`: `LogisticRegression` and `MLPClassifier` test accuracies on a
  fixed stratified split after mean imputation + standardisation, and the
  penalised training objective `LogisticRegression` (lbfgs) reached.

NaN is written as JSON `null` (JSON has no NaN).
"""

import csv
import json
import math
import os
import sys
import warnings

import numpy as np
import sklearn
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import (
    LabelEncoder,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

EXPECTED = {"sklearn": "1.9.1", "numpy": "2.4.6"}

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "ferry-ml", "tests", "data")

warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
warnings.filterwarnings("ignore", category=ConvergenceWarning)


def clean(obj):
    """Make numpy values JSON-friendly; NaN becomes None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) else f
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(clean(obj), f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def fmt(v):
    # repr() of a Python float round-trips exactly.
    return repr(float(v))


HEAD = 40  # rows of each transform output stored in full; the rest as column sums


def summarize(M):
    M = np.asarray(M, dtype=float)
    return dict(head=M[:HEAD], colsum=np.nansum(M, axis=0), shape=list(M.shape))


# --------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------


def load_all():
    out = {}
    for name, loader, kind in [
        ("iris", load_iris, "classification"),
        ("wine", load_wine, "classification"),
        ("breast_cancer", load_breast_cancer, "classification"),
        ("diabetes", lambda: load_diabetes(scaled=False), "regression"),
    ]:
        b = loader()
        X = np.asarray(b.data, dtype=float).copy()
        y = np.asarray(b.target)
        names = [n.replace(" ", "_").replace("(cm)", "").strip("_") for n in b.feature_names]
        names = [n.replace("__", "_") for n in names]
        rng = np.random.RandomState(2024)
        mask = rng.random_sample(X.shape) < 0.05
        Xb = X.copy()
        Xb[mask] = np.nan
        if kind == "classification":
            target = [str(b.target_names[i]) for i in y]
        else:
            target = [fmt(float(v)) for v in y]
        path = os.path.join(OUT, f"{name}.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(names + ["target"])
            for i in range(X.shape[0]):
                row = ["" if math.isnan(v) else fmt(v) for v in Xb[i]]
                w.writerow(row + [target[i]])
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
        out[name] = dict(X=X, Xb=Xb, y=y, names=names, kind=kind, target=target)
    return out


# --------------------------------------------------------------------------
# rng
# --------------------------------------------------------------------------


def rng_goldens():
    seeds = [0, 1, 42, 123, 2024, 2**31 - 1, 2**32 - 1]
    ns = [0, 1, 2, 3, 5, 10, 17, 100, 1000]
    perms = []
    for s in seeds:
        for n in ns:
            perms.append({"seed": s, "n": n, "perm": np.random.RandomState(s).permutation(n)})
    samples = []
    for s in seeds:
        rs = np.random.RandomState(s)
        samples.append(
            {
                "seed": s,
                # bit patterns: exact comparison without trusting JSON float parsing
                "random_sample_bits": rs.random_sample(20).view(np.uint64),
                "randint_10": rs.randint(0, 10, size=20),
                "randint_big": rs.randint(0, 2**40, size=10),
                "randint_neg": rs.randint(-5, 7, size=20),
                "standard_normal_bits": rs.standard_normal(21).view(np.uint64),
                "after_bits": rs.random_sample(3).view(np.uint64),
            }
        )
    arrays = []
    for key in [[0], [1, 2, 3], [2**32 - 1, 5], [42, 0, 7, 2**31]]:
        rs = np.random.RandomState(key)
        arrays.append({"key": key, "random_sample_bits": rs.random_sample(5).view(np.uint64), "perm": rs.permutation(20)})
    shuffles = []
    for s in [0, 7]:
        rs = np.random.RandomState(s)
        a = np.arange(10) * 3
        rs.shuffle(a)
        b = np.arange(25)
        rs.shuffle(b)
        shuffles.append({"seed": s, "a": a, "b": b})
    # permutation of an explicit array (used by StratifiedShuffleSplit)
    arr_perm = []
    for s in [0, 5]:
        rs = np.random.RandomState(s)
        arr = [9, 4, 7, 1, 1, 30, 2]
        arr_perm.append({"seed": s, "arr": arr, "perm": rs.permutation(arr)})
    dump(
        "rng.json",
        dict(permutations=perms, samples=samples, arrays=arrays, shuffles=shuffles, arr_perm=arr_perm),
    )


# --------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------


def split_goldens(data):
    tts = []
    for name, d in data.items():
        n = d["X"].shape[0]
        idx = np.arange(n)
        strat_y = d["y"] if d["kind"] == "classification" else None
        for seed in [0, 1, 42]:
            for test_size in [0.2, 0.25, 0.33, 0.5, 0.1]:
                tr, te = train_test_split(idx, test_size=test_size, random_state=seed)
                tts.append(dict(dataset=name, n=n, seed=seed, test_size=test_size, train_size=None,
                                stratify=False, shuffle=True, train=tr, test=te))
                if strat_y is not None:
                    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=strat_y)
                    tts.append(dict(dataset=name, n=n, seed=seed, test_size=test_size, train_size=None,
                                    stratify=True, shuffle=True, train=tr, test=te))
        # explicit train_size as well
        tr, te = train_test_split(idx, test_size=0.2, train_size=0.5, random_state=3)
        tts.append(dict(dataset=name, n=n, seed=3, test_size=0.2, train_size=0.5, stratify=False,
                        shuffle=True, train=tr, test=te))
        if strat_y is not None:
            tr, te = train_test_split(idx, test_size=0.2, train_size=0.5, random_state=3, stratify=strat_y)
            tts.append(dict(dataset=name, n=n, seed=3, test_size=0.2, train_size=0.5, stratify=True,
                            shuffle=True, train=tr, test=te))
        tr, te = train_test_split(idx, test_size=0.3, shuffle=False)
        tts.append(dict(dataset=name, n=n, seed=None, test_size=0.3, train_size=None, stratify=False,
                        shuffle=False, train=tr, test=te))
    # tie-heavy stratified case: many equal class counts
    y_ties = np.array([0, 1, 2, 3] * 5 + [4, 4])
    for seed in [0, 1, 2, 3]:
        tr, te = train_test_split(np.arange(len(y_ties)), test_size=0.3, random_state=seed, stratify=y_ties)
        tts.append(dict(dataset="ties", n=len(y_ties), y=y_ties, seed=seed, test_size=0.3, train_size=None,
                        stratify=True, shuffle=True, train=tr, test=te))

    folds = []
    for name, d in data.items():
        n = d["X"].shape[0]
        X = np.zeros((n, 1))
        for k in [3, 5, 10]:
            for shuffle, seed in [(False, None), (True, 0), (True, 42)]:
                kf = KFold(n_splits=k, shuffle=shuffle, random_state=seed)
                folds.append(dict(kind="kfold", dataset=name, n=n, k=k, shuffle=shuffle, seed=seed,
                                  folds=[dict(train=a, test=b) for a, b in kf.split(X)]))
                if d["kind"] == "classification":
                    skf = StratifiedKFold(n_splits=k, shuffle=shuffle, random_state=seed)
                    folds.append(dict(kind="stratified", dataset=name, n=n, k=k, shuffle=shuffle, seed=seed,
                                      folds=[dict(train=a, test=b) for a, b in skf.split(X, d["y"])]))
    # class order of appearance matters in StratifiedKFold
    y_odd = np.array([2, 2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 0, 1, 2, 0, 0, 1, 2])
    for shuffle, seed in [(False, None), (True, 5)]:
        skf = StratifiedKFold(n_splits=3, shuffle=shuffle, random_state=seed)
        folds.append(dict(kind="stratified", dataset="odd", y=y_odd, n=len(y_odd), k=3, shuffle=shuffle,
                          seed=seed, folds=[dict(train=a, test=b) for a, b in skf.split(np.zeros((18, 1)), y_odd)]))
    dump("splits.json", dict(train_test_split=tts, folds=folds))


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------


def transform_goldens(data):
    out = []
    for name, d in data.items():
        Xb = d["Xb"]
        rec = dict(dataset=name, n_features=Xb.shape[1])
        for strat in ["mean", "median", "most_frequent"]:
            imp = SimpleImputer(strategy=strat)
            rec[f"impute_{strat}"] = dict(statistics=imp.fit(Xb).statistics_, out=summarize(imp.transform(Xb)))
        imp = SimpleImputer(strategy="constant", fill_value=-1.0)
        rec["impute_constant"] = dict(fill=-1.0, out=summarize(imp.fit_transform(Xb)))
        Xi = SimpleImputer(strategy="mean").fit_transform(Xb)
        ss = StandardScaler().fit(Xi)
        rec["standard"] = dict(mean=ss.mean_, var=ss.var_, scale=ss.scale_, out=summarize(ss.transform(Xi)))
        ss2 = StandardScaler().fit(Xb)  # NaN-aware fit
        rec["standard_nan"] = dict(mean=ss2.mean_, var=ss2.var_, scale=ss2.scale_, out=summarize(ss2.transform(Xb)))
        mm = MinMaxScaler().fit(Xi)
        rec["minmax"] = dict(data_min=mm.data_min_, data_max=mm.data_max_, scale=mm.scale_, min=mm.min_,
                             out=summarize(mm.transform(Xi)))
        mm2 = MinMaxScaler(feature_range=(-1, 1)).fit(Xi[: len(Xi) // 2])
        rec["minmax_pm1_half"] = dict(out=summarize(mm2.transform(Xi)))
        out.append(rec)

    # zero-variance / constant columns
    Z = np.array([[1.0, 5.0, 0.1], [2.0, 5.0, 0.1], [3.0, 5.0, 0.1], [4.0, 5.0, 0.1]])
    ss = StandardScaler().fit(Z)
    mm = MinMaxScaler().fit(Z)
    const = dict(X=Z, standard_scale=ss.scale_, standard_out=ss.transform(Z), minmax_out=mm.transform(Z))

    # categorical encoders
    iris = data["iris"]
    species = np.array(iris["target"], dtype=object).reshape(-1, 1)
    bins = np.where(np.isnan(iris["Xb"][:, 0]), "unknown",
                    np.where(iris["X"][:, 0] < 5.5, "short", np.where(iris["X"][:, 0] < 6.5, "medium", "long")))
    cat = np.column_stack([species[:, 0], bins]).astype(object)
    ohe = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(cat[:100])
    test_rows = np.array([["virginica", "short"], ["setosa", "tiny"], ["martian", "long"]], dtype=object)
    ohe_rec = dict(
        train=cat[:100].tolist(),
        categories=[c.tolist() for c in ohe.categories_],
        feature_names=ohe.get_feature_names_out(["species", "length"]).tolist(),
        out_train=ohe.transform(cat[:100]),
        test=test_rows.tolist(),
        out_test=ohe.transform(test_rows),
    )
    ohe_first = OneHotEncoder(drop="first", sparse_output=False).fit(cat)
    ohe_rec["drop_first_out"] = ohe_first.transform(cat[:10])
    ohe_rec["drop_first_names"] = ohe_first.get_feature_names_out(["species", "length"]).tolist()
    le = LabelEncoder().fit(iris["target"])
    oe = OrdinalEncoder().fit(cat)
    enc = dict(
        label_classes=le.classes_.tolist(),
        label_codes=le.transform(iris["target"]),
        ordinal_categories=[c.tolist() for c in oe.categories_],
        ordinal_out=oe.transform(cat),
        cat=cat.tolist(),
    )
    dump("transforms.json", dict(datasets=out, constant=const, onehot=ohe_rec, encoders=enc))


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------


def prf_all(y_true, y_pred, labels=None):
    res = {}
    for zd in ["warn", 0, 1, "nan"]:
        zdv = np.nan if zd == "nan" else zd
        per = {}
        for avg in [None, "micro", "macro", "weighted"]:
            p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg,
                                                         zero_division=zdv)
            per[str(avg)] = dict(precision=p, recall=r, f1=f, support=s)
        if len(np.unique(np.concatenate([y_true, y_pred]))) <= 2 and labels is None:
            p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=zdv)
            per["binary"] = dict(precision=p, recall=r, f1=f, support=None)
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", beta=0.5,
                                                     zero_division=zdv)
        per["macro_beta_0.5"] = dict(precision=p, recall=r, f1=f, support=None)
        res[str(zd)] = per
    return res


def metric_goldens(data):
    rng = np.random.RandomState(7)
    cases = []

    def add(name, y_true, y_pred, score=None, labels=None, target_names=None):
        y_true = np.asarray(y_true)
        y_pred = np.asarray(y_pred)
        rec = dict(name=name, y_true=y_true, y_pred=y_pred, labels=labels)
        rec["accuracy"] = accuracy_score(y_true, y_pred)
        rec["confusion"] = confusion_matrix(y_true, y_pred, labels=labels)
        rec["prf"] = prf_all(y_true, y_pred, labels)
        rec["report2"] = classification_report(y_true, y_pred, labels=labels, target_names=target_names)
        rec["report4_zd1"] = classification_report(y_true, y_pred, labels=labels, digits=4, zero_division=1,
                                                   target_names=target_names)
        rec["target_names"] = target_names
        if score is not None:
            rec["score"] = np.asarray(score)
            rec["roc_auc"] = roc_auc_score(y_true, score)
        cases.append(rec)

    yt = rng.randint(0, 2, 60)
    yp = np.where(rng.random_sample(60) < 0.8, yt, 1 - yt)
    sc = np.clip(yt * 0.3 + rng.random_sample(60) * 0.7, 0, 1)
    add("binary_random", yt, yp, sc)
    add("binary_ties", yt, yp, np.round(sc, 1))
    add("binary_all_zero_pred", yt, np.zeros(60, dtype=int), np.round(sc * 3) / 3)
    add("binary_perfect", yt, yt, yt.astype(float))
    yt3 = rng.randint(0, 3, 80)
    yp3 = np.where(rng.random_sample(80) < 0.6, yt3, rng.randint(0, 3, 80))
    add("multiclass", yt3, yp3, target_names=["setosa", "versicolor", "virginica"])
    yp_never2 = np.where(yp3 == 2, 0, yp3)
    add("multiclass_never_pred_2", yt3, yp_never2)
    add("multiclass_extra_label", yt3, yp_never2, labels=[0, 1, 2, 3])
    yt_miss = np.where(yt3 == 1, 0, yt3)
    add("multiclass_never_true_1", yt_miss, yp3)
    add("tiny_all_wrong", [0, 0, 1], [1, 1, 0])
    add("subset_labels", yt3, yp3, labels=[2, 0])

    # regression metrics on diabetes with fixed (synthetic) predictions
    d = data["diabetes"]
    y = d["y"].astype(float)
    pred = y * 0.8 + 20.0 + np.sin(np.arange(len(y))) * 30.0
    reg = [
        dict(name="diabetes_synthetic", y_true=y, y_pred=pred),
        dict(name="constant_truth_exact", y_true=[3.0, 3.0, 3.0], y_pred=[3.0, 3.0, 3.0]),
        dict(name="constant_truth_off", y_true=[3.0, 3.0, 3.0], y_pred=[3.0, 2.0, 3.0]),
        dict(name="small", y_true=[3.0, -0.5, 2.0, 7.0], y_pred=[2.5, 0.0, 2.0, 8.0]),
    ]
    for r in reg:
        yt_, yp_ = np.asarray(r["y_true"], float), np.asarray(r["y_pred"], float)
        r["mse"] = mean_squared_error(yt_, yp_)
        r["rmse"] = math.sqrt(mean_squared_error(yt_, yp_))
        r["mae"] = mean_absolute_error(yt_, yp_)
        r["r2"] = r2_score(yt_, yp_)
    dump("metrics.json", dict(classification=cases, regression=reg))


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------

MLP_CFG = dict(hidden_layer_sizes=[32], activation="relu", solver="adam", learning_rate_init=1e-3, alpha=1e-4,
               batch_size=32, max_iter=300)
SPLIT = dict(test_size=0.25, seed=42, stratify=True)


def model_goldens(data):
    out = []
    for name in ["iris", "wine", "breast_cancer"]:
        d = data[name]
        idx = np.arange(d["X"].shape[0])
        tr, te = train_test_split(idx, test_size=SPLIT["test_size"], random_state=SPLIT["seed"], stratify=d["y"])
        imp = SimpleImputer(strategy="mean").fit(d["Xb"][tr])
        ss = StandardScaler().fit(imp.transform(d["Xb"][tr]))
        Xtr = ss.transform(imp.transform(d["Xb"][tr]))
        Xte = ss.transform(imp.transform(d["Xb"][te]))
        ytr, yte = d["y"][tr], d["y"][te]
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(Xtr, ytr)
        # The penalised objective lbfgs minimised: mean log-loss + ||coef||^2 / (2 C n).
        objective = log_loss(ytr, lr.predict_proba(Xtr)) + 0.5 * float(np.sum(lr.coef_ ** 2)) / len(tr)
        accs = []
        for seed in range(3):
            cfg = dict(MLP_CFG)
            cfg["hidden_layer_sizes"] = tuple(cfg["hidden_layer_sizes"])
            mlp = MLPClassifier(random_state=seed, **cfg).fit(Xtr, ytr)
            accs.append(mlp.score(Xte, yte))
        out.append(dict(dataset=name, train=tr, test=te, logreg_acc=lr.score(Xte, yte),
                        logreg_train_acc=lr.score(Xtr, ytr), logreg_objective=objective,
                        logreg_n_iter=int(np.max(lr.n_iter_)), mlp_acc=float(np.mean(accs)), mlp_accs=accs,
                        n_test=len(te)))
    dump("models.json", dict(split=SPLIT, mlp=MLP_CFG, logreg=dict(C=1.0), results=out))


def main():
    got = {"sklearn": sklearn.__version__, "numpy": np.__version__}
    if got != EXPECTED:
        print(f"warning: expected {EXPECTED}, running {got}", file=sys.stderr)
    os.makedirs(OUT, exist_ok=True)
    data = load_all()
    rng_goldens()
    split_goldens(data)
    transform_goldens(data)
    metric_goldens(data)
    model_goldens(data)


if __name__ == "__main__":
    main()
