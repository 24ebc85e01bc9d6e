//! The model lifecycle service against the real `ferry serve`: upload -> profile -> train ->
//! events -> evaluate -> predict over real HTTP, with a real SQLite file and real files under
//! FERRY_HOME; the error paths (413, an upload cut off, bad specs, missing columns, cancel);
//! and recovery after SIGKILL mid-job.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{start_in, temp_home, Response, Server};
use serde_json::{json, Value};

const UPLOAD_LIMIT: usize = 200_000;

fn iris_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ferry-ml/tests/data/iris.csv")
}

fn iris() -> Vec<u8> {
    std::fs::read(iris_path()).unwrap()
}

struct Fixture {
    server: Server,
    home: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let home = temp_home("lifecycle");
        let server = start_in(&home, &["--max-upload-bytes", &UPLOAD_LIMIT.to_string()]);
        Fixture { server, home }
    })
}

const BOUNDARY: &str = "ferry-test-boundary-7MA4YWxkTrZu0gW";

fn multipart_body(filename: &str, bytes: &[u8], purpose: &str) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Send a request (the write may fail when the server answers early), then read the answer.
fn send(port: u16, head: &str, body: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    let _ = s.write_all(&req);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16)
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[i + 2..i + 2 + n]);
            b = &b[i + 2 + n + 2..];
        }
        body = out;
    }
    Response {
        status,
        headers,
        body,
    }
}

fn upload(s: &Server, filename: &str, bytes: &[u8], purpose: &str) -> Response {
    let body = multipart_body(filename, bytes, purpose);
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    send(s.port, &head, &body)
}

fn upload_ok(s: &Server, filename: &str, bytes: &[u8], purpose: &str) -> Value {
    let r = upload(s, filename, bytes, purpose);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Content files under FERRY_HOME/files (temporaries included).
fn stored_files(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("files"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_job(s: &Server, id: &str, timeout: Duration) -> Value {
    let t = Instant::now();
    loop {
        let j = s.get(&format!("/v1/training/jobs/{id}")).json();
        if ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap()) {
            return j;
        }
        assert!(t.elapsed() < timeout, "job {id} still {}", j["status"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(s: &Server, id: &str) -> Vec<Value> {
    let r = s.get(&format!("/v1/training/jobs/{id}/events"));
    assert_eq!(r.status, 200);
    r.json()["data"].as_array().unwrap().clone()
}

fn wait_epoch_event(s: &Server, id: &str) {
    let t = Instant::now();
    while !events(s, id).iter().any(|e| e["type"] == "epoch") {
        assert!(t.elapsed() < Duration::from_secs(60), "no epoch event");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job that runs for minutes (a wide MLP, one row per step).
fn long_job(file: &str, name: &str) -> Value {
    json!({
        "training_file": file, "target": "target", "name": name,
        "model": {"type": "mlp", "hidden": [256, 256]},
        "hyperparameters": {"epochs": 1000000, "batch_size": 1},
    })
}

/// The iris rows as JSON records without the target (raw columns, blanks as null).
fn iris_records() -> (Vec<Value>, Vec<String>) {
    let text = String::from_utf8(iris()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let mut recs = Vec::new();
    let mut labels = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let mut o = serde_json::Map::new();
        for (k, v) in header.iter().zip(&f) {
            if *k == "target" {
                labels.push(v.to_string());
            } else if v.is_empty() {
                o.insert(k.to_string(), Value::Null);
            } else {
                o.insert(k.to_string(), json!(v.parse::<f64>().unwrap()));
            }
        }
        recs.push(Value::Object(o));
    }
    (recs, labels)
}

#[test]
fn upload_profile_train_evaluate_predict() {
    let f = fixture();
    let s = &f.server;
    let data = iris();
    // Upload: OpenAI's file object plus the dataset profile.
    let file = upload_ok(s, "iris.csv", &data, "dataset");
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], data.len());
    assert_eq!(file["filename"], "iris.csv");
    assert_eq!(file["purpose"], "dataset");
    assert!(file["created_at"].is_u64());
    let id = file["id"].as_str().unwrap().to_string();
    let p = &file["profile"];
    assert_eq!(p["format"], "csv");
    assert_eq!(p["rows"], 150);
    let cols = p["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 5);
    // Missing counts equal the blank cells of the file.
    let text = String::from_utf8(data.clone()).unwrap();
    let blanks_in = |j: usize| {
        text.lines()
            .skip(1)
            .filter(|l| l.split(',').nth(j) == Some(""))
            .count()
    };
    for (j, c) in cols.iter().enumerate() {
        assert_eq!(c["missing"], blanks_in(j), "{c}");
    }
    assert_eq!(cols[0]["name"], "sepal_length");
    assert_eq!(cols[0]["kind"], "numeric");
    assert!(cols[0]["min"].as_f64().unwrap() >= 4.0 && cols[0]["max"].as_f64().unwrap() <= 8.0);
    assert_eq!(cols[4]["distinct"], 3);

    // Retrieve, list, content, conversion.
    assert_eq!(s.get(&format!("/v1/files/{id}")).json(), file);
    let list = s.get("/v1/files?purpose=dataset").json();
    assert_eq!(list["object"], "list");
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == id.as_str()));
    let c = s.get(&format!("/v1/files/{id}/content"));
    assert_eq!(c.status, 200);
    assert_eq!(c.body, data);
    let j = s.get(&format!("/v1/files/{id}/content?format=jsonl"));
    assert_eq!(j.status, 200, "{}", String::from_utf8_lossy(&j.body));
    let jl = String::from_utf8(j.body).unwrap();
    assert_eq!(jl.lines().count(), 150);
    let first: Value = serde_json::from_str(jl.lines().next().unwrap()).unwrap();
    assert_eq!(first["target"], "setosa");
    assert_eq!(first["sepal_length"], 5.1);
    // ... and back: the JSON Lines upload profiles the same.
    let back = upload_ok(s, "iris.jsonl", jl.as_bytes(), "dataset");
    assert_eq!(back["profile"]["format"], "jsonl");
    assert_eq!(back["profile"]["columns"], file["profile"]["columns"]);
    let csv = s.get(&format!(
        "/v1/files/{}/content?format=csv",
        back["id"].as_str().unwrap()
    ));
    assert!(String::from_utf8(csv.body).unwrap().starts_with(
        "sepal_length,sepal_width,petal_length,petal_width,target\n5.1,3.5,1.4,,setosa\n"
    ));

    // Train: an MLP, validation split for the loss curve, stratified 3-fold CV.
    let spec = json!({
        "training_file": id, "target": "target", "name": "iris-mlp",
        "model": {"type": "mlp", "hidden": [16], "activation": "relu"},
        "optimizer": {"type": "adam"},
        "hyperparameters": {"epochs": 60, "learning_rate": 0.05, "batch_size": 16},
        "seed": 0,
        "split": {"test_fraction": 0.2, "validation_fraction": 0.1},
        "evaluation": {"type": "stratified_kfold", "n_splits": 3},
    });
    let r = s.post("/v1/training/jobs", &spec);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let job = r.json();
    assert_eq!(job["object"], "training.job");
    assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()));
    let jid = job["id"].as_str().unwrap().to_string();
    let done = wait_job(s, &jid, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let res = &done["result"];
    assert_eq!(
        res["split"],
        json!({"train": 105, "validation": 15, "test": 30})
    );
    let acc = res["test"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.85, "test accuracy {acc}");
    assert_eq!(res["epochs_run"], 60);
    let cv = &res["cross_validation"]["summary"]["accuracy"];
    assert!(cv["mean"].as_f64().unwrap() > 0.8, "{cv}");

    // Events: status changes, per-epoch losses, folds, metrics.
    let ev = events(s, &jid);
    let statuses: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"] == "status")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"]);
    let epochs: Vec<&Value> = ev.iter().filter(|e| e["type"] == "epoch").collect();
    assert!(!epochs.is_empty());
    assert_eq!(epochs.last().unwrap()["data"]["epoch"], 60);
    assert!(
        epochs[0]["data"]["train_loss"].as_f64().unwrap()
            > epochs.last().unwrap()["data"]["train_loss"]
                .as_f64()
                .unwrap()
    );
    assert!(epochs[0]["data"]["valid_loss"].is_f64());
    assert_eq!(ev.iter().filter(|e| e["type"] == "fold").count(), 3);
    assert!(ev.iter().any(|e| e["type"] == "metrics"));
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    // after= pages; SSE replays everything then [DONE] for a finished job.
    let tail = s
        .get(&format!(
            "/v1/training/jobs/{jid}/events?after={}",
            seqs[seqs.len() - 2]
        ))
        .json();
    assert_eq!(tail["data"].as_array().unwrap().len(), 1);
    let sse = s
        .get(&format!("/v1/training/jobs/{jid}/events?stream=true"))
        .sse();
    assert_eq!(sse.last().unwrap(), "[DONE]");
    assert_eq!(sse.len(), ev.len() + 1);

    // Artifacts.
    let dir = f.home.join("jobs").join(&jid);
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["history"]["epochs"].as_array().unwrap().len(), 60);
    let text = std::fs::read_to_string(dir.join("classification_report.txt")).unwrap();
    for w in [
        "setosa",
        "versicolor",
        "virginica",
        "accuracy",
        "macro avg",
        "weighted avg",
    ] {
        assert!(text.contains(w), "{text}");
    }
    let cm = &res["test"]["confusion_matrix"];
    let total: u64 = cm
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 30);
    assert!(dir.join("model.json").exists());
    // Artifacts through the API: the figures are SVG images; unknown names are refused.
    let arts = s.get(&format!("/v1/training/jobs/{jid}/artifacts")).json();
    let names: Vec<&str> = arts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for n in [
        "model.json",
        "report.json",
        "loss_curve.svg",
        "confusion_matrix.svg",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    for (n, marker) in [
        ("loss_curve.svg", "epoch"),
        ("confusion_matrix.svg", "virginica"),
    ] {
        let r = s.get(&format!("/v1/training/jobs/{jid}/artifacts/{n}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("image/svg+xml"));
        let svg = String::from_utf8(r.body.clone()).unwrap();
        assert!(svg.contains("<svg") && svg.contains(marker), "{n}: {svg}");
    }
    let r = s.get(&format!("/v1/training/jobs/{jid}/artifacts/..%2Fferry.db"));
    assert_eq!(r.status, 404);

    // Registered; predictions from raw records.
    let models = s.get("/v1/training/models").json();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "iris-mlp" && m["job_id"] == jid.as_str()));
    let (recs, labels) = iris_records();
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "iris-mlp", "records": recs}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(out.len(), 150);
    let hits = out
        .iter()
        .zip(&labels)
        .filter(|(o, l)| o["prediction"] == l.as_str())
        .count();
    assert!(hits >= 135, "{hits}/150 right");
    for o in &out {
        let p = o["probabilities"].as_object().unwrap();
        assert_eq!(p.len(), 3);
        let sum: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        let best = p
            .iter()
            .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
            .unwrap()
            .0;
        assert_eq!(o["prediction"], best.as_str());
    }
    // The target column may ride along; numbers may come as strings.
    let r = s.post("/v1/predictions", &json!({"model": "iris-mlp", "records": [
        {"sepal_length": "6.3", "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5, "target": "virginica"}]}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["data"][0]["prediction"], "virginica");

    // Bad records: named by index and column.
    let mut missing = recs[..3].to_vec();
    missing[1].as_object_mut().unwrap().remove("petal_width");
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "iris-mlp", "records": missing}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error()["param"],
        "records[1].petal_width",
        "{}",
        r.error()
    );
    let mut typed = recs[..3].to_vec();
    typed[2]["sepal_width"] = json!("wide");
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "iris-mlp", "records": typed}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error()["param"],
        "records[2].sepal_width",
        "{}",
        r.error()
    );
    let mut extra = recs[..1].to_vec();
    extra[0]["colour"] = json!("blue");
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "iris-mlp", "records": extra}),
    );
    assert_eq!(r.status, 400);
    assert!(r.error()["message"].as_str().unwrap().contains("colour"));
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "nope", "records": recs[..1]}),
    );
    assert_eq!(r.status, 404);
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "iris-mlp", "records": recs[..1], "top_k": 2}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "top_k");

    // The same spec and seed give the same model, bit for bit.
    let mut again = spec.clone();
    again["name"] = json!("iris-mlp-again");
    let j2 = s.post("/v1/training/jobs", &again).json();
    let j2id = j2["id"].as_str().unwrap();
    assert_eq!(
        wait_job(s, j2id, Duration::from_secs(120))["status"],
        "succeeded"
    );
    let m1: Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    let m2: Value = serde_json::from_slice(
        &std::fs::read(f.home.join("jobs").join(j2id).join("model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m1["model"], m2["model"]);
    assert_eq!(m1["pipeline"], m2["pipeline"]);
    // A name in use is refused.
    let r = s.post("/v1/training/jobs", &again);
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "name");

    // Delete: the row and (last reference) the content go; the model stays usable.
    let bid = back["id"].as_str().unwrap();
    let content = f.home.join("files").join(sha256_hex(jl.as_bytes()));
    assert!(content.exists());
    let r = s.request("DELETE", &format!("/v1/files/{bid}"), &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"id": bid, "object": "file", "deleted": true})
    );
    assert_eq!(s.get(&format!("/v1/files/{bid}")).status, 404);
    assert_eq!(
        s.request("DELETE", &format!("/v1/files/{bid}"), &[], None)
            .status,
        404
    );
    assert!(!content.exists());
    assert_eq!(
        s.request("DELETE", &format!("/v1/files/{id}"), &[], None)
            .status,
        200
    );
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "iris-mlp", "records": recs[..2]}),
    );
    assert_eq!(r.status, 200);
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn regression_job_with_bootstrap() {
    let f = fixture();
    let s = &f.server;
    let file = upload_ok(s, "iris-reg.csv", &iris(), "dataset");
    let spec = json!({
        "training_file": file["id"], "target": "petal_length",
        "model": {"type": "linear_regression"},
        "optimizer": {"type": "sgd"},
        "hyperparameters": {"epochs": 300, "learning_rate": 0.1, "batch_size": null},
        "evaluation": {"type": "bootstrap", "n_resamples": 4, "confidence": 0.9},
    });
    let r = s.post("/v1/training/jobs", &spec);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = wait_job(s, &id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let res = &done["result"];
    assert_eq!(res["task"], "regression");
    assert!(res["test"]["r2"].as_f64().unwrap() > 0.85, "{res}");
    let b = &res["cross_validation"]["summary"]["r2"];
    assert!(
        b["lower"].as_f64().unwrap() <= b["upper"].as_f64().unwrap(),
        "{b}"
    );
    // Default name is the job id; a regression has no classification report.
    assert!(!f
        .home
        .join("jobs")
        .join(&id)
        .join("classification_report.txt")
        .exists());
    let r = s.post(
        "/v1/predictions",
        &json!({"model": id, "records": [
        {"sepal_length": 6.3, "sepal_width": 3.3, "petal_width": 2.5, "target": "virginica"}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let y = r.json()["data"][0]["prediction"].as_f64().unwrap();
    assert!((4.5..7.0).contains(&y), "{y}");
    assert!(r.json()["data"][0].get("probabilities").is_none());
}

#[test]
fn bad_specs_are_refused_by_name() {
    let f = fixture();
    let s = &f.server;
    let file = upload_ok(s, "iris-spec.csv", &iris(), "dataset");
    let id = file["id"].as_str().unwrap();
    let base = json!({"training_file": id, "target": "target"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (with("foo", json!(1)), "foo", "foo"),
        (with("hyperparameters", json!({"lr": 0.1})), "lr", "lr"),
        (
            with(
                "model",
                json!({"type": "softmax_regression", "hidden": [3]}),
            ),
            "hidden",
            "model.hidden",
        ),
        (
            with("model", json!({"type": "transformer"})),
            "transformer",
            "",
        ),
        (with("target", json!("nope")), "nope", "target"),
        (with("task", json!("regression")), "", "model"), // softmax (default) on a regression task
        (
            json!({"training_file": id, "target": "target", "model": {"type": "linear_regression"}}),
            "regression",
            "model",
        ),
        (
            json!({"training_file": id, "target": "target", "model": {"type": "logistic_regression"}}),
            "binary",
            "model",
        ),
        (
            with("hyperparameters", json!({"epochs": 0})),
            "epochs",
            "hyperparameters.epochs",
        ),
        (
            with("split", json!({"test_fraction": 0.0})),
            "test",
            "split.test_fraction",
        ),
        (
            with("training_file", json!("file-missing")),
            "file-missing",
            "training_file",
        ),
        (
            with("features", json!(["sepal_length", "target"])),
            "target",
            "features",
        ),
        (
            with("evaluation", json!({"type": "kfold", "n_splits": 1})),
            "n_splits",
            "evaluation.n_splits",
        ),
        (
            json!({"training_file": id, "target": "petal_length", "model": {"type": "linear_regression"}, "split": {"stratify": true}}),
            "Stratified",
            "split.stratify",
        ),
        (
            json!({"training_file": id, "target": "petal_length", "model": {"type": "mlp"}, "evaluation": {"type": "stratified_kfold"}}),
            "kfold",
            "evaluation",
        ),
        (
            with("optimizer", json!({"type": "sgd", "momentum": 0.9})),
            "momentum",
            "optimizer.momentum",
        ),
        (
            with("optimizer", json!({"type": "lbfgs"})),
            "batch_size",
            "hyperparameters.batch_size",
        ),
        (
            json!({"training_file": id, "target": "target", "optimizer": {"type": "lbfgs", "tol": 0}, "hyperparameters": {"batch_size": null}}),
            "tol",
            "optimizer.tol",
        ),
    ];
    for (spec, word, param) in cases {
        let r = s.post("/v1/training/jobs", &spec);
        assert_eq!(
            r.status,
            400,
            "{spec}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = r.error();
        assert!(e["message"].as_str().unwrap().contains(word), "{spec}: {e}");
        if !param.is_empty() {
            assert_eq!(e["param"], param, "{spec}: {e}");
        }
    }
    // Two unknown fields are both named.
    let r = s.post(
        "/v1/training/jobs",
        &json!({"training_file": id, "target": "target", "foo": 1, "bar": 2}),
    );
    let m = r.error()["message"].as_str().unwrap().to_string();
    assert!(m.contains("foo") && m.contains("bar"), "{m}");
    // None of them queued a job.
    let jobs = s.get("/v1/training/jobs").json();
    assert!(!jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["training_file"] == id));
    assert_eq!(s.get("/v1/training/jobs/job-nope").status, 404);
    assert_eq!(
        s.post("/v1/training/jobs/job-nope/cancel", &json!({}))
            .status,
        404
    );
}

#[test]
fn uploads_that_fail_leave_nothing_behind() {
    let f = fixture();
    let s = &f.server;
    let big = vec![b'x'; UPLOAD_LIMIT + 1];
    // Declared too large: 413 at once.
    let r = upload(s, "big.bin", &big, "assistants");
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error()["code"], "payload_too_large");
    // Streamed (chunked, no length): 413 once the file passes the limit.
    let body = multipart_body("big.bin", &big, "assistants");
    let mut chunked = Vec::new();
    for c in body.chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!("POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let r = send(s.port, &head, &chunked);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    // Cut off midway: the client goes away with half the body sent.
    let body = multipart_body("cut.csv", &iris(), "dataset");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.write_all(format!("POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
    c.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    // A dataset that does not parse: 400 naming where, nothing stored.
    let r = upload(s, "bad.csv", b"a,b\n1,2\n3,4,5\n", "dataset");
    assert_eq!(r.status, 400);
    let m = r.error()["message"].as_str().unwrap().to_string();
    assert!(m.contains("row 1") && m.contains("line 3"), "{m}");
    // Bad purpose, missing parts, not multipart.
    let r = upload(s, "a.txt", b"hello", "training");
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "purpose");
    let r = s.post("/v1/files", &json!({"purpose": "dataset"}));
    assert_eq!(r.status, 400);
    // No row and no content for any of them; no temporary file once the cut-off is noticed.
    let t = Instant::now();
    loop {
        let rows = s.get("/v1/files").json()["data"]
            .as_array()
            .unwrap()
            .clone();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["filename"].as_str().unwrap())
            .collect();
        for n in ["big.bin", "cut.csv", "bad.csv", "a.txt"] {
            assert!(!names.contains(&n), "{n} was recorded");
        }
        assert!(!f
            .home
            .join("files")
            .join(sha256_hex(b"a,b\n1,2\n3,4,5\n"))
            .exists());
        assert!(!f.home.join("files").join(sha256_hex(&big)).exists());
        let tmp: Vec<String> = stored_files(&f.home)
            .into_iter()
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        if tmp.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "temporaries left: {tmp:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A non-dataset file of any purpose is stored as it is.
    let r = upload_ok(s, "notes.txt", b"free text, not a table\n", "assistants");
    assert!(r.get("profile").is_none());
    let id = r["id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/v1/files/{id}/content")).body,
        b"free text, not a table\n"
    );
    assert_eq!(
        s.get(&format!("/v1/files/{id}/content?format=yaml")).status,
        400
    );
    assert_eq!(
        s.request("DELETE", &format!("/v1/files/{id}"), &[], None)
            .status,
        200
    );
}

#[test]
fn cancel_stops_a_running_job() {
    let f = fixture();
    let s = &f.server;
    let file = upload_ok(s, "iris-cancel.csv", &iris(), "dataset");
    let id = file["id"].as_str().unwrap();
    let r = s.post("/v1/training/jobs", &long_job(id, "never-registered"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let jid = r.json()["id"].as_str().unwrap().to_string();
    wait_epoch_event(s, &jid);
    // Follow the live event stream, cancel, and see the stream end with the cancellation.
    let mut st = s.open_stream(
        "GET",
        &format!("/v1/training/jobs/{jid}/events?stream=true"),
        &[],
        None,
    );
    assert_eq!(st.status, 200);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["type"] == "epoch") {
        seen.push(serde_json::from_str(&st.next_data().expect("event")).unwrap());
    }
    let r = s.post(&format!("/v1/training/jobs/{jid}/cancel"), &json!({}));
    assert_eq!(r.status, 200);
    let mut last = Value::Null;
    loop {
        let d = st.next_data().expect("stream ended without [DONE]");
        if d == "[DONE]" {
            break;
        }
        last = serde_json::from_str(&d).unwrap();
    }
    assert_eq!(
        (last["type"].as_str(), last["message"].as_str()),
        (Some("status"), Some("cancelled")),
        "{last}"
    );
    let t = Instant::now();
    let done = wait_job(s, &jid, Duration::from_secs(30));
    assert_eq!(done["status"], "cancelled");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t.elapsed()
    );
    let models = s.get("/v1/training/models").json();
    assert!(!models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "never-registered"));
    // Cancelling again changes nothing.
    assert_eq!(
        s.post(&format!("/v1/training/jobs/{jid}/cancel"), &json!({}))
            .json()["status"],
        "cancelled"
    );
}

#[test]
fn sigkill_mid_job_then_restart() {
    let home = temp_home("lifecycle-kill");
    let s = start_in(&home, &[]);
    let data = iris();
    let file = upload_ok(&s, "iris.csv", &data, "dataset");
    let fid = file["id"].as_str().unwrap().to_string();
    let quick = json!({"training_file": fid, "target": "target", "name": "kept", "hyperparameters": {"epochs": 20, "learning_rate": 0.1}});
    let kept = s.post("/v1/training/jobs", &quick).json();
    let kept_id = kept["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_job(&s, &kept_id, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let (recs, _) = iris_records();
    let before = s
        .post(
            "/v1/predictions",
            &json!({"model": "kept", "records": recs[..5]}),
        )
        .json();
    let r = s.post("/v1/training/jobs", &long_job(&fid, "killed"));
    let jid = r.json()["id"].as_str().unwrap().to_string();
    wait_epoch_event(&s, &jid);
    drop(s); // SIGKILL (std's Child::kill), mid-epoch
    let s = start_in(&home, &[]);
    let j = s.get(&format!("/v1/training/jobs/{jid}")).json();
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"]["message"], "interrupted by restart");
    assert_eq!(events(&s, &jid).last().unwrap()["message"], "failed");
    // Committed work is intact: the file, the earlier job, its model and its predictions.
    assert_eq!(s.get(&format!("/v1/files/{fid}/content")).body, data);
    assert_eq!(
        s.get(&format!("/v1/training/jobs/{kept_id}")).json()["status"],
        "succeeded"
    );
    let after = s.post(
        "/v1/predictions",
        &json!({"model": "kept", "records": recs[..5]}),
    );
    assert_eq!(after.status, 200);
    assert_eq!(after.json(), before);
    let names: Vec<String> = std::fs::read_dir(home.join("files"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // The runner still works after the restart.
    let mut again = quick.clone();
    again["name"] = json!("after-restart");
    let j = s.post("/v1/training/jobs", &again).json();
    assert_eq!(
        wait_job(&s, j["id"].as_str().unwrap(), Duration::from_secs(60))["status"],
        "succeeded"
    );
}

/// Run the CLI against the fixture's server; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let f = fixture();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_URL", format!("http://127.0.0.1:{}", f.server.port))
        .env("FERRY_HOME", &f.home)
        .output()
        .expect("run ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_upload_profile_train_eval_predict() {
    let path = iris_path();
    let p = path.to_str().unwrap();
    // Local profile, no server involved.
    let (ok, out, err) = cli(&["data", "profile", p]);
    assert!(ok, "{err}");
    assert!(
        out.contains("150 rows") && out.contains("petal_width") && out.contains("numeric"),
        "{out}"
    );
    let (ok, out, err) = cli(&["data", "upload", p, "--json"]);
    assert!(ok, "{err}");
    let file: Value = serde_json::from_str(&out).unwrap();
    let id = file["id"].as_str().unwrap();
    let (ok, out, _) = cli(&["data", "profile", id]);
    assert!(ok && out.contains("petal_length"), "{out}");
    // Train and follow (not a terminal: plain lines on stderr).
    let (ok, out, err) = cli(&[
        "train",
        "--file",
        id,
        "--target",
        "target",
        "--name",
        "cli-iris",
        "--hidden",
        "8",
        "--epochs",
        "40",
        "--learning-rate",
        "0.05",
        "--eval",
        "kfold:3",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("epoch 40/40"), "{err}");
    assert!(err.contains("status: succeeded"), "{err}");
    assert!(
        out.contains("weighted avg")
            && out.contains("cross-validation")
            && out.contains("model: cli-iris"),
        "{out}"
    );
    let jobs = fixture().server.get("/v1/training/jobs").json();
    let jid = jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["model"] == "cli-iris")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = cli(&["eval", &jid]);
    assert!(ok, "{err}");
    assert!(out.contains("setosa") && out.contains("accuracy"), "{out}");
    // Predict from a JSON Lines file.
    let recs = fixture().home.join("cli-records.jsonl");
    let (r, labels) = iris_records();
    std::fs::write(
        &recs,
        r[..10]
            .iter()
            .map(|v| v.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let (ok, out, err) = cli(&["predict", "cli-iris", "--records", recs.to_str().unwrap()]);
    assert!(ok, "{err}");
    let preds: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(preds.len(), 10);
    assert!(
        preds
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p["prediction"] == l.as_str())
            .count()
            >= 8
    );
    // `ferry list` shows the trained model; errors are the server's messages.
    let (ok, out, _) = cli(&["list"]);
    assert!(ok && out.contains("cli-iris"), "{out}");
    let (ok, _, err) = cli(&["train", "--file", id, "--target", "nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, _, err) = cli(&["eval", "job-none"]);
    assert!(!ok && err.contains("404"), "{err}");
}

/// A text classifier trained on sentence embeddings from the real all-MiniLM-L6-v2, served by
/// the same Ferry.
#[test]
fn text_classifier_on_sentence_embeddings() {
    let home = temp_home("lifecycle-text");
    let s = start_in(&home, &["--model", &common::embed_dir()]);
    let em = "all-MiniLM-L6-v2";
    let sports = [
        "The striker scored twice in the second half",
        "Our team won the championship final on penalties",
        "The goalkeeper saved a penalty in extra time",
        "She ran the marathon in under three hours",
        "The tennis match went to a fifth set tiebreak",
        "He hit a home run in the ninth inning",
        "The coach was sacked after five straight defeats",
        "The cyclists climbed the mountain stage in heavy rain",
        "The referee showed a red card to the defender",
        "The sprinter broke the world record in the hundred metres",
        "The quarterback threw a touchdown pass in overtime",
        "The fans cheered as the players lifted the trophy",
        "The boxer knocked out his opponent in the third round",
        "The rugby side scored a late try to win",
        "The swimmer won gold in the butterfly final",
        "The midfielder signed a new contract with the club",
    ];
    let cooking = [
        "Whisk the eggs with sugar until pale and fluffy",
        "Simmer the tomato sauce for twenty minutes",
        "Knead the dough and let it rise for an hour",
        "Roast the chicken with garlic, lemon and thyme",
        "Season the soup with salt and freshly ground pepper",
        "Chop the onions finely and fry them in butter",
        "Bake the cake at one hundred eighty degrees",
        "Marinate the beef overnight in soy sauce and ginger",
        "Fold the whipped cream gently into the chocolate",
        "Boil the pasta in plenty of salted water",
        "Grill the vegetables and drizzle them with olive oil",
        "Stir the risotto slowly while adding warm stock",
        "Melt the butter and brown the flour for the roux",
        "Slice the potatoes thinly for the gratin",
        "Toast the spices before grinding them",
        "Let the bread cool on a rack before slicing",
    ];
    let mut csv = String::from("text,length,topic\n");
    for (a, b) in sports.iter().zip(&cooking) {
        csv.push_str(&format!(
            "\"{a}\",{},sports\n\"{b}\",{},cooking\n",
            a.len(),
            b.len()
        ));
    }
    let file = upload_ok(&s, "topics.csv", csv.as_bytes(), "dataset");
    let spec = json!({
        "training_file": file["id"], "target": "topic", "name": "topics",
        "model": {"type": "logistic_regression"},
        "preprocessing": {"text_embeddings": {"model": em, "columns": ["text"]}},
        "hyperparameters": {"epochs": 100, "learning_rate": 0.05, "batch_size": 8},
        "split": {"test_fraction": 0.25},
    });
    let r = s.post("/v1/training/jobs", &spec);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = wait_job(&s, &id, Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        done["result"]["test"]["accuracy"].as_f64().unwrap() >= 0.875,
        "{}",
        done["result"]
    );
    assert!(events(&s, &id)
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("384 dimensions")));
    let r = s.post(
        "/v1/predictions",
        &json!({"model": "topics", "records": [
            {"text": "The winger crossed the ball and the forward headed it in", "length": 55},
            {"text": "Add a pinch of nutmeg to the white sauce", "length": 40},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let d = r.json()["data"].clone();
    assert_eq!(d[0]["prediction"], "sports", "{d}");
    assert_eq!(d[1]["prediction"], "cooking", "{d}");
    // An embedding model that is not served: 400 at submission, naming the parameter.
    let mut bad = spec.clone();
    bad["name"] = json!("other");
    bad["preprocessing"]["text_embeddings"]["model"] = json!("no-such-model");
    let r = s.post("/v1/training/jobs", &bad);
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error()["param"], "preprocessing.text_embeddings.model");
}
