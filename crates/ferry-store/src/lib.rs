//! Ferry's metadata database: one SQLite file under the data directory
//! (`$FERRY_HOME/ferry.db`), in WAL mode so the server and the CLI can use it at once.
//!
//! `Store::open` opens (creating the file and its directory) and applies pending migrations;
//! each migration runs in its own transaction together with its row in `schema_migrations`,
//! so a crash leaves the schema at a known version. One module per table adds its methods to
//! `Store`: `api_keys` (keys, stored as sha256 hashes), `key_usage` (per-minute counters),
//! `models` (the model registry: models and their files), `files` (uploads; content under
//! `files/<sha256>`) and `jobs` (training jobs, their events and the models they register).
//! A later table is a new module plus a new entry in `migrations::MIGRATIONS`.

pub mod api_keys;
pub mod files;
pub mod jobs;
pub mod key_usage;
mod migrations;
pub mod models;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use api_keys::{generate_secret, hash_secret, ApiKey, CreatedKey, KeySet, NewKey, Scope};
pub use files::{BlobWriter, FileRow};
pub use jobs::{JobEvent, JobRow, Outcome, TrainedModel};
pub use key_usage::{UsageDelta, UsageRow};
pub use migrations::LATEST_VERSION;
pub use models::{ModelFile, ModelOptions, ModelRecord};

/// The database file's name under Ferry's data directory.
pub const DB_FILE: &str = "ferry.db";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database is at schema version {found}, newer than this program's {known}; upgrade ferry")]
    TooNew { found: u32, known: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("reading the system random source: {0}")]
    Random(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The metadata database. Cheap to share behind an `Arc`; calls are serialized on one
/// connection (they are short), and other processes coordinate through SQLite's locks.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (or create) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        // journal_mode answers with a row, so it is read rather than executed.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Invalid(format!(
                "{}: cannot use WAL journal mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )?;
        let store = Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Open the database file `ferry.db` in Ferry's data directory `home`.
    pub fn open_in(home: &Path) -> Result<Self> {
        Self::open(&home.join(DB_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Apply every migration newer than the database's version; returns the version after.
    /// Idempotent, and safe against another process migrating at the same time.
    pub fn migrate(&self) -> Result<u32> {
        migrations::migrate(&mut self.conn())
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<u32> {
        migrations::version(&self.conn())
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "ferry-store-test-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                super::now()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::TempDir;
    use super::*;

    #[test]
    fn open_creates_a_wal_database_at_the_latest_version() {
        let d = TempDir::new();
        let path = d.0.join("sub/ferry.db");
        let s = Store::open(&path).unwrap();
        assert!(path.exists());
        assert_eq!(s.schema_version().unwrap(), LATEST_VERSION);
        let mode: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // Migrating again changes nothing; reopening keeps the version.
        assert_eq!(s.migrate().unwrap(), LATEST_VERSION);
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), LATEST_VERSION);
        let n: u32 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, migrations::count());
    }

    #[test]
    fn a_newer_database_is_refused() {
        let d = TempDir::new();
        let path = d.0.join("ferry.db");
        let s = Store::open(&path).unwrap();
        s.conn()
            .execute(
                "INSERT INTO schema_migrations (version, name, applied) VALUES (?1, 'future', 0)",
                [LATEST_VERSION + 1],
            )
            .unwrap();
        drop(s);
        match Store::open(&path) {
            Err(Error::TooNew { found, known }) => {
                assert_eq!(found, LATEST_VERSION + 1);
                assert_eq!(known, LATEST_VERSION);
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
    }

    #[test]
    fn two_handles_on_one_file_see_each_others_writes() {
        let d = TempDir::new();
        let a = Store::open_in(&d.0).unwrap();
        let b = Store::open_in(&d.0).unwrap();
        let k = a
            .create_key(&NewKey {
                name: "shared".into(),
                scope: Scope::Inference,
                rpm: None,
                tpm: None,
            })
            .unwrap();
        assert_eq!(b.list_keys().unwrap().len(), 1);
        assert!(b.revoke_key(&k.key.id).unwrap());
        assert!(a.get_key(&k.key.id).unwrap().unwrap().revoked.is_some());
    }
}
