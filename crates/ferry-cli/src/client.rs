//! A small blocking HTTP/1.1 client over `TcpStream` for the CLI commands that talk to a
//! running server (`ferry data`, `train`, `eval`, `predict`): plain `http://` (loopback or a
//! trusted network; put TLS in front with a proxy), `Connection: close`, Content-Length or
//! chunked responses. `--url` / `FERRY_URL` pick the server, `FERRY_API_KEY` is sent as a
//! Bearer token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where `ferry serve` listens by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";

pub struct Client {
    host: String,
    port: u16,
    prefix: String,
    key: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the server answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    /// The JSON body of a 2xx answer, or the server's error message.
    pub fn ok_json(&self) -> Result<Value> {
        if !(200..300).contains(&self.status) {
            let msg = self
                .json()
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
            bail!("server answered {}: {msg}", self.status);
        }
        self.json()
    }
}

impl Client {
    pub fn new(url: Option<&str>) -> Result<Self> {
        let url = url
            .map(str::to_string)
            .or_else(|| std::env::var("FERRY_URL").ok())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let rest = url.strip_prefix("http://").with_context(|| {
            format!("{url}: only http:// URLs are supported (put a TLS proxy in front for https)")
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().with_context(|| format!("bad port in {url}"))?),
            None => (authority, 80),
        };
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            prefix: prefix.to_string(),
            key: std::env::var("FERRY_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        })
    }

    fn connect(&self) -> Result<TcpStream> {
        let s = TcpStream::connect((self.host.as_str(), self.port)).with_context(|| {
            format!(
                "connecting to {}:{} (is `ferry serve` running? set --url or FERRY_URL)",
                self.host, self.port
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        Ok(s)
    }

    fn head(&self, method: &str, path: &str, extra: &str) -> String {
        let mut h = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: ferry-cli\r\n",
            self.prefix, self.host, self.port
        );
        if let Some(k) = &self.key {
            h.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        h.push_str(extra);
        h.push_str("\r\n");
        h
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        let mut s = self.connect()?;
        s.write_all(self.head("GET", path, "").as_bytes())?;
        read_reply(s)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Reply> {
        let b = serde_json::to_vec(body)?;
        let mut s = self.connect()?;
        let h = self.head(
            "POST",
            path,
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ),
        );
        s.write_all(h.as_bytes())?;
        s.write_all(&b)?;
        read_reply(s)
    }

    /// `POST /v1/files`, streaming the file from disk.
    pub fn upload(&self, file: &Path, purpose: &str) -> Result<Reply> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().replace(['"', '\r', '\n'], "_"))
            .unwrap_or_else(|| "upload".into());
        let mut f =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata()?.len();
        let boundary = format!(
            "ferry-{:016x}",
            std::process::id() as u64 ^ len.rotate_left(17)
        );
        let pre = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let post = format!("\r\n--{boundary}--\r\n");
        let total = pre.len() as u64 + len + post.len() as u64;
        let mut s = self.connect()?;
        let h = self.head(
            "POST",
            "/v1/files",
            &format!(
                "Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n"
            ),
        );
        s.write_all(h.as_bytes())?;
        s.write_all(pre.as_bytes())?;
        // The server may answer early (413); its answer is what matters then.
        let sent = std::io::copy(&mut f, &mut s).and_then(|_| s.write_all(post.as_bytes()));
        match read_reply(s) {
            Ok(r) => Ok(r),
            Err(e) => {
                sent.context("sending the file")?;
                Err(e)
            }
        }
    }
}

fn read_reply(s: TcpStream) -> Result<Reply> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).context("reading the response")?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .context("bad chunk size")?;
            if n == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Reply { status, body })
}
