//! The training runner: one thread that takes queued jobs oldest first and runs them with
//! `ferry-ml`: clean, split (scikit-learn's rows), cross-validate or bootstrap if asked (the
//! pipeline refit on each fold's training rows), fit the pipeline on the training split only,
//! train with an observer that writes epoch events and honours cancel, evaluate on the test
//! split, and write the artifacts under `$FERRY_HOME/jobs/<id>/`:
//!
//! * `model.json`: the fitted pipeline and model (what predictions load),
//! * `report.json`: split sizes, training history, metrics (and cross-validation),
//! * `classification_report.txt`: scikit-learn's text report (classification).
//!
//! Artifacts are written atomically before the job is marked succeeded, and the model is
//! registered in the same transaction as the status, so a crash at any point leaves either
//! a failed job (marked at the next start) or a complete, registered model.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_ml::data::{Column, ColumnData};
use ferry_ml::metrics::{self, Average, CvStrategy, Scores, ZeroDivision};
use ferry_ml::model::{
    EarlyStopping, EpochReport, Flow, Model, Prediction, TrainConfig, TrainData, TrainObserver,
};
use ferry_ml::preprocess::{self, Pipeline, PipelineSpec, Target, Task};
use ferry_ml::split::{self, SplitOptions};
use ferry_ml::{Dataset, MlError};
use ferry_store::{JobRow, Outcome, Store};
use serde_json::{json, Value};

use crate::predictions::{Artifact, ARTIFACT_FORMAT};
use crate::state::AppState;
use crate::training::{EvaluationSpec, JobSpec, TextEmbeddings};

pub(crate) fn spawn(st: Arc<AppState>) -> std::io::Result<()> {
    // Served models are reached through async calls (they may load on first use); the
    // training thread enters the server's runtime so it can block on them.
    let rt = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("ferry-trainer".into())
        .spawn(move || {
            let _rt = rt.as_ref().map(|h| h.enter());
            loop {
                let Ok(store) = st.lifecycle.store() else {
                    return;
                };
                match store.claim_next_job() {
                    Ok(Some(job)) => run(&st, &store, job),
                    Ok(None) => st.lifecycle.wait(Duration::from_secs(2)),
                    Err(e) => {
                        tracing::error!("claiming a training job: {e}");
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
            }
        })?;
    Ok(())
}

enum Fail {
    Cancelled,
    Failed(String),
}

impl From<MlError> for Fail {
    fn from(e: MlError) -> Self {
        match e {
            MlError::Cancelled => Fail::Cancelled,
            e => Fail::Failed(e.to_string()),
        }
    }
}

impl From<ferry_store::Error> for Fail {
    fn from(e: ferry_store::Error) -> Self {
        Fail::Failed(format!("metadata store: {e}"))
    }
}

fn run(st: &Arc<AppState>, store: &Arc<Store>, job: JobRow) {
    let flag = Arc::new(AtomicBool::new(job.cancel_requested));
    st.lifecycle
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(job.id.clone(), flag.clone());
    let t = Instant::now();
    tracing::info!("training job {} started", job.id);
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| execute(st, store, &job, &flag)));
    st.lifecycle
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&job.id);
    let dir = format!("jobs/{}", job.id);
    let (result_text, err_text);
    let outcome = match r {
        Ok(Ok((task, summary))) => {
            result_text = summary.to_string();
            Outcome {
                status: "succeeded",
                error: None,
                result: Some(&result_text),
                register: Some((
                    match task {
                        Task::Classification => "classification",
                        Task::Regression => "regression",
                    },
                    &dir,
                )),
            }
        }
        Ok(Err(Fail::Cancelled)) => Outcome {
            status: "cancelled",
            error: None,
            result: None,
            register: None,
        },
        Ok(Err(Fail::Failed(m))) => {
            err_text = m;
            Outcome {
                status: "failed",
                error: Some(&err_text),
                result: None,
                register: None,
            }
        }
        Err(_) => Outcome {
            status: "failed",
            error: Some("internal error (see the server log)"),
            result: None,
            register: None,
        },
    };
    tracing::info!(
        "training job {} {} in {:.2}s{}",
        job.id,
        outcome.status,
        t.elapsed().as_secs_f64(),
        outcome.error.map(|e| format!(": {e}")).unwrap_or_default()
    );
    if let Err(e) = store.finish_job(&job.id, &outcome) {
        tracing::error!("recording the end of training job {}: {e}", job.id);
    }
}

/// Writes throttled epoch events and polls the cancel flag.
struct JobObserver<'a> {
    store: &'a Store,
    job: &'a str,
    cancel: &'a AtomicBool,
    epochs: usize,
    last: Option<Instant>,
}

impl TrainObserver for JobObserver<'_> {
    fn on_epoch(&mut self, r: &EpochReport) -> Flow {
        // At most ~10 events a second (the full history is in report.json); the first and the
        // last epoch always.
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || r.epoch == self.epochs || r.epoch == 1 {
            self.last = Some(Instant::now());
            let data = json!({
                "epoch": r.epoch,
                "epochs": self.epochs,
                "train_loss": r.train_loss,
                "valid_loss": r.val_loss,
            });
            let msg = match r.val_loss {
                Some(v) => format!(
                    "epoch {}/{}: train loss {:.6}, validation loss {v:.6}",
                    r.epoch, self.epochs, r.train_loss
                ),
                None => format!(
                    "epoch {}/{}: train loss {:.6}",
                    r.epoch, self.epochs, r.train_loss
                ),
            };
            if let Err(e) =
                self.store
                    .add_job_event(self.job, "epoch", &msg, Some(&data.to_string()))
            {
                tracing::warn!("job {}: writing an event: {e}", self.job);
            }
        }
        Flow::Continue
    }
    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Only polls the cancel flag (cross-validation folds).
struct CancelOnly<'a>(&'a AtomicBool);

impl TrainObserver for CancelOnly<'_> {
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Embed texts with a served embedding model; missing texts stay missing.
pub(crate) fn embed_blocking(
    st: &AppState,
    model: &str,
    texts: &[Option<String>],
) -> Result<Vec<Option<Vec<f32>>>, String> {
    // Called on the training thread or in `spawn_blocking`, both outside async code.
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| "no async runtime to reach the embedding model".to_string())?;
    let m = rt
        .block_on(st.embedding_model(model))
        .map_err(|e| e.message)?;
    let engine = &m.engine;
    let max = engine.context_length();
    let tok = engine.model().tokenizer();
    let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    let present: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].is_some()).collect();
    for chunk in present.chunks(64) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| tok.encode(texts[i].as_deref().unwrap_or(""), true, Some(max)))
            .collect();
        // The queue may be full under load: retry a moment later rather than fail the job.
        let rx = loop {
            match engine.submit(seqs.clone()) {
                Ok(rx) => break rx,
                Err(ferry_engine::SubmitError::QueueFull(_)) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(format!("embedding with `{model}`: {e}")),
            }
        };
        let vecs = rx
            .blocking_recv()
            .map_err(|_| format!("the embedding model `{model}` stopped"))??;
        for (&i, v) in chunk.iter().zip(vecs) {
            out[i] = Some(v);
        }
    }
    Ok(out)
}

/// Replace each text column by `dim` numeric embedding columns `<col>__emb<k>`.
pub(crate) fn embed_columns(
    st: &AppState,
    te: &TextEmbeddings,
    ds: &mut Dataset,
) -> Result<usize, String> {
    let mut dim = 0;
    for c in &te.columns {
        let col = ds.column(c).map_err(|e| e.to_string())?;
        let texts: Vec<Option<String>> = (0..col.data.len()).map(|i| col.data.text(i)).collect();
        let vecs = embed_blocking(st, &te.model, &texts)?;
        dim = vecs.iter().flatten().map(Vec::len).next().unwrap_or(dim);
        ds.remove_column(c).map_err(|e| e.to_string())?;
        for k in 0..dim {
            let v: Vec<f64> = vecs
                .iter()
                .map(|e| e.as_ref().map_or(f64::NAN, |e| f64::from(e[k])))
                .collect();
            ds.set_column(Column::numeric(emb_name(c, k), v))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(dim)
}

pub(crate) fn emb_name(col: &str, k: usize) -> String {
    format!("{col}__emb{k}")
}

fn event(store: &Store, job: &str, kind: &str, msg: &str, data: Option<Value>) {
    if let Err(e) = store.add_job_event(job, kind, msg, data.map(|d| d.to_string()).as_deref()) {
        tracing::warn!("job {job}: writing an event: {e}");
    }
}

fn train_config(spec: &JobSpec) -> TrainConfig {
    let h = &spec.hyperparameters;
    TrainConfig {
        optimizer: spec.optimizer.to_ml(),
        learning_rate: h.learning_rate,
        epochs: h.epochs,
        batch_size: h.batch_size,
        l2: h.l2,
        shuffle: h.shuffle,
        seed: u64::from(spec.seed),
        init: h.init,
        early_stopping: h.early_stopping.as_ref().map(|e| EarlyStopping {
            patience: e.patience,
            tol: e.tol,
            restore_best: e.restore_best,
        }),
    }
}

/// Fit the pipeline and the model on `train` (validation optional).
fn fit(
    spec: &JobSpec,
    pspec: &PipelineSpec,
    train: &Dataset,
    valid: Option<&Dataset>,
    observer: &mut dyn TrainObserver,
) -> Result<(Pipeline, Model, ferry_ml::model::TrainHistory), MlError> {
    let pipe = Pipeline::fit(pspec, train)?;
    let x = pipe.transform(train)?;
    let y = pipe.transform_target(train)?;
    let v = match valid {
        Some(v) => Some((pipe.transform(v)?, pipe.transform_target(v)?)),
        None => None,
    };
    let data = TrainData {
        x: &x,
        y: &y,
        n_classes: pipe.n_classes(),
        validation: v.as_ref().map(|(a, b)| (a, b)),
    };
    let (model, hist) = Model::fit(&spec.model.kind(), data, &train_config(spec), observer)?;
    Ok((pipe, model, hist))
}

/// Scores of a fitted pipeline + model on `test`.
fn scores(pipe: &Pipeline, model: &Model, test: &Dataset) -> Result<Scores, MlError> {
    let x = pipe.transform(test)?;
    let mut s = Scores::new();
    match (pipe.transform_target(test)?, model.predict(&x)?) {
        (Target::Classes(t), Prediction::Classes(p)) => {
            s.insert("accuracy".into(), metrics::accuracy(&t, &p)?);
            for (name, avg) in [("macro", Average::Macro), ("weighted", Average::Weighted)] {
                let a = metrics::precision_recall_fscore_average(
                    &t,
                    &p,
                    None,
                    &avg,
                    1.0,
                    ZeroDivision::Warn,
                )?;
                s.insert(format!("precision_{name}"), a.precision);
                s.insert(format!("recall_{name}"), a.recall);
                s.insert(format!("f1_{name}"), a.f_score);
            }
        }
        (Target::Values(t), Prediction::Values(p)) => {
            s.insert("mse".into(), metrics::mean_squared_error(&t, &p)?);
            s.insert("rmse".into(), metrics::root_mean_squared_error(&t, &p)?);
            s.insert("mae".into(), metrics::mean_absolute_error(&t, &p)?);
            s.insert("r2".into(), metrics::r2_score(&t, &p)?);
        }
        _ => {
            return Err(MlError::InvalidData(
                "prediction and target kinds differ".into(),
            ))
        }
    }
    Ok(s)
}

/// The full evaluation on the test split: metrics JSON and (classification) the text report
/// and confusion matrix.
fn evaluate(
    pipe: &Pipeline,
    model: &Model,
    test: &Dataset,
) -> Result<(Value, Option<String>), MlError> {
    let x = pipe.transform(test)?;
    match (pipe.transform_target(test)?, model.predict(&x)?) {
        (Target::Classes(t), Prediction::Classes(p)) => {
            let classes = pipe.classes().to_vec();
            let codes: Vec<usize> = (0..classes.len()).collect();
            let per = metrics::precision_recall_fscore_support(
                &t,
                &p,
                Some(&codes),
                1.0,
                ZeroDivision::Warn,
            )?;
            let mut per_class = serde_json::Map::new();
            for (i, c) in classes.iter().enumerate() {
                per_class.insert(
                    c.clone(),
                    json!({
                        "precision": per.precision[i], "recall": per.recall[i],
                        "f1": per.f_score[i], "support": per.support[i],
                    }),
                );
            }
            let mut avgs = serde_json::Map::new();
            for (name, avg) in [
                ("micro", Average::Micro),
                ("macro", Average::Macro),
                ("weighted", Average::Weighted),
            ] {
                let a = metrics::precision_recall_fscore_average(
                    &t,
                    &p,
                    Some(&codes),
                    &avg,
                    1.0,
                    ZeroDivision::Warn,
                )?;
                avgs.insert(
                    name.into(),
                    json!({"precision": a.precision, "recall": a.recall, "f1": a.f_score}),
                );
            }
            let (_, cm) = metrics::confusion_matrix(&t, &p, Some(&codes))?;
            let roc_auc = if classes.len() == 2 {
                let proba = model.predict_proba(&x)?;
                Some(metrics::roc_auc_score(&t, &proba.column(1))?)
            } else {
                None
            };
            let names: Vec<&str> = classes.iter().map(String::as_str).collect();
            let report = metrics::classification_report(
                &t,
                &p,
                Some(&codes),
                Some(&names),
                2,
                ZeroDivision::Warn,
            )?;
            Ok((
                json!({
                    "task": "classification",
                    "n": t.len(),
                    "accuracy": metrics::accuracy(&t, &p)?,
                    "classes": classes,
                    "per_class": per_class,
                    "averages": avgs,
                    "confusion_matrix": cm,
                    "roc_auc": roc_auc,
                }),
                Some(report),
            ))
        }
        (Target::Values(t), Prediction::Values(p)) => Ok((
            json!({
                "task": "regression",
                "n": t.len(),
                "mse": metrics::mean_squared_error(&t, &p)?,
                "rmse": metrics::root_mean_squared_error(&t, &p)?,
                "mae": metrics::mean_absolute_error(&t, &p)?,
                "r2": metrics::r2_score(&t, &p)?,
            }),
            None,
        )),
        _ => Err(MlError::InvalidData(
            "prediction and target kinds differ".into(),
        )),
    }
}

fn execute(
    st: &Arc<AppState>,
    store: &Arc<Store>,
    job: &JobRow,
    cancel: &AtomicBool,
) -> Result<(Task, Value), Fail> {
    let spec: JobSpec =
        serde_json::from_str(&job.spec).map_err(|e| Fail::Failed(format!("stored spec: {e}")))?;
    let home = store.home();
    let file = store.get_file(&spec.training_file)?.ok_or_else(|| {
        Fail::Failed(format!(
            "the training file {} was deleted",
            spec.training_file
        ))
    })?;
    let bytes = crate::files::read_content(&home, &file)
        .map_err(|e| Fail::Failed(format!("reading the training file: {e}")))?;
    let (_, mut ds) = crate::files::parse_dataset(&file.filename, &bytes)?;
    drop(bytes);
    let p = &spec.preprocessing;
    for (c, to) in &p.convert {
        preprocess::convert_column(&mut ds, c, *to, p.on_error)?;
    }
    // Rows without a target cannot be learned from or scored.
    let tcol = ds.column(&spec.target)?;
    let keep: Vec<usize> = (0..ds.n_rows())
        .filter(|&i| !tcol.data.is_missing(i))
        .collect();
    if keep.len() < ds.n_rows() {
        let n = ds.n_rows() - keep.len();
        ds = ds.take_rows(&keep)?;
        event(
            store,
            &job.id,
            "message",
            &format!("dropped {n} rows without a target value"),
            Some(json!({"dropped_rows": n})),
        );
    }
    if p.drop_missing_rows {
        let before = ds.n_rows();
        ds = preprocess::drop_missing_rows(&ds, None)?;
        event(
            store,
            &job.id,
            "message",
            &format!("dropped {} rows with missing values", before - ds.n_rows()),
            None,
        );
    }
    if p.drop_duplicates {
        let before = ds.n_rows();
        ds = preprocess::drop_duplicate_rows(&ds)?;
        event(
            store,
            &job.id,
            "message",
            &format!("dropped {} duplicate rows", before - ds.n_rows()),
            None,
        );
    }
    let task =
        crate::training::check_against_data(&spec, &ds).map_err(|e| Fail::Failed(e.message))?;
    let input_columns: Vec<String> = match &spec.features {
        Some(f) => f.clone(),
        None => ds
            .names()
            .into_iter()
            .filter(|n| *n != spec.target)
            .map(String::from)
            .collect(),
    };
    // Text columns become embedding features (a pure function of each row: no leakage).
    let mut embedding_dim = 0;
    let mut features = input_columns.clone();
    if let Some(te) = &p.text_embeddings {
        let t = Instant::now();
        embedding_dim = embed_columns(st, te, &mut ds).map_err(Fail::Failed)?;
        features = input_columns
            .iter()
            .flat_map(|c| {
                if te.columns.contains(c) {
                    (0..embedding_dim).map(|k| emb_name(c, k)).collect()
                } else {
                    vec![c.clone()]
                }
            })
            .collect();
        event(
            store,
            &job.id,
            "message",
            &format!(
                "embedded {} text column(s) with {} ({embedding_dim} dimensions) in {:.2}s",
                te.columns.len(),
                te.model,
                t.elapsed().as_secs_f64()
            ),
            None,
        );
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Fail::Cancelled);
    }
    let mut pspec = spec.pipeline_spec(task);
    pspec.features = Some(features);
    let n = ds.n_rows();
    let labels: Option<Vec<String>> = (task == Task::Classification).then(|| {
        let c = &ds
            .column(&spec.target)
            .map(|c| c.data.clone())
            .unwrap_or(ColumnData::Numeric(vec![]));
        (0..n).map(|i| c.text(i).unwrap_or_default()).collect()
    });
    let stratify = spec.split.stratify.unwrap_or(task == Task::Classification);
    if stratify && labels.is_none() {
        return Err(Fail::Failed(
            "stratify needs a classification target".into(),
        ));
    }
    let strat = if stratify { labels.as_deref() } else { None };
    let (test_f, val_f, seed) = (
        spec.split.test_fraction,
        spec.split.validation_fraction,
        spec.seed,
    );
    let (train_idx, val_idx, test_idx) = if test_f > 0.0 && val_f > 0.0 {
        let s = split::train_val_test_split(n, val_f, test_f, seed, strat)?;
        (s.train, s.validation, s.test)
    } else if test_f > 0.0 {
        let s = split::train_test_split(n, &SplitOptions::test_fraction(test_f, seed), strat)?;
        (s.train, vec![], s.test)
    } else if val_f > 0.0 {
        let s = split::train_test_split(n, &SplitOptions::test_fraction(val_f, seed), strat)?;
        (s.train, s.test, vec![])
    } else {
        ((0..n).collect(), vec![], vec![])
    };
    event(
        store,
        &job.id,
        "message",
        &format!(
            "split {n} rows: {} train, {} validation, {} test",
            train_idx.len(),
            val_idx.len(),
            test_idx.len()
        ),
        Some(
            json!({"train": train_idx.len(), "validation": val_idx.len(), "test": test_idx.len()}),
        ),
    );

    // Cross-validation / bootstrap over the rows outside the test split.
    let cv = if matches!(spec.evaluation, EvaluationSpec::Holdout) {
        None
    } else {
        let dev: Vec<usize> = train_idx.iter().chain(&val_idx).copied().collect();
        let fold_score = |tr: &[usize], te: &[usize]| -> Result<Scores, MlError> {
            let map = |v: &[usize]| v.iter().map(|&i| dev[i]).collect::<Vec<_>>();
            let (trd, ted) = (ds.take_rows(&map(tr))?, ds.take_rows(&map(te))?);
            let (pipe, model, _) = fit(&spec, &pspec, &trd, None, &mut CancelOnly(cancel))?;
            scores(&pipe, &model, &ted)
        };
        let on_fold = |i: usize, s: &Scores| {
            event(
                store,
                &job.id,
                "fold",
                &format!(
                    "fold {}: {}",
                    i + 1,
                    s.iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(json!({"fold": i + 1, "scores": s})),
            );
        };
        let report = match spec.evaluation {
            EvaluationSpec::Bootstrap {
                n_resamples,
                confidence,
            } => metrics::bootstrap_evaluate(dev.len(), n_resamples, seed, confidence, |i, s| {
                let r = fold_score(&s.sample, &s.out_of_bag)?;
                on_fold(i, &r);
                Ok(r)
            })?,
            ref e => {
                let strategy = match *e {
                    EvaluationSpec::Kfold { n_splits, shuffle } => CvStrategy::KFold {
                        n_splits,
                        shuffle,
                        random_state: seed,
                    },
                    EvaluationSpec::StratifiedKfold { n_splits, shuffle } => {
                        CvStrategy::StratifiedKFold {
                            n_splits,
                            shuffle,
                            random_state: seed,
                        }
                    }
                    _ => CvStrategy::LeaveOneOut,
                };
                let codes: Option<Vec<usize>> = labels.as_ref().map(|l| {
                    let dl: Vec<String> = dev.iter().map(|&i| l[i].clone()).collect();
                    split::encode_classes(&dl).1
                });
                let folds = metrics::make_folds(&strategy, dev.len(), codes.as_deref())?;
                metrics::cross_validate(&folds, |i, f| {
                    let r = fold_score(&f.train, &f.test)?;
                    on_fold(i, &r);
                    Ok(r)
                })?
            }
        };
        Some(report)
    };

    // The model: pipeline fitted on the training split only.
    let train = ds.take_rows(&train_idx)?;
    let valid = if val_idx.is_empty() {
        None
    } else {
        Some(ds.take_rows(&val_idx)?)
    };
    let mut obs = JobObserver {
        store,
        job: &job.id,
        cancel,
        epochs: spec.hyperparameters.epochs,
        last: None,
    };
    let t = Instant::now();
    let (pipe, model, history) = fit(&spec, &pspec, &train, valid.as_ref(), &mut obs)?;
    let train_secs = t.elapsed().as_secs_f64();
    let train_scores = scores(&pipe, &model, &train)?;
    let (test_metrics, text_report) = if test_idx.is_empty() {
        (Value::Null, None)
    } else {
        let (m, r) = evaluate(&pipe, &model, &ds.take_rows(&test_idx)?)?;
        (m, r)
    };

    // Artifacts.
    let dir = home.join("jobs").join(&job.id);
    let artifact = Artifact {
        format: ARTIFACT_FORMAT,
        job_id: job.id.clone(),
        task,
        target: spec.target.clone(),
        input_columns,
        text_embeddings: p.text_embeddings.clone(),
        embedding_dim,
        pipeline: pipe,
        model,
    };
    let write = |name: &str, data: &[u8]| -> Result<(), Fail> {
        ferry_store::files::write_atomic(&dir.join(name), data)?;
        Ok(())
    };
    write(
        "model.json",
        serde_json::to_string(&artifact)
            .map_err(|e| Fail::Failed(e.to_string()))?
            .as_bytes(),
    )?;
    let summary = json!({
        "task": match task { Task::Classification => "classification", Task::Regression => "regression" },
        "split": {"train": train_idx.len(), "validation": val_idx.len(), "test": test_idx.len()},
        "train": train_scores,
        "test": test_metrics,
        "cross_validation": cv.as_ref().map(|c| json!({"summary": c.summary})),
        "epochs_run": history.epochs.len(),
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "train_seconds": train_secs,
        "classification_report": text_report,
    });
    let report = json!({
        "job_id": job.id,
        "model": job.model_name,
        "summary": summary,
        "history": history,
        "cross_validation": cv,
        "feature_names": artifact.pipeline.feature_names,
    });
    write(
        "report.json",
        serde_json::to_string_pretty(&report)
            .map_err(|e| Fail::Failed(e.to_string()))?
            .as_bytes(),
    )?;
    if let Some(r) = &text_report {
        write("classification_report.txt", r.as_bytes())?;
    }
    // Figures: the loss curve (train, and validation when there is one) and, for a classifier
    // with a test split, the confusion matrix (rows true, columns predicted).
    let train_losses: Vec<f64> = history.epochs.iter().map(|e| e.train_loss).collect();
    let valid_losses: Option<Vec<f64>> = history
        .epochs
        .iter()
        .map(|e| e.val_loss)
        .collect::<Option<Vec<f64>>>()
        .filter(|v| !v.is_empty());
    write(
        "loss_curve.svg",
        ferry_ml::plot::loss_curve_svg(
            &train_losses,
            valid_losses.as_deref(),
            &format!("{} — loss per epoch", job.model_name),
        )
        .as_bytes(),
    )?;
    if let (Some(classes), Some(cm)) = (
        test_metrics
            .get("classes")
            .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok()),
        test_metrics
            .get("confusion_matrix")
            .and_then(|m| serde_json::from_value::<Vec<Vec<u64>>>(m.clone()).ok()),
    ) {
        write(
            "confusion_matrix.svg",
            ferry_ml::plot::confusion_matrix_svg(&classes, &cm).as_bytes(),
        )?;
    }
    event(
        store,
        &job.id,
        "metrics",
        "evaluation finished",
        Some(summary.clone()),
    );
    Ok((task, summary))
}
