//! Uploaded files: the `files` table (one row per upload) and their content, stored once per
//! distinct content under `$FERRY_HOME/files/<sha256>`.
//!
//! Content is written through a [`BlobWriter`]: a temporary file in the same directory,
//! hashed as it is written, then fsync, rename to its sha256 and fsync of the directory. A
//! writer dropped before [`BlobWriter::commit`] (an upload cut off, a size limit hit) removes
//! its temporary file, so an interrupted upload leaves neither a row nor a file. The row is
//! inserted only after the content is durable; deleting the last row that names a content
//! removes the content.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result, Store};

/// One uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileRow {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    /// Lowercase hex sha256 of the content (its name under `files/`).
    pub sha256: String,
    pub created_at: u64,
    /// Dataset profile as JSON text (datasets only).
    pub profile: Option<String>,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The content directory: `files/` next to the database.
pub fn files_dir(home: &Path) -> PathBuf {
    home.join("files")
}

/// Fsync a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Streams content into a temporary file, hashing it; see the module docs.
pub struct BlobWriter {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    bytes: u64,
}

impl BlobWriter {
    /// Start writing a new content under `dir` (created if needed).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let tmp = dir.join(format!(
            ".tmp-{}",
            crate::api_keys::hex(&crate::api_keys::random_bytes::<8>()?)
        ));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Invalid("write after commit".into()))?;
        f.write_all(chunk).map_err(|e| io(&self.tmp, e))?;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The temporary file (complete once writing is done; read it to validate the content
    /// before committing).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Make the content durable under its hash; returns (sha256 hex, bytes, path).
    pub fn commit(mut self) -> Result<(String, u64, PathBuf)> {
        let f = self
            .file
            .take()
            .ok_or_else(|| Error::Invalid("committed twice".into()))?;
        f.sync_all().map_err(|e| io(&self.tmp, e))?;
        drop(f);
        let sha = crate::api_keys::hex(&std::mem::take(&mut self.hasher).finalize());
        let dest = self.dir.join(&sha);
        std::fs::rename(&self.tmp, &dest).map_err(|e| io(&dest, e))?;
        sync_dir(&self.dir)?;
        // The temporary name is gone; Drop has nothing left to remove.
        self.tmp = PathBuf::new();
        Ok((sha, self.bytes, dest))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `data` atomically to `path` (temporary file in the same directory, fsync, rename,
/// fsync of the directory).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}",
        crate::api_keys::hex(&crate::api_keys::random_bytes::<6>()?)
    ));
    let r = (|| -> std::io::Result<()> {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path, e));
    }
    sync_dir(dir)
}

/// Remove temporary files left by a process killed mid-write.
pub fn sweep_temporaries(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        filename: r.get(1)?,
        purpose: r.get(2)?,
        bytes: r.get::<_, i64>(3)?.max(0) as u64,
        sha256: r.get(4)?,
        created_at: r.get::<_, i64>(5)?.max(0) as u64,
        profile: r.get(6)?,
    })
}

const COLS: &str = "id, filename, purpose, bytes, sha256, created_at, profile";

impl Store {
    /// Ferry's data directory (the database's directory).
    pub fn home(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The path of a stored content.
    pub fn file_content_path(&self, sha256: &str) -> PathBuf {
        files_dir(&self.home()).join(sha256)
    }

    /// Record an upload whose content was committed by a [`BlobWriter`].
    pub fn insert_file(
        &self,
        filename: &str,
        purpose: &str,
        sha256: &str,
        bytes: u64,
        profile: Option<&str>,
    ) -> Result<FileRow> {
        let f = FileRow {
            id: format!(
                "file-{}",
                crate::api_keys::hex(&crate::api_keys::random_bytes::<12>()?)
            ),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            bytes,
            sha256: sha256.to_string(),
            created_at: crate::now(),
            profile: profile.map(str::to_string),
        };
        let conn = self.conn();
        // Under the connection lock, as `delete_file` removes content under it: a content
        // removed by a concurrent delete of its last row is not recorded.
        let content = self.file_content_path(sha256);
        if !content.exists() {
            return Err(Error::Invalid(format!(
                "the content {sha256} is not stored (deleted concurrently); upload again"
            )));
        }
        conn.execute(
            &format!("INSERT INTO files ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                f.id,
                f.filename,
                f.purpose,
                i64::try_from(f.bytes).unwrap_or(i64::MAX),
                f.sha256,
                f.created_at as i64,
                f.profile
            ],
        )?;
        Ok(f)
    }

    pub fn get_file(&self, id: &str) -> Result<Option<FileRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLS} FROM files WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?)
    }

    /// Files, newest first, optionally of one purpose.
    pub fn list_files(&self, purpose: Option<&str>) -> Result<Vec<FileRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM files WHERE ?1 IS NULL OR purpose = ?1 ORDER BY created_at DESC, rowid DESC"
        ))?;
        let rows = st.query_map([purpose], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delete a file's row; its content goes too when no other row names it. Returns false
    /// when there was no such file.
    pub fn delete_file(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let sha: Option<String> = {
            let tx = conn.transaction()?;
            let sha: Option<String> = tx
                .query_row("SELECT sha256 FROM files WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            let Some(sha) = sha else {
                return Ok(false);
            };
            tx.execute("DELETE FROM files WHERE id = ?1", [id])?;
            let others: i64 = tx.query_row(
                "SELECT COUNT(*) FROM files WHERE sha256 = ?1",
                [&sha],
                |r| r.get(0),
            )?;
            tx.commit()?;
            (others == 0).then_some(sha)
        };
        if let Some(sha) = sha {
            let p = self.file_content_path(&sha);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p, e)),
            }
        }
        drop(conn);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn blobs_are_content_addressed_and_rows_share_them() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let dir = files_dir(&s.home());
        let mut w = BlobWriter::new(&dir).unwrap();
        w.write(b"a,b\n1,2\n").unwrap();
        let (sha, n, path) = w.commit().unwrap();
        assert_eq!(n, 8);
        assert_eq!(std::fs::read(&path).unwrap(), b"a,b\n1,2\n");
        assert_eq!(sha, crate::api_keys::hex(&Sha256::digest(b"a,b\n1,2\n")));
        let a = s
            .insert_file("x.csv", "dataset", &sha, n, Some("[]"))
            .unwrap();
        let b = s.insert_file("y.csv", "assistants", &sha, n, None).unwrap();
        assert_eq!(s.get_file(&a.id).unwrap().unwrap(), a);
        assert_eq!(s.list_files(None).unwrap().len(), 2);
        assert_eq!(s.list_files(Some("dataset")).unwrap(), vec![a.clone()]);
        assert!(s.delete_file(&a.id).unwrap());
        assert!(path.exists(), "still named by the other row");
        assert!(s.delete_file(&b.id).unwrap());
        assert!(!path.exists());
        assert!(!s.delete_file(&b.id).unwrap());
        // Only the committed content is in the directory: no temporaries.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_dropped_writer_leaves_nothing() {
        let d = TempDir::new();
        let dir = d.0.join("files");
        let mut w = BlobWriter::new(&dir).unwrap();
        w.write(&[7u8; 1000]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn write_atomic_replaces_whole_files() {
        let d = TempDir::new();
        let p = d.0.join("jobs/j1/report.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
