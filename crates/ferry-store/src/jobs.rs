//! Training jobs, their events, and the models they register: the `training_jobs`,
//! `training_events` and `trained_models` tables.
//!
//! States: `queued` -> `running` -> `succeeded` | `failed` | `cancelled`. A runner claims the
//! oldest queued job (`claim_next_job`, one transaction), appends events while it works, and
//! ends it with `finish_job`, which for a success registers the model in the same
//! transaction, so a crash never leaves a succeeded job without its model or the reverse. At
//! start, `fail_interrupted_jobs` marks jobs still `running` (their process died) failed.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use crate::{Error, Result, Store};

/// One training job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub id: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The validated spec, JSON text.
    pub spec: String,
    pub training_file: String,
    /// Name the model registers under.
    pub model_name: String,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub error: Option<String>,
    /// Summary of the result (metrics), JSON text.
    pub result: Option<String>,
    pub cancel_requested: bool,
}

impl JobRow {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// One event of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEvent {
    pub job_id: String,
    /// 1-based, increasing per job.
    pub seq: u64,
    pub created_at: u64,
    /// `status`, `epoch`, `fold`, `metrics`, `message`.
    pub kind: String,
    pub message: String,
    /// Structured payload, JSON text.
    pub data: Option<String>,
}

/// A model registered by a succeeded job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainedModel {
    pub name: String,
    pub job_id: String,
    pub created_at: u64,
    /// `classification` or `regression`.
    pub task: String,
    /// The artifact directory, relative to the data directory (`jobs/<id>`).
    pub artifact_dir: String,
}

/// How a job ended.
pub struct Outcome<'a> {
    pub status: &'a str,
    pub error: Option<&'a str>,
    pub result: Option<&'a str>,
    /// For a success: (task, artifact dir) of the model to register under the job's name.
    pub register: Option<(&'a str, &'a str)>,
}

const JOB_COLS: &str = "id, status, spec, training_file, model_name, created_at, started_at, finished_at, error, result, cancel_requested";

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x.max(0) as u64)
}

fn job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        status: r.get(1)?,
        spec: r.get(2)?,
        training_file: r.get(3)?,
        model_name: r.get(4)?,
        created_at: r.get::<_, i64>(5)?.max(0) as u64,
        started_at: opt_u64(r.get(6)?),
        finished_at: opt_u64(r.get(7)?),
        error: r.get(8)?,
        result: r.get(9)?,
        cancel_requested: r.get::<_, i64>(10)? != 0,
    })
}

fn add_event_tx(
    tx: &Transaction<'_>,
    job_id: &str,
    kind: &str,
    message: &str,
    data: Option<&str>,
) -> Result<u64> {
    let seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM training_events WHERE job_id = ?1",
        [job_id],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO training_events (job_id, seq, created_at, kind, message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![job_id, seq, crate::now() as i64, kind, message, data],
    )?;
    Ok(seq as u64)
}

fn name_taken(tx: &Transaction<'_>, name: &str) -> Result<bool> {
    let n: i64 = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM trained_models WHERE name = ?1)
              + (SELECT COUNT(*) FROM training_jobs WHERE model_name = ?1 AND status IN ('queued', 'running'))",
        [name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

impl Store {
    /// Queue a job. `model_name` `None` names the model after the job. A name already used
    /// by a registered model or by a queued or running job is refused.
    pub fn create_job(
        &self,
        spec: &str,
        training_file: &str,
        model_name: Option<&str>,
    ) -> Result<JobRow> {
        let id = format!(
            "job-{}",
            crate::api_keys::hex(&crate::api_keys::random_bytes::<10>()?)
        );
        let name = model_name.unwrap_or(&id).to_string();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if name_taken(&tx, &name)? {
            return Err(Error::Invalid(format!(
                "a trained model (or a job in progress) is already named `{name}`"
            )));
        }
        let now = crate::now();
        tx.execute(
            "INSERT INTO training_jobs (id, status, spec, training_file, model_name, created_at, cancel_requested)
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, 0)",
            params![id, spec, training_file, name, now as i64],
        )?;
        add_event_tx(&tx, &id, "status", "queued", None)?;
        let row = tx.query_row(
            &format!("SELECT {JOB_COLS} FROM training_jobs WHERE id = ?1"),
            [&id],
            job,
        )?;
        tx.commit()?;
        Ok(row)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLS} FROM training_jobs WHERE id = ?1"),
                [id],
                job,
            )
            .optional()?)
    }

    /// Jobs, newest first.
    pub fn list_jobs(&self, limit: usize) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM training_jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = st.query_map([limit as i64], job)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Move the oldest queued job to `running` and return it.
    pub fn claim_next_job(&self) -> Result<Option<JobRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let id: Option<String> = tx
            .query_row(
                "SELECT id FROM training_jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE training_jobs SET status = 'running', started_at = ?2 WHERE id = ?1",
            params![id, crate::now() as i64],
        )?;
        add_event_tx(&tx, &id, "status", "running", None)?;
        let row = tx.query_row(
            &format!("SELECT {JOB_COLS} FROM training_jobs WHERE id = ?1"),
            [&id],
            job,
        )?;
        tx.commit()?;
        Ok(Some(row))
    }

    /// Ask a job to stop: a queued job is cancelled at once, a running one is flagged (its
    /// runner stops at the next batch). Returns the job after the change, `None` if unknown.
    pub fn cancel_job(&self, id: &str) -> Result<Option<JobRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(status): Option<String> = tx
            .query_row(
                "SELECT status FROM training_jobs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
        else {
            return Ok(None);
        };
        match status.as_str() {
            "queued" => {
                tx.execute(
                    "UPDATE training_jobs SET status = 'cancelled', finished_at = ?2, cancel_requested = 1 WHERE id = ?1",
                    params![id, crate::now() as i64],
                )?;
                add_event_tx(&tx, id, "status", "cancelled", None)?;
            }
            "running" => {
                tx.execute(
                    "UPDATE training_jobs SET cancel_requested = 1 WHERE id = ?1",
                    [id],
                )?;
                add_event_tx(&tx, id, "message", "cancellation requested", None)?;
            }
            _ => {}
        }
        let row = tx.query_row(
            &format!("SELECT {JOB_COLS} FROM training_jobs WHERE id = ?1"),
            [id],
            job,
        )?;
        tx.commit()?;
        Ok(Some(row))
    }

    /// End a running job; a success registers its model in the same transaction.
    pub fn finish_job(&self, id: &str, out: &Outcome<'_>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (status, name): (String, String) = tx.query_row(
            "SELECT status, model_name FROM training_jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if status != "running" {
            return Err(Error::Invalid(format!("job {id} is {status}, not running")));
        }
        let now = crate::now() as i64;
        tx.execute(
            "UPDATE training_jobs SET status = ?2, finished_at = ?3, error = ?4, result = ?5 WHERE id = ?1",
            params![id, out.status, now, out.error, out.result],
        )?;
        if let Some((task, dir)) = out.register {
            tx.execute(
                "INSERT INTO trained_models (name, job_id, created_at, task, artifact_dir) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, id, now, task, dir],
            )?;
        }
        add_event_tx(
            &tx,
            id,
            "status",
            out.status,
            out.error
                .map(|e| {
                    // JSON string of the error, for clients that read `data`.
                    format!("{{\"error\":{}}}", json_string(e))
                })
                .as_deref(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Append an event; returns its sequence number.
    pub fn add_job_event(
        &self,
        job_id: &str,
        kind: &str,
        message: &str,
        data: Option<&str>,
    ) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let seq = add_event_tx(&tx, job_id, kind, message, data)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Events after `after` (a sequence number), oldest first, at most `limit`.
    pub fn job_events(&self, job_id: &str, after: u64, limit: usize) -> Result<Vec<JobEvent>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT job_id, seq, created_at, kind, message, data FROM training_events
             WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![job_id, after as i64, limit as i64], |r| {
            Ok(JobEvent {
                job_id: r.get(0)?,
                seq: r.get::<_, i64>(1)?.max(0) as u64,
                created_at: r.get::<_, i64>(2)?.max(0) as u64,
                kind: r.get(3)?,
                message: r.get(4)?,
                data: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Mark every `running` job failed (their process is gone); returns their ids.
    pub fn fail_interrupted_jobs(&self) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut st = tx.prepare("SELECT id FROM training_jobs WHERE status = 'running'")?;
            let r = st.query_map([], |r| r.get(0))?;
            r.collect::<rusqlite::Result<_>>()?
        };
        const WHY: &str = "interrupted by restart";
        for id in &ids {
            tx.execute(
                "UPDATE training_jobs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1",
                params![id, crate::now() as i64, WHY],
            )?;
            add_event_tx(
                &tx,
                id,
                "status",
                "failed",
                Some(&format!("{{\"error\":{}}}", json_string(WHY))),
            )?;
        }
        tx.commit()?;
        Ok(ids)
    }

    pub fn get_trained_model(&self, name: &str) -> Result<Option<TrainedModel>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, job_id, created_at, task, artifact_dir FROM trained_models WHERE name = ?1",
                [name],
                trained,
            )
            .optional()?)
    }

    /// Registered models, newest first.
    pub fn list_trained_models(&self) -> Result<Vec<TrainedModel>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, job_id, created_at, task, artifact_dir FROM trained_models ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = st.query_map([], trained)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn trained(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrainedModel> {
    Ok(TrainedModel {
        name: r.get(0)?,
        job_id: r.get(1)?,
        created_at: r.get::<_, i64>(2)?.max(0) as u64,
        task: r.get(3)?,
        artifact_dir: r.get(4)?,
    })
}

/// A JSON string literal (the store does not depend on serde_json).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn a_job_goes_through_its_states_and_registers_its_model() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let a = s.create_job("{}", "file-1", Some("iris")).unwrap();
        assert_eq!(a.status, "queued");
        assert!(
            s.create_job("{}", "file-1", Some("iris")).is_err(),
            "name in use"
        );
        let b = s.create_job("{}", "file-1", None).unwrap();
        assert_eq!(b.model_name, b.id);
        let c = s.claim_next_job().unwrap().unwrap();
        assert_eq!(
            (c.id.as_str(), c.status.as_str()),
            (a.id.as_str(), "running")
        );
        s.add_job_event(&a.id, "epoch", "epoch 1", Some("{\"epoch\":1}"))
            .unwrap();
        // Cancelling a queued job ends it; a running one is flagged.
        assert_eq!(s.cancel_job(&b.id).unwrap().unwrap().status, "cancelled");
        let r = s.cancel_job(&a.id).unwrap().unwrap();
        assert_eq!(r.status, "running");
        assert!(r.cancel_requested);
        s.finish_job(
            &a.id,
            &Outcome {
                status: "succeeded",
                error: None,
                result: Some("{}"),
                register: Some(("classification", "jobs/x")),
            },
        )
        .unwrap();
        assert!(s
            .finish_job(
                &a.id,
                &Outcome {
                    status: "failed",
                    error: None,
                    result: None,
                    register: None
                }
            )
            .is_err());
        let m = s.get_trained_model("iris").unwrap().unwrap();
        assert_eq!(m.job_id, a.id);
        assert_eq!(s.list_trained_models().unwrap().len(), 1);
        let ev = s.job_events(&a.id, 0, 100).unwrap();
        let kinds: Vec<_> = ev
            .iter()
            .map(|e| (e.kind.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("status", "queued"),
                ("status", "running"),
                ("epoch", "epoch 1"),
                ("message", "cancellation requested"),
                ("status", "succeeded")
            ]
        );
        assert_eq!(s.job_events(&a.id, 3, 100).unwrap().len(), 2);
        assert_eq!(s.list_jobs(10).unwrap().len(), 2);
    }

    #[test]
    fn running_jobs_fail_on_restart() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let a = s.create_job("{}", "f", None).unwrap();
        s.claim_next_job().unwrap();
        let q = s.create_job("{}", "f", None).unwrap();
        drop(s);
        let s = Store::open_in(&d.0).unwrap();
        assert_eq!(s.fail_interrupted_jobs().unwrap(), vec![a.id.clone()]);
        let j = s.get_job(&a.id).unwrap().unwrap();
        assert_eq!(j.status, "failed");
        assert_eq!(j.error.as_deref(), Some("interrupted by restart"));
        assert_eq!(s.get_job(&q.id).unwrap().unwrap().status, "queued");
        let last = s.job_events(&a.id, 0, 10).unwrap().pop().unwrap();
        assert_eq!(
            last.data.as_deref(),
            Some("{\"error\":\"interrupted by restart\"}")
        );
    }
}
