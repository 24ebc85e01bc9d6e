//! `ferry pull` from the network: an `http(s)://` URL of a GGUF file, or `hf:ORG/REPO[:FILE]`
//! from a Hugging Face Hub (or anything serving its layout).
//!
//! Hub layout, as `huggingface_hub` uses it: the endpoint is `HF_ENDPOINT` (default
//! `https://huggingface.co`), a token from `HF_TOKEN` (or the file `$HF_TOKEN_PATH`,
//! `$HF_HOME/token`, `~/.cache/huggingface/token`) is sent as `Authorization: Bearer` to the
//! hub (never to another host a download redirects to). Steps:
//! 1. `GET {ep}/api/models/{repo}/revision/{rev}` pins the revision to a commit (`sha`);
//! 2. `GET {ep}/api/models/{repo}/tree/{commit}?recursive=true` lists files with sizes and,
//!    for LFS files, their sha256 (`lfs.oid`); pages follow `Link: <…>; rel="next"`;
//! 3. `GET {ep}/{repo}/resolve/{commit}/{path}` downloads (the hub redirects LFS files to a CDN).
//!
//! Every path in the listing is validated (one bad path refuses the whole listing: a hub that
//! names `../../etc/passwd` is not trusted for the rest). Downloads stream into
//! `blobs/.partial-<sha256 or url hash>`, locked against a concurrent pull of the same file;
//! an interrupted download is resumed with `Range: bytes=N-` and `If-Range` (the ETag or
//! Last-Modified the partial came from; kept only if the server answers 206 with a matching
//! `Content-Range`, else restarted), retried `--retries` times within one
//! run and resumable by running the command again. The sha256 is checked (the hub's LFS sha,
//! or `--sha256`) before the file is renamed to its blob; the model is registered only after
//! all its blobs are in place.
//!
//! HTTPS uses rustls with Mozilla's roots, or the PEM bundle named by `SSL_CERT_FILE` /
//! `REQUESTS_CA_BUNDLE` (`root_certs`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::ModelFile;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::progress::Progress;
use crate::store::{self, Manifest};

/// What `ferry pull` was asked for, beyond a local path.
pub struct PullOpts {
    pub name: Option<String>,
    pub sha256: Option<String>,
    pub revision: Option<String>,
    pub retries: u32,
}

pub fn is_remote(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://") || source.starts_with("hf:")
}

pub fn pull(source: &str, o: &PullOpts) -> Result<Manifest> {
    let sha = o.sha256.as_deref().map(store::check_sha_arg).transpose()?;
    if let Some(spec) = source.strip_prefix("hf:") {
        return pull_hf(spec, o, sha);
    }
    if o.revision.is_some() {
        bail!("--revision applies to hf: sources only");
    }
    pull_url(source, o, sha)
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Http {
    agent: ureq::Agent,
}

/// The certificates HTTPS trusts: Mozilla's roots (webpki-roots, built in), or, when
/// `SSL_CERT_FILE` (else `REQUESTS_CA_BUNDLE`, as `huggingface_hub` honours) names a PEM
/// bundle, exactly the certificates in it, as OpenSSL and `requests` do (a company proxy's
/// CA, a private hub).
fn root_certs() -> Result<ureq::tls::RootCerts> {
    let Some((var, path)) = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"]
        .iter()
        .find_map(|v| Some((*v, std::env::var_os(v).filter(|p| !p.is_empty())?)))
    else {
        return Ok(ureq::tls::RootCerts::WebPki);
    };
    let pem = std::fs::read(&path)
        .with_context(|| format!("reading {var}={}", Path::new(&path).display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) =
            item.with_context(|| format!("parsing {var}={}", Path::new(&path).display()))?
        {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        bail!(
            "{var}={} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            Path::new(&path).display()
        );
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

impl Http {
    fn new() -> Result<Self> {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(root_certs()?)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(10)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self { agent })
    }

    fn get(
        &self,
        url: &str,
        token: Option<&str>,
        range_from: Option<u64>,
        if_range: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(n) = range_from {
            req = req.header("Range", format!("bytes={n}-"));
            // The range only applies if the file is still the one the partial came from.
            if let Some(v) = if_range {
                req = req.header("If-Range", v);
            }
        }
        req.call().map_err(|e| anyhow!("GET {url}: {e}"))
    }

    /// GET a JSON document; non-2xx answers become errors naming `what`.
    fn json(&self, url: &str, token: Option<&str>, what: &str) -> Result<(Value, Option<String>)> {
        let resp = self.get(url, token, None, None)?;
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let mut body = resp.into_body();
        let text = body
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| anyhow!("reading {url}: {e}"))?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, url, what, &text));
        }
        let v =
            serde_json::from_str(&text).with_context(|| format!("{url} did not answer JSON"))?;
        Ok((v, next))
    }
}

fn status_error(status: u16, url: &str, what: &str, body: &str) -> anyhow::Error {
    let snippet: String = body.chars().take(200).collect();
    let hint = match status {
        401 | 403 => " (access denied: the repository may be gated or private; set HF_TOKEN)",
        404 => " (not found: check the name, file and revision)",
        _ => "",
    };
    anyhow!(
        "{what}: {url} answered HTTP {status}{hint}: {}",
        snippet.trim()
    )
}

/// The `rel="next"` target of a `Link` header.
fn next_link(h: &str) -> Option<String> {
    h.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// Percent-encode everything but unreserved characters (and `/` when `keep_slash`).
fn pct(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`).
fn content_range(h: &str) -> Option<(u64, u64, Option<u64>)> {
    let r = h.trim().strip_prefix("bytes ")?;
    let (span, total) = r.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

// ---------------------------------------------------------------------------------------------
// Downloads

/// One file to fetch.
struct Want {
    url: String,
    /// Expected sha256 (hex), when known.
    sha: Option<String>,
    /// Expected size, when known.
    size: Option<u64>,
    label: String,
    /// Send the hub token.
    token: Option<String>,
}

enum Attempt {
    Done,
    /// Interrupted after progress; worth retrying (resume).
    Interrupted(anyhow::Error),
}

/// Download `w` into the blob store's partial file and check it; returns (partial path, sha256
/// hex, size). The caller renames the partial file to its blob.
fn download(http: &Http, w: &Want, retries: u32) -> Result<(PathBuf, String, u64)> {
    let blobs = store::subdir("blobs")?;
    let key = match &w.sha {
        Some(s) => format!("sha256-{s}"),
        None => format!("url-{:x}", Sha256::digest(w.url.as_bytes()))[..20].to_string(),
    };
    let partial = blobs.join(format!(".partial-{key}"));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .with_context(|| format!("opening {}", partial.display()))?;
    if !store::flock(&f, true, false) {
        bail!(
            "another ferry pull is downloading {} into {}; wait for it to finish",
            w.label,
            partial.display()
        );
    }
    let mut hasher = Sha256::new();
    // The validator (strong ETag or Last-Modified) of the response the partial file came from.
    let meta = partial.with_extension("validator");
    let mut validator = std::fs::read_to_string(&meta)
        .ok()
        .filter(|v| !v.is_empty() && v.len() < 1024 && !v.chars().any(|c| c.is_control()));
    let mut have = f.metadata()?.len();
    if w.size.is_some_and(|s| have > s) {
        f.set_len(0)?;
        have = 0;
    }
    if have > 0 {
        // Hash what an earlier run left, then continue from its end.
        f.seek(SeekFrom::Start(0))?;
        let mut r = (&mut f).take(have);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let mut attempt = 0u32;
    loop {
        match fetch_once(
            http,
            w,
            &mut f,
            &mut hasher,
            &mut have,
            &mut validator,
            &meta,
        )? {
            Attempt::Done => break,
            Attempt::Interrupted(e) => {
                f.sync_all()?;
                if attempt >= retries {
                    return Err(e.context(format!(
                        "download of {} interrupted after {have} bytes; run the same command again to resume",
                        w.label
                    )));
                }
                attempt += 1;
                eprintln!(
                    "{}: {e:#}; resuming from byte {have} (retry {attempt} of {retries})",
                    w.label
                );
                std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
            }
        }
    }
    f.sync_all()?;
    let hex = format!("{:x}", hasher.finalize());
    if let Some(want) = &w.sha {
        if *want != hex {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&meta);
            bail!(
                "sha256 mismatch for {}: expected {want}, got {hex}; the download was deleted",
                w.label
            );
        }
    }
    if let Some(s) = w.size {
        if have != s {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&meta);
            bail!("{}: got {have} bytes, expected {s}", w.label);
        }
    }
    let _ = std::fs::remove_file(&meta);
    Ok((partial, hex, have))
}

/// One request: resume from `have` if nonzero. Errors that retrying cannot fix are returned
/// as `Err`; a cut connection or a transient server error as `Attempt::Interrupted`.
fn fetch_once(
    http: &Http,
    w: &Want,
    f: &mut std::fs::File,
    hasher: &mut Sha256,
    have: &mut u64,
    validator: &mut Option<String>,
    meta: &Path,
) -> Result<Attempt> {
    let restart = |f: &mut std::fs::File, hasher: &mut Sha256, have: &mut u64| -> Result<()> {
        f.set_len(0)?;
        *hasher = Sha256::new();
        *have = 0;
        Ok(())
    };
    let from = (*have > 0).then_some(*have);
    let resp = match http.get(&w.url, w.token.as_deref(), from, validator.as_deref()) {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Interrupted(e)),
    };
    let status = resp.status().as_u16();
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let total;
    match (status, from) {
        (206, Some(n)) => {
            let cr = header("content-range").as_deref().and_then(content_range);
            match cr {
                Some((start, _, t)) if start == n => total = t.or(w.size),
                _ => {
                    eprintln!(
                        "{}: the server answered the range request with a different range; restarting",
                        w.label
                    );
                    restart(f, hasher, have)?;
                    return Ok(Attempt::Interrupted(anyhow!("range not honoured")));
                }
            }
        }
        (200, _) => {
            if from.is_some() {
                eprintln!(
                    "{}: the server does not support resuming (answered 200 to a range request); restarting",
                    w.label
                );
                restart(f, hasher, have)?;
            }
            total = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .or(w.size);
        }
        (416, Some(n)) => {
            if w.size == Some(n) {
                return Ok(Attempt::Done); // the earlier run had finished the body
            }
            restart(f, hasher, have)?;
            return Ok(Attempt::Interrupted(anyhow!(
                "range not satisfiable; restarting"
            )));
        }
        (s, _) if s == 408 || s == 429 || s >= 500 => {
            return Ok(Attempt::Interrupted(anyhow!("{} answered HTTP {s}", w.url)));
        }
        (s, _) => {
            let mut body = resp.into_body();
            let text = body
                .with_config()
                .limit(1 << 16)
                .read_to_string()
                .unwrap_or_default();
            return Err(status_error(
                s,
                &w.url,
                &format!("downloading {}", w.label),
                &text,
            ));
        }
    }
    // Remember what this body is a version of, for an If-Range on resume.
    let v = header("etag")
        .filter(|e| !e.starts_with("W/"))
        .or_else(|| header("last-modified"))
        .filter(|v| !v.is_empty() && v.len() < 1024 && !v.chars().any(|c| c.is_control()));
    if v != *validator {
        match &v {
            Some(v) => std::fs::write(meta, v)?,
            None => {
                let _ = std::fs::remove_file(meta);
            }
        }
        *validator = v;
    }
    if let (Some(t), Some(s)) = (total, w.size) {
        if t != s {
            bail!(
                "{}: the server says the file has {t} bytes, the listing said {s}",
                w.label
            );
        }
    }
    f.seek(SeekFrom::Start(*have))?;
    let mut bar = Progress::new(&w.label, total, *have);
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.finish();
                return Ok(Attempt::Interrupted(anyhow!("connection lost: {e}")));
            }
        };
        f.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        *have += n as u64;
        if total.is_some_and(|t| *have > t) {
            bail!("{}: the server sent more bytes than it announced", w.label);
        }
        bar.set(*have);
    }
    bar.finish();
    if let Some(t) = total {
        if *have < t {
            return Ok(Attempt::Interrupted(anyhow!(
                "connection closed at byte {} of {t}",
                *have
            )));
        }
    }
    Ok(Attempt::Done)
}

/// Fetch into a blob (skipped when the blob is already there); returns the `ModelFile`.
/// `gguf` checks that the file parses before it becomes a blob.
fn fetch_blob(http: &Http, w: &Want, path: &str, retries: u32, gguf: bool) -> Result<ModelFile> {
    if let Some(s) = &w.sha {
        let blob = format!("sha256-{s}");
        if let Ok(m) = std::fs::metadata(store::blob_path(&blob)?) {
            if w.size.is_none_or(|n| n == m.len()) {
                eprintln!("{}: already in the blob store", w.label);
                return Ok(ModelFile {
                    path: path.to_string(),
                    blob,
                    size: m.len(),
                });
            }
        }
    }
    let (partial, hex, size) = download(http, w, retries)?;
    let blob = format!("sha256-{hex}");
    if gguf {
        store::install_gguf_blob(&partial, &blob)
            .with_context(|| format!("{} was downloaded", w.label))?;
    } else {
        store::install_blob(&partial, &blob)?;
    }
    Ok(ModelFile {
        path: path.to_string(),
        blob,
        size,
    })
}

// ---------------------------------------------------------------------------------------------
// Plain URLs

/// The file name at the end of a URL's path (query and fragment dropped).
fn url_file_name(url: &str) -> Result<String> {
    let rest = url.split_once("://").map(|(_, r)| r).context("not a URL")?;
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let (host, path) = path.split_once('/').unwrap_or((path, ""));
    if host.is_empty() {
        bail!("{url:?} has no host");
    }
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty() {
        bail!("{url:?} does not end in a file name");
    }
    Ok(name.to_string())
}

fn pull_url(url: &str, o: &PullOpts, sha: Option<String>) -> Result<Manifest> {
    if url.chars().any(|c| c.is_control() || c == ' ') {
        bail!("refusing URL {url:?}: it contains spaces or control characters");
    }
    let fname = url_file_name(url)?;
    if store::is_pickle(&fname) {
        return Err(store::pickle_refusal(url));
    }
    if !fname.to_ascii_lowercase().ends_with(".gguf") {
        bail!("{url}: only .gguf files can be pulled from a URL (use hf:ORG/REPO for a safetensors embedding model)");
    }
    let name = match &o.name {
        Some(n) => n.clone(),
        None => fname[..fname.len() - 5].to_lowercase(),
    };
    store::check_name(&name).context("pass a valid --name")?;
    if sha.is_none() {
        eprintln!("warning: no --sha256 given; the download is not checked against a known digest");
    }
    let http = Http::new()?;
    let w = Want {
        url: url.to_string(),
        sha,
        size: None,
        label: fname.clone(),
        token: None,
    };
    let path = if store::check_rel_path(&fname).is_ok() {
        fname
    } else {
        "model.gguf".into()
    };
    let file = fetch_blob(&http, &w, &path, o.retries, true)?;
    let blob = file.blob.clone();
    store::register(&name, "gguf", url, &blob, vec![file], &store::db()?)
}

// ---------------------------------------------------------------------------------------------
// Hugging Face Hub

/// `ORG/REPO[:FILE]`.
#[derive(Debug, PartialEq)]
pub struct HfSpec {
    pub repo: String,
    pub file: Option<String>,
}

fn check_repo_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
        && !p.contains("..")
        && !p.contains("--")
}

pub fn parse_hf(spec: &str) -> Result<HfSpec> {
    let (repo, file) = match spec.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (spec, None),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| check_repo_part(p)) {
        bail!("invalid Hugging Face repository {repo:?}: want hf:ORG/REPO[:FILE] (letters, digits, '-', '_', '.')");
    }
    if let Some(f) = file {
        store::check_rel_path(f).with_context(|| format!("invalid FILE in hf:{spec}"))?;
        if store::is_pickle(f) {
            return Err(store::pickle_refusal(f));
        }
    }
    Ok(HfSpec {
        repo: repo.to_string(),
        file: file.map(str::to_string),
    })
}

fn check_revision(r: &str) -> Result<()> {
    if r.is_empty() || r.len() > 256 || r.chars().any(|c| c.is_control()) {
        bail!("invalid --revision {r:?}");
    }
    Ok(())
}

/// One file of a repository listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    /// sha256 of an LFS file.
    pub lfs_sha: Option<String>,
}

/// Parse one page of `/api/models/{repo}/tree/{rev}`; every path is validated.
pub fn parse_tree(v: &Value) -> Result<Vec<Entry>> {
    let arr = v
        .as_array()
        .context("the repository listing is not a JSON array")?;
    let mut out = Vec::new();
    for e in arr {
        let path = e
            .get("path")
            .and_then(Value::as_str)
            .context("a listing entry has no path")?;
        store::check_rel_path(path).context("the hub's file listing is refused")?;
        if e.get("type").and_then(Value::as_str) == Some("directory") {
            continue;
        }
        let lfs = e.get("lfs").filter(|l| l.is_object());
        let size = lfs
            .and_then(|l| l.get("size"))
            .or_else(|| e.get("size"))
            .and_then(Value::as_u64)
            .with_context(|| format!("listing entry {path:?} has no size"))?;
        let lfs_sha = match lfs.and_then(|l| l.get("oid")).and_then(Value::as_str) {
            Some(s) => {
                let s = s.strip_prefix("sha256:").unwrap_or(s);
                if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!("listing entry {path:?} has a malformed LFS sha256 {s:?}");
                }
                Some(s.to_ascii_lowercase())
            }
            None => None,
        };
        out.push(Entry {
            path: path.to_string(),
            size,
            lfs_sha,
        });
    }
    Ok(out)
}

/// What to fetch from a repository.
#[derive(Debug, PartialEq)]
pub enum Pick {
    Gguf(Entry),
    Dir(Vec<Entry>),
}

fn base_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_split_shard(p: &str) -> bool {
    // name-00001-of-00003.gguf
    let b = base_name(p).to_ascii_lowercase();
    let Some(stem) = b.strip_suffix(".gguf") else {
        return false;
    };
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    parts.len() == 4
        && parts[1] == "of"
        && parts[0].len() == 5
        && parts[2].len() == 5
        && parts[0].bytes().all(|c| c.is_ascii_digit())
        && parts[2].bytes().all(|c| c.is_ascii_digit())
}

/// Files of a sentence-transformers / BERT repository that Ferry needs (weights in
/// safetensors only: pickled weights beside them are never fetched).
fn wanted_in_dir(p: &str) -> bool {
    const FILES: &[&str] = &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ];
    if FILES.contains(&p) {
        return true;
    }
    // Module configs: 1_Pooling/config.json, 2_Normalize/config.json, ...
    match p.split_once('/') {
        Some((dir, "config.json")) => dir.split_once('_').is_some_and(|(n, rest)| {
            !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && !rest.is_empty()
        }),
        _ => false,
    }
}

/// Choose files: FILE if given; else the repository's one GGUF, or its Q4_K_M GGUF (the
/// default of Ollama and llama.cpp) among several, or refuse listing the choices; else a
/// safetensors embedding model's files.
pub fn pick(entries: &[Entry], file: Option<&str>) -> Result<Pick> {
    if let Some(f) = file {
        let e = entries.iter().find(|e| e.path == f).with_context(|| {
            let ggufs: Vec<&str> = entries
                .iter()
                .filter(|e| e.path.ends_with(".gguf"))
                .map(|e| e.path.as_str())
                .collect();
            format!(
                "the repository has no file {f:?} (GGUF files: {})",
                list_or_none(&ggufs)
            )
        })?;
        if !f.to_ascii_lowercase().ends_with(".gguf") {
            bail!("{f}: only a .gguf file can be pulled on its own (pull the repository without :FILE for a safetensors embedding model)");
        }
        if is_split_shard(f) {
            bail!("{f} is one part of a split GGUF, which Ferry cannot load yet");
        }
        return Ok(Pick::Gguf(e.clone()));
    }
    let ggufs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.path.to_ascii_lowercase().ends_with(".gguf"))
        .filter(|e| !base_name(&e.path).to_ascii_lowercase().contains("mmproj"))
        .collect();
    let whole: Vec<&Entry> = ggufs
        .iter()
        .copied()
        .filter(|e| !is_split_shard(&e.path))
        .collect();
    if !ggufs.is_empty() && whole.is_empty() {
        bail!("the repository's GGUF files are split into parts, which Ferry cannot load yet");
    }
    if whole.len() == 1 {
        return Ok(Pick::Gguf(whole[0].clone()));
    }
    if whole.len() > 1 {
        let q4km: Vec<&Entry> = whole
            .iter()
            .copied()
            .filter(|e| base_name(&e.path).to_ascii_uppercase().contains("Q4_K_M"))
            .collect();
        if q4km.len() == 1 {
            return Ok(Pick::Gguf(q4km[0].clone()));
        }
        let names: Vec<&str> = whole.iter().map(|e| e.path.as_str()).collect();
        bail!(
            "the repository has several GGUF files and no single Q4_K_M; choose one with hf:ORG/REPO:FILE from: {}",
            names.join(", ")
        );
    }
    let has = |p: &str| entries.iter().any(|e| e.path == p);
    if has("config.json") && has("model.safetensors") {
        let files: Vec<Entry> = entries
            .iter()
            .filter(|e| wanted_in_dir(&e.path))
            .cloned()
            .collect();
        return Ok(Pick::Dir(files));
    }
    if entries.iter().any(|e| store::is_pickle(&e.path)) {
        bail!("the repository has no GGUF or model.safetensors, only pickle-based weights (.bin/.pt/.pth/.pkl), which can run code when loaded; Ferry refuses them");
    }
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).take(20).collect();
    bail!(
        "the repository has neither a .gguf file nor config.json + model.safetensors (files: {})",
        list_or_none(&names)
    )
}

fn list_or_none(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn hf_endpoint() -> Result<String> {
    let ep = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let ep = ep.trim_end_matches('/').to_string();
    if !(ep.starts_with("http://") || ep.starts_with("https://")) {
        bail!("HF_ENDPOINT must be an http(s) URL, got {ep:?}");
    }
    Ok(ep)
}

/// The hub token, as `huggingface_hub` finds it.
fn hf_token() -> Option<String> {
    let nonempty = |s: String| {
        let t = s.trim().to_string();
        (!t.is_empty()).then_some(t)
    };
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(nonempty) {
        return Some(t);
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| Path::new(&h).join("token")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/huggingface/token"))
        })?;
    std::fs::read_to_string(path).ok().and_then(nonempty)
}

fn pull_hf(spec: &str, o: &PullOpts, sha: Option<String>) -> Result<Manifest> {
    let s = parse_hf(spec)?;
    let rev = o.revision.clone().unwrap_or_else(|| "main".into());
    check_revision(&rev)?;
    let ep = hf_endpoint()?;
    let token = hf_token();
    let http = Http::new()?;
    let repo_url = pct(&s.repo, true);
    // Pin the revision to a commit so every file comes from the same one.
    let (info, _) = http.json(
        &format!("{ep}/api/models/{repo_url}/revision/{}", pct(&rev, false)),
        token.as_deref(),
        &format!("looking up hf:{} at revision {rev}", s.repo),
    )?;
    let commit = match info.get("sha").and_then(Value::as_str) {
        Some(c) if c.len() == 40 && c.chars().all(|x| x.is_ascii_hexdigit()) => c.to_string(),
        Some(c) => bail!("the hub answered a malformed commit id {c:?}"),
        None => rev.clone(),
    };
    let mut entries = Vec::new();
    let mut url = Some(format!(
        "{ep}/api/models/{repo_url}/tree/{}?recursive=true",
        pct(&commit, false)
    ));
    let mut pages = 0;
    while let Some(u) = url {
        pages += 1;
        if pages > 1000 {
            bail!("the repository listing has more than 1000 pages");
        }
        let (v, next) = http.json(&u, token.as_deref(), &format!("listing hf:{}", s.repo))?;
        entries.extend(parse_tree(&v)?);
        // Pages stay on the hub: the token is never sent to another origin.
        if let Some(n) = &next {
            if !n.starts_with(&format!("{ep}/")) {
                bail!("the hub's listing points its next page at another origin ({n}); refusing");
            }
        }
        url = next;
    }
    let picked = pick(&entries, s.file.as_deref())?;
    let source = |file: Option<&str>| match file {
        Some(f) => format!("hf:{}:{f}@{commit}", s.repo),
        None => format!("hf:{}@{commit}", s.repo),
    };
    let want = |e: &Entry| Want {
        url: format!(
            "{ep}/{repo_url}/resolve/{}/{}",
            pct(&commit, false),
            pct(&e.path, true)
        ),
        sha: e.lfs_sha.clone(),
        size: Some(e.size),
        label: e.path.clone(),
        token: token.clone(),
    };
    match picked {
        Pick::Gguf(e) => {
            let mut w = want(&e);
            if let Some(user) = &sha {
                if let Some(hub) = &w.sha {
                    if hub != user {
                        bail!(
                            "--sha256 {user} differs from the hub's sha256 {hub} for {}",
                            e.path
                        );
                    }
                }
                w.sha = Some(user.clone());
            }
            let name = match &o.name {
                Some(n) => n.clone(),
                None => base_name(&e.path)
                    .trim_end_matches(".gguf")
                    .trim_end_matches(".GGUF")
                    .to_lowercase(),
            };
            store::check_name(&name).context("pass a valid --name")?;
            let file = fetch_blob(&http, &w, &e.path, o.retries, true)?;
            let blob = file.blob.clone();
            store::register(
                &name,
                "gguf",
                &source(Some(&e.path)),
                &blob,
                vec![file],
                &store::db()?,
            )
        }
        Pick::Dir(list) => {
            let name = match &o.name {
                Some(n) => n.clone(),
                None => s.repo.rsplit('/').next().unwrap_or(&s.repo).to_lowercase(),
            };
            store::check_name(&name).context("pass a valid --name")?;
            let mut files = Vec::new();
            for e in &list {
                let mut w = want(e);
                if e.path == "model.safetensors" {
                    if let Some(user) = &sha {
                        if w.sha.as_ref().is_some_and(|h| h != user) {
                            bail!("--sha256 {user} differs from the hub's sha256 for model.safetensors");
                        }
                        w.sha = Some(user.clone());
                    }
                }
                files.push(fetch_blob(&http, &w, &e.path, o.retries, false)?);
            }
            let main = files
                .iter()
                .find(|f| f.path == "model.safetensors")
                .map(|f| f.blob.clone())
                .context("model.safetensors was not fetched")?;
            store::build_tree(&name, &files, |dir| {
                ferry_models::bert::Bert::load(dir)
                    .map(|_| ())
                    .with_context(|| format!("hf:{} is not a usable embedding model", s.repo))
            })?;
            store::register(&name, "hf-dir", &source(None), &main, files, &store::db()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(p: &str) -> Entry {
        Entry {
            path: p.into(),
            size: 1,
            lfs_sha: None,
        }
    }

    #[test]
    fn hf_specs_and_their_refusals() {
        assert_eq!(
            parse_hf("org/repo:sub/x.Q4_K_M.gguf").unwrap(),
            HfSpec {
                repo: "org/repo".into(),
                file: Some("sub/x.Q4_K_M.gguf".into())
            }
        );
        assert_eq!(parse_hf("gpt2").unwrap().file, None);
        for (bad, why) in [
            ("", "invalid Hugging Face repository"),
            ("../x", "invalid Hugging Face repository"),
            ("org/../x", "invalid Hugging Face repository"),
            ("org/repo/extra", "invalid Hugging Face repository"),
            ("/etc/passwd", "invalid Hugging Face repository"),
            ("org\\repo", "invalid Hugging Face repository"),
            ("org/re po", "invalid Hugging Face repository"),
            ("org/repo:../../etc/passwd", "'..'"),
            ("org/repo:/etc/passwd", "absolute"),
            ("org/repo:a\\b.gguf", "backslash"),
            ("org/repo:a\0b.gguf", "NUL"),
            ("org/repo:a//b.gguf", "empty"),
            ("org/repo:pytorch_model.bin", "pickle"),
            ("org/repo:weights.pt", "pickle"),
        ] {
            let e = format!("{:#}", parse_hf(bad).unwrap_err());
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn listings_with_escaping_paths_are_refused_whole() {
        let bad = json!([
            {"type": "file", "path": "config.json", "size": 3},
            {"type": "file", "path": "../../etc/passwd", "size": 3}
        ]);
        let e = format!("{:#}", parse_tree(&bad).unwrap_err());
        assert!(e.contains("refused") && e.contains("'..'"), "{e}");
        let bad_sha =
            json!([{"type": "file", "path": "m.gguf", "size": 3, "lfs": {"oid": "zz", "size": 3}}]);
        assert!(parse_tree(&bad_sha).is_err());
        let good = json!([
            {"type": "directory", "path": "1_Pooling", "size": 0},
            {"type": "file", "path": "1_Pooling/config.json", "size": 190},
            {"type": "file", "path": "m.gguf", "size": 10,
             "lfs": {"oid": "A".repeat(64), "size": 99, "pointerSize": 130}}
        ]);
        let t = parse_tree(&good).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].size, 99);
        assert_eq!(t[1].lfs_sha.as_deref(), Some("a".repeat(64).as_str()));
    }

    #[test]
    fn picking_follows_ollama_and_llama_cpp() {
        let one = [e("README.md"), e("x.Q8_0.gguf")];
        assert_eq!(pick(&one, None).unwrap(), Pick::Gguf(e("x.Q8_0.gguf")));
        let many = [
            e("x.Q8_0.gguf"),
            e("x.Q4_K_M.gguf"),
            e("x.Q5_K_M.gguf"),
            e("mmproj-x-f16.gguf"),
        ];
        assert_eq!(pick(&many, None).unwrap(), Pick::Gguf(e("x.Q4_K_M.gguf")));
        let ambiguous = [e("x.Q8_0.gguf"), e("x.Q5_K_M.gguf")];
        let msg = pick(&ambiguous, None).unwrap_err().to_string();
        assert!(
            msg.contains("x.Q8_0.gguf") && msg.contains("x.Q5_K_M.gguf"),
            "{msg}"
        );
        assert_eq!(
            pick(&ambiguous, Some("x.Q8_0.gguf")).unwrap(),
            Pick::Gguf(e("x.Q8_0.gguf"))
        );
        assert!(pick(&ambiguous, Some("nope.gguf")).is_err());
        let split = [e("x-00001-of-00002.gguf"), e("x-00002-of-00002.gguf")];
        assert!(pick(&split, None)
            .unwrap_err()
            .to_string()
            .contains("split"));
        let st = [
            e("config.json"),
            e("model.safetensors"),
            e("pytorch_model.bin"),
            e("tokenizer.json"),
            e("1_Pooling/config.json"),
            e("onnx/model.onnx"),
            e("README.md"),
        ];
        let Pick::Dir(files) = pick(&st, None).unwrap() else {
            panic!()
        };
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "1_Pooling/config.json"
            ]
        );
        let pickles = [e("config.json"), e("pytorch_model.bin")];
        assert!(pick(&pickles, None)
            .unwrap_err()
            .to_string()
            .contains("pickle"));
    }

    #[test]
    fn http_helpers() {
        assert_eq!(
            content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(content_range("items 1-2/3"), None);
        assert_eq!(
            next_link("<http://h/api?cursor=x>; rel=\"next\"").as_deref(),
            Some("http://h/api?cursor=x")
        );
        assert_eq!(next_link("<http://h/a>; rel=\"prev\""), None);
        assert_eq!(pct("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(pct("a b/c.gguf", true), "a%20b/c.gguf");
        assert_eq!(url_file_name("http://h:1/a/b.gguf?x=1").unwrap(), "b.gguf");
        assert!(url_file_name("http://h/").is_err());
        assert!(is_split_shard("m-00001-of-00003.gguf"));
        assert!(!is_split_shard("m.Q4_K_M.gguf"));
    }
}
