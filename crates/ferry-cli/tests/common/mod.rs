//! Helpers for the integration tests: start the real `ferry serve` with the real default model
//! on a loopback port, and a minimal HTTP/1.1 client over `TcpStream` (real sockets, no mocks).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The default model's GGUF: `FERRY_TEST_GGUF`, or where `scripts/fetch-model.sh` puts it.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_TEST_GGUF") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join(".ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "model not found at {}: run scripts/fetch-model.sh (or set FERRY_TEST_GGUF)",
        p.display()
    );
    p
}

pub struct Server {
    pub port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start a server with extra flags and wait until `/ready` says 200.
pub fn start(extra: &[&str]) -> Server {
    start_with(None, extra)
}

/// `start` with a given data directory (`FERRY_HOME`), e.g. one where keys were created.
pub fn start_in(home: &Path, extra: &[&str]) -> Server {
    start_with(Some(home), extra)
}

fn start_with(home: Option<&Path>, extra: &[&str]) -> Server {
    let model = model_path();
    start_serving(home, &[model.to_str().unwrap()], extra)
}

/// Start `ferry serve` with the given `--model` arguments (registered names or paths).
pub fn start_serving(home: Option<&Path>, models: &[&str], extra: &[&str]) -> Server {
    let port = free_port();
    let home = home
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ferry-test-{port}")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.arg("serve");
    for m in models {
        cmd.args(["--model", m]);
    }
    cmd.args([
        "--port",
        &port.to_string(),
        "--kv-cache-tokens",
        "8192",
        "--exit-on-stdin-eof",
    ])
    .args(extra)
    .env("FERRY_HOME", &home)
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = cmd.spawn().expect("spawn ferry serve");
    let s = Server { port, child };
    let t = Instant::now();
    loop {
        if let Ok(r) = s.try_get("/ready") {
            if r.status == 200 {
                return s;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One server shared by the tests of a binary (it exits when the test process does, through
/// `--exit-on-stdin-eof`).
pub fn shared() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start(&[]))
}

pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(|s| s.to_string())
            .collect()
    }
    /// The error object of an error response, checked for OpenAI's shape.
    pub fn error(&self) -> Value {
        let v = self.json();
        let e = v
            .get("error")
            .unwrap_or_else(|| panic!("no error object: {v}"))
            .clone();
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "error lacks {k}: {e}");
        }
        e
    }
}

/// Run the `ferry` CLI with `FERRY_HOME=home`; panics unless it succeeds; returns stdout.
pub fn ferry(home: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_HOME", home)
        .output()
        .expect("run ferry");
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh, empty data directory.
pub fn temp_home(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!("ferry-test-{tag}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A response being received: status, headers, then SSE `data:` payloads one at a time.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl Streaming {
    /// The next `data:` payload, or None at the end of the body. (Chunk-size lines of a
    /// chunked body are not `data:` lines, so they are skipped.)
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if let Some(d) = l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")) {
                return Some(d.to_string());
            }
        }
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the server process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Any method, with extra headers (`("Authorization", "Bearer …")`) and an optional JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Response {
        self.raw(&request_bytes(method, path, headers, body))
            .expect("request")
    }
    pub fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, None)
    }
    pub fn post_with_headers(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Response {
        self.request("POST", path, headers, Some(body))
    }

    /// Send a request and return once the response head has arrived.
    pub fn open_stream(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Streaming {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        s.write_all(&request_bytes(method, path, headers, body))
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Streaming {
            status,
            headers,
            reader,
        }
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<Response> {
        self.raw(
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        )
    }
    pub fn get(&self, path: &str) -> Response {
        self.try_get(path).expect("GET")
    }
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.post_bytes(path, &serde_json::to_vec(body).unwrap())
    }
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Response {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.raw(&req).expect("POST")
    }

    pub fn raw(&self, req: &[u8]) -> std::io::Result<Response> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        match s.write_all(req) {
            Ok(()) => {}
            // The server may answer (a 413 for an oversized body) and close before the whole
            // body is sent, as a real server does; read its answer as an HTTP client would.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e),
        }
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut raw = Vec::new();
        r.read_to_end(&mut raw)?;
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        let body = if chunked { dechunk(&raw) } else { raw };
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Vec<u8> {
    let body = body.map(|b| serde_json::to_vec(b).unwrap());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = &body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(&b);
    }
    req
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

pub fn chat(content: &str, extra: Value) -> Value {
    let mut v =
        serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

/// The embedding model directory: `FERRY_TEST_EMBED_DIR`, or where `scripts/fetch-model.sh`
/// puts it.
pub fn embed_dir() -> String {
    let p = std::env::var_os("FERRY_TEST_EMBED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ferry-cache/models/all-MiniLM-L6-v2")
        });
    assert!(
        p.join("model.safetensors").exists(),
        "embedding model not found at {}: run scripts/fetch-model.sh (or set FERRY_TEST_EMBED_DIR)",
        p.display()
    );
    p.display().to_string()
}
