//! Trained models and predictions: `GET /v1/training/models` lists the models registered by
//! succeeded jobs; `POST /v1/predictions` `{"model", "records": [{column: value}]}` applies a
//! model's saved pipeline to raw records (the uploaded columns, before preprocessing) and
//! answers predictions and, for classifiers, class probabilities.
//!
//! Every input column must be present in every record (`null` is a missing value, imputed as
//! in training); an absent column, an unknown column, or a value of the wrong type is a 400
//! naming the record index and the column. Loaded models are cached in memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use ferry_ml::data::{Cell, Record};
use ferry_ml::model::{Model, Prediction};
use ferry_ml::preprocess::{Pipeline, Task};
use ferry_ml::MlError;
use ferry_types::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::body::JsonBody;
use crate::error::blocking;
use crate::error::Result;
use crate::state::AppState;
use crate::training::TextEmbeddings;

pub const ARTIFACT_FORMAT: u32 = 1;

/// `jobs/<id>/model.json`: everything a prediction needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Artifact {
    pub format: u32,
    pub job_id: String,
    pub task: Task,
    pub target: String,
    /// Raw columns a record must carry.
    pub input_columns: Vec<String>,
    pub text_embeddings: Option<TextEmbeddings>,
    pub embedding_dim: usize,
    pub pipeline: Pipeline,
    pub model: Model,
}

const MAX_RECORDS: usize = 10_000;

pub async fn list_models(State(st): State<Arc<AppState>>) -> Result<Json<Value>> {
    let store = st.lifecycle.store()?;
    let models = blocking(move || store.list_trained_models()).await?;
    let data: Vec<Value> = models
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "trained_model",
                "created_at": m.created_at,
                "job_id": m.job_id,
                "task": m.task,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn load(st: &AppState, name: &str) -> std::result::Result<Arc<Artifact>, ApiError> {
    if let Some(a) = st
        .lifecycle
        .models
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
    {
        return Ok(a.clone());
    }
    let store = st.lifecycle.store()?;
    let n = name.to_string();
    let row = blocking(move || store.get_trained_model(&n))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ModelNotFound,
                format!("No trained model `{name}` (see GET /v1/training/models)."),
            )
            .with_param("model")
        })?;
    let path = st
        .lifecycle
        .home()?
        .join(&row.artifact_dir)
        .join("model.json");
    let art = tokio::task::spawn_blocking(move || -> std::result::Result<Artifact, String> {
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let a: Artifact =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if a.format != ARTIFACT_FORMAT {
            return Err(format!(
                "{}: artifact format {} is not {ARTIFACT_FORMAT}",
                path.display(),
                a.format
            ));
        }
        Ok(a)
    })
    .await
    .map_err(|_| ApiError::new(ErrorCode::InternalError, "Loading the model failed."))?
    .map_err(|e| {
        tracing::error!("loading trained model {name}: {e}");
        ApiError::new(
            ErrorCode::InternalError,
            format!("Loading the model `{name}` failed."),
        )
    })?;
    let art = Arc::new(art);
    st.lifecycle
        .models
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), art.clone());
    Ok(art)
}

fn bad_record(i: usize, col: &str, msg: String) -> ApiError {
    ApiError::invalid(&format!("records[{i}].{col}"), msg)
}

/// JSON records -> ferry-ml records, checking columns by name.
fn to_records(a: &Artifact, recs: &[Value]) -> std::result::Result<Vec<Record>, ApiError> {
    let mut out = Vec::with_capacity(recs.len());
    for (i, r) in recs.iter().enumerate() {
        let obj = r.as_object().ok_or_else(|| {
            ApiError::invalid(
                &format!("records[{i}]"),
                format!("Record {i} is not a JSON object."),
            )
        })?;
        for k in obj.keys() {
            if !a.input_columns.contains(k) && k != &a.target {
                return Err(bad_record(
                    i,
                    k,
                    format!(
                        "Record {i} has the unknown column `{k}`; the model takes {}.",
                        a.input_columns.join(", ")
                    ),
                ));
            }
        }
        let mut rec = Record::new();
        for c in &a.input_columns {
            let v = obj.get(c).ok_or_else(|| {
                bad_record(
                    i,
                    c,
                    format!(
                        "Record {i} is missing the column `{c}` (send null for a missing value)."
                    ),
                )
            })?;
            let cell = match v {
                Value::Null => Cell::Missing,
                Value::Bool(b) => Cell::Bool(*b),
                Value::Number(n) => Cell::Number(n.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => Cell::Text(s.clone()),
                _ => {
                    return Err(bad_record(i, c, format!(
                        "Record {i}, column `{c}`: expected a number, string, boolean or null, got {v}."
                    )))
                }
            };
            rec.insert(c.clone(), cell);
        }
        out.push(rec);
    }
    Ok(out)
}

fn ml_record_error(e: MlError) -> ApiError {
    match &e {
        MlError::Conversion { row, column, value, target } => bad_record(
            *row,
            column,
            format!("Record {row}, column `{column}`: cannot read {value:?} as {target}."),
        ),
        MlError::MissingValue { row, column } => bad_record(
            *row,
            column,
            format!("Record {row}, column `{column}`: a value is required (the model was trained without imputation)."),
        ),
        MlError::UnknownCategory { row, column, value } => bad_record(
            *row,
            column,
            format!("Record {row}, column `{column}`: unknown category {value:?} (the model rejects unseen categories)."),
        ),
        _ => ApiError::invalid("records", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    model: String,
    records: Vec<Value>,
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    if let Some(o) = body.as_object() {
        for k in o.keys() {
            if k != "model" && k != "records" {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedParameter,
                    format!(
                        "Unknown parameter `{k}`: a prediction request has `model` and `records`."
                    ),
                )
                .with_param(k)
                .into());
            }
        }
        for r in ["model", "records"] {
            if o.get(r).is_none_or(Value::is_null) {
                return Err(
                    ApiError::invalid(r, format!("Missing required parameter `{r}`.")).into(),
                );
            }
        }
    }
    let req: PredictRequest = serde_json::from_value(body).map_err(|e| {
        let m = e.to_string();
        let p = if m.contains("records") {
            "records"
        } else {
            "model"
        };
        ApiError::invalid(p, format!("Invalid request: {m}"))
    })?;
    if req.records.is_empty() || req.records.len() > MAX_RECORDS {
        return Err(
            ApiError::invalid("records", format!("Send 1 to {MAX_RECORDS} records.")).into(),
        );
    }
    let a = load(&st, &req.model).await?;
    let mut recs = to_records(&a, &req.records)?;
    if let Some(te) = &a.text_embeddings {
        let (st2, te2, a2) = (st.clone(), te.clone(), a.clone());
        recs =
            tokio::task::spawn_blocking(move || -> std::result::Result<Vec<Record>, ApiError> {
                for c in &te2.columns {
                    let texts: Vec<Option<String>> = recs
                        .iter()
                        .map(|r| match r.get(c) {
                            Some(Cell::Missing) | None => None,
                            Some(x) => Some(x.to_string()),
                        })
                        .collect();
                    let vecs =
                        crate::runner::embed_blocking(&st2, &te2.model, &texts).map_err(|m| {
                            ApiError::new(
                                ErrorCode::ServiceUnavailable,
                                format!("Embedding `{c}` failed: {m}"),
                            )
                        })?;
                    for (r, v) in recs.iter_mut().zip(vecs) {
                        r.remove(c);
                        for k in 0..a2.embedding_dim {
                            let cell = match &v {
                                Some(v) => {
                                    Cell::Number(f64::from(v.get(k).copied().unwrap_or(f32::NAN)))
                                }
                                None => Cell::Missing,
                            };
                            r.insert(crate::runner::emb_name(c, k), cell);
                        }
                    }
                }
                Ok(recs)
            })
            .await
            .map_err(|_| ApiError::new(ErrorCode::InternalError, "Embedding failed."))??;
    }
    let x = a
        .pipeline
        .transform_records(&recs)
        .map_err(ml_record_error)?;
    let pred = a.model.predict(&x).map_err(ml_record_error)?;
    let data: Vec<Value> = match pred {
        Prediction::Values(v) => v
            .iter()
            .enumerate()
            .map(|(i, y)| json!({"index": i, "prediction": y}))
            .collect(),
        Prediction::Classes(c) => {
            let proba = a.model.predict_proba(&x).map_err(ml_record_error)?;
            let classes = a.pipeline.classes();
            c.iter()
                .enumerate()
                .map(|(i, &k)| {
                    let probs: BTreeMap<&str, f64> = classes
                        .iter()
                        .enumerate()
                        .map(|(j, name)| (name.as_str(), proba.get(i, j)))
                        .collect();
                    json!({
                        "index": i,
                        "prediction": classes.get(k).cloned().unwrap_or_default(),
                        "probabilities": probs,
                    })
                })
                .collect()
        }
    };
    // Count the request against the caller's key (usage per model).
    if let Some(c) = crate::auth::Caller::current() {
        c.record_request(&req.model);
    }
    Ok(Json(
        json!({"object": "list", "model": req.model, "data": data}),
    ))
}
