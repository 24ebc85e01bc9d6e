//! Versioned schema migrations. Append to `MIGRATIONS`; never edit an applied one.

use rusqlite::{Connection, TransactionBehavior};

use crate::{Error, Result};

struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "api_keys and key_usage",
        sql: "
        CREATE TABLE api_keys (
            id      TEXT PRIMARY KEY,
            name    TEXT NOT NULL,
            hash    TEXT NOT NULL UNIQUE,          -- sha256 of the key, lowercase hex
            scope   TEXT NOT NULL CHECK (scope IN ('inference', 'admin')),
            rpm     INTEGER CHECK (rpm IS NULL OR rpm > 0),  -- requests per minute; NULL: no limit
            tpm     INTEGER CHECK (tpm IS NULL OR tpm > 0),  -- tokens per minute; NULL: no limit
            created INTEGER NOT NULL,              -- unix seconds
            revoked INTEGER                        -- unix seconds; NULL while active
        );
        CREATE TABLE key_usage (
            key_id            TEXT NOT NULL REFERENCES api_keys(id),
            model             TEXT NOT NULL,
            minute            INTEGER NOT NULL,    -- unix seconds at the start of the minute
            requests          INTEGER NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, model, minute)
        ) WITHOUT ROWID;
    ",
    },
    Migration {
        version: 2,
        name: "models and model_files",
        sql: "
        CREATE TABLE models (
            name    TEXT PRIMARY KEY,
            format  TEXT NOT NULL CHECK (format IN ('gguf', 'hf-dir')),
            source  TEXT NOT NULL,                 -- path, URL or hf:org/repo:file@commit
            size    INTEGER NOT NULL CHECK (size >= 0),  -- bytes, all files
            created INTEGER NOT NULL,              -- unix seconds
            blob    TEXT NOT NULL                  -- main blob: the GGUF or model.safetensors
        );
        CREATE TABLE model_files (
            model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
            path  TEXT NOT NULL,                   -- relative path inside the model
            blob  TEXT NOT NULL,                   -- sha256-<hex>, a file under blobs/
            size  INTEGER NOT NULL CHECK (size >= 0),
            PRIMARY KEY (model, path)
        ) WITHOUT ROWID;
        CREATE INDEX model_files_blob ON model_files (blob);
    ",
    },
Migration {
    version: 3,
    name: "files",
    sql: "
        CREATE TABLE files (
            id         TEXT PRIMARY KEY,         -- file-<hex>
            filename   TEXT NOT NULL,
            purpose    TEXT NOT NULL,
            bytes      INTEGER NOT NULL CHECK (bytes >= 0),
            sha256     TEXT NOT NULL,            -- content under files/<sha256>
            created_at INTEGER NOT NULL,         -- unix seconds
            profile    TEXT                      -- dataset profile, JSON; NULL for other files
        );
        CREATE INDEX files_sha256 ON files (sha256);
    ",
},
Migration {
    version: 4,
    name: "training jobs, events and trained models",
    sql: "
        CREATE TABLE training_jobs (
            id               TEXT PRIMARY KEY,   -- job-<hex>
            status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            spec             TEXT NOT NULL,      -- validated spec, JSON
            training_file    TEXT NOT NULL,      -- files.id (the file may be deleted later)
            model_name       TEXT NOT NULL,
            created_at       INTEGER NOT NULL,
            started_at       INTEGER,
            finished_at      INTEGER,
            error            TEXT,
            result           TEXT,               -- metrics summary, JSON
            cancel_requested INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX training_jobs_status ON training_jobs (status, created_at);
        CREATE TABLE training_events (
            job_id     TEXT NOT NULL REFERENCES training_jobs(id),
            seq        INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            kind       TEXT NOT NULL,            -- status, epoch, fold, metrics, message
            message    TEXT NOT NULL,
            data       TEXT,                     -- JSON
            PRIMARY KEY (job_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE trained_models (
            name         TEXT PRIMARY KEY,
            job_id       TEXT NOT NULL UNIQUE REFERENCES training_jobs(id),
            created_at   INTEGER NOT NULL,
            task         TEXT NOT NULL CHECK (task IN ('classification', 'regression')),
            artifact_dir TEXT NOT NULL           -- relative to the data directory
        );
    ",
    },
    Migration {
        version: 5,
        name: "model_options",
        sql: "
        CREATE TABLE model_options (
            model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
            key   TEXT NOT NULL,                   -- one of models::OPTION_KEYS
            value INTEGER NOT NULL CHECK (value > 0),
            PRIMARY KEY (model, key)
        ) WITHOUT ROWID;
    ",
    },
];

/// The schema version this program writes.
pub const LATEST_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    applied INTEGER NOT NULL
)";

/// How many migrations this program knows (versions may skip numbers reserved elsewhere).
#[cfg(test)]
pub(crate) fn count() -> usize {
    MIGRATIONS.len()
}

pub fn version(conn: &Connection) -> Result<u32> {
    conn.execute(CREATE_TABLE, [])?;
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

pub fn migrate(conn: &mut Connection) -> Result<u32> {
    conn.execute(CREATE_TABLE, [])?;
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two processes
        // migrating at once apply each step once.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = version(&tx)?;
        if current > LATEST_VERSION {
            return Err(Error::TooNew {
                found: current,
                known: LATEST_VERSION,
            });
        }
        let Some(m) = MIGRATIONS.iter().find(|m| m.version > current) else {
            tx.commit()?;
            return Ok(current);
        };
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, crate::now() as i64],
        )?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        assert_eq!(MIGRATIONS[0].version, 1);
    }
}
