//! The model registry: `models` (one row per imported model) and `model_files` (the files that
//! make it up, each a content-addressed blob `sha256-<hex>` at a relative path).
//!
//! Every name, relative path and blob id is validated on the way in *and* on the way out, so a
//! row edited by hand (or by an older, buggier program) cannot make Ferry open a file outside
//! its data directory. Writes that touch blob files on disk take SQLite's write lock first
//! (`BEGIN IMMEDIATE`) and run the file step inside the transaction: registering a model checks
//! its blobs are present, removing one deletes the blobs nothing else references, and the two
//! cannot interleave (a pull cannot register a blob that a concurrent `rm` is deleting).

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::{Error, Result, Store};

/// Model formats the registry knows.
pub const FORMATS: &[&str] = &["gguf", "hf-dir"];

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelFile {
    /// Relative path inside the model (`model.safetensors`, `1_Pooling/config.json`, or the
    /// GGUF's file name).
    pub path: String,
    /// `sha256-<64 hex>`.
    pub blob: String,
    pub size: u64,
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRecord {
    pub name: String,
    /// `gguf` or `hf-dir`.
    pub format: String,
    /// Where it came from: a path, a URL or `hf:org/repo:file@commit`.
    pub source: String,
    /// Total bytes of its files.
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    /// The main blob: the GGUF file, or an `hf-dir`'s `model.safetensors`.
    pub blob: String,
    /// Sorted by path.
    pub files: Vec<ModelFile>,
}

/// Per-model serving options, stored by name (they survive a re-import under the same name
/// and go with `remove_model`). Each overrides the server's flag of the same name for that
/// model; `context_length` caps the model's context (vLLM's `max_model_len`).
pub const OPTION_KEYS: &[&str] = &[
    "context_length",
    "kv_cache_tokens",
    "max_running",
    "max_batch_tokens",
    "max_waiting",
    "threads",
];

/// A model's options: key (one of `OPTION_KEYS`) -> value.
pub type ModelOptions = std::collections::BTreeMap<String, u64>;

/// An option key must be one of `OPTION_KEYS` and its value positive and at most 2^31.
pub fn check_option(key: &str, value: u64) -> std::result::Result<(), String> {
    if !OPTION_KEYS.contains(&key) {
        return Err(format!(
            "unknown model option {key:?}: known are {}",
            OPTION_KEYS.join(", ")
        ));
    }
    if value == 0 || value > 1 << 31 {
        return Err(format!(
            "{key} must be between 1 and 2147483648, got {value}"
        ));
    }
    Ok(())
}

/// Model names: letters, digits, `-`, `_`, `.`, `:`; at most 128 bytes; no `..`, no leading `.`.
pub fn check_model_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.contains("..")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model name {name:?}: use 1-128 letters, digits, '-', '_', '.', ':' (no '..', no '/', not starting with '.')"
        ))
    }
}

/// A relative path inside a model or repository: `/`-separated, no empty, `.` or `..`
/// component, not absolute, no backslash, NUL or other control character, no drive prefix,
/// at most 1024 bytes.
pub fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    let why = if p.is_empty() {
        Some("it is empty")
    } else if p.len() > 1024 {
        Some("it is longer than 1024 bytes")
    } else if p.contains('\0') {
        Some("it contains NUL")
    } else if p.chars().any(|c| c.is_control()) {
        Some("it contains a control character")
    } else if p.contains('\\') {
        Some("it contains a backslash")
    } else if p.starts_with('/') {
        Some("it is absolute")
    } else if p.len() >= 2 && p.as_bytes()[1] == b':' && p.as_bytes()[0].is_ascii_alphabetic() {
        Some("it starts with a drive letter")
    } else if p.split('/').any(|c| c == "..") {
        Some("it has a '..' component")
    } else if p.split('/').any(|c| c.is_empty() || c == ".") {
        Some("it has an empty or '.' component")
    } else {
        None
    };
    match why {
        Some(w) => Err(format!("refusing path {p:?}: {w}")),
        None => Ok(()),
    }
}

/// `sha256-` followed by 64 lowercase hex digits.
pub fn check_blob_id(b: &str) -> std::result::Result<(), String> {
    let hex = b.strip_prefix("sha256-").unwrap_or("");
    if hex.len() == 64
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        Ok(())
    } else {
        Err(format!(
            "bad blob id {b:?} (want sha256-<64 lowercase hex>)"
        ))
    }
}

fn invalid(e: String) -> Error {
    Error::Invalid(e)
}

fn check_record(m: &ModelRecord) -> Result<()> {
    check_model_name(&m.name).map_err(invalid)?;
    if !FORMATS.contains(&m.format.as_str()) {
        return Err(invalid(format!(
            "model {:?}: unknown format {:?}",
            m.name, m.format
        )));
    }
    check_blob_id(&m.blob).map_err(invalid)?;
    if m.files.is_empty() {
        return Err(invalid(format!("model {:?} has no files", m.name)));
    }
    for f in &m.files {
        check_rel_path(&f.path).map_err(|e| invalid(format!("model {:?}: {e}", m.name)))?;
        check_blob_id(&f.blob).map_err(|e| invalid(format!("model {:?}: {e}", m.name)))?;
    }
    if !m.files.iter().any(|f| f.blob == m.blob) {
        return Err(invalid(format!(
            "model {:?}: its main blob {} is not among its files",
            m.name, m.blob
        )));
    }
    Ok(())
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Blobs referenced by no model, among `candidates`.
fn orphans(tx: &rusqlite::Transaction<'_>, candidates: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut st = tx.prepare("SELECT EXISTS (SELECT 1 FROM model_files WHERE blob = ?1)")?;
    for b in candidates {
        let used: bool = st.query_row([b], |r| r.get(0))?;
        if !used && !out.contains(b) {
            out.push(b.clone());
        }
    }
    Ok(out)
}

fn blobs_of(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<Vec<String>> {
    let mut st = tx.prepare("SELECT DISTINCT blob FROM model_files WHERE model = ?1")?;
    let rows = st.query_map([name], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Register (or replace) a model. `check` runs inside the write transaction before it
    /// commits (the caller verifies its blobs are on disk there); blobs the replaced version
    /// used that no model references any more are passed to `drop_blob` after the rows are
    /// written, still inside the transaction. An error from either rolls everything back.
    pub fn put_model(
        &self,
        m: &ModelRecord,
        check: impl FnOnce() -> std::result::Result<(), String>,
        mut drop_blob: impl FnMut(&str) -> std::result::Result<(), String>,
    ) -> Result<()> {
        check_record(m)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check().map_err(invalid)?;
        let old = blobs_of(&tx, &m.name)?;
        tx.execute("DELETE FROM model_files WHERE model = ?1", [&m.name])?;
        tx.execute(
            "INSERT INTO models (name, format, source, size, created, blob) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET format = excluded.format, source = excluded.source,
               size = excluded.size, created = excluded.created, blob = excluded.blob",
            params![m.name, m.format, m.source, int(m.size), int(m.created), m.blob],
        )?;
        {
            let mut st = tx.prepare(
                "INSERT INTO model_files (model, path, blob, size) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for f in &m.files {
                st.execute(params![m.name, f.path, f.blob, int(f.size)])?;
            }
        }
        for b in orphans(&tx, &old)? {
            drop_blob(&b).map_err(invalid)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Remove a model; `drop_blob` is called (inside the transaction) for each of its blobs
    /// that no other model references. Returns the record removed, `None` if there was none.
    pub fn remove_model(
        &self,
        name: &str,
        mut drop_blob: impl FnMut(&str) -> std::result::Result<(), String>,
    ) -> Result<Option<ModelRecord>> {
        check_model_name(name).map_err(invalid)?;
        let Some(rec) = self.get_model(name)? else {
            return Ok(None);
        };
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let blobs = blobs_of(&tx, name)?;
        tx.execute("DELETE FROM model_files WHERE model = ?1", [name])?;
        if tx.execute("DELETE FROM models WHERE name = ?1", [name])? == 0 {
            return Ok(None); // removed meanwhile by another process
        }
        for b in orphans(&tx, &blobs)? {
            drop_blob(&b).map_err(invalid)?;
        }
        tx.commit()?;
        Ok(Some(rec))
    }

    /// One model, validated.
    pub fn get_model(&self, name: &str) -> Result<Option<ModelRecord>> {
        check_model_name(name).map_err(invalid)?;
        let conn = self.conn();
        let head = conn
            .query_row(
                "SELECT name, format, source, size, created, blob FROM models WHERE name = ?1",
                [name],
                |r| {
                    Ok(ModelRecord {
                        name: r.get(0)?,
                        format: r.get(1)?,
                        source: r.get(2)?,
                        size: r.get::<_, i64>(3)?.max(0) as u64,
                        created: r.get::<_, i64>(4)?.max(0) as u64,
                        blob: r.get(5)?,
                        files: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut m) = head else {
            return Ok(None);
        };
        let mut st = conn
            .prepare("SELECT path, blob, size FROM model_files WHERE model = ?1 ORDER BY path")?;
        m.files = st
            .query_map([name], |r| {
                Ok(ModelFile {
                    path: r.get(0)?,
                    blob: r.get(1)?,
                    size: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        check_record(&m)?;
        Ok(Some(m))
    }

    /// Names of all models, sorted (not validated: pass each to `get_model`).
    pub fn model_names(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT name FROM models ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every model, sorted by name. A row that fails validation is an error naming it.
    pub fn list_models(&self) -> Result<Vec<ModelRecord>> {
        let names = self.model_names()?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(m) = self.get_model(&n)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Of `present` (blob ids found on disk), those no model references, each passed to
    /// `drop_blob` inside the write transaction (so no model can be registered against a blob
    /// while it goes). With `drop_blob` doing nothing this is a dry run.
    pub fn prune_blobs(
        &self,
        present: &[String],
        mut drop_blob: impl FnMut(&str) -> std::result::Result<(), String>,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let gone = orphans(&tx, present)?;
        for b in &gone {
            drop_blob(b).map_err(invalid)?;
        }
        tx.commit()?;
        Ok(gone)
    }

    /// A model's serving options (`OPTION_KEYS` -> value), empty when none are set.
    pub fn model_options(&self, name: &str) -> Result<ModelOptions> {
        check_model_name(name).map_err(invalid)?;
        let conn = self.conn();
        let mut st = conn.prepare("SELECT key, value FROM model_options WHERE model = ?1")?;
        let rows = st.query_map([name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = ModelOptions::new();
        for row in rows {
            let (k, v) = row?;
            // A row edited by hand is an error naming it, never a silently ignored setting.
            check_option(&k, v.max(0) as u64)
                .map_err(|e| invalid(format!("model {name:?}: stored option {e}")))?;
            out.insert(k, v as u64);
        }
        Ok(out)
    }

    /// Set and unset serving options of a registered model in one transaction; returns the
    /// options now stored. Unknown keys and zero values are refused; unknown models too.
    pub fn update_model_options(
        &self,
        name: &str,
        set: &ModelOptions,
        unset: &[String],
    ) -> Result<ModelOptions> {
        check_model_name(name).map_err(invalid)?;
        for (k, v) in set {
            check_option(k, *v).map_err(invalid)?;
        }
        for k in unset {
            check_option(k, 1).map_err(invalid)?;
        }
        {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let known: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM models WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if !known {
                return Err(invalid(format!("no model named {name:?}")));
            }
            for k in unset {
                tx.execute(
                    "DELETE FROM model_options WHERE model = ?1 AND key = ?2",
                    params![name, k],
                )?;
            }
            for (k, v) in set {
                tx.execute(
                    "INSERT INTO model_options (model, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (model, key) DO UPDATE SET value = excluded.value",
                    params![name, k, int(*v)],
                )?;
            }
            tx.commit()?;
        }
        self.model_options(name)
    }

    /// Whether any model references `blob`.
    pub fn blob_in_use(&self, blob: &str) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM model_files WHERE blob = ?1)",
            [blob],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn blob(c: char) -> String {
        format!("sha256-{}", c.to_string().repeat(64))
    }

    fn rec(name: &str, files: &[(&str, char)]) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            format: if files.len() == 1 { "gguf" } else { "hf-dir" }.into(),
            source: "test".into(),
            size: 10 * files.len() as u64,
            created: 1,
            blob: blob(files[0].1),
            files: files
                .iter()
                .map(|(p, c)| ModelFile {
                    path: p.to_string(),
                    blob: blob(*c),
                    size: 10,
                })
                .collect(),
        }
    }

    fn ok() -> std::result::Result<(), String> {
        Ok(())
    }

    #[test]
    fn options_survive_a_reimport_go_with_the_model_and_refuse_unknown_keys() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let set = |pairs: &[(&str, u64)]| -> ModelOptions {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // Unknown model, unknown key, zero: refused, nothing stored.
        assert!(s
            .update_model_options("m", &set(&[("threads", 1)]), &[])
            .is_err());
        s.put_model(&rec("m", &[("m.gguf", 'a')]), ok, |_| panic!())
            .unwrap();
        for bad in [set(&[("num_ctx", 5)]), set(&[("threads", 0)])] {
            assert!(s.update_model_options("m", &bad, &[]).is_err());
        }
        assert!(s.model_options("m").unwrap().is_empty());
        let o = s
            .update_model_options("m", &set(&[("context_length", 512), ("threads", 1)]), &[])
            .unwrap();
        assert_eq!(o, set(&[("context_length", 512), ("threads", 1)]));
        let o = s
            .update_model_options("m", &set(&[("context_length", 256)]), &["threads".into()])
            .unwrap();
        assert_eq!(o, set(&[("context_length", 256)]));
        // A re-import under the same name keeps them; removal drops them.
        s.put_model(&rec("m", &[("m.gguf", 'b')]), ok, |_| Ok(()))
            .unwrap();
        assert_eq!(s.model_options("m").unwrap(), o);
        s.remove_model("m", |_| Ok(())).unwrap();
        s.put_model(&rec("m", &[("m.gguf", 'b')]), ok, |_| Ok(()))
            .unwrap();
        assert!(s.model_options("m").unwrap().is_empty());
    }

    #[test]
    fn put_get_list_replace_and_remove_collect_only_unshared_blobs() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        s.put_model(&rec("a", &[("a.gguf", 'a')]), ok, |_| panic!())
            .unwrap();
        s.put_model(
            &rec("b", &[("model.safetensors", 'a'), ("config.json", 'b')]),
            ok,
            |_| panic!(),
        )
        .unwrap();
        let b = s.get_model("b").unwrap().unwrap();
        assert_eq!(b.files[0].path, "config.json");
        assert_eq!(b.files.len(), 2);
        assert_eq!(s.list_models().unwrap().len(), 2);
        // Replacing `b` with other content drops its unshared blob `b`, keeps `a`.
        let mut dropped = Vec::new();
        s.put_model(
            &rec("b", &[("model.safetensors", 'a'), ("config.json", 'c')]),
            ok,
            |x| {
                dropped.push(x.to_string());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(dropped, vec![blob('b')]);
        // Removing `a` keeps blob `a` (shared with `b`).
        let mut dropped = Vec::new();
        let r = s
            .remove_model("a", |x| {
                dropped.push(x.to_string());
                Ok(())
            })
            .unwrap();
        assert_eq!(r.unwrap().name, "a");
        assert!(dropped.is_empty());
        assert!(s.blob_in_use(&blob('a')).unwrap());
        let mut dropped = Vec::new();
        s.remove_model("b", |x| {
            dropped.push(x.to_string());
            Ok(())
        })
        .unwrap();
        dropped.sort();
        assert_eq!(dropped, vec![blob('a'), blob('c')]);
        assert!(s.remove_model("b", |_| Ok(())).unwrap().is_none());
        assert!(s.list_models().unwrap().is_empty());
    }

    #[test]
    fn a_failing_check_or_blob_deletion_rolls_back() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let e = s
            .put_model(
                &rec("a", &[("a.gguf", 'a')]),
                || Err("blob missing".into()),
                |_| Ok(()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("blob missing"));
        assert!(s.get_model("a").unwrap().is_none());
        s.put_model(&rec("a", &[("a.gguf", 'a')]), ok, |_| Ok(()))
            .unwrap();
        assert!(s.remove_model("a", |_| Err("busy".into())).is_err());
        assert!(s.get_model("a").unwrap().is_some());
    }

    #[test]
    fn bad_records_are_refused_on_write_and_on_read() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        for bad in [
            rec("../x", &[("a.gguf", 'a')]),
            rec("a", &[("../../etc/passwd", 'a')]),
            rec("a", &[("/etc/passwd", 'a')]),
            rec("a", &[("a\\b", 'a')]),
            rec("a", &[("a\0b", 'a')]),
        ] {
            assert!(matches!(
                s.put_model(&bad, ok, |_| Ok(())),
                Err(Error::Invalid(_))
            ));
        }
        let mut bad_blob = rec("a", &[("a.gguf", 'a')]);
        bad_blob.files[0].blob = "sha256-../../x".into();
        bad_blob.blob = bad_blob.files[0].blob.clone();
        assert!(s.put_model(&bad_blob, ok, |_| Ok(())).is_err());
        // A row written behind the registry's back is refused when read.
        s.put_model(&rec("a", &[("a.gguf", 'a')]), ok, |_| Ok(()))
            .unwrap();
        s.conn()
            .execute(
                "UPDATE model_files SET path = '../../etc/passwd' WHERE model = 'a'",
                [],
            )
            .unwrap();
        let e = s.get_model("a").unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
        assert!(s.list_models().is_err());
    }

    #[test]
    fn path_corpus() {
        for bad in [
            "",
            "..",
            "../x",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "a\\..\\b",
            "C:/x",
            "c:x",
            "a\0b",
            "a\nb",
            "a/",
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
        for good in [
            "model.safetensors",
            "1_Pooling/config.json",
            "x.Q4_K_M.gguf",
            ".gitattributes",
        ] {
            assert!(check_rel_path(good).is_ok(), "{good:?}");
        }
    }
}
