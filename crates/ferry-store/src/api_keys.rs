//! The `api_keys` table. A key is `ferry-` followed by 64 hex digits of OS randomness; it is
//! shown once at creation and only its sha256 is stored. Lookups hash the presented key and
//! compare it with every stored hash in constant time (`KeySet`).

use std::io::Read;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result, Store};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference routes only.
    Inference,
    /// Everything, including `/v1/admin/*`.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "inference" => Ok(Self::Inference),
            "admin" => Ok(Self::Admin),
            other => Err(Error::Invalid(format!(
                "unknown scope {other:?} (use inference or admin)"
            ))),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's record, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// Requests per minute; `None`: unlimited.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; `None`: unlimited.
    pub tpm: Option<u64>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of revocation.
    pub revoked: Option<u64>,
}

impl ApiKey {
    pub fn active(&self) -> bool {
        self.revoked.is_none()
    }
}

/// What `create_key` needs.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub scope: Scope,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// A new key and its secret, which is not stored and cannot be shown again.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

const KEY_PREFIX: &str = "ferry-";

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::Random)?;
    Ok(b)
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// A fresh secret: `ferry-` and 32 random bytes in hex.
pub fn generate_secret() -> Result<String> {
    Ok(format!("{KEY_PREFIX}{}", hex(&random_bytes::<32>()?)))
}

/// sha256 of a presented key.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal lengths and bytes, in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let d = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimizer from turning the fold into an early exit.
    std::hint::black_box(d) == 0
}

fn parse_hash(h: &str) -> Option<[u8; 32]> {
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "a key name must be 1 to 64 characters, without control characters".into(),
        ));
    }
    Ok(())
}

const COLUMNS: &str = "id, name, scope, rpm, tpm, created, revoked, hash";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(ApiKey, String)> {
    let scope: String = r.get(2)?;
    let scope = scope.parse().map_err(|e: Error| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })?;
    let int = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok((
        ApiKey {
            id: r.get(0)?,
            name: r.get(1)?,
            scope,
            rpm: int(3)?.map(|v| v.min(u32::MAX as u64) as u32),
            tpm: int(4)?,
            created: int(5)?.unwrap_or(0),
            revoked: int(6)?,
        },
        r.get(7)?,
    ))
}

impl Store {
    /// Create a key; its secret is in the result and nowhere else.
    pub fn create_key(&self, new: &NewKey) -> Result<CreatedKey> {
        check_name(&new.name)?;
        if new.rpm == Some(0) || new.tpm == Some(0) {
            return Err(Error::Invalid(
                "rpm and tpm must be positive (omit them for no limit)".into(),
            ));
        }
        let tpm = match new.tpm {
            Some(t) => {
                Some(i64::try_from(t).map_err(|_| Error::Invalid("tpm is too large".into()))?)
            }
            None => None,
        };
        let secret = generate_secret()?;
        let key = ApiKey {
            id: format!("key_{}", hex(&random_bytes::<8>()?)),
            name: new.name.clone(),
            scope: new.scope,
            rpm: new.rpm,
            tpm: new.tpm,
            created: crate::now(),
            revoked: None,
        };
        self.conn().execute(
            "INSERT INTO api_keys (id, name, hash, scope, rpm, tpm, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id,
                key.name,
                hex(&hash_secret(&secret)),
                key.scope.as_str(),
                key.rpm,
                tpm,
                key.created as i64
            ],
        )?;
        Ok(CreatedKey { key, secret })
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list_keys(&self) -> Result<Vec<ApiKey>> {
        Ok(self
            .keys_with_hashes()?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    pub fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let conn = self.conn();
        let r = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?;
        Ok(r.map(|(k, _)| k))
    }

    /// Revoke a key (idempotent: the first revocation time stays). False if there is no such key.
    pub fn revoke_key(&self, id: &str) -> Result<bool> {
        let conn = self.conn();
        conn.execute(
            "UPDATE api_keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![id, crate::now() as i64],
        )?;
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        Ok(exists)
    }

    /// How many keys exist, revoked ones included.
    pub fn count_keys(&self) -> Result<u64> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    fn keys_with_hashes(&self) -> Result<Vec<(ApiKey, String)>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created, rowid"
        ))?;
        let rows = st.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A snapshot of every key for lookups in memory.
    pub fn key_set(&self) -> Result<KeySet> {
        let entries = self
            .keys_with_hashes()?
            .into_iter()
            .filter_map(|(k, h)| parse_hash(&h).map(|h| (h, k)))
            .collect();
        Ok(KeySet { entries })
    }

    /// The key whose secret this is, revoked or not (callers check `active`).
    pub fn verify_key(&self, secret: &str) -> Result<Option<ApiKey>> {
        Ok(self.key_set()?.find(secret).cloned())
    }
}

/// Keys held in memory for constant-time lookups.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    entries: Vec<([u8; 32], ApiKey)>,
}

impl KeySet {
    /// The key matching `secret`: every stored hash is compared, in constant time each, so the
    /// time taken does not depend on which key (if any) matched or where hashes differ.
    pub fn find(&self, secret: &str) -> Option<&ApiKey> {
        let h = hash_secret(secret);
        let mut found = None;
        for (stored, key) in &self.entries {
            if ct_eq(stored, &h) {
                found = Some(key);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&ApiKey> {
        self.entries.iter().map(|(_, k)| k).find(|k| k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn new(name: &str, scope: Scope) -> NewKey {
        NewKey {
            name: name.into(),
            scope,
            rpm: Some(10),
            tpm: None,
        }
    }

    #[test]
    fn secrets_are_random_and_well_formed() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("ferry-"));
        assert_eq!(a.len(), 6 + 64);
        assert!(a[6..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn create_list_verify_revoke() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        assert_eq!(s.count_keys().unwrap(), 0);
        let a = s.create_key(&new("alice", Scope::Inference)).unwrap();
        let b = s.create_key(&new("ops", Scope::Admin)).unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.key.id.starts_with("key_"));
        // Only the hash is stored.
        let stored: String = s
            .conn()
            .query_row(
                "SELECT hash FROM api_keys WHERE id = ?1",
                [&a.key.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, hex(&hash_secret(&a.secret)));
        assert!(!stored.contains(&a.secret[6..]));

        let list = s.list_keys().unwrap();
        assert_eq!(list, vec![a.key.clone(), b.key.clone()]);
        assert_eq!(s.verify_key(&a.secret).unwrap().unwrap().name, "alice");
        assert_eq!(
            s.verify_key(&b.secret).unwrap().unwrap().scope,
            Scope::Admin
        );
        assert!(s.verify_key("ferry-nope").unwrap().is_none());
        assert!(s.verify_key("").unwrap().is_none());

        assert!(s.revoke_key(&a.key.id).unwrap());
        let t = s.get_key(&a.key.id).unwrap().unwrap().revoked;
        assert!(t.is_some());
        // Idempotent; unknown ids say so.
        assert!(s.revoke_key(&a.key.id).unwrap());
        assert_eq!(s.get_key(&a.key.id).unwrap().unwrap().revoked, t);
        assert!(!s.revoke_key("key_missing").unwrap());
        assert!(!s.verify_key(&a.secret).unwrap().unwrap().active());
        assert_eq!(s.count_keys().unwrap(), 2);
    }

    #[test]
    fn bad_input_is_refused() {
        let d = TempDir::new();
        let s = Store::open_in(&d.0).unwrap();
        assert!(s.create_key(&new("", Scope::Admin)).is_err());
        assert!(s.create_key(&new("a\nb", Scope::Admin)).is_err());
        assert!(s.create_key(&new(&"x".repeat(65), Scope::Admin)).is_err());
        let mut k = new("zero", Scope::Admin);
        k.rpm = Some(0);
        assert!(s.create_key(&k).is_err());
        k.rpm = None;
        k.tpm = Some(u64::MAX);
        assert!(s.create_key(&k).is_err());
        assert!("root".parse::<Scope>().is_err());
        assert_eq!("admin".parse::<Scope>().unwrap(), Scope::Admin);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
