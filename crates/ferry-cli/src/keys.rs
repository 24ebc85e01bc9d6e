//! `ferry keys`: create, list, revoke API keys and show their usage, in the metadata database
//! (`$FERRY_HOME/ferry.db`). A running server sees changes within a second.

use anyhow::{Context, Result};
use clap::Subcommand;
use ferry_store::{ApiKey, NewKey, Scope, Store};

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key. The key is printed once; only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        /// `inference` (API routes) or `admin` (also /v1/admin/*).
        #[arg(long, default_value = "inference")]
        scope: String,
        /// Requests per minute (default: unlimited).
        #[arg(long)]
        rpm: Option<u32>,
        /// Prompt plus completion tokens per minute (default: unlimited).
        #[arg(long)]
        tpm: Option<u64>,
        /// Print JSON (with the key in `key`).
        #[arg(long)]
        json: bool,
    },
    /// List keys, revoked ones included.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id (`key_…`).
    Revoke { id: String },
    /// Usage per day and model, of one key or of all.
    Usage {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn open() -> Result<Store> {
    let home = crate::store::home();
    Store::open_in(&home)
        .with_context(|| format!("opening the metadata database in {}", home.display()))
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix seconds.
pub(crate) fn date(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn limit<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn print_key(k: &ApiKey) {
    println!(
        "{:<20} {:<24} {:<9} {:>8} {:>10}  {:<16}  {}",
        k.id,
        k.name,
        k.scope.as_str(),
        limit(k.rpm),
        limit(k.tpm),
        date(k.created),
        k.revoked
            .map(|t| format!("revoked {}", date(t)))
            .unwrap_or_else(|| "active".into())
    );
}

pub fn run(cmd: KeysCmd) -> Result<()> {
    let store = open()?;
    match cmd {
        KeysCmd::Create {
            name,
            scope,
            rpm,
            tpm,
            json,
        } => {
            let scope: Scope = scope.parse()?;
            let c = store.create_key(&NewKey {
                name,
                scope,
                rpm,
                tpm,
            })?;
            if json {
                let mut v = serde_json::to_value(&c.key)?;
                v["key"] = serde_json::Value::String(c.secret);
                println!("{v}");
            } else {
                println!("{}", c.secret);
                eprintln!(
                    "created {} ({:?}, scope {}, rpm {}, tpm {}). Save the key now: it is not shown again.",
                    c.key.id,
                    c.key.name,
                    c.key.scope,
                    limit(c.key.rpm),
                    limit(c.key.tpm)
                );
            }
        }
        KeysCmd::List { json } => {
            let keys = store.list_keys()?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                println!(
                    "{:<20} {:<24} {:<9} {:>8} {:>10}  {:<16}  STATUS",
                    "ID", "NAME", "SCOPE", "RPM", "TPM", "CREATED (UTC)"
                );
                keys.iter().for_each(print_key);
            }
        }
        KeysCmd::Revoke { id } => {
            if !store.revoke_key(&id)? {
                anyhow::bail!("no key {id:?} (see `ferry keys list`)");
            }
            println!("revoked {id}");
        }
        KeysCmd::Usage { id, json } => {
            if let Some(id) = &id {
                if store.get_key(id)?.is_none() {
                    anyhow::bail!("no key {id:?} (see `ferry keys list`)");
                }
            }
            let rows = store.usage(id.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{:<10}  {:<20} {:<32} {:>9} {:>14} {:>14}",
                    "DAY", "KEY", "MODEL", "REQUESTS", "PROMPT_TOKENS", "COMPL_TOKENS"
                );
                for r in rows {
                    println!(
                        "{:<10}  {:<20} {:<32} {:>9} {:>14} {:>14}",
                        r.day, r.key_id, r.model, r.requests, r.prompt_tokens, r.completion_tokens
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01 00:00");
        assert_eq!(super::date(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(super::date(951_782_400), "2000-02-29 00:00");
    }
}
