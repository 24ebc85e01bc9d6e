//! Training jobs: the job spec (validated here, run by `runner.rs`) and the routes
//! `POST /v1/training/jobs`, `GET /v1/training/jobs`, `GET /v1/training/jobs/{id}`,
//! `POST /v1/training/jobs/{id}/cancel` and `GET /v1/training/jobs/{id}/events`
//! (`?stream=true` for SSE).
//!
//! The spec (unknown fields are refused by name at every level):
//! `training_file`, `target`, optional `name` (the registered model's name; default the job
//! id), `features`, `task` (`classification`/`regression`; inferred from the model and the
//! target column), `preprocessing`, `model` (`{"type": "linear_regression" |
//! "logistic_regression" | "softmax_regression" | "mlp", "hidden": [..], "activation": ..}`),
//! `optimizer` (`sgd` — full-batch GD with `batch_size: null`, mini-batch otherwise —,
//! `momentum`, `nesterov`, `adam`, `adamw`, `lbfgs` — full batch, scikit-learn's default
//! solver family; `batch_size` must be null), `hyperparameters` (learning rate, epochs,
//! batch size, l2, shuffle, init, early stopping), `seed`, `split` (test / validation
//! fractions, stratify) and `evaluation` (`holdout`, `kfold`, `stratified_kfold`,
//! `leave_one_out`, `bootstrap`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_ml::data::ColumnKind;
use ferry_ml::model::{Activation, Init, ModelKind, Optimizer};
use ferry_ml::preprocess::{
    ConvertTo, HandleUnknown, ImputeStrategy, OnError, OneHotDrop, PipelineSpec, ScalerKind, Task,
};
use ferry_ml::Dataset;
use ferry_store::JobRow;
use ferry_types::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::body::JsonBody;
use crate::error::blocking;
use crate::error::Result;
use crate::state::AppState;

fn d_true() -> bool {
    true
}
fn d_lr() -> f64 {
    0.01
}
fn d_epochs() -> usize {
    100
}
fn d_batch() -> Option<usize> {
    Some(32)
}
fn d_test() -> f64 {
    0.2
}
fn d_imputer() -> Option<ImputeStrategy> {
    Some(ImputeStrategy::Mean)
}
fn d_momentum() -> f64 {
    0.9
}
fn d_b1() -> f64 {
    0.9
}
fn d_b2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_wd() -> f64 {
    0.01
}
fn d_hidden() -> Vec<usize> {
    vec![32]
}
fn d_splits() -> usize {
    5
}
fn d_resamples() -> usize {
    20
}
fn d_conf() -> f64 {
    0.95
}
fn d_patience() -> usize {
    10
}
fn d_tol() -> f64 {
    1e-4
}

/// Text columns turned into sentence-embedding features by an embedding model Ferry serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEmbeddings {
    /// A served embedding model (e.g. `all-MiniLM-L6-v2`).
    pub model: String,
    /// Text columns to embed (each becomes `dim` numeric features `<col>__emb<i>`).
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Imputation of numeric features: `mean`, `median`, `most_frequent`, `{"constant": x}`,
    /// or `null` (a missing value is an error).
    #[serde(default = "d_imputer")]
    pub numeric_imputer: Option<ImputeStrategy>,
    /// Fill missing categories with the most frequent (else missing is its own category).
    #[serde(default = "d_true")]
    pub impute_categorical: bool,
    #[serde(default)]
    pub scaler: ScalerKind,
    #[serde(default)]
    pub handle_unknown: HandleUnknown,
    #[serde(default)]
    pub drop: OneHotDrop,
    /// Drop rows with any missing feature before splitting.
    #[serde(default)]
    pub drop_missing_rows: bool,
    /// Drop duplicate rows before splitting.
    #[serde(default)]
    pub drop_duplicates: bool,
    /// Column type conversions applied first: `{"col": "numeric" | "bool" | "categorical" | "text"}`.
    #[serde(default)]
    pub convert: std::collections::BTreeMap<String, ConvertTo>,
    /// Cells that do not convert: `fail` (400/failed job naming row and column) or `coerce` (missing).
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub text_embeddings: Option<TextEmbeddings>,
}

impl Default for Preprocessing {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("defaults")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    LinearRegression,
    LogisticRegression,
    SoftmaxRegression,
    Mlp {
        #[serde(default = "d_hidden")]
        hidden: Vec<usize>,
        #[serde(default)]
        activation: Activation,
    },
}

impl ModelSpec {
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelSpec::LinearRegression => ModelKind::LinearRegression,
            ModelSpec::LogisticRegression => ModelKind::LogisticRegression,
            ModelSpec::SoftmaxRegression => ModelKind::SoftmaxRegression,
            ModelSpec::Mlp { hidden, activation } => ModelKind::Mlp {
                hidden: hidden.clone(),
                activation: *activation,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd,
    Momentum {
        #[serde(default = "d_momentum")]
        momentum: f64,
    },
    Nesterov {
        #[serde(default = "d_momentum")]
        momentum: f64,
    },
    Adam {
        #[serde(default = "d_b1")]
        beta1: f64,
        #[serde(default = "d_b2")]
        beta2: f64,
        #[serde(default = "d_eps")]
        eps: f64,
    },
    #[serde(rename = "adamw")]
    AdamW {
        #[serde(default = "d_b1")]
        beta1: f64,
        #[serde(default = "d_b2")]
        beta2: f64,
        #[serde(default = "d_eps")]
        eps: f64,
        #[serde(default = "d_wd")]
        weight_decay: f64,
    },
    /// Limited-memory BFGS over the whole training split (scikit-learn's `lbfgs`).
    Lbfgs {
        #[serde(default = "d_lbfgs_memory")]
        memory: usize,
        #[serde(default = "d_lbfgs_tol")]
        tol: f64,
    },
}

fn d_lbfgs_memory() -> usize {
    10
}
fn d_lbfgs_tol() -> f64 {
    1e-4
}

impl OptimizerSpec {
    pub fn to_ml(&self) -> Optimizer {
        match *self {
            OptimizerSpec::Sgd => Optimizer::Sgd,
            OptimizerSpec::Momentum { momentum } => Optimizer::Momentum { momentum },
            OptimizerSpec::Nesterov { momentum } => Optimizer::Nesterov { momentum },
            OptimizerSpec::Adam { beta1, beta2, eps } => Optimizer::Adam { beta1, beta2, eps },
            OptimizerSpec::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            },
            OptimizerSpec::Lbfgs { memory, tol } => Optimizer::Lbfgs { memory, tol },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    #[serde(default = "d_patience")]
    pub patience: usize,
    #[serde(default = "d_tol")]
    pub tol: f64,
    #[serde(default = "d_true")]
    pub restore_best: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// `null`: full batch (gradient descent).
    #[serde(default = "d_batch")]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub l2: f64,
    #[serde(default = "d_true")]
    pub shuffle: bool,
    #[serde(default)]
    pub init: Init,
    #[serde(default)]
    pub early_stopping: Option<EarlyStoppingSpec>,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("defaults")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Held-out test fraction (0 for none).
    #[serde(default = "d_test")]
    pub test_fraction: f64,
    /// Validation fraction of all rows, for early stopping and validation loss (0 for none).
    #[serde(default)]
    pub validation_fraction: f64,
    /// Stratify on the class (default: true for classification).
    #[serde(default)]
    pub stratify: Option<bool>,
}

impl Default for SplitSpec {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("defaults")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EvaluationSpec {
    /// Scores on the test split.
    #[default]
    Holdout,
    /// k-fold cross-validation over the rows outside the test split.
    Kfold {
        #[serde(default = "d_splits")]
        n_splits: usize,
        #[serde(default = "d_true")]
        shuffle: bool,
    },
    StratifiedKfold {
        #[serde(default = "d_splits")]
        n_splits: usize,
        #[serde(default = "d_true")]
        shuffle: bool,
    },
    LeaveOneOut,
    /// Bootstrap with out-of-bag scoring and percentile intervals.
    Bootstrap {
        #[serde(default = "d_resamples")]
        n_resamples: usize,
        #[serde(default = "d_conf")]
        confidence: f64,
    },
}

fn d_model() -> ModelSpec {
    ModelSpec::SoftmaxRegression
}
fn d_optimizer() -> OptimizerSpec {
    OptimizerSpec::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub training_file: String,
    pub target: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default)]
    pub preprocessing: Preprocessing,
    #[serde(default = "d_model")]
    pub model: ModelSpec,
    #[serde(default = "d_optimizer")]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    #[serde(default)]
    pub seed: u32,
    #[serde(default)]
    pub split: SplitSpec,
    #[serde(default)]
    pub evaluation: EvaluationSpec,
}

const TOP_FIELDS: &[&str] = &[
    "training_file",
    "target",
    "name",
    "features",
    "task",
    "preprocessing",
    "model",
    "optimizer",
    "hyperparameters",
    "seed",
    "split",
    "evaluation",
];

impl JobSpec {
    /// The task: given, else from the model, else from the target column's type.
    pub fn task_for(&self, target_kind: ColumnKind) -> Task {
        if let Some(t) = self.task {
            return t;
        }
        match self.model {
            ModelSpec::LinearRegression => Task::Regression,
            ModelSpec::LogisticRegression | ModelSpec::SoftmaxRegression => Task::Classification,
            ModelSpec::Mlp { .. } => match target_kind {
                ColumnKind::Numeric => Task::Regression,
                _ => Task::Classification,
            },
        }
    }

    pub fn pipeline_spec(&self, task: Task) -> PipelineSpec {
        let p = &self.preprocessing;
        PipelineSpec {
            target: Some(self.target.clone()),
            features: None, // set by the runner (embedding columns replace text columns)
            task,
            numeric_imputer: p.numeric_imputer.clone(),
            impute_categorical: p.impute_categorical,
            scaler: p.scaler,
            handle_unknown: p.handle_unknown,
            drop: p.drop,
        }
    }
}

fn bad(param: &str, m: impl Into<String>) -> ApiError {
    ApiError::invalid(param, m)
}

/// Parse and check a spec without the data (types, ranges, combinations).
pub fn parse_spec(body: Value) -> std::result::Result<JobSpec, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("", "The body must be a JSON object."))?;
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !TOP_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::new(
            ErrorCode::UnsupportedParameter,
            format!(
                "Unknown field(s) {}; a job spec has {}.",
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                TOP_FIELDS.join(", ")
            ),
        )
        .with_param(unknown[0]));
    }
    for r in ["training_file", "target"] {
        if obj.get(r).is_none_or(Value::is_null) {
            return Err(bad(r, format!("Missing required parameter `{r}`.")));
        }
    }
    // serde does not refuse extra fields of unit variants (`{"type": "sgd", "momentum": 1}`).
    for (field, units) in [
        (
            "model",
            &[
                "linear_regression",
                "logistic_regression",
                "softmax_regression",
            ][..],
        ),
        ("optimizer", &["sgd"][..]),
        ("evaluation", &["holdout", "leave_one_out"][..]),
    ] {
        if let Some(o) = obj.get(field).and_then(Value::as_object) {
            let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
            if units.contains(&ty) {
                if let Some(k) = o.keys().find(|k| *k != "type") {
                    return Err(ApiError::new(
                        ErrorCode::UnsupportedParameter,
                        format!(
                            "`{field}` of type `{ty}` takes no parameters; unknown field `{k}`."
                        ),
                    )
                    .with_param(&format!("{field}.{k}")));
                }
            }
        }
    }
    let spec: JobSpec = serde_json::from_value(body).map_err(|e| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).unwrap_or("").to_string();
        bad(&param, format!("Invalid job spec: {msg}"))
    })?;
    let h = &spec.hyperparameters;
    if !(h.learning_rate > 0.0 && h.learning_rate.is_finite()) {
        return Err(bad(
            "hyperparameters.learning_rate",
            "`learning_rate` must be positive.",
        ));
    }
    if h.epochs == 0 || h.epochs > 1_000_000 {
        return Err(bad(
            "hyperparameters.epochs",
            "`epochs` must be from 1 to 1000000.",
        ));
    }
    if let OptimizerSpec::Lbfgs { memory, tol } = spec.optimizer {
        if h.batch_size.is_some() {
            return Err(bad(
                "hyperparameters.batch_size",
                "`lbfgs` uses the whole training split at each step: set `batch_size` to null.",
            ));
        }
        if memory == 0 || memory > 1000 {
            return Err(bad("optimizer.memory", "`memory` must be from 1 to 1000."));
        }
        if !(tol > 0.0 && tol.is_finite()) {
            return Err(bad("optimizer.tol", "`tol` must be positive."));
        }
    }
    if h.batch_size == Some(0) {
        return Err(bad(
            "hyperparameters.batch_size",
            "`batch_size` must be positive (null for full batch).",
        ));
    }
    if !(h.l2 >= 0.0 && h.l2.is_finite()) {
        return Err(bad("hyperparameters.l2", "`l2` must be >= 0."));
    }
    let s = &spec.split;
    if !(0.0..1.0).contains(&s.test_fraction)
        || !(0.0..1.0).contains(&s.validation_fraction)
        || s.test_fraction + s.validation_fraction >= 1.0
    {
        return Err(bad(
            "split",
            "`test_fraction` and `validation_fraction` must be in [0, 1) and sum to less than 1.",
        ));
    }
    if matches!(spec.evaluation, EvaluationSpec::Holdout) && s.test_fraction == 0.0 {
        return Err(bad("split.test_fraction", "Holdout evaluation needs a test split: set `test_fraction` > 0 or choose another `evaluation`."));
    }
    if let ModelSpec::Mlp { hidden, .. } = &spec.model {
        if hidden.is_empty() || hidden.iter().any(|&h| h == 0 || h > 4096) {
            return Err(bad(
                "model.hidden",
                "`hidden` must list 1..4096 units per layer (at least one layer).",
            ));
        }
    }
    match spec.evaluation {
        EvaluationSpec::Kfold { n_splits, .. }
        | EvaluationSpec::StratifiedKfold { n_splits, .. }
            if n_splits < 2 =>
        {
            return Err(bad("evaluation.n_splits", "`n_splits` must be at least 2."))
        }
        EvaluationSpec::Bootstrap {
            n_resamples,
            confidence,
        } => {
            if n_resamples == 0 || n_resamples > 10_000 {
                return Err(bad(
                    "evaluation.n_resamples",
                    "`n_resamples` must be from 1 to 10000.",
                ));
            }
            if !(confidence > 0.0 && confidence < 1.0) {
                return Err(bad(
                    "evaluation.confidence",
                    "`confidence` must be in (0, 1).",
                ));
            }
        }
        _ => {}
    }
    match (&spec.model, spec.task) {
        (ModelSpec::LinearRegression, Some(Task::Classification)) => {
            return Err(bad("model", "linear_regression is a regression model; use logistic_regression, softmax_regression or mlp for classification."))
        }
        (ModelSpec::LogisticRegression | ModelSpec::SoftmaxRegression, Some(Task::Regression)) => {
            return Err(bad("model", "logistic_regression and softmax_regression are classifiers; use linear_regression or mlp for regression."))
        }
        _ => {}
    }
    if let Some(n) = &spec.name {
        if n.is_empty()
            || n.len() > 128
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(bad(
                "name",
                "`name` must be 1-128 characters of letters, digits, `-`, `_`, `.`, `:`.",
            ));
        }
    }
    Ok(spec)
}

/// Check the spec against the data (columns exist, task fits the target and the model).
pub fn check_against_data(spec: &JobSpec, ds: &Dataset) -> std::result::Result<Task, ApiError> {
    let names = ds.names();
    let col = ds.column(&spec.target).map_err(|_| {
        bad(
            "target",
            format!(
                "The training file has no column `{}`; it has {}.",
                spec.target,
                names.join(", ")
            ),
        )
    })?;
    if let Some(f) = &spec.features {
        if f.is_empty() {
            return Err(bad("features", "`features` must name at least one column."));
        }
        for c in f {
            if ds.column(c).is_err() {
                return Err(bad(
                    "features",
                    format!("The training file has no column `{c}`."),
                ));
            }
            if c == &spec.target {
                return Err(bad(
                    "features",
                    format!("`{c}` is the target; it cannot also be a feature."),
                ));
            }
        }
    }
    for c in spec.preprocessing.convert.keys() {
        if ds.column(c).is_err() {
            return Err(bad(
                "preprocessing.convert",
                format!("The training file has no column `{c}`."),
            ));
        }
    }
    if let Some(t) = &spec.preprocessing.text_embeddings {
        for c in &t.columns {
            if ds.column(c).is_err() {
                return Err(bad(
                    "preprocessing.text_embeddings.columns",
                    format!("The training file has no column `{c}`."),
                ));
            }
            if c == &spec.target {
                return Err(bad(
                    "preprocessing.text_embeddings.columns",
                    format!("`{c}` is the target."),
                ));
            }
        }
    }
    if matches!(spec.model, ModelSpec::LinearRegression) && col.data.kind() != ColumnKind::Numeric {
        return Err(bad("model", format!(
            "linear_regression needs a numeric target; `{}` is {} (a classification target): use logistic_regression, softmax_regression or mlp.",
            spec.target,
            col.data.kind()
        )));
    }
    let task = spec.task_for(col.data.kind());
    match (&spec.model, task) {
        (ModelSpec::LinearRegression, Task::Classification) => {
            return Err(bad(
                "model",
                "linear_regression needs a numeric (regression) target.",
            ))
        }
        (ModelSpec::LogisticRegression | ModelSpec::SoftmaxRegression, Task::Regression) => {
            return Err(bad(
                "model",
                "This model is a classifier; the task is regression.",
            ))
        }
        _ => {}
    }
    if task == Task::Regression {
        if spec.split.stratify == Some(true) {
            return Err(bad(
                "split.stratify",
                "Stratified splits need a classification target.",
            ));
        }
        if matches!(spec.evaluation, EvaluationSpec::StratifiedKfold { .. }) {
            return Err(bad(
                "evaluation",
                "stratified_kfold needs a classification target; use kfold.",
            ));
        }
    }
    if task == Task::Regression && col.data.kind() != ColumnKind::Numeric {
        return Err(bad(
            "target",
            format!(
                "Regression needs a numeric target; `{}` is {}.",
                spec.target,
                col.data.kind()
            ),
        ));
    }
    if task == Task::Classification {
        let mut classes: Vec<String> = (0..col.data.len())
            .filter_map(|i| col.data.text(i))
            .collect();
        classes.sort();
        classes.dedup();
        if classes.len() < 2 {
            return Err(bad(
                "target",
                format!(
                    "Classification needs at least 2 classes; `{}` has {}.",
                    spec.target,
                    classes.len()
                ),
            ));
        }
        if matches!(spec.model, ModelSpec::LogisticRegression) && classes.len() != 2 {
            return Err(bad("model", format!("logistic_regression is binary; the target has {} classes: use softmax_regression or mlp.", classes.len())));
        }
    }
    Ok(task)
}

pub(crate) fn job_json(j: &JobRow) -> Value {
    let spec: Value = serde_json::from_str(&j.spec).unwrap_or(Value::Null);
    let result: Value = j
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": j.id,
        "object": "training.job",
        "status": j.status,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "training_file": j.training_file,
        "model": j.model_name,
        "error": j.error.as_ref().map(|m| json!({"message": m})),
        "cancel_requested": j.cancel_requested,
        "spec": spec,
        "result": result,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("No such training job: `{id}`."),
    )
    .with_param("id")
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let spec = parse_spec(body)?;
    let store = st.lifecycle.store()?;
    let file = crate::files::get_row(&st, &spec.training_file)
        .await
        .map_err(|e| {
            if e.code == ErrorCode::NotFound {
                bad(
                    "training_file",
                    format!("No such file: `{}`.", spec.training_file),
                )
            } else {
                e
            }
        })?;
    if let Some(t) = &spec.preprocessing.text_embeddings {
        st.embedding_model(&t.model).await.map_err(|mut e| {
            e.param = Some("preprocessing.text_embeddings.model".into());
            e
        })?;
    }
    let home = store.home();
    let s2 = spec.clone();
    tokio::task::spawn_blocking(move || -> std::result::Result<(), ApiError> {
        let bytes = crate::files::read_content(&home, &file).map_err(|e| {
            tracing::error!("reading {}: {e}", file.id);
            ApiError::new(
                ErrorCode::InternalError,
                "Reading the training file failed.",
            )
        })?;
        let (_, ds) = crate::files::parse_dataset(&file.filename, &bytes).map_err(|e| {
            bad(
                "training_file",
                format!("The training file is not a dataset: {e}"),
            )
        })?;
        check_against_data(&s2, &ds)?;
        Ok(())
    })
    .await
    .map_err(|_| ApiError::new(ErrorCode::InternalError, "Checking the spec failed."))??;
    let text = serde_json::to_string(&spec)
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "spec"))?;
    let (tf, name) = (spec.training_file.clone(), spec.name.clone());
    let job = blocking(move || store.create_job(&text, &tf, name.as_deref()))
        .await
        .map_err(|mut e| {
            if e.code == ErrorCode::InvalidRequest {
                e.param = Some("name".into());
            }
            e
        })?;
    st.lifecycle.notify();
    Ok(Json(job_json(&job)))
}

pub async fn list(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    for k in q.keys() {
        if k != "limit" {
            return Err(ApiError::new(
                ErrorCode::UnsupportedParameter,
                format!("Unknown query parameter `{k}`."),
            )
            .with_param(k)
            .into());
        }
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| bad("limit", "`limit` must be an integer from 1 to 10000."))?,
    };
    let store = st.lifecycle.store()?;
    let jobs = blocking(move || store.list_jobs(limit)).await?;
    Ok(Json(
        json!({"object": "list", "data": jobs.iter().map(job_json).collect::<Vec<_>>()}),
    ))
}

async fn job_row(st: &AppState, id: &str) -> std::result::Result<JobRow, ApiError> {
    let store = st.lifecycle.store()?;
    let i = id.to_string();
    blocking(move || store.get_job(&i))
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn get_one(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>> {
    Ok(Json(job_json(&job_row(&st, &id).await?)))
}

pub async fn cancel(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>> {
    let store = st.lifecycle.store()?;
    let i = id.clone();
    let job = blocking(move || store.cancel_job(&i))
        .await?
        .ok_or_else(|| not_found(&id))?;
    if let Some(flag) = st
        .lifecycle
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
    {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(Json(job_json(&job)))
}

fn event_json(e: &ferry_store::JobEvent) -> Value {
    let data: Value = e
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    json!({
        "object": "training.job.event",
        "id": format!("{}:{}", e.job_id, e.seq),
        "seq": e.seq,
        "created_at": e.created_at,
        "type": e.kind,
        "message": e.message,
        "data": data,
    })
}

pub async fn events(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    for k in q.keys() {
        if !["stream", "after", "limit"].contains(&k.as_str()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedParameter,
                format!("Unknown query parameter `{k}`; expected stream, after, limit."),
            )
            .with_param(k)
            .into());
        }
    }
    let after = match q.get("after") {
        None => 0,
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| bad("after", "`after` must be an event sequence number."))?,
    };
    let limit = match q.get("limit") {
        None => 10_000,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| bad("limit", "`limit` must be an integer from 1 to 100000."))?,
    };
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad("stream", "`stream` must be true or false.").into()),
    };
    job_row(&st, &id).await?;
    let store = st.lifecycle.store()?;
    if !stream {
        let i = id.clone();
        let ev = blocking(move || store.job_events(&i, after, limit)).await?;
        let has_more = ev.len() == limit;
        return Ok(Json(json!({
            "object": "list",
            "data": ev.iter().map(event_json).collect::<Vec<_>>(),
            "has_more": has_more,
        }))
        .into_response());
    }
    // SSE: one message per event, polling the store until the job ends; then `[DONE]`.
    type St = (
        Arc<ferry_store::Store>,
        String,
        u64,
        std::collections::VecDeque<String>,
        bool,
    );
    let init: St = (store, id, after, Default::default(), false);
    let s = futures_util::stream::unfold(
        init,
        |(store, id, mut after, mut pending, done)| async move {
            loop {
                if let Some(p) = pending.pop_front() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(SseEvent::default().data(p)),
                        (store, id, after, pending, done),
                    ));
                }
                if done {
                    return None;
                }
                let (s2, i2) = (store.clone(), id.clone());
                let got = blocking(move || {
                    let j = s2.get_job(&i2)?;
                    Ok((s2.job_events(&i2, after, 1000)?, j))
                })
                .await;
                let (ev, job) = match got {
                    Ok(v) => v,
                    Err(e) => {
                        pending.push_back(json!({"error": e.body().error}).to_string());
                        return Some((
                            Ok(SseEvent::default().data(pending.pop_front().unwrap_or_default())),
                            (store, id, after, pending, true),
                        ));
                    }
                };
                // The job is read before its events: when it was terminal, every event is read.
                let terminal = job.as_ref().is_none_or(|j| j.is_terminal());
                after = ev.last().map_or(after, |e| e.seq);
                pending.extend(ev.iter().map(|e| event_json(e).to_string()));
                if terminal && ev.len() < 1000 {
                    pending.push_back("[DONE]".into());
                    return Some((
                        Ok(SseEvent::default().data(pending.pop_front().unwrap_or_default())),
                        (store, id, after, pending, true),
                    ));
                }
                if pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        },
    );
    Ok(Sse::new(s).keep_alive(KeepAlive::default()).into_response())
}

/// The files a job may leave in `jobs/<id>/`, with their media types. Only these names are
/// served, so no path from the request reaches the filesystem.
const ARTIFACTS: &[(&str, &str)] = &[
    ("model.json", "application/json"),
    ("report.json", "application/json"),
    ("classification_report.txt", "text/plain; charset=utf-8"),
    ("loss_curve.svg", "image/svg+xml"),
    ("confusion_matrix.svg", "image/svg+xml"),
];

/// `GET /v1/training/jobs/{id}/artifacts`: the job's artifacts and their sizes.
pub async fn artifacts(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>> {
    let job = job_row(&st, &id).await?;
    let dir = st.lifecycle.store()?.home().join("jobs").join(&job.id);
    let data: Vec<Value> = ARTIFACTS
        .iter()
        .filter_map(|(name, media)| {
            let meta = std::fs::metadata(dir.join(name)).ok()?;
            Some(json!({
                "name": name,
                "bytes": meta.len(),
                "content_type": media,
                "url": format!("/v1/training/jobs/{}/artifacts/{name}", job.id),
            }))
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/training/jobs/{id}/artifacts/{name}`: one artifact's content.
pub async fn artifact(
    State(st): State<Arc<AppState>>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Response> {
    let job = job_row(&st, &id).await?;
    let Some((name, media)) = ARTIFACTS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = ARTIFACTS.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "No artifact `{name}`; artifacts are named {}.",
                known.join(", ")
            ),
        )
        .with_param("name")
        .into());
    };
    let path = st
        .lifecycle
        .store()?
        .home()
        .join("jobs")
        .join(&job.id)
        .join(name);
    let p2 = path.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(p2))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match read {
        Ok(bytes) => Ok(([(axum::http::header::CONTENT_TYPE, *media)], bytes).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("Job `{}` has no `{name}` (it has not succeeded, or the artifact does not apply to its task).", job.id),
        )
        .with_param("name")
        .into()),
        Err(e) => {
            tracing::error!("reading {}: {e}", path.display());
            Err(ApiError::new(ErrorCode::InternalError, "Reading the artifact failed.").into())
        }
    }
}
