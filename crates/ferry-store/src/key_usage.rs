//! The `key_usage` table: requests and tokens per key, model and minute. Writers add deltas
//! (the server batches them); readers aggregate by day.

use rusqlite::params;
use serde::Serialize;

use crate::{Result, Store};

/// Counts to add to one (key, model, minute) bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    pub model: String,
    /// Unix seconds; rounded down to the minute when stored.
    pub at: u64,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Usage of one key with one model on one (UTC) day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub key_id: String,
    pub model: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Add deltas, all in one transaction.
    pub fn record_usage(&self, deltas: &[UsageDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO key_usage (key_id, model, minute, requests, prompt_tokens, completion_tokens)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key_id, model, minute) DO UPDATE SET
                   requests = requests + excluded.requests,
                   prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                   completion_tokens = completion_tokens + excluded.completion_tokens",
            )?;
            for d in deltas {
                st.execute(params![
                    d.key_id,
                    d.model,
                    int(d.at - d.at % 60),
                    int(d.requests),
                    int(d.prompt_tokens),
                    int(d.completion_tokens)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Usage per key, model and day (of one key, or of all), oldest day first.
    pub fn usage(&self, key_id: Option<&str>) -> Result<Vec<UsageRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT key_id, model, date(minute, 'unixepoch') AS day,
                    SUM(requests), SUM(prompt_tokens), SUM(completion_tokens)
             FROM key_usage
             WHERE ?1 IS NULL OR key_id = ?1
             GROUP BY key_id, model, day
             ORDER BY day, key_id, model",
        )?;
        let rows = st.query_map([key_id], |r| {
            let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
            Ok(UsageRow {
                key_id: r.get(0)?,
                model: r.get(1)?,
                day: r.get(2)?,
                requests: n(3)?,
                prompt_tokens: n(4)?,
                completion_tokens: n(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::{NewKey, Scope};

    #[test]
    fn deltas_add_up_per_day_and_model() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let k = s
            .create_key(&NewKey {
                name: "u".into(),
                scope: Scope::Inference,
                rpm: None,
                tpm: None,
            })
            .unwrap()
            .key;
        let other = s
            .create_key(&NewKey {
                name: "v".into(),
                scope: Scope::Inference,
                rpm: None,
                tpm: None,
            })
            .unwrap()
            .key;
        let day0 = 1_700_000_000 - 1_700_000_000 % 86400;
        let delta = |key: &str, model: &str, at: u64, r, p, c| UsageDelta {
            key_id: key.into(),
            model: model.into(),
            at,
            requests: r,
            prompt_tokens: p,
            completion_tokens: c,
        };
        s.record_usage(&[
            delta(&k.id, "m1", day0 + 10, 1, 5, 7),
            delta(&k.id, "m1", day0 + 20, 1, 3, 1),
            delta(&k.id, "m1", day0 + 3600, 2, 10, 10),
            delta(&k.id, "m2", day0 + 5, 1, 1, 1),
            delta(&k.id, "m1", day0 + 86400 + 1, 1, 2, 2),
            delta(&other.id, "m1", day0, 9, 9, 9),
        ])
        .unwrap();
        s.record_usage(&[delta(&k.id, "m1", day0 + 30, 1, 1, 1)])
            .unwrap();
        let rows = s.usage(Some(&k.id)).unwrap();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0].model, "m1");
        assert_eq!(rows[0].day, "2023-11-14");
        assert_eq!(
            (
                rows[0].requests,
                rows[0].prompt_tokens,
                rows[0].completion_tokens
            ),
            (5, 19, 19)
        );
        assert_eq!(rows[1].model, "m2");
        assert_eq!(rows[2].day, "2023-11-15");
        assert_eq!(s.usage(None).unwrap().len(), 4);
        assert!(s.usage(Some("key_none")).unwrap().is_empty());
        // Minute buckets: the three deltas of the first minute share one row.
        let n: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM key_usage WHERE key_id = ?1",
                [&k.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn usage_of_an_unknown_key_is_refused() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        let r = s.record_usage(&[UsageDelta {
            key_id: "key_ghost".into(),
            model: "m".into(),
            at: 0,
            requests: 1,
            ..Default::default()
        }]);
        assert!(r.is_err());
    }
}
