//! Files, in OpenAI's shapes: `POST /v1/files` (multipart `file` + `purpose`),
//! `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content` and
//! `DELETE /v1/files/{id}`.
//!
//! An upload streams to a temporary file under `$FERRY_HOME/files/` (never held whole in
//! memory), bounded by `--max-upload-bytes` (413); it becomes durable (fsync, rename to its
//! sha256, fsync of the directory) and gets its row only once the whole body has arrived and
//! validated, so an upload cut off midway leaves neither a row nor a file.
//!
//! Datasets (`purpose=dataset`, and `.csv`/`.tsv`/`.jsonl` files of any purpose) are parsed
//! with `ferry-ml`; the response carries a `profile` extension (format, rows, and per column
//! the inferred type, missing, distinct, min/max/mean). For `purpose=dataset` a parse error
//! is a 400 naming the row and column. `GET .../content?format=csv|jsonl` converts a dataset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_ml::{CsvOptions, Dataset, MlError};
use ferry_store::{BlobWriter, FileRow};
use ferry_types::{ApiError, ErrorCode};
use serde_json::{json, Value};

use crate::error::blocking;
use crate::error::Result;
use crate::multipart::{self, Multipart, MultipartError};
use crate::state::AppState;

/// OpenAI's purposes, plus `dataset` (tabular data for training jobs).
pub const PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
    "dataset",
];

/// Multipart framing and the `purpose` field ride on top of the file's own limit.
const FRAMING_SLACK: u64 = 64 << 10;

/// A dataset's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// The format by extension, else by the first non-blank byte (`{` is JSON Lines).
pub fn detect_format(filename: &str, bytes: &[u8]) -> Format {
    let lower = filename.to_ascii_lowercase();
    if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        return Format::Jsonl;
    }
    if lower.ends_with(".csv") || lower.ends_with(".tsv") || lower.ends_with(".txt") {
        return Format::Csv;
    }
    let first = bytes
        .iter()
        .copied()
        .find(|b| !(b.is_ascii_whitespace() || *b == 0xEF || *b == 0xBB || *b == 0xBF));
    if first == Some(b'{') {
        Format::Jsonl
    } else {
        Format::Csv
    }
}

fn looks_tabular(filename: &str) -> bool {
    let l = filename.to_ascii_lowercase();
    [".csv", ".tsv", ".jsonl", ".ndjson"]
        .iter()
        .any(|e| l.ends_with(e))
}

/// Parse a dataset file with `ferry-ml`.
pub fn parse_dataset(
    filename: &str,
    bytes: &[u8],
) -> std::result::Result<(Format, Dataset), MlError> {
    let f = detect_format(filename, bytes);
    let ds = match f {
        Format::Csv => Dataset::from_csv_bytes(bytes, &CsvOptions::default())?,
        Format::Jsonl => Dataset::from_jsonl_bytes(bytes)?,
    };
    if ds.n_cols() == 0 || ds.n_rows() == 0 {
        return Err(MlError::InvalidData("the dataset has no rows".into()));
    }
    Ok((f, ds))
}

/// The profile extension: format, rows, columns.
pub fn profile_json(format: Format, ds: &Dataset) -> Value {
    json!({
        "format": format.name(),
        "rows": ds.n_rows(),
        "columns": ds.profile(),
    })
}

pub(crate) fn file_json(f: &FileRow) -> Value {
    let mut v = json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": null,
    });
    if let Some(p) = f
        .profile
        .as_deref()
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
    {
        v["profile"] = p;
    }
    v
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("No such file: `{id}`.")).with_param("id")
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("The file exceeds the upload limit of {limit} bytes (--max-upload-bytes)."),
    )
    .with_param("file")
}

fn mp_error(e: MultipartError) -> ApiError {
    match e {
        MultipartError::Invalid(m) => ApiError::invalid("file", m),
        MultipartError::Body(m) => ApiError::invalid("file", format!("The upload failed: {m}")),
    }
}

/// The last path component, without control characters, at most 255 bytes.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut s: String = base.chars().filter(|c| !c.is_control()).collect();
    while s.len() > 255 {
        s.pop();
    }
    if s.is_empty() {
        "upload".into()
    } else {
        s
    }
}

pub async fn create(State(st): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let lc = &st.lifecycle;
    let store = lc.store()?;
    let limit = lc.max_upload_bytes;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multipart::boundary(ct).ok_or_else(|| {
        ApiError::invalid(
            "file",
            "Upload with Content-Type multipart/form-data and the fields `file` and `purpose`.",
        )
    })?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + FRAMING_SLACK) {
        return Err(too_large(limit).into());
    }
    let dir = ferry_store::files::files_dir(&store.home());
    let mut mp = Multipart::new(req.into_body(), &boundary);
    let mut purpose: Option<String> = None;
    let mut upload: Option<(String, BlobWriter)> = None;
    while let Some(part) = mp.next_part().await.map_err(mp_error)? {
        match part.name.as_str() {
            "purpose" => {
                purpose = Some(mp.text(256).await.map_err(mp_error)?.trim().to_string());
            }
            "file" => {
                if upload.is_some() {
                    return Err(ApiError::invalid("file", "Send one `file` per upload.").into());
                }
                let filename = clean_filename(part.filename.as_deref().unwrap_or(""));
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
                let d = dir.clone();
                // Disk writes on a blocking thread; the channel bounds what is in memory.
                let writer =
                    tokio::task::spawn_blocking(move || -> ferry_store::Result<BlobWriter> {
                        let mut w = BlobWriter::new(&d)?;
                        while let Some(c) = rx.blocking_recv() {
                            w.write(&c)?;
                        }
                        Ok(w)
                    });
                let mut n: u64 = 0;
                while let Some(c) = mp.chunk().await.map_err(mp_error)? {
                    n += c.len() as u64;
                    if n > limit {
                        // Dropping the sender ends the writer; its temporary file is removed.
                        return Err(too_large(limit).into());
                    }
                    if tx.send(c).await.is_err() {
                        break; // the writer failed; its error is read below
                    }
                }
                drop(tx);
                let w = match writer.await {
                    Ok(Ok(w)) => w,
                    Ok(Err(e)) => {
                        tracing::error!("writing an upload: {e}");
                        return Err(ApiError::new(
                            ErrorCode::InternalError,
                            "Storing the file failed.",
                        )
                        .into());
                    }
                    Err(e) => {
                        tracing::error!("upload writer: {e}");
                        return Err(ApiError::new(
                            ErrorCode::InternalError,
                            "Storing the file failed.",
                        )
                        .into());
                    }
                };
                upload = Some((filename, w));
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedParameter,
                    format!("Unknown form field `{other}`: send `file` and `purpose`."),
                )
                .with_param(other)
                .into())
            }
        }
        if mp.received > limit + FRAMING_SLACK {
            return Err(too_large(limit).into());
        }
    }
    let purpose = purpose
        .ok_or_else(|| ApiError::invalid("purpose", "Missing required parameter `purpose`."))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            format!(
                "Invalid purpose `{purpose}`: expected one of {}.",
                PURPOSES.join(", ")
            ),
        )
        .into());
    }
    let (filename, writer) =
        upload.ok_or_else(|| ApiError::invalid("file", "Missing required parameter `file`."))?;
    let row = tokio::task::spawn_blocking(move || -> std::result::Result<FileRow, ApiError> {
        let dataset = purpose == "dataset";
        let profile = if dataset || looks_tabular(&filename) {
            let bytes = std::fs::read(writer.temp_path()).map_err(|e| {
                tracing::error!("reading an upload back: {e}");
                ApiError::new(ErrorCode::InternalError, "Storing the file failed.")
            })?;
            match parse_dataset(&filename, &bytes) {
                Ok((f, ds)) => Some(profile_json(f, &ds).to_string()),
                Err(e) if dataset => {
                    return Err(ApiError::invalid(
                        "file",
                        format!("The dataset does not parse: {e}"),
                    ))
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let (sha, bytes, _) = writer.commit().map_err(|e| {
            tracing::error!("committing an upload: {e}");
            ApiError::new(ErrorCode::InternalError, "Storing the file failed.")
        })?;
        store
            .insert_file(&filename, &purpose, &sha, bytes, profile.as_deref())
            .map_err(|e| match e {
                ferry_store::Error::Invalid(m) => {
                    ApiError::new(ErrorCode::ServiceUnavailable, m).with_retry_after(1)
                }
                e => {
                    tracing::error!("recording an upload: {e}");
                    ApiError::new(ErrorCode::InternalError, "The metadata store failed.")
                }
            })
    })
    .await
    .map_err(|e| {
        tracing::error!("upload task: {e}");
        ApiError::new(ErrorCode::InternalError, "Storing the file failed.")
    })??;
    Ok(Json(file_json(&row)).into_response())
}

fn check_query(q: &HashMap<String, String>, allowed: &[&str]) -> std::result::Result<(), ApiError> {
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedParameter,
                format!(
                    "Unknown query parameter `{k}`; expected one of {}.",
                    allowed.join(", ")
                ),
            )
            .with_param(k));
        }
    }
    Ok(())
}

pub async fn list(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    check_query(&q, &["purpose", "limit", "after", "order"])?;
    let limit = match q.get("limit") {
        None => 10_000,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", "`limit` must be an integer from 1 to 10000.")
            })?,
    };
    let asc = match q.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(ApiError::invalid(
                "order",
                format!("`order` must be asc or desc, not `{o}`."),
            )
            .into())
        }
    };
    let store = st.lifecycle.store()?;
    let purpose = q.get("purpose").cloned();
    let mut rows = blocking(move || store.list_files(purpose.as_deref())).await?;
    if asc {
        rows.reverse();
    }
    if let Some(after) = q.get("after") {
        let i = rows
            .iter()
            .position(|r| &r.id == after)
            .ok_or_else(|| ApiError::invalid("after", format!("No such file: `{after}`.")))?;
        rows.drain(..=i);
    }
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let data: Vec<Value> = rows.iter().map(file_json).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": rows.first().map(|r| r.id.clone()),
        "last_id": rows.last().map(|r| r.id.clone()),
    })))
}

pub(crate) async fn get_row(st: &AppState, id: &str) -> std::result::Result<FileRow, ApiError> {
    let store = st.lifecycle.store()?;
    let i = id.to_string();
    blocking(move || store.get_file(&i))
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn get_one(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>> {
    Ok(Json(file_json(&get_row(&st, &id).await?)))
}

pub async fn delete_one(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>> {
    let store = st.lifecycle.store()?;
    let i = id.clone();
    if !blocking(move || store.delete_file(&i)).await? {
        return Err(not_found(&id).into());
    }
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// Stream a file from disk in chunks (a blocking reader feeds a bounded channel).
fn stream_file(path: PathBuf) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }))
}

pub async fn content(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    check_query(&q, &["format"])?;
    let row = get_row(&st, &id).await?;
    let store = st.lifecycle.store()?;
    let path = store.file_content_path(&row.sha256);
    let Some(format) = q.get("format") else {
        let mut r = stream_file(path).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(row.bytes));
        return Ok(r);
    };
    let to = match format.as_str() {
        "csv" => Format::Csv,
        "jsonl" => Format::Jsonl,
        f => {
            return Err(ApiError::invalid(
                "format",
                format!("`format` must be csv or jsonl, not `{f}`."),
            )
            .into())
        }
    };
    let filename = row.filename.clone();
    let text = tokio::task::spawn_blocking(move || -> std::result::Result<String, ApiError> {
        let bytes = std::fs::read(&path).map_err(|e| {
            tracing::error!("{}: {e}", path.display());
            ApiError::new(ErrorCode::InternalError, "Reading the file failed.")
        })?;
        let (_, ds) = parse_dataset(&filename, &bytes).map_err(|e| {
            ApiError::invalid(
                "format",
                format!("The file is not a dataset, so it cannot be converted: {e}"),
            )
        })?;
        Ok(match to {
            Format::Csv => ds.to_csv(b','),
            Format::Jsonl => ds.to_jsonl(),
        })
    })
    .await
    .map_err(|_| ApiError::new(ErrorCode::InternalError, "Converting the file failed."))??;
    let ct = match to {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Jsonl => "application/jsonl; charset=utf-8",
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], text).into_response())
}

/// Read a stored file's content (for the runner).
pub fn read_content(home: &Path, row: &FileRow) -> std::io::Result<Vec<u8>> {
    std::fs::read(ferry_store::files::files_dir(home).join(&row.sha256))
}
