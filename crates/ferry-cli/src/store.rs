//! Ferry's data directory: content-addressed blobs, and the model registry in the metadata
//! database (`ferry-store`'s `models` and `model_files` tables).
//!
//! Layout under `$FERRY_HOME` (default `$XDG_DATA_HOME/ferry` or `~/.local/share/ferry`):
//! `ferry.db` (the registry), `blobs/sha256-<hex>` (one file per distinct content), and
//! `trees/<name>/` for Hugging Face-style directories (the directory's layout as hard links to
//! its blobs, copies where links fail). Blobs are written to a temporary file, fsynced, checked,
//! renamed into place and the directory fsynced; a model becomes visible only when its rows are
//! committed, after all its blobs are in place, so a killed import leaves no half-visible model.
//!
//! Older versions kept one JSON manifest per model in `models/<name>.json`. The first open of
//! the database imports them into SQLite and renames each to `<name>.json.imported` (kept, so
//! nothing is lost, but never read again).
//!
//! Every path that leaves the registry is checked: names and relative paths by
//! `ferry_store::models` (on write and on read), and the final path is canonicalized and must
//! lie inside the data directory (`confine`), so a symlink planted in `trees/` or `blobs/`
//! cannot point Ferry at a file outside it.
//!
//! Writers (`ferry pull`, imports) hold a shared lock on `store.lock` for their whole run;
//! `ferry prune` takes it exclusively, so it never deletes a blob a pull has installed but not
//! yet registered, nor a partial download being written.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::{ModelFile, ModelRecord, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress::Progress;

/// A model's summary, as `list()` and `read_manifest()` return it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub format: String,
    pub blob: String,
    pub size: u64,
    pub source: String,
}

impl From<&ModelRecord> for Manifest {
    fn from(r: &ModelRecord) -> Self {
        Self {
            name: r.name.clone(),
            format: r.format.clone(),
            blob: r.blob.clone(),
            size: r.size,
            source: r.source.clone(),
        }
    }
}

/// Extensions of pickle-based formats, which can run code when loaded: never imported.
pub const PICKLE_EXTS: &[&str] = &["bin", "pt", "pth", "pkl", "pickle", "ckpt"];

pub fn is_pickle(path: &str) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    PICKLE_EXTS.iter().any(|p| ext.eq_ignore_ascii_case(p))
}

pub fn pickle_refusal(what: &str) -> anyhow::Error {
    anyhow!("{what} is a pickle-based format, which can run code when loaded; Ferry refuses it (use GGUF or safetensors)")
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
    ferry_store::models::check_model_name(name).map_err(|e| anyhow!(e))
}

/// A relative path inside a model or a repository (see `ferry_store::models::check_rel_path`).
pub fn check_rel_path(p: &str) -> Result<()> {
    ferry_store::models::check_rel_path(p).map_err(|e| anyhow!(e))
}

pub fn blob_path(blob: &str) -> Result<PathBuf> {
    ferry_store::models::check_blob_id(blob).map_err(|e| anyhow!(e))?;
    Ok(home().join("blobs").join(blob))
}

/// `path` with symlinks resolved, refused unless it lies inside the data directory.
pub fn confine(path: &Path) -> Result<PathBuf> {
    let h = home();
    let root = h
        .canonicalize()
        .with_context(|| format!("data directory {}", h.display()))?;
    let real = path
        .canonicalize()
        .with_context(|| format!("{} is missing", path.display()))?;
    if !real.starts_with(&root) {
        bail!(
            "refusing {}: it resolves to {}, outside the data directory {}",
            path.display(),
            real.display(),
            root.display()
        );
    }
    Ok(real)
}

/// A directory under the data directory (`blobs`, `trees`), created if missing, refused if a
/// symlink takes it elsewhere.
pub fn subdir(name: &str) -> Result<PathBuf> {
    let d = home().join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    confine(&d)?;
    Ok(d)
}

pub fn fsync_dir(d: &Path) -> Result<()> {
    std::fs::File::open(d)?.sync_all()?;
    Ok(())
}

/// Open the metadata database, importing JSON manifests left by older versions.
pub fn db() -> Result<Store> {
    let h = home();
    let store = Store::open_in(&h)
        .with_context(|| format!("opening the metadata database in {}", h.display()))?;
    import_legacy(&store)?;
    Ok(store)
}

fn import_legacy(store: &Store) -> Result<()> {
    let dir = home().join("models");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let r = (|| -> Result<()> {
            let m: Manifest = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
            if store.get_model(&m.name)?.is_none() {
                let files = match m.format.as_str() {
                    "gguf" => {
                        let stem = Path::new(&m.source)
                            .file_name()
                            .and_then(|s| s.to_str())
                            .filter(|s| s.ends_with(".gguf") && check_rel_path(s).is_ok())
                            .unwrap_or("model.gguf");
                        vec![ModelFile {
                            path: stem.to_string(),
                            blob: m.blob.clone(),
                            size: m.size,
                        }]
                    }
                    "hf-dir" => {
                        check_name(&m.name)?;
                        hash_tree(&home().join("trees").join(&m.name))?
                    }
                    f => bail!("unknown format {f:?}"),
                };
                register(&m.name, &m.format, &m.source, &m.blob, files, store)?;
            }
            std::fs::rename(&p, p.with_extension("json.imported"))?;
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!(
                "warning: could not import the old manifest {}: {e:#}",
                p.display()
            );
        }
    }
    Ok(())
}

/// The files of an existing tree, hashed (for importing old manifests).
fn hash_tree(root: &Path) -> Result<Vec<ModelFile>> {
    let mut out = Vec::new();
    for rel in walk(root)? {
        let rel_s = rel.to_str().context("non-UTF-8 path")?.to_string();
        check_rel_path(&rel_s)?;
        let mut f = std::fs::File::open(root.join(&rel))?;
        let mut h = Sha256::new();
        let size = std::io::copy(&mut f, &mut HashWriter(&mut h))?;
        let blob = format!("sha256-{:x}", h.finalize());
        // A blob missing from the store is restored from the tree's copy.
        let bp = blob_path(&blob)?;
        if !bp.exists() {
            subdir("blobs")?;
            if std::fs::hard_link(root.join(&rel), &bp).is_err() {
                let tmp = bp.with_file_name(format!(".partial-{}-legacy", std::process::id()));
                std::fs::copy(root.join(&rel), &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &bp)?;
            }
        }
        out.push(ModelFile {
            path: rel_s,
            blob,
            size,
        });
    }
    Ok(out)
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Regular files under `root`, as relative paths; hidden entries, symlinks and pickle-based
/// files are skipped.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let fname = e.file_name();
            let r = rel.join(&fname);
            let ft = e.file_type()?;
            if fname.to_string_lossy().starts_with('.') || ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() && !is_pickle(&r.to_string_lossy()) {
                files.push(r);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Register a model whose blobs are in place. Inside the database's write transaction it
/// checks every blob is present, and deletes blobs that a replaced version of the model
/// used and nothing references any more.
pub fn register(
    name: &str,
    format: &str,
    source: &str,
    main_blob: &str,
    files: Vec<ModelFile>,
    store: &Store,
) -> Result<Manifest> {
    check_name(name)?;
    let rec = ModelRecord {
        name: name.to_string(),
        format: format.to_string(),
        source: source.to_string(),
        size: files.iter().map(|f| f.size).sum(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        blob: main_blob.to_string(),
        files,
    };
    let check = || -> std::result::Result<(), String> {
        for f in &rec.files {
            let p = blob_path(&f.blob).map_err(|e| e.to_string())?;
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => {
                    return Err(format!(
                        "blob {} has {} bytes, expected {}",
                        f.blob,
                        m.len(),
                        f.size
                    ))
                }
                Err(e) => return Err(format!("blob {} is missing: {e}", f.blob)),
            }
        }
        Ok(())
    };
    store
        .put_model(&rec, check, drop_blob)
        .with_context(|| format!("registering model {name}"))?;
    Ok(Manifest::from(&rec))
}

fn drop_blob(blob: &str) -> std::result::Result<(), String> {
    let p = blob_path(blob).map_err(|e| e.to_string())?;
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", p.display())),
    }
}

/// Remove a model: its rows, the blobs no other model references, and its tree. Returns the
/// record and the blobs deleted.
pub fn remove(name: &str) -> Result<(ModelRecord, Vec<String>)> {
    check_name(name)?;
    let store = db()?;
    let mut freed = Vec::new();
    let rec = store
        .remove_model(name, |b| {
            drop_blob(b)?;
            freed.push(b.to_string());
            Ok(())
        })
        .with_context(|| format!("removing model {name}"))?
        .ok_or_else(|| anyhow!("model {name:?} is not in {}", home().display()))?;
    let tree = home().join("trees").join(name);
    if tree.symlink_metadata().is_ok() {
        if tree.symlink_metadata()?.file_type().is_symlink() {
            std::fs::remove_file(&tree)?;
        } else {
            std::fs::remove_dir_all(&tree)?;
        }
    }
    fsync_dir(&home().join("blobs")).ok();
    Ok((rec, freed))
}

/// A model's full record (files included).
pub fn record(name: &str) -> Result<ModelRecord> {
    check_name(name)?;
    db()?
        .get_model(name)?
        .ok_or_else(|| anyhow!("model {name:?} is not in {}", home().display()))
}

/// A registered model's summary (kept for callers of the JSON-manifest era).
#[allow(dead_code)]
pub fn read_manifest(name: &str) -> Result<Manifest> {
    Ok(Manifest::from(&record(name)?))
}

/// Where a registered model's files are: the GGUF blob, or its tree directory; symlink
/// escapes refused.
pub fn model_path(rec: &ModelRecord) -> Result<PathBuf> {
    if rec.format == "hf-dir" {
        let tree = home().join("trees").join(&rec.name);
        confine(&tree)?;
        for f in &rec.files {
            confine(&tree.join(&f.path))?;
        }
        return Ok(tree);
    }
    let p = blob_path(&rec.blob)?;
    confine(&p)?;
    Ok(p)
}

/// Copy `src` to `dst` (fsynced), hashing on the way; returns (sha256 hex, bytes). With a
/// `progress` label, shows progress on stderr.
fn copy_hashed(src: &Path, dst: &Path, progress: Option<&str>) -> Result<(String, u64)> {
    let mut input =
        std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let total = input.metadata()?.len();
    let mut out = std::fs::File::create(dst)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut bar = progress.map(|l| Progress::new(&format!("importing {l}"), Some(total), 0));
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        done += n as u64;
        if let Some(b) = bar.as_mut() {
            b.set(done);
        }
    }
    if let Some(b) = bar.as_mut() {
        b.finish();
    }
    out.sync_all()?;
    Ok((format!("{:x}", h.finalize()), done))
}

/// Check a `--sha256` argument: 64 hex digits; returns it lowercased.
pub fn check_sha_arg(s: &str) -> Result<String> {
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--sha256 must be 64 hexadecimal digits, got {s:?}");
    }
    Ok(s.to_ascii_lowercase())
}

/// Import a local file as model `name`, checking `sha256` if given.
pub fn import_file(src: &Path, name: &str, sha256: Option<&str>) -> Result<Manifest> {
    check_name(name)?;
    let want = sha256.map(check_sha_arg).transpose()?;
    let fname = src
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string();
    if is_pickle(&fname) {
        return Err(pickle_refusal(&src.display().to_string()));
    }
    if !fname.ends_with(".gguf") {
        bail!(
            "{}: only .gguf files (or Hugging Face-style directories with safetensors) can be imported",
            src.display()
        );
    }
    let blobs = subdir("blobs")?;
    let tmp = blobs.join(format!(".partial-{}-{}", std::process::id(), name));
    let (hex, done) = copy_hashed(src, &tmp, Some(name))?;
    if let Some(want) = want {
        if want != hex {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "sha256 mismatch for {}: expected {want}, got {hex}",
                src.display()
            );
        }
    }
    let blob = format!("sha256-{hex}");
    install_gguf_blob(&tmp, &blob)?;
    let path = if check_rel_path(&fname).is_ok() {
        fname
    } else {
        "model.gguf".into()
    };
    register(
        name,
        "gguf",
        &src.display().to_string(),
        &blob,
        vec![ModelFile {
            path,
            blob: blob.clone(),
            size: done,
        }],
        &db()?,
    )
}

/// Check that the fsynced temporary file `tmp` parses as GGUF, then rename it to its blob.
/// A file that is not a valid model never becomes one.
pub fn install_gguf_blob(tmp: &Path, blob: &str) -> Result<()> {
    if let Err(e) = ferry_models::gguf::GgufFile::open(tmp) {
        let _ = std::fs::remove_file(tmp);
        bail!("not a usable GGUF file: {e}");
    }
    install_blob(tmp, blob)
}

/// Rename the fsynced temporary file `tmp` to blob `blob` and fsync the directory.
pub fn install_blob(tmp: &Path, blob: &str) -> Result<()> {
    let dst = blob_path(blob)?;
    std::fs::rename(tmp, &dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    fsync_dir(dst.parent().context("no parent")?)
}

/// Copy one file into the blob store, checking its sha256 against `want` before it becomes a
/// blob; returns (blob id, size).
fn store_blob(src: &Path, want: Option<&str>) -> Result<(String, u64)> {
    let blobs = subdir("blobs")?;
    let tmp = blobs.join(format!(".partial-{}-blob", std::process::id()));
    let (hex, size) = copy_hashed(src, &tmp, None)?;
    if let Some(want) = want {
        if want != hex {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "sha256 mismatch for {}: expected {want}, got {hex}",
                src.display()
            );
        }
    }
    let blob = format!("sha256-{hex}");
    std::fs::rename(&tmp, blobs.join(&blob))?;
    Ok((blob, size))
}

/// Lay out `files` (relative path, blob) as `trees/<name>/` from hard links to the blobs
/// (copies where links fail): built in a temporary directory, checked by `validate`, then
/// swapped into place.
pub fn build_tree(
    name: &str,
    files: &[ModelFile],
    validate: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    check_name(name)?;
    let trees = subdir("trees")?;
    let tmp = trees.join(format!(".partial-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let r = (|| -> Result<()> {
        for f in files {
            check_rel_path(&f.path)?;
            let dst = tmp.join(&f.path);
            std::fs::create_dir_all(dst.parent().context("no parent")?)?;
            let b = blob_path(&f.blob)?;
            if std::fs::hard_link(&b, &dst).is_err() {
                std::fs::copy(&b, &dst)?;
            }
        }
        validate(&tmp)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = trees.join(name);
    let old = trees.join(format!(".old-{}-{name}", std::process::id()));
    if dest.symlink_metadata().is_ok() {
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(&tmp, &dest)?;
    fsync_dir(&trees)?;
    if old.symlink_metadata().is_ok() {
        if old.symlink_metadata()?.is_dir() {
            let _ = std::fs::remove_dir_all(&old);
        } else {
            let _ = std::fs::remove_file(&old);
        }
    }
    Ok(dest)
}

/// Import a Hugging Face-style model directory as model `name` (validated by loading it),
/// checking `sha256` of model.safetensors if given.
pub fn import_dir(src: &Path, name: &str, sha256: Option<&str>) -> Result<Manifest> {
    check_name(name)?;
    let want = sha256.map(check_sha_arg).transpose()?;
    if !ferry_models::bert::Bert::is_model_dir(src) {
        bail!("{} has no config.json and model.safetensors", src.display());
    }
    // Refuse what Ferry cannot serve before copying anything.
    ferry_models::bert::Bert::load(src)
        .with_context(|| format!("{} is not a usable embedding model", src.display()))?;
    let mut files = Vec::new();
    let mut st_blob = String::new();
    let mut rels = walk(src)?;
    // The weights first: a --sha256 mismatch is found before anything is stored.
    rels.sort_by_key(|r| r != Path::new("model.safetensors"));
    for rel in rels {
        let rel_s = rel
            .to_str()
            .with_context(|| format!("non-UTF-8 file name {}", rel.display()))?
            .to_string();
        check_rel_path(&rel_s)?;
        let is_st = rel_s == "model.safetensors";
        let (blob, size) = store_blob(&src.join(&rel), want.as_deref().filter(|_| is_st))?;
        if is_st {
            st_blob = blob.clone();
        }
        files.push(ModelFile {
            path: rel_s,
            blob,
            size,
        });
    }
    fsync_dir(&home().join("blobs"))?;
    build_tree(name, &files, |_| Ok(()))?;
    register(
        name,
        "hf-dir",
        &src.display().to_string(),
        &st_blob,
        files,
        &db()?,
    )
}

/// A registered model's serving options (`ferry config`); empty when none are set.
pub fn options(name: &str) -> Result<ferry_store::ModelOptions> {
    Ok(db()?.model_options(name)?)
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
    let rec = record(arg)?;
    Ok((rec.name.clone(), model_path(&rec)?))
}

/// Every registered model, by name. A record that fails validation (edited by hand, say) is
/// left out with a warning on stderr, so one bad row does not hide the others.
pub fn list() -> Result<Vec<Manifest>> {
    if !home().exists() {
        return Ok(Vec::new());
    }
    let store = db()?;
    let mut out = Vec::new();
    for n in store.model_names()? {
        match store.get_model(&n) {
            Ok(Some(r)) => out.push(Manifest::from(&r)),
            Ok(None) => {}
            Err(e) => eprintln!("warning: skipping model {n:?}: {e}"),
        }
    }
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

    #[test]
    fn pickles_are_recognised() {
        for p in ["pytorch_model.bin", "x.PT", "a/b.pth", "m.pkl", "m.ckpt"] {
            assert!(is_pickle(p), "{p}");
        }
        for p in ["model.safetensors", "x.gguf", "bin", "config.json"] {
            assert!(!is_pickle(p), "{p}");
        }
    }
}

/// A lock on the blob store (`store.lock`), released when dropped or when the process dies.
pub struct StoreLock {
    _file: std::fs::File,
}

/// An advisory lock on an open file, shared or `exclusive`, waiting for it or not (`wait`);
/// released when the file closes, also when the process dies, so a killed pull never leaves a
/// stale lock. Always granted where there is no `flock`.
pub fn flock(f: &std::fs::File, exclusive: bool, wait: bool) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let mut op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        // SAFETY: flock on a valid, open descriptor has no memory effects.
        unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = (f, exclusive, wait);
        true
    }
}

fn open_lock() -> Result<std::fs::File> {
    std::fs::create_dir_all(home()).with_context(|| format!("creating {}", home().display()))?;
    let p = home().join("store.lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))
}

/// Shared lock for a pull or import: many run at once; waits while a prune runs.
pub fn writer_lock() -> Result<StoreLock> {
    let f = open_lock()?;
    if !flock(&f, false, true) {
        bail!("cannot lock {}", home().join("store.lock").display());
    }
    Ok(StoreLock { _file: f })
}

/// What `prune` removed (or, in a dry run, would remove).
#[derive(Debug, Default)]
pub struct Pruned {
    /// Blobs no model references: (id, bytes).
    pub blobs: Vec<(String, u64)>,
    /// Partial downloads and temporary trees: (path, bytes).
    pub partials: Vec<(PathBuf, u64)>,
    /// Partial downloads kept (resumable), when `partials` was not asked for.
    pub kept_partials: Vec<(PathBuf, u64)>,
    /// Directories under `trees/` that no model owns.
    pub trees: Vec<PathBuf>,
}

fn size_of(p: &Path) -> u64 {
    let Ok(m) = p.symlink_metadata() else {
        return 0;
    };
    if m.is_dir() {
        walk(p)
            .map(|fs| fs.iter().map(|f| size_of(f)).sum())
            .unwrap_or(0)
    } else {
        m.len()
    }
}

/// Remove a path without following a symlink.
fn remove_path(p: &Path) -> Result<()> {
    let m = p.symlink_metadata()?;
    if m.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
    .with_context(|| format!("removing {}", p.display()))
}

/// Delete what no model uses: blobs no model references, `trees/` entries of models that no
/// longer exist, temporary trees left by killed imports, and (with `partials`) partial
/// downloads, which are otherwise kept so that `ferry pull` can resume them. Refused while a
/// pull or import runs. With `dry_run` nothing is deleted.
pub fn prune(partials: bool, dry_run: bool) -> Result<Pruned> {
    let f = open_lock()?;
    if !flock(&f, true, false) {
        bail!(
            "a pull or import is running in {}; prune when it is done",
            home().display()
        );
    }
    let _lock = StoreLock { _file: f };
    let mut out = Pruned::default();
    let blobs = subdir("blobs")?;
    let mut present = Vec::new();
    for e in std::fs::read_dir(&blobs)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".partial-") {
            let entry = (path.clone(), size_of(&path));
            if partials {
                out.partials.push(entry);
            } else if !name.ends_with(".validator") {
                // (A partial's validator file goes with it; it is not a download of its own.)
                out.kept_partials.push(entry);
            }
        } else if ferry_store::models::check_blob_id(&name).is_ok() && e.file_type()?.is_file() {
            present.push(name);
        }
    }
    present.sort();
    let store = db()?;
    store.prune_blobs(&present, |b| {
        let size = blob_path(b).map(|p| size_of(&p)).unwrap_or(0);
        if !dry_run {
            drop_blob(b)?;
        }
        out.blobs.push((b.to_string(), size));
        Ok(())
    })?;
    let trees = home().join("trees");
    if trees.is_dir() {
        let names = store.model_names()?;
        for e in std::fs::read_dir(&trees)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".partial-") || name.starts_with(".old-") {
                out.partials.push((e.path(), size_of(&e.path())));
            } else if !names.contains(&name) {
                out.trees.push(e.path());
            }
        }
    }
    if !dry_run {
        for (p, _) in &out.partials {
            remove_path(p)?;
        }
        for p in &out.trees {
            remove_path(p)?;
        }
        fsync_dir(&blobs)?;
    }
    Ok(out)
}
