//! Ferry's data directory: content-addressed blobs and one manifest per model.
//!
//! Layout under `$FERRY_HOME` (default `$XDG_DATA_HOME/ferry` or `~/.local/share/ferry`):
//! `blobs/sha256-<hex>` and `models/<name>.json`. Blobs are written to a temporary file,
//! fsynced, checked, renamed into place and the directory fsynced, so a killed import leaves
//! no half-visible model.
//!
//! A Hugging Face-style directory (config.json + model.safetensors + tokenizer.json, for
//! embedding models) is imported file by file as blobs; `trees/<name>/` then holds the
//! directory's layout as hard links to those blobs (copies where links fail), built in a temporary
//! directory and renamed into place. Its manifest has format `hf-dir` and the safetensors blob.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub format: String,
    pub blob: String,
    pub size: u64,
    pub source: String,
}

pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("FERRY_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("ferry");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/ferry")
}

/// Model names: letters, digits, `-`, `_`, `.`, `:`; no path separators, no `..`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        && !name.starts_with('.');
    if !ok {
        bail!("invalid model name {name:?}: use letters, digits, '-', '_', '.', ':' (no '..', no '/')");
    }
    Ok(())
}

pub fn manifest_path(name: &str) -> Result<PathBuf> {
    check_name(name)?;
    Ok(home().join("models").join(format!("{name}.json")))
}

pub fn read_manifest(name: &str) -> Result<Manifest> {
    let p = manifest_path(name)?;
    let s = std::fs::read_to_string(&p)
        .with_context(|| format!("model {name:?} is not in {}", home().display()))?;
    serde_json::from_str(&s).with_context(|| format!("bad manifest {}", p.display()))
}

pub fn blob_path(blob: &str) -> Result<PathBuf> {
    let hex = blob.strip_prefix("sha256-").unwrap_or("");
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("bad blob id {blob:?}");
    }
    Ok(home().join("blobs").join(blob))
}

fn fsync_dir(d: &Path) -> Result<()> {
    std::fs::File::open(d)?.sync_all()?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Import a local file as model `name`, checking `sha256` if given.
pub fn import_file(src: &Path, name: &str, sha256: Option<&str>) -> Result<Manifest> {
    check_name(name)?;
    let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "bin" | "pt" | "pth" | "pkl" | "pickle") {
        bail!("{} is a pickle-based format, which can run code when loaded; Ferry refuses it (use GGUF or safetensors)", src.display());
    }
    if ext != "gguf" {
        bail!("{}: only .gguf files can be imported so far", src.display());
    }
    let blobs = home().join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let tmp = blobs.join(format!(".partial-{}-{}", std::process::id(), name));
    let (hex, done) = copy_hashed(src, &tmp, Some(name))?;
    if let Some(want) = sha256 {
        if !want.eq_ignore_ascii_case(&hex) {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "sha256 mismatch for {}: expected {want}, got {hex}",
                src.display()
            );
        }
    }
    // Parse before registering: a file that is not a valid model never becomes one.
    if let Err(e) = ferry_models::gguf::GgufFile::open(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        bail!("{} is not a usable GGUF file: {e}", src.display());
    }
    let blob = format!("sha256-{hex}");
    std::fs::rename(&tmp, blobs.join(&blob))?;
    fsync_dir(&blobs)?;
    let m = Manifest {
        name: name.to_string(),
        format: "gguf".into(),
        blob,
        size: done,
        source: src.display().to_string(),
    };
    write_atomic(
        &manifest_path(name)?,
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )?;
    Ok(m)
}

/// Copy `src` to `dst` (fsynced), hashing on the way; returns (sha256 hex, bytes). With a
/// `progress` label and a terminal, draws a progress bar on stderr.
fn copy_hashed(src: &Path, dst: &Path, progress: Option<&str>) -> Result<(String, u64)> {
    let mut input =
        std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let total = input.metadata()?.len();
    let mut out = std::fs::File::create(dst)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let bar = progress.filter(|_| std::io::IsTerminal::is_terminal(&std::io::stderr()));
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        done += n as u64;
        if let Some(label) = bar {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let hashes = "#".repeat((pct / 4) as usize);
            eprint!(
                "\rimporting {label} [{hashes:<25}] {pct:>3}% {:.1}/{:.1} MB",
                done as f64 / 1e6,
                total as f64 / 1e6
            );
        }
    }
    if bar.is_some() {
        eprintln!();
    }
    out.sync_all()?;
    Ok((format!("{:x}", h.finalize()), done))
}

/// Copy one file into the blob store; returns (blob id, size).
fn store_blob(src: &Path) -> Result<(String, u64)> {
    let blobs = home().join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let tmp = blobs.join(format!(".partial-{}-blob", std::process::id()));
    let (hex, size) = copy_hashed(src, &tmp, None)?;
    let blob = format!("sha256-{hex}");
    std::fs::rename(&tmp, blobs.join(&blob))?;
    Ok((blob, size))
}

/// Import a Hugging Face-style model directory as model `name` (validated by loading it),
/// checking `sha256` of model.safetensors if given.
pub fn import_dir(src: &Path, name: &str, sha256: Option<&str>) -> Result<Manifest> {
    check_name(name)?;
    if !ferry_models::bert::Bert::is_model_dir(src) {
        bail!("{} has no config.json and model.safetensors", src.display());
    }
    // Refuse what Ferry cannot serve before copying anything.
    ferry_models::bert::Bert::load(src)
        .with_context(|| format!("{} is not a usable embedding model", src.display()))?;
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(src.join(&rel))? {
            let e = e?;
            let fname = e.file_name();
            let r = rel.join(&fname);
            let ft = e.file_type()?;
            if fname.to_string_lossy().starts_with('.') || ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                let ext = r.extension().and_then(|x| x.to_str()).unwrap_or("");
                if matches!(ext, "bin" | "pt" | "pth" | "pkl" | "pickle") {
                    continue; // pickle-based weights are never imported
                }
                files.push(r);
            }
        }
    }
    let trees = home().join("trees");
    std::fs::create_dir_all(&trees)?;
    let tmp = trees.join(format!(".partial-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut size = 0;
    let mut st_blob = String::new();
    for rel in &files {
        let (blob, n) = store_blob(&src.join(rel))?;
        if rel == Path::new("model.safetensors") {
            if let Some(want) = sha256 {
                let got = blob.trim_start_matches("sha256-");
                if !want.eq_ignore_ascii_case(got) {
                    let _ = std::fs::remove_dir_all(&tmp);
                    bail!("sha256 mismatch for model.safetensors: expected {want}, got {got}");
                }
            }
            st_blob = blob.clone();
        }
        size += n;
        let dst = tmp.join(rel);
        std::fs::create_dir_all(dst.parent().context("no parent")?)?;
        if std::fs::hard_link(blob_path(&blob)?, &dst).is_err() {
            std::fs::copy(blob_path(&blob)?, &dst)?;
        }
    }
    fsync_dir(&home().join("blobs"))?;
    let dest = trees.join(name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    fsync_dir(&trees)?;
    let m = Manifest {
        name: name.to_string(),
        format: "hf-dir".into(),
        blob: st_blob,
        size,
        source: src.display().to_string(),
    };
    write_atomic(
        &manifest_path(name)?,
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )?;
    Ok(m)
}

/// Resolve a model argument: a path to a `.gguf` file, a Hugging Face-style model directory
/// (served under the directory's name), or a registered name.
pub fn resolve(arg: &str) -> Result<(String, PathBuf)> {
    let p = Path::new(arg);
    if p.is_dir() && ferry_models::bert::Bert::is_model_dir(p) {
        let name = p
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        return Ok((name, p.to_path_buf()));
    }
    if arg.ends_with(".gguf") && p.is_file() {
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        return Ok((name, p.to_path_buf()));
    }
    let m = read_manifest(arg)?;
    if m.format == "hf-dir" {
        check_name(&m.name)?;
        return Ok((m.name.clone(), home().join("trees").join(&m.name)));
    }
    Ok((m.name.clone(), blob_path(&m.blob)?))
}

pub fn list() -> Result<Vec<Manifest>> {
    let dir = home().join("models");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd {
        let p = e?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("json") {
            if let Ok(s) = std::fs::read_to_string(&p) {
                if let Ok(m) = serde_json::from_str::<Manifest>(&s) {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\0b",
            ".hidden",
            "a..b",
            "x\\y",
            &"a".repeat(200),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["smollm2-135m-instruct", "llama3:8b", "m_1.q4"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
