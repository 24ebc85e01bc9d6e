//! Times `ferry-ml` on the benchmark of issue 5: fitting logistic regression
//! and an MLP, and 5-fold cross-validation of each, on CSV datasets.
//!
//! `scripts/bench_ml.py` extracts the datasets from scikit-learn's wheel, runs
//! this binary and scikit-learn alternately, and prints the comparison:
//!
//! ```text
//! cargo run --release -p ferry-ml --example bench -- \
//!     --data DIR [--datasets breast_cancer,digits] [--tasks fit_logreg,fit_mlp,cv_logreg,cv_mlp] \
//!     [--logreg-solver lbfgs|adam] [--logreg-max-iter 1000] [--logreg-lr 1] [--mlp-hidden 100] [--mlp-epochs 200] [--mlp-batch 200]
//! ```
//!
//! `DIR/<name>.csv` has a header, numeric features and an integer `target`
//! as the last column. Each measurement is one JSON line on stdout:
//! `{"dataset", "task", "seconds", "cpu_seconds", "accuracy", "epochs", ...}`. Loading and
//! scaling the data are outside the timer of `fit_*` (as they are on the
//! scikit-learn side); `cv_*` times the whole loop (per-fold scaler fit,
//! model fit, prediction and scoring), like `cross_val_score`.

use std::time::Instant;

use ferry_ml::metrics::{self, CvStrategy, Scores};
use ferry_ml::model::{
    Activation, Model, ModelKind, NoObserver, Optimizer, Prediction, TrainConfig, TrainData,
};
use ferry_ml::preprocess::{self, StandardScaler, Target};
use ferry_ml::split::{self, SplitOptions};
use ferry_ml::{Dataset, Matrix};

/// CPU time of this (single-threaded) process so far, in seconds, from
/// Linux's `/proc/self/schedstat`; `None` elsewhere. On a shared machine it
/// is steadier than wall time.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

struct Args {
    data: String,
    datasets: Vec<String>,
    tasks: Vec<String>,
    logreg_solver: String,
    logreg_max_iter: usize,
    logreg_lr: f64,
    mlp_hidden: Vec<usize>,
    mlp_epochs: usize,
    mlp_batch: usize,
    mlp_lr: f64,
    alpha: f64,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        data: String::new(),
        datasets: vec!["breast_cancer".into(), "digits".into()],
        tasks: ["fit_logreg", "fit_mlp", "cv_logreg", "cv_mlp"]
            .map(String::from)
            .to_vec(),
        logreg_solver: "lbfgs".into(),
        logreg_max_iter: 1000,
        logreg_lr: 1.0,
        mlp_hidden: vec![100],
        mlp_epochs: 200,
        mlp_batch: 200,
        mlp_lr: 1e-3,
        alpha: 1e-4,
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |s: String| -> Result<f64, String> {
            s.parse::<f64>().map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--data" => a.data = val()?,
            "--datasets" => a.datasets = val()?.split(',').map(String::from).collect(),
            "--tasks" => a.tasks = val()?.split(',').map(String::from).collect(),
            "--logreg-solver" => a.logreg_solver = val()?,
            "--logreg-max-iter" => a.logreg_max_iter = num(val()?)? as usize,
            "--logreg-lr" => a.logreg_lr = num(val()?)?,
            "--mlp-hidden" => {
                a.mlp_hidden = val()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--mlp-hidden: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--mlp-epochs" => a.mlp_epochs = num(val()?)? as usize,
            "--mlp-batch" => a.mlp_batch = num(val()?)? as usize,
            "--mlp-lr" => a.mlp_lr = num(val()?)?,
            "--alpha" => a.alpha = num(val()?)?,
            "--seed" => a.seed = num(val()?)? as u64,
            "-h" | "--help" => {
                return Err("usage: bench --data DIR [--datasets a,b] [--tasks fit_logreg,fit_mlp,cv_logreg,cv_mlp] [--logreg-solver lbfgs|adam] [--logreg-max-iter N] [--logreg-lr X] [--mlp-hidden 100] [--mlp-epochs N] [--mlp-batch N] [--mlp-lr X] [--alpha X] [--seed N]".into())
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.data.is_empty() {
        return Err("--data DIR is required".into());
    }
    if !["lbfgs", "adam"].contains(&a.logreg_solver.as_str()) {
        return Err(format!(
            "unknown logistic regression solver {}",
            a.logreg_solver
        ));
    }
    for t in &a.tasks {
        if !["fit_logreg", "fit_mlp", "cv_logreg", "cv_mlp"].contains(&t.as_str()) {
            return Err(format!("unknown task {t}"));
        }
    }
    Ok(a)
}

/// Features and integer class codes of `DIR/<name>.csv`.
fn load(dir: &str, name: &str) -> Result<(Matrix, Vec<usize>), String> {
    let path = format!("{dir}/{name}.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let ds = Dataset::from_csv(&text, &Default::default()).map_err(|e| format!("{path}: {e}"))?;
    let names: Vec<&str> = ds.names().into_iter().filter(|n| *n != "target").collect();
    let x = preprocess::to_matrix(&ds, &names).map_err(|e| e.to_string())?;
    let y = preprocess::to_matrix(&ds, &["target"]).map_err(|e| e.to_string())?;
    let y = y
        .as_slice()
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(format!("{path}: target {v} is not a class code"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((x, y))
}

/// The model and its training configuration for a task.
fn model_cfg(args: &Args, mlp: bool, n_classes: usize, n_train: usize) -> (ModelKind, TrainConfig) {
    if mlp {
        // sklearn MLPClassifier: adam, Glorot-uniform init, L2 `alpha / (2 n_batch) ||W||²`
        // added to each mini-batch's mean loss, reshuffled every epoch.
        let batch = args.mlp_batch.min(n_train);
        (
            ModelKind::Mlp {
                hidden: args.mlp_hidden.clone(),
                activation: Activation::Relu,
            },
            TrainConfig {
                optimizer: Optimizer::adam(),
                learning_rate: args.mlp_lr,
                epochs: args.mlp_epochs,
                batch_size: Some(batch),
                l2: args.alpha / batch as f64,
                shuffle: true,
                seed: args.seed,
                ..Default::default()
            },
        )
    } else {
        // sklearn LogisticRegression(C=1): mean log-loss + ||w||² / (2 C n), by L-BFGS
        // (sklearn's default solver, same tolerance and iteration cap) or by
        // full-batch Adam for `max_iter` epochs.
        let kind = if n_classes == 2 {
            ModelKind::LogisticRegression
        } else {
            ModelKind::SoftmaxRegression
        };
        (
            kind,
            TrainConfig {
                optimizer: if args.logreg_solver == "lbfgs" {
                    Optimizer::lbfgs()
                } else {
                    Optimizer::adam()
                },
                learning_rate: args.logreg_lr,
                epochs: args.logreg_max_iter,
                batch_size: None,
                l2: 1.0 / n_train as f64,
                shuffle: false,
                seed: args.seed,
                ..Default::default()
            },
        )
    }
}

/// Scales on `train`, fits, and returns the model's test accuracy and epochs run.
fn fit_score(
    args: &Args,
    mlp: bool,
    x: &Matrix,
    y: &[usize],
    n_classes: usize,
    train: &[usize],
    test: &[usize],
) -> Result<(f64, usize), String> {
    let e = |e: ferry_ml::MlError| e.to_string();
    let xtr = x.select_rows(train).map_err(e)?;
    let xte = x.select_rows(test).map_err(e)?;
    let scaler = StandardScaler::fit(&xtr);
    let xtr = scaler.transform(&xtr).map_err(e)?;
    let xte = scaler.transform(&xte).map_err(e)?;
    let ytr = Target::Classes(train.iter().map(|&i| y[i]).collect());
    let yte: Vec<usize> = test.iter().map(|&i| y[i]).collect();
    let (kind, cfg) = model_cfg(args, mlp, n_classes, train.len());
    let data = TrainData {
        x: &xtr,
        y: &ytr,
        n_classes,
        validation: None,
    };
    let (model, hist) = Model::fit(&kind, data, &cfg, &mut NoObserver).map_err(e)?;
    let pred = match model.predict(&xte).map_err(e)? {
        Prediction::Classes(c) => c,
        Prediction::Values(_) => return Err("regression output from a classifier".into()),
    };
    Ok((
        metrics::accuracy(&yte, &pred).map_err(e)?,
        hist.epochs.len(),
    ))
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    for name in &args.datasets {
        let (x, y) = load(&args.data, name)?;
        let n_classes = y.iter().max().map_or(0, |m| m + 1);
        for task in &args.tasks {
            let mlp = task.ends_with("mlp");
            let line = if task.starts_with("fit") {
                // The parity split: stratified 75/25, random_state 42 (sklearn's rows).
                let tt = split::train_test_split(
                    x.rows(),
                    &SplitOptions::test_fraction(0.25, 42),
                    Some(&y[..]),
                )
                .map_err(|e| e.to_string())?;
                // Scaling happens outside the timer: time the fit, then score.
                let e = |e: ferry_ml::MlError| e.to_string();
                let xtr = x.select_rows(&tt.train).map_err(e)?;
                let scaler = StandardScaler::fit(&xtr);
                let xtr = scaler.transform(&xtr).map_err(e)?;
                let xte = scaler
                    .transform(&x.select_rows(&tt.test).map_err(e)?)
                    .map_err(e)?;
                let ytr = Target::Classes(tt.train.iter().map(|&i| y[i]).collect());
                let yte: Vec<usize> = tt.test.iter().map(|&i| y[i]).collect();
                let (kind, cfg) = model_cfg(&args, mlp, n_classes, tt.train.len());
                let data = TrainData {
                    x: &xtr,
                    y: &ytr,
                    n_classes,
                    validation: None,
                };
                let (t0, c0) = (Instant::now(), cpu_seconds());
                let (model, hist) = Model::fit(&kind, data, &cfg, &mut NoObserver).map_err(e)?;
                let secs = t0.elapsed().as_secs_f64();
                let cpu = c0.zip(cpu_seconds()).map(|(a, b)| b - a);
                let pred = match model.predict(&xte).map_err(e)? {
                    Prediction::Classes(c) => c,
                    Prediction::Values(_) => return Err("regression output".into()),
                };
                let acc = metrics::accuracy(&yte, &pred).map_err(e)?;
                serde_json::json!({
                    "dataset": name, "task": task, "seconds": secs, "cpu_seconds": cpu,
                    "accuracy": acc,
                    "epochs": hist.epochs.len(), "n_train": tt.train.len(),
                    "final_loss": hist.epochs.last().map(|r| r.train_loss),
                })
            } else {
                let folds = metrics::make_folds(
                    &CvStrategy::KFold {
                        n_splits: 5,
                        shuffle: true,
                        random_state: 0,
                    },
                    x.rows(),
                    None,
                )
                .map_err(|e| e.to_string())?;
                let mut epochs = Vec::new();
                let mut failure = None;
                let (t0, c0) = (Instant::now(), cpu_seconds());
                let report = metrics::cross_validate(&folds, |_, f| {
                    let mut s = Scores::new();
                    match fit_score(&args, mlp, &x, &y, n_classes, &f.train, &f.test) {
                        Ok((acc, ep)) => {
                            s.insert("accuracy".into(), acc);
                            epochs.push(ep);
                        }
                        Err(e) => failure = Some(e),
                    }
                    Ok(s)
                })
                .map_err(|e| e.to_string())?;
                let secs = t0.elapsed().as_secs_f64();
                let cpu = c0.zip(cpu_seconds()).map(|(a, b)| b - a);
                if let Some(e) = failure {
                    return Err(e);
                }
                serde_json::json!({
                    "dataset": name, "task": task, "seconds": secs, "cpu_seconds": cpu,
                    "accuracy": report.summary["accuracy"].mean, "epochs": epochs,
                })
            };
            println!("{line}");
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(2);
    }
}
