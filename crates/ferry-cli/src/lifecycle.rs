//! `ferry data upload|profile`, `ferry train`, `ferry eval`, `ferry predict`: the model
//! lifecycle from the command line, over HTTP to a running `ferry serve` (`client.rs`).
//! `ferry data profile FILE` profiles a local file without a server.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::client::Client;

#[derive(Args, Clone)]
pub struct Conn {
    /// The server (default: FERRY_URL, else http://127.0.0.1:8000, where `ferry serve` listens). FERRY_API_KEY is sent
    /// as a Bearer token.
    #[arg(long)]
    url: Option<String>,
}

#[derive(Subcommand)]
pub enum DataCmd {
    /// Upload a file (CSV / JSON Lines datasets are profiled by the server).
    Upload {
        file: PathBuf,
        /// `dataset`, or one of OpenAI's purposes (`fine-tune`, `assistants`, `batch`, ...).
        #[arg(long, default_value = "dataset")]
        purpose: String,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Profile a local CSV / JSON Lines file, or an uploaded one by id (`file-…`).
    Profile {
        file_or_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
pub struct TrainArgs {
    /// The uploaded training file (`file-…`).
    #[arg(long)]
    file: String,
    /// Target column.
    #[arg(long)]
    target: String,
    /// Name of the registered model (default: the job id).
    #[arg(long)]
    name: Option<String>,
    /// linear_regression, logistic_regression, softmax_regression or mlp.
    #[arg(long)]
    model: Option<String>,
    /// MLP hidden layer sizes, e.g. `32,16` (mlp only).
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// MLP activation: relu, tanh, sigmoid, identity (mlp only).
    #[arg(long)]
    activation: Option<String>,
    /// sgd, momentum, nesterov, adam, adamw.
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    /// A number, or `full` for full-batch gradient descent.
    #[arg(long)]
    batch_size: Option<String>,
    #[arg(long)]
    seed: Option<u32>,
    #[arg(long)]
    test_fraction: Option<f64>,
    #[arg(long)]
    validation_fraction: Option<f64>,
    /// holdout, kfold[:K], stratified_kfold[:K], leave_one_out, bootstrap[:N].
    #[arg(long)]
    eval: Option<String>,
    /// A JSON file with a full job spec; the flags above override its fields.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Queue the job and print its id without following it.
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn data(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Upload {
            file,
            purpose,
            json,
            conn,
        } => {
            let c = Client::new(conn.url.as_deref())?;
            let f = c.upload(&file, &purpose)?.ok_json()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                println!(
                    "{}  {}  {} bytes  purpose={}",
                    f["id"].as_str().unwrap_or(""),
                    f["filename"].as_str().unwrap_or(""),
                    f["bytes"],
                    f["purpose"].as_str().unwrap_or("")
                );
                if f.get("profile").is_some() {
                    print_profile(&f["profile"]);
                }
            }
            Ok(())
        }
        DataCmd::Profile {
            file_or_id,
            json,
            conn,
        } => {
            let p = Path::new(&file_or_id);
            let profile = if p.exists() {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                local_profile(&name, &bytes)?
            } else if file_or_id.starts_with("file-") {
                let c = Client::new(conn.url.as_deref())?;
                let f = c.get(&format!("/v1/files/{file_or_id}"))?.ok_json()?;
                f.get("profile")
                    .cloned()
                    .with_context(|| format!("{file_or_id} is not a dataset (no profile)"))?
            } else {
                bail!("{file_or_id}: no such file (and not a file id `file-…`)");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&profile)?);
            } else {
                print_profile(&profile);
            }
            Ok(())
        }
    }
}

fn local_profile(name: &str, bytes: &[u8]) -> Result<Value> {
    let lower = name.to_ascii_lowercase();
    let jsonl = lower.ends_with(".jsonl")
        || lower.ends_with(".ndjson")
        || (!lower.ends_with(".csv")
            && !lower.ends_with(".tsv")
            && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    let ds = if jsonl {
        ferry_ml::Dataset::from_jsonl_bytes(bytes)
    } else {
        ferry_ml::Dataset::from_csv_bytes(bytes, &ferry_ml::CsvOptions::default())
    }
    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(json!({
        "format": if jsonl { "jsonl" } else { "csv" },
        "rows": ds.n_rows(),
        "columns": ds.profile(),
    }))
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    }
}

fn print_profile(p: &Value) {
    println!(
        "{} rows, {} format",
        p["rows"],
        p["format"].as_str().unwrap_or("?")
    );
    println!(
        "{:<24} {:<12} {:>8} {:>8} {:>12} {:>12} {:>12}",
        "COLUMN", "TYPE", "MISSING", "DISTINCT", "MIN", "MAX", "MEAN"
    );
    for c in p["columns"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<12} {:>8} {:>8} {:>12} {:>12} {:>12}",
            c["name"].as_str().unwrap_or(""),
            c["kind"].as_str().unwrap_or(""),
            c["missing"],
            c["distinct"],
            num(&c["min"]),
            num(&c["max"]),
            num(&c["mean"])
        );
    }
}

fn set(obj: &mut Map<String, Value>, path: &[&str], v: Value) {
    let mut o = obj;
    for k in &path[..path.len() - 1] {
        let e = o.entry(k.to_string()).or_insert_with(|| json!({}));
        if !e.is_object() {
            *e = json!({});
        }
        o = e.as_object_mut().expect("object");
    }
    o.insert(path[path.len() - 1].to_string(), v);
}

fn spec_of(a: &TrainArgs) -> Result<Value> {
    let mut spec: Map<String, Value> = match &a.spec {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a JSON object", p.display()))?,
        None => Map::new(),
    };
    spec.insert("training_file".into(), json!(a.file));
    spec.insert("target".into(), json!(a.target));
    if let Some(n) = &a.name {
        spec.insert("name".into(), json!(n));
    }
    if let Some(m) = &a.model {
        set(&mut spec, &["model", "type"], json!(m));
    }
    if !a.hidden.is_empty() {
        set(&mut spec, &["model", "hidden"], json!(a.hidden));
    }
    if let Some(x) = &a.activation {
        set(&mut spec, &["model", "activation"], json!(x));
    }
    if (!a.hidden.is_empty() || a.activation.is_some()) && spec["model"].get("type").is_none() {
        set(&mut spec, &["model", "type"], json!("mlp"));
    }
    if let Some(o) = &a.optimizer {
        spec.insert("optimizer".into(), json!({"type": o}));
    }
    if let Some(x) = a.learning_rate {
        set(&mut spec, &["hyperparameters", "learning_rate"], json!(x));
    }
    if let Some(x) = a.epochs {
        set(&mut spec, &["hyperparameters", "epochs"], json!(x));
    }
    if let Some(b) = &a.batch_size {
        let v = if b == "full" {
            Value::Null
        } else {
            json!(b
                .parse::<usize>()
                .with_context(|| format!("--batch-size {b}: a number or `full`"))?)
        };
        set(&mut spec, &["hyperparameters", "batch_size"], v);
    }
    if let Some(s) = a.seed {
        spec.insert("seed".into(), json!(s));
    }
    if let Some(x) = a.test_fraction {
        set(&mut spec, &["split", "test_fraction"], json!(x));
    }
    if let Some(x) = a.validation_fraction {
        set(&mut spec, &["split", "validation_fraction"], json!(x));
    }
    if let Some(e) = &a.eval {
        let (kind, n) = match e.split_once(':') {
            Some((k, n)) => (
                k,
                Some(n.parse::<usize>().with_context(|| format!("--eval {e}"))?),
            ),
            None => (e.as_str(), None),
        };
        let v = match (kind, n) {
            ("holdout" | "leave_one_out", None) => json!({"type": kind}),
            ("kfold" | "stratified_kfold", n) => json!({"type": kind, "n_splits": n.unwrap_or(5)}),
            ("bootstrap", n) => json!({"type": kind, "n_resamples": n.unwrap_or(20)}),
            _ => bail!("--eval {e}: expected holdout, kfold[:K], stratified_kfold[:K], leave_one_out or bootstrap[:N]"),
        };
        spec.insert("evaluation".into(), v);
    }
    Ok(Value::Object(spec))
}

pub fn train(a: TrainArgs) -> Result<()> {
    let c = Client::new(a.conn.url.as_deref())?;
    let spec = spec_of(&a)?;
    let job = c.post_json("/v1/training/jobs", &spec)?.ok_json()?;
    let id = job["id"].as_str().context("no job id")?.to_string();
    eprintln!(
        "job {id} queued (model `{}`)",
        job["model"].as_str().unwrap_or("")
    );
    if a.detach {
        println!("{id}");
        return Ok(());
    }
    follow(&c, &id)
}

/// Print a job's events until it ends: a progress bar on a terminal, plain lines otherwise.
fn follow(c: &Client, id: &str) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut after = 0u64;
    let mut bar_shown = false;
    let mut err = std::io::stderr();
    loop {
        let page = c
            .get(&format!("/v1/training/jobs/{id}/events?after={after}"))?
            .ok_json()?;
        let events = page["data"].as_array().cloned().unwrap_or_default();
        for e in &events {
            after = e["seq"].as_u64().unwrap_or(after);
            let msg = e["message"].as_str().unwrap_or("");
            if e["type"] == "epoch" && tty {
                let d = &e["data"];
                let (ep, total) = (
                    d["epoch"].as_u64().unwrap_or(0),
                    d["epochs"].as_u64().unwrap_or(1).max(1),
                );
                let w = 30usize;
                let filled = (ep as usize * w / total as usize).min(w);
                let valid = d["valid_loss"]
                    .as_f64()
                    .map(|v| format!("  valid {v:.4}"))
                    .unwrap_or_default();
                write!(
                    err,
                    "\r[{}{}] {ep}/{total}  train {:.4}{valid}   ",
                    "#".repeat(filled),
                    " ".repeat(w - filled),
                    d["train_loss"].as_f64().unwrap_or(f64::NAN)
                )?;
                err.flush()?;
                bar_shown = true;
            } else {
                if bar_shown {
                    writeln!(err)?;
                    bar_shown = false;
                }
                writeln!(err, "{}: {msg}", e["type"].as_str().unwrap_or(""))?;
            }
        }
        if page["has_more"] == true {
            continue;
        }
        let job = c.get(&format!("/v1/training/jobs/{id}"))?.ok_json()?;
        let status = job["status"].as_str().unwrap_or("").to_string();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str()) && events.is_empty() {
            if bar_shown {
                writeln!(err)?;
            }
            match status.as_str() {
                "succeeded" => {
                    print_result(&job);
                    println!("model: {}", job["model"].as_str().unwrap_or(""));
                    return Ok(());
                }
                "failed" => bail!(
                    "job {id} failed: {}",
                    job["error"]["message"].as_str().unwrap_or("")
                ),
                _ => bail!("job {id} was cancelled"),
            }
        }
        if events.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn print_result(job: &Value) {
    let r = &job["result"];
    let t = &r["test"];
    if let Some(text) = r["classification_report"].as_str() {
        println!("{text}");
    } else if t.is_object() {
        println!("{:<8} {:>12}", "metric", "test");
        for k in ["mse", "rmse", "mae", "r2"] {
            if let Some(v) = t[k].as_f64() {
                println!("{k:<8} {v:>12.6}");
            }
        }
    }
    if let Some(a) = t["roc_auc"].as_f64() {
        println!("roc_auc: {a:.4}");
    }
    if let Some(cv) = r["cross_validation"]["summary"].as_object() {
        println!(
            "\n{:<20} {:>10} {:>10} {:>10} {:>10}",
            "cross-validation", "mean", "std", "lower", "upper"
        );
        for (k, s) in cv {
            println!(
                "{k:<20} {:>10} {:>10} {:>10} {:>10}",
                num(&s["mean"]),
                num(&s["std"]),
                num(&s["lower"]),
                num(&s["upper"])
            );
        }
    }
}

pub fn eval(job: &str, json_out: bool, conn: &Conn) -> Result<()> {
    let c = Client::new(conn.url.as_deref())?;
    let j = c.get(&format!("/v1/training/jobs/{job}"))?.ok_json()?;
    if j["status"] != "succeeded" {
        bail!(
            "job {job} is {} (no evaluation)",
            j["status"].as_str().unwrap_or("?")
        );
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&j["result"])?);
    } else {
        print_result(&j);
    }
    Ok(())
}

pub fn predict(model: &str, records: &Path, conn: &Conn) -> Result<()> {
    let c = Client::new(conn.url.as_deref())?;
    let text = std::fs::read_to_string(records)
        .with_context(|| format!("reading {}", records.display()))?;
    let mut recs = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l)
            .with_context(|| format!("{} line {}", records.display(), i + 1))?;
        recs.push(v);
    }
    let out = c
        .post_json("/v1/predictions", &json!({"model": model, "records": recs}))?
        .ok_json()?;
    for d in out["data"].as_array().into_iter().flatten() {
        let mut o = json!({"prediction": d["prediction"]});
        if let Some(p) = d.get("probabilities") {
            o["probabilities"] = p.clone();
        }
        println!("{o}");
    }
    Ok(())
}

/// Trained models registered by training jobs (for `ferry list`), read from the database.
pub fn list_trained() -> Result<()> {
    let home = crate::store::home();
    if !home.join(ferry_store::DB_FILE).exists() {
        return Ok(());
    }
    let db = ferry_store::Store::open_in(&home)
        .with_context(|| format!("opening the metadata database in {}", home.display()))?;
    let models = db.list_trained_models()?;
    if !models.is_empty() {
        println!("\n{:<32} {:<15} JOB", "TRAINED MODEL", "TASK");
        for m in models {
            println!("{:<32} {:<15} {}", m.name, m.task, m.job_id);
        }
    }
    Ok(())
}
