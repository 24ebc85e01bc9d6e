//! The model registry end to end: `ferry pull` from a real HTTP server on loopback that serves
//! the Hugging Face Hub's layout (`/api/models/…/revision/…`, `/api/models/…/tree/…` with
//! pagination, `/…/resolve/…` redirecting LFS files to a "CDN" path with Range support) and
//! the real models from `.ferry-cache/models/`; then `list`, `show`, `rm`, `ps`, `chat`, and
//! `ferry serve` over what was pulled. Failure modes: a connection cut mid-body (resumed with
//! `Range`), a server that ignores `Range` (restarted), a wrong sha256, a killed pull, hostile
//! paths.

mod common;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

const GGUF_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const ST_SHA: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

// ------------------------------------------------------------------------------------------
// A hub on loopback

#[derive(Clone)]
enum Data {
    File(PathBuf),
    Bytes(Vec<u8>),
    /// Listed but never to be downloaded (pickles): a request for it fails the test.
    Forbidden,
}

#[derive(Clone)]
struct HubFile {
    path: String,
    data: Data,
    size: u64,
    /// sha256 announced as the LFS oid (None: a plain git file).
    lfs: Option<String>,
}

#[derive(Debug, Clone)]
struct Logged {
    path: String,
    range: Option<String>,
    auth: Option<String>,
    if_range: Option<String>,
}

#[derive(Default)]
struct Hub {
    port: Mutex<u16>,
    repos: Mutex<HashMap<String, (String, Vec<HubFile>)>>,
    plain: Mutex<HashMap<String, HubFile>>,
    log: Mutex<Vec<Logged>>,
    /// The next file response is cut (connection closed) after this many body bytes.
    cut_once: Mutex<Option<u64>>,
    /// File responses stop after this many body bytes and hang.
    stall_after: Mutex<Option<u64>>,
    ignore_range: AtomicBool,
    forbidden_hit: AtomicBool,
    /// The ETag of every file; a request whose If-Range differs gets the whole file.
    etag: Mutex<String>,
}

fn sha_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

fn gguf_file(path: &str) -> HubFile {
    let p = common::model_path();
    HubFile {
        path: path.into(),
        size: std::fs::metadata(&p).unwrap().len(),
        data: Data::File(p),
        lfs: Some(GGUF_SHA.into()),
    }
}

/// The MiniLM directory as a hub repo: big files as LFS, small ones as git files.
fn minilm_files() -> Vec<HubFile> {
    let dir = PathBuf::from(common::embed_dir());
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
                continue;
            }
            let path = r.to_str().unwrap().to_string();
            let size = e.metadata().unwrap().len();
            let lfs = if path == "model.safetensors" {
                Some(ST_SHA.to_string())
            } else if size > 100_000 {
                Some(sha_hex(&std::fs::read(dir.join(&r)).unwrap()))
            } else {
                None
            };
            out.push(HubFile {
                path,
                data: Data::File(dir.join(&r)),
                size,
                lfs,
            });
        }
    }
    out.push(HubFile {
        path: "pytorch_model.bin".into(),
        data: Data::Forbidden,
        size: 90_000_000,
        lfs: Some("c".repeat(64)),
    });
    out.push(HubFile {
        path: ".gitattributes".into(),
        data: Data::Bytes(b"*.bin filter=lfs\n".to_vec()),
        size: 17,
        lfs: None,
    });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const PAGE: usize = 4;

impl Hub {
    fn start() -> Arc<Hub> {
        let hub = Arc::new(Hub::default());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        *hub.port.lock().unwrap() = l.local_addr().unwrap().port();
        let h = hub.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                let app = axum::Router::new().fallback(handle).with_state(h);
                axum::serve(l, app).await.unwrap();
            });
        });
        hub
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.lock().unwrap())
    }
    fn add_repo(&self, repo: &str, files: Vec<HubFile>) {
        self.repos
            .lock()
            .unwrap()
            .insert(repo.into(), (COMMIT.into(), files));
    }
    fn add_plain(&self, name: &str, f: HubFile) {
        self.plain.lock().unwrap().insert(name.into(), f);
    }
    fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

async fn handle(State(h): State<Arc<Hub>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let hdr = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let range = hdr("range");
    h.log.lock().unwrap().push(Logged {
        path: path.clone(),
        range: range.clone(),
        auth: hdr("authorization"),
        if_range: hdr("if-range"),
    });
    let if_range = hdr("if-range");
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() != 4 {
            return json_response(StatusCode::NOT_FOUND, json!({"error": "bad path"}));
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let repos = h.repos.lock().unwrap();
        let Some((commit, files)) = repos.get(&repo) else {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "Repository not found"}),
            );
        };
        return match parts[2] {
            "revision" => json_response(StatusCode::OK, json!({"id": repo, "sha": commit})),
            "tree" => {
                assert_eq!(parts[3], commit, "listing must use the pinned commit");
                assert!(query.contains("recursive=true"), "{query}");
                let start: usize = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("cursor="))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let mut entries: Vec<Value> = Vec::new();
                let mut dirs: Vec<String> = Vec::new();
                for f in files {
                    if let Some((d, _)) = f.path.rsplit_once('/').filter(|(d, _)| !d.is_empty()) {
                        if !dirs.contains(&d.to_string()) {
                            dirs.push(d.to_string());
                            entries.push(
                                json!({"type": "directory", "oid": "d", "size": 0, "path": d}),
                            );
                        }
                    }
                    let mut e = json!({"type": "file", "oid": "0".repeat(40), "size": f.size, "path": f.path});
                    if let Some(s) = &f.lfs {
                        e["size"] = json!(130);
                        e["lfs"] = json!({"oid": s, "size": f.size, "pointerSize": 130});
                    }
                    entries.push(e);
                }
                let page: Vec<Value> = entries.iter().skip(start).take(PAGE).cloned().collect();
                let mut r = json_response(StatusCode::OK, Value::Array(page));
                if start + PAGE < entries.len() {
                    let next = format!(
                        "<{}/api/models/{repo}/tree/{commit}?recursive=true&cursor={}>; rel=\"next\"",
                        h.url(),
                        start + PAGE
                    );
                    r.headers_mut()
                        .insert("link", HeaderValue::from_str(&next).unwrap());
                }
                r
            }
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "?"})),
        };
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let f = h
            .repos
            .lock()
            .unwrap()
            .values()
            .flat_map(|(_, fs)| fs.iter())
            .find(|f| f.lfs.as_deref() == Some(sha))
            .cloned();
        return match f {
            Some(f) => serve(&h, &f, range.as_deref(), if_range.as_deref()),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if let Some(name) = path.strip_prefix("/files/") {
        let f = h.plain.lock().unwrap().get(name).cloned();
        return match f {
            Some(f) => serve(&h, &f, range.as_deref(), if_range.as_deref()),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    // /{org}/{repo}/resolve/{rev}/{path}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo = format!("{}/{}", parts[0], parts[1]);
        let f = h.repos.lock().unwrap().get(&repo).and_then(|(c, fs)| {
            assert_eq!(parts[3], c, "downloads must use the pinned commit");
            fs.iter().find(|f| f.path == parts[4]).cloned()
        });
        return match f {
            // LFS files go to the CDN, as on the hub.
            Some(HubFile { lfs: Some(s), .. }) => Response::builder()
                .status(302)
                .header("location", format!("{}/cdn/{s}", h.url()))
                .body(Body::empty())
                .unwrap(),
            Some(f) => serve(&h, &f, range.as_deref(), if_range.as_deref()),
            None => json_response(StatusCode::NOT_FOUND, json!({"error": "Entry not found"})),
        };
    }
    StatusCode::NOT_FOUND.into_response()
}

fn serve(h: &Hub, f: &HubFile, range: Option<&str>, if_range: Option<&str>) -> Response {
    let etag = h.etag.lock().unwrap().clone();
    let stale = if_range.is_some_and(|v| v != etag);
    let total = f.size;
    let bytes: Option<Vec<u8>> = match &f.data {
        Data::Forbidden => {
            h.forbidden_hit.store(true, Ordering::SeqCst);
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Data::Bytes(b) => Some(b.clone()),
        Data::File(_) => None,
    };
    let from = range
        .filter(|_| !h.ignore_range.load(Ordering::SeqCst) && !stale)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok());
    if from.is_some_and(|n| n >= total) {
        return Response::builder()
            .status(416)
            .header("content-range", format!("bytes */{total}"))
            .body(Body::empty())
            .unwrap();
    }
    let start = from.unwrap_or(0);
    let cut = h.cut_once.lock().unwrap().take();
    let stall = *h.stall_after.lock().unwrap();
    let path = match &f.data {
        Data::File(p) => Some(p.clone()),
        _ => None,
    };
    struct St {
        pos: u64,
        sent: u64,
        file: Option<std::fs::File>,
        bytes: Option<Vec<u8>>,
        end: u64,
        cut: Option<u64>,
        stall: Option<u64>,
        failed: bool,
    }
    let st = St {
        pos: start,
        sent: 0,
        file: path.map(|p| {
            let mut f = std::fs::File::open(p).unwrap();
            f.seek(SeekFrom::Start(start)).unwrap();
            f
        }),
        bytes,
        end: total,
        cut,
        stall,
        failed: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.pos >= st.end || st.failed {
            return None;
        }
        let mut n = (st.end - st.pos).min(256 << 10);
        for lim in [st.cut, st.stall].into_iter().flatten() {
            if st.sent < lim {
                n = n.min(lim - st.sent);
            }
        }
        if st.cut.is_some_and(|c| st.sent >= c) {
            st.failed = true;
            return Some((Err(std::io::Error::other("cut by the test")), st));
        }
        if st.stall.is_some_and(|s| st.sent >= s) {
            std::future::pending::<()>().await;
        }
        let chunk = match (&mut st.file, &st.bytes) {
            (Some(f), _) => {
                let mut buf = vec![0u8; n as usize];
                f.read_exact(&mut buf).unwrap();
                buf
            }
            (None, Some(b)) => b[st.pos as usize..(st.pos + n) as usize].to_vec(),
            _ => unreachable!(),
        };
        st.pos += n;
        st.sent += n;
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), st))
    });
    let mut b = Response::builder()
        .header("content-length", (total - start).to_string())
        .header("accept-ranges", "bytes")
        .header("etag", etag);
    b = if from.is_some() {
        b.status(206).header(
            "content-range",
            format!("bytes {start}-{}/{total}", total - 1),
        )
    } else {
        b.status(200)
    };
    b.body(Body::from_stream(stream)).unwrap()
}

// ------------------------------------------------------------------------------------------
// Running the CLI

fn ferry_cmd(home: &Path, hub: Option<&Hub>, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args)
        .env("FERRY_HOME", home)
        .env_remove("HF_TOKEN")
        .env("HF_HOME", home.join("no-hf-home"));
    if let Some(h) = hub {
        c.env("HF_ENDPOINT", h.url());
    }
    c
}

fn run(home: &Path, hub: Option<&Hub>, args: &[&str]) -> Output {
    ferry_cmd(home, hub, args).output().expect("run ferry")
}

fn ok(home: &Path, hub: Option<&Hub>, args: &[&str]) -> String {
    let o = run(home, hub, args);
    assert!(
        o.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs, must fail; returns stderr.
fn fails(home: &Path, hub: Option<&Hub>, args: &[&str]) -> String {
    let o = run(home, hub, args);
    assert!(
        !o.status.success(),
        "ferry {args:?} should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn names(home: &Path) -> Vec<String> {
    ok(home, None, &["list"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn blob_files(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("blobs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Start `ferry pull URL` of the default GGUF with the hub stalling after 5 MiB; returns once
/// 5 MiB of the partial download is on disk, with the running pull and the partial's path.
fn stalled_pull(hub: &Hub, home: &Path, url: &str) -> (std::process::Child, PathBuf) {
    *hub.stall_after.lock().unwrap() = Some(5 << 20);
    let child = ferry_cmd(home, Some(hub), &["pull", url, "--sha256", GGUF_SHA])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = home
        .join("blobs")
        .join(format!(".partial-sha256-{GGUF_SHA}"));
    let t = Instant::now();
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 5 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "download did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, partial)
}

// ------------------------------------------------------------------------------------------
// Tests

#[test]
fn hf_pulls_are_served_by_ferry_serve_and_listed_by_ps() {
    let hub = Hub::start();
    hub.add_repo(
        "test-org/SmolLM2-135M-Instruct-GGUF",
        vec![
            HubFile {
                path: "README.md".into(),
                data: Data::Bytes(b"# smol\n".to_vec()),
                size: 7,
                lfs: None,
            },
            gguf_file(GGUF_NAME),
            HubFile {
                path: "SmolLM2-135M-Instruct.Q8_0.gguf".into(),
                data: Data::Forbidden,
                size: 145_000_000,
                lfs: Some("d".repeat(64)),
            },
        ],
    );
    hub.add_repo("sentence-transformers/all-MiniLM-L6-v2", minilm_files());
    let home = common::temp_home("reg-hf");

    // Several GGUFs and no Q4_K_M: refused, listing the choices.
    let e = fails(
        &home,
        Some(&hub),
        &["pull", "hf:test-org/SmolLM2-135M-Instruct-GGUF"],
    );
    assert!(
        e.contains(GGUF_NAME) && e.contains("SmolLM2-135M-Instruct.Q8_0.gguf"),
        "{e}"
    );
    // With FILE and a token: the token goes to the hub's API.
    let n = hub.log().len();
    let out = ferry_cmd(
        &home,
        Some(&hub),
        &[
            "pull",
            &format!("hf:test-org/SmolLM2-135M-Instruct-GGUF:{GGUF_NAME}"),
            "--name",
            "smol",
        ],
    )
    .env("HF_TOKEN", "hf_test_token")
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = hub.log()[n..].to_vec();
    assert!(log
        .iter()
        .filter(|l| l.path.starts_with("/api/"))
        .all(|l| l.auth.as_deref() == Some("Bearer hf_test_token")));
    // The LFS file came through the redirect to the CDN path.
    assert!(
        log.iter().any(|l| l.path == format!("/cdn/{GGUF_SHA}")),
        "{log:?}"
    );

    // The embedding repo: listing over several pages; pickles never fetched.
    ok(
        &home,
        Some(&hub),
        &["pull", "hf:sentence-transformers/all-MiniLM-L6-v2"],
    );
    assert!(
        !hub.forbidden_hit.load(Ordering::SeqCst),
        "a pickle was requested"
    );
    assert!(
        hub.log()
            .iter()
            .filter(|l| l.path.contains("/tree/"))
            .count()
            > 1,
        "the listing should have been paginated"
    );
    assert_eq!(names(&home), ["all-minilm-l6-v2", "smol"]);

    let show = ok(&home, None, &["show", "smol"]);
    for want in [
        "architecture       llama",
        "135M",
        "Q4_1",
        "context length     8192",
        "chat template      yes",
        &format!("hf:test-org/SmolLM2-135M-Instruct-GGUF:{GGUF_NAME}@{COMMIT}"),
    ] {
        assert!(show.contains(want), "{want:?} not in\n{show}");
    }
    let show = ok(&home, None, &["show", "all-minilm-l6-v2"]);
    for want in [
        "BertModel",
        "23M",
        "context length     512",
        "1_Pooling/config.json",
        ST_SHA,
    ] {
        assert!(show.contains(want), "{want:?} not in\n{show}");
    }
    assert!(!show.contains("pytorch_model.bin"));

    // Served by `ferry serve` under the registered names.
    let s = common::start_serving(Some(&home), &["smol", "all-minilm-l6-v2"], &[]);
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    let r = s.post(
        "/v1/embeddings",
        &json!({"model": "all-minilm-l6-v2", "input": "hello"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["data"][0]["embedding"].as_array().unwrap().len(),
        384
    );

    // `ferry ps` asks that server.
    let ps = ok(
        &home,
        None,
        &["ps", "--url", &format!("http://127.0.0.1:{}", s.port)],
    );
    assert!(
        ps.contains("smol") && ps.contains("all-minilm-l6-v2"),
        "{ps}"
    );
    let e = fails(&home, None, &["ps", "--url", "http://127.0.0.1:1"]);
    assert!(e.contains("cannot reach"), "{e}");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn an_interrupted_download_resumes_with_range() {
    let hub = Hub::start();
    hub.add_plain("smol.gguf", gguf_file("smol.gguf"));
    *hub.etag.lock().unwrap() = "\"v0\"".into();
    let home = common::temp_home("reg-resume");
    let url = format!("{}/files/smol.gguf", hub.url());
    let cut = 10 << 20;
    *hub.cut_once.lock().unwrap() = Some(cut);
    let e = fails(
        &home,
        Some(&hub),
        &["pull", &url, "--sha256", GGUF_SHA, "--retries", "0"],
    );
    assert!(e.contains("interrupted") && e.contains("resume"), "{e}");
    assert!(names(&home).is_empty(), "no model may be visible");
    let partial = home
        .join("blobs")
        .join(format!(".partial-sha256-{GGUF_SHA}"));
    // What arrived before the cut (the kernel may drop the last bytes in flight) is kept.
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(have > 0 && have <= cut, "{have}");
    assert_eq!(hub.log().last().unwrap().range, None);

    ok(&home, Some(&hub), &["pull", &url, "--sha256", GGUF_SHA]);
    let last = hub.log().last().unwrap().clone();
    assert_eq!(last.range.as_deref(), Some(&*format!("bytes={have}-")));
    assert_eq!(last.if_range.as_deref(), Some("\"v0\""));
    assert_eq!(names(&home), ["smol"]);
    assert!(!partial.exists());
    let blob = home.join("blobs").join(format!("sha256-{GGUF_SHA}"));
    assert_eq!(sha_hex(&std::fs::read(&blob).unwrap()), GGUF_SHA);

    // Within one run: the cut is retried from where it stopped.
    let home2 = common::temp_home("reg-resume2");
    *hub.cut_once.lock().unwrap() = Some(cut);
    let n = hub.log().len();
    let o = run(&home2, Some(&hub), &["pull", &url, "--name", "smol2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no --sha256"));
    let ranges: Vec<Option<String>> = hub.log()[n..].iter().map(|l| l.range.clone()).collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let from: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ranges:?}"));
    assert!(from > 0 && from <= cut, "{ranges:?}");
    assert!(home2
        .join("blobs")
        .join(format!("sha256-{GGUF_SHA}"))
        .exists());

    // A server that ignores Range: the download restarts and still ends right.
    let home3 = common::temp_home("reg-norange");
    *hub.cut_once.lock().unwrap() = Some(cut);
    fails(
        &home3,
        Some(&hub),
        &["pull", &url, "--sha256", GGUF_SHA, "--retries", "0"],
    );
    hub.ignore_range.store(true, Ordering::SeqCst);
    let o = run(&home3, Some(&hub), &["pull", &url, "--sha256", GGUF_SHA]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("restarting"));
    assert_eq!(names(&home3), ["smol"]);

    // The file changed on the server since the partial was written: If-Range makes the
    // server send it whole, and the download restarts.
    hub.ignore_range.store(false, Ordering::SeqCst);
    *hub.etag.lock().unwrap() = "\"v1\"".into();
    let home4 = common::temp_home("reg-ifrange");
    *hub.cut_once.lock().unwrap() = Some(cut);
    fails(
        &home4,
        Some(&hub),
        &["pull", &url, "--sha256", GGUF_SHA, "--retries", "0"],
    );
    *hub.etag.lock().unwrap() = "\"v2\"".into();
    let o = run(&home4, Some(&hub), &["pull", &url, "--sha256", GGUF_SHA]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("restarting"));
    let last = hub.log().last().unwrap().clone();
    assert_eq!(last.if_range.as_deref(), Some("\"v1\""), "{last:?}");
    assert!(last.range.is_some());
    assert_eq!(names(&home4), ["smol"]);
    assert!(!home4
        .join("blobs")
        .join(format!(".partial-sha256-{GGUF_SHA}.validator"))
        .exists());
    for h in [home, home2, home3, home4] {
        let _ = std::fs::remove_dir_all(h);
    }
}

#[test]
fn wrong_sha_and_killed_pulls_leave_no_model() {
    let hub = Hub::start();
    hub.add_plain("smol.gguf", gguf_file("smol.gguf"));
    let mut lying = gguf_file(GGUF_NAME);
    lying.lfs = Some("e".repeat(64));
    hub.add_repo("liar/repo", vec![lying]);
    let home = common::temp_home("reg-sha");
    let url = format!("{}/files/smol.gguf", hub.url());

    let e = fails(
        &home,
        Some(&hub),
        &["pull", &url, "--sha256", &"0".repeat(64)],
    );
    assert!(e.contains("sha256 mismatch"), "{e}");
    let e = fails(&home, Some(&hub), &["pull", "hf:liar/repo"]);
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert!(names(&home).is_empty());
    assert!(blob_files(&home).is_empty(), "{:?}", blob_files(&home));

    // Killed mid-download: nothing visible; the next pull resumes.
    let (mut child, partial) = stalled_pull(&hub, &home, &url);
    // A second pull of the same file meanwhile is refused, not interleaved.
    let e = fails(&home, Some(&hub), &["pull", &url, "--sha256", GGUF_SHA]);
    assert!(e.contains("another ferry pull is downloading"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(names(&home).is_empty());
    let e = fails(&home, None, &["show", "smol"]);
    assert!(e.contains("not in"), "{e}");
    *hub.stall_after.lock().unwrap() = None;
    ok(&home, Some(&hub), &["pull", &url, "--sha256", GGUF_SHA]);
    assert_eq!(
        hub.log().last().unwrap().range.as_deref(),
        Some(&*format!("bytes={have}-"))
    );
    assert_eq!(names(&home), ["smol"]);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn rm_keeps_blobs_another_model_shares() {
    let home = common::temp_home("reg-rm");
    let gguf = common::model_path();
    let g = gguf.to_str().unwrap();
    ok(&home, None, &["pull", g, "--name", "a"]);
    ok(&home, None, &["pull", g, "--name", "b"]);
    // A wrong --sha256 for a directory stores nothing.
    let e = fails(
        &home,
        None,
        &[
            "pull",
            &common::embed_dir(),
            "--name",
            "emb",
            "--sha256",
            &"1".repeat(64),
        ],
    );
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert_eq!(blob_files(&home), [format!("sha256-{GGUF_SHA}")]);
    ok(
        &home,
        None,
        &[
            "pull",
            &common::embed_dir(),
            "--name",
            "emb",
            "--sha256",
            ST_SHA,
        ],
    );
    let blob = home.join("blobs").join(format!("sha256-{GGUF_SHA}"));
    let out = ok(&home, None, &["rm", "a"]);
    assert!(out.contains("shared"), "{out}");
    assert!(blob.exists(), "a blob still used by b was deleted");
    assert!(ok(&home, None, &["show", "b"]).contains("Q4_1"));
    ok(&home, None, &["rm", "b"]);
    assert!(!blob.exists());
    let before = blob_files(&home).len();
    assert!(before > 5);
    ok(&home, None, &["rm", "emb"]);
    assert!(blob_files(&home).is_empty(), "{:?}", blob_files(&home));
    assert!(!home.join("trees/emb").exists());
    let e = fails(&home, None, &["rm", "emb"]);
    assert!(e.contains("not in"), "{e}");
    assert!(names(&home).is_empty());
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn hostile_names_and_paths_are_refused() {
    let hub = Hub::start();
    let mut evil = minilm_files();
    evil.push(HubFile {
        path: "../../etc/passwd".into(),
        data: Data::Forbidden,
        size: 10,
        lfs: None,
    });
    hub.add_repo("evil/repo", evil);
    hub.add_repo(
        "evil/abs",
        vec![HubFile {
            path: "/etc/passwd".into(),
            data: Data::Forbidden,
            size: 1,
            lfs: None,
        }],
    );
    hub.add_repo(
        "evil/bs",
        vec![HubFile {
            path: "a\\..\\b.gguf".into(),
            data: Data::Forbidden,
            size: 1,
            lfs: None,
        }],
    );
    hub.add_repo(
        "pickles/only",
        vec![
            HubFile {
                path: "config.json".into(),
                data: Data::Forbidden,
                size: 1,
                lfs: None,
            },
            HubFile {
                path: "pytorch_model.bin".into(),
                data: Data::Forbidden,
                size: 1,
                lfs: None,
            },
        ],
    );
    hub.add_plain("model.bin", gguf_file("model.bin"));
    let home = common::temp_home("reg-hostile");
    let g = common::model_path();
    let g = g.to_str().unwrap();
    let pickle = home.join("weights.pt");
    std::fs::write(&pickle, b"not really").unwrap();
    let url_bin = format!("{}/files/model.bin", hub.url());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["pull", g, "--name", "../x"], "invalid model name"),
        (vec!["pull", g, "--name", "a/b"], "invalid model name"),
        (vec!["pull", g, "--name", ".hidden"], "invalid model name"),
        (vec!["pull", g, "--name", "x\\y"], "invalid model name"),
        (vec!["pull", g, "--name", "a..b"], "invalid model name"),
        (vec!["pull", g, "--name", "/abs"], "invalid model name"),
        (vec!["pull", g, "--sha256", "xyz"], "64 hexadecimal"),
        (vec!["pull", "hf:org/repo:../../etc/passwd"], "'..'"),
        (vec!["pull", "hf:org/repo:/etc/passwd"], "absolute"),
        (vec!["pull", "hf:org/repo:a\\b.gguf"], "backslash"),
        (vec!["pull", "hf:org/repo:a//b.gguf"], "empty"),
        (
            vec!["pull", "hf:../repo"],
            "invalid Hugging Face repository",
        ),
        (
            vec!["pull", "hf:org/repo/x"],
            "invalid Hugging Face repository",
        ),
        (vec!["pull", "hf:org/repo:pytorch_model.bin"], "pickle"),
        (vec!["pull", "hf:evil/repo"], "listing is refused"),
        (vec!["pull", "hf:evil/abs"], "absolute"),
        (vec!["pull", "hf:evil/bs"], "backslash"),
        (vec!["pull", "hf:pickles/only"], "pickle"),
        (vec!["pull", "hf:nobody/nothing"], "404"),
        (
            vec!["pull", "hf:evil/repo", "--revision", "a\u{7}b"],
            "invalid --revision",
        ),
        (vec!["pull", &url_bin], "pickle"),
        (vec!["pull", pickle.to_str().unwrap()], "pickle"),
        (vec!["pull", g, "--revision", "main"], "hf: sources only"),
        (vec!["show", "../x"], "invalid model name"),
        (vec!["rm", "../x"], "invalid model name"),
        (vec!["show", "nope"], "not in"),
    ];
    for (args, want) in &cases {
        let e = fails(&home, Some(&hub), args);
        assert!(e.contains(want), "ferry {args:?}: wanted {want:?} in {e}");
    }
    assert!(!hub.forbidden_hit.load(Ordering::SeqCst));
    assert!(names(&home).is_empty());
    assert!(blob_files(&home).is_empty(), "{:?}", blob_files(&home));

    // A tree replaced by a symlink out of the data directory is refused.
    ok(
        &home,
        None,
        &["pull", &common::embed_dir(), "--name", "emb"],
    );
    let outside = common::temp_home("reg-outside");
    let tree = home.join("trees/emb");
    for e in std::fs::read_dir(&tree).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), outside.join(e.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(outside.join("1_Pooling")).unwrap();
    std::fs::copy(
        tree.join("1_Pooling/config.json"),
        outside.join("1_Pooling/config.json"),
    )
    .unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(&outside, &tree).unwrap();
    let e = fails(&home, None, &["show", "emb"]);
    assert!(e.contains("outside the data directory"), "{e}");
    // So is a single file inside the tree.
    std::fs::remove_file(&tree).unwrap();
    ok(
        &home,
        None,
        &["pull", &common::embed_dir(), "--name", "emb"],
    );
    std::fs::remove_file(tree.join("config.json")).unwrap();
    std::os::unix::fs::symlink(outside.join("config.json"), tree.join("config.json")).unwrap();
    let e = fails(&home, None, &["show", "emb"]);
    assert!(e.contains("outside the data directory"), "{e}");

    // A manifest path edited in the database behind Ferry's back is refused when read.
    let db = rusqlite::Connection::open(home.join("ferry.db")).unwrap();
    db.execute(
        "UPDATE model_files SET path = '../../etc/passwd' WHERE model = 'emb' AND path = 'config.json'",
        [],
    )
    .unwrap();
    drop(db);
    let e = fails(&home, None, &["show", "emb"]);
    assert!(e.contains("../../etc/passwd") && e.contains("'..'"), "{e}");
    // `list` names the bad record and still lists the others.
    ok(&home, None, &["pull", g, "--name", "fine"]);
    let o = run(&home, None, &["list"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipping model \"emb\"") && err.contains("'..'"),
        "{err}"
    );
    assert_eq!(names(&home), ["fine"]);
    for h in [home, outside] {
        let _ = std::fs::remove_dir_all(h);
    }
}

#[test]
fn old_json_manifests_are_imported_once() {
    let home = common::temp_home("reg-legacy");
    let blobs = home.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(home.join("models")).unwrap();
    let gguf = common::model_path();
    std::fs::hard_link(&gguf, blobs.join(format!("sha256-{GGUF_SHA}")))
        .or_else(|_| std::fs::copy(&gguf, blobs.join(format!("sha256-{GGUF_SHA}"))).map(|_| ()))
        .unwrap();
    let m = json!({"name": "old", "format": "gguf", "blob": format!("sha256-{GGUF_SHA}"),
                   "size": std::fs::metadata(&gguf).unwrap().len(), "source": gguf});
    let mut f = std::fs::File::create(home.join("models/old.json")).unwrap();
    f.write_all(m.to_string().as_bytes()).unwrap();
    drop(f);
    assert_eq!(names(&home), ["old"]);
    assert!(!home.join("models/old.json").exists());
    assert!(home.join("models/old.json.imported").exists());
    assert!(ok(&home, None, &["show", "old"]).contains("SmolLM2-135M-Instruct.Q4_1.gguf"));
    ok(&home, None, &["rm", "old"]);
    assert!(
        names(&home).is_empty(),
        "an imported manifest must not come back"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn chat_streams_replies_and_keeps_the_history() {
    let home = common::temp_home("reg-chat");
    let g = common::model_path();
    let mut child = ferry_cmd(
        &home,
        None,
        &[
            "chat",
            g.to_str().unwrap(),
            "--verbose",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--kv-cache-tokens",
            "2048",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"My name is Ada.\nWhat is my name?\n/bye\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let turns: Vec<(u64, u64)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("[prompt_tokens="))
        .map(|l| {
            let (p, c) = l
                .trim_end_matches(']')
                .split_once(" completion_tokens=")
                .unwrap();
            (p.parse().unwrap(), c.parse().unwrap())
        })
        .collect();
    assert_eq!(turns.len(), 2, "two turns, then /bye: {err}");
    // The second prompt holds the first exchange: the history is kept.
    assert!(turns[1].0 > turns[0].0 + turns[0].1, "{turns:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn prune_deletes_what_no_model_uses_and_nothing_else() {
    let hub = Hub::start();
    // A multi-file repo whose last needed file is corrupt on the hub: the pull fails after
    // model.safetensors is stored, leaving a blob no model references.
    let mut files = minilm_files();
    for f in files.iter_mut().filter(|f| f.path == "tokenizer.json") {
        f.lfs = Some("e".repeat(64));
    }
    hub.add_repo("broken/minilm", files);
    hub.add_plain("smol.gguf", gguf_file("smol.gguf"));
    let home = common::temp_home("reg-prune");
    // A pull killed mid-download leaves a resumable partial; while a pull runs, prune waits
    // its turn (refuses) rather than racing it.
    let url = format!("{}/files/smol.gguf", hub.url());
    let (mut child, _partial) = stalled_pull(&hub, &home, &url);
    let e = fails(&home, None, &["prune"]);
    assert!(e.contains("a pull or import is running"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    *hub.stall_after.lock().unwrap() = None;

    let gguf = common::model_path();
    ok(
        &home,
        None,
        &["pull", gguf.to_str().unwrap(), "--name", "keep"],
    );
    let e = fails(&home, Some(&hub), &["pull", "hf:broken/minilm"]);
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert_eq!(names(&home), ["keep"]);
    let orphan = format!("sha256-{ST_SHA}");
    assert!(
        blob_files(&home).contains(&orphan),
        "{:?}",
        blob_files(&home)
    );
    // A tree nobody owns (a model directory left behind).
    std::fs::create_dir_all(home.join("trees/gone")).unwrap();
    std::fs::write(home.join("trees/gone/config.json"), b"{}").unwrap();

    // A dry run names everything and deletes nothing.
    let before = blob_files(&home);
    let out = ok(&home, None, &["prune", "--dry-run"]);
    assert!(
        out.contains(&format!("would remove blob {orphan}")),
        "{out}"
    );
    assert!(out.contains("trees/gone"), "{out}");
    assert_eq!(blob_files(&home), before);
    assert!(home.join("trees/gone").exists());

    let out = ok(&home, None, &["prune"]);
    assert!(out.contains(&format!("removed blob {orphan}")), "{out}");
    assert!(out.contains("kept 1 partial download"), "{out}");
    assert_eq!(
        blob_files(&home),
        [
            format!(".partial-sha256-{GGUF_SHA}"),
            format!("sha256-{GGUF_SHA}")
        ]
    );
    assert!(!home.join("trees/gone").exists());
    // The model that uses its blob is intact and still loads.
    assert!(ok(&home, None, &["show", "keep"]).contains("Q4_1"));
    let out = ok(
        &home,
        None,
        &["run", "keep", "Say hi.", "--max-tokens", "2"],
    );
    assert!(!out.trim().is_empty());

    let out = ok(&home, None, &["prune", "--partials"]);
    assert!(out.contains(".partial-sha256-"), "{out}");
    assert_eq!(blob_files(&home), [format!("sha256-{GGUF_SHA}")]);
    // Nothing left to prune.
    let out = ok(&home, None, &["prune"]);
    assert!(
        out.contains("removed 0 blob(s), 0 temporary file(s), 0 tree(s)"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
