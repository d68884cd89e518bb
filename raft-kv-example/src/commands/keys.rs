//! Keyspace commands: EXISTS, TYPE, TTL, PTTL, KEYS, SCAN, DBSIZE, DEL, EXPIRE, PEXPIRE,
//! EXPIREAT, PEXPIREAT, PERSIST, FLUSHDB, FLUSHALL.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{int, word, Cmd, Deadline, ReadOp, Reply, WriteOp, SYNTAX};
use crate::db::{Db, Millis, Stamp};

/// Most keys one SCAN call may ask to visit (COUNT), so one call stays short.
pub const MAX_SCAN_COUNT: usize = 100_000;

/// A keyspace read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// `EXISTS key [key ...]`: how many of them exist (repeats count again).
    Exists(Vec<Bytes>),
    /// TYPE key
    Type(Bytes),
    /// TTL (false) or PTTL (true) key: -2 if missing, -1 if it does not expire.
    Ttl(Bytes, bool),
    /// KEYS pattern
    Keys(Bytes),
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`
    Scan {
        /// Where to continue (0 to start).
        cursor: u64,
        /// MATCH.
        pattern: Option<Bytes>,
        /// COUNT: about how many keys to visit.
        count: usize,
        /// TYPE.
        kind: Option<String>,
    },
    /// DBSIZE
    DbSize,
}

/// EXPIRE's condition on the current expiry (Redis 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireIf {
    /// NX: only if the key has no expiry.
    NoExpiry,
    /// XX: only if it has one.
    HasExpiry,
    /// GT: only if the new expiry is later (no expiry counts as infinite).
    Later,
    /// LT: only if the new expiry is earlier.
    Earlier,
}

/// A keyspace write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// `DEL key [key ...]`: how many were removed.
    Del(Vec<Bytes>),
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: 1 if set, 0 if not.
    Expire(Bytes, Deadline, Option<ExpireIf>),
    /// PERSIST key: 1 if an expiry was removed.
    Persist(Bytes),
    /// FLUSHDB, FLUSHALL.
    Flush,
}

/// Parses a keyspace command.
pub fn parse(name: &str, a: &[Bytes]) -> Result<Cmd, String> {
    let read = |r| Ok(Cmd::Read(ReadOp::Key(r)));
    let write = |w| Ok(Cmd::Write(WriteOp::Key(w)));
    match name {
        "EXISTS" => read(Read::Exists(a.to_vec())),
        "TYPE" => read(Read::Type(a[0].clone())),
        "TTL" => read(Read::Ttl(a[0].clone(), false)),
        "PTTL" => read(Read::Ttl(a[0].clone(), true)),
        "KEYS" => read(Read::Keys(a[0].clone())),
        "SCAN" => read(parse_scan(a)?),
        "DBSIZE" => read(Read::DbSize),
        "DEL" => write(Write::Del(a.to_vec())),
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            let unit = if name.starts_with('P') { 1 } else { 1_000 };
            let deadline = expire_deadline(&a[1], unit, name.ends_with("AT"), name)?;
            let cond = match a.get(2).map(|w| word(w)).as_deref() {
                None => None,
                Some("NX") => Some(ExpireIf::NoExpiry),
                Some("XX") => Some(ExpireIf::HasExpiry),
                Some("GT") => Some(ExpireIf::Later),
                Some("LT") => Some(ExpireIf::Earlier),
                Some(other) => return Err(format!("ERR Unsupported option {other}")),
            };
            if a.len() > 3 {
                return Err(SYNTAX.into());
            }
            write(Write::Expire(a[0].clone(), deadline, cond))
        }
        "PERSIST" => write(Write::Persist(a[0].clone())),
        "FLUSHDB" | "FLUSHALL" => match a.iter().map(|w| word(w)).collect::<Vec<_>>()[..] {
            [] => write(Write::Flush),
            [ref mode] if mode == "SYNC" || mode == "ASYNC" => write(Write::Flush),
            _ => Err(SYNTAX.into()),
        },
        _ => Err(format!("ERR unknown keyspace command '{name}'")),
    }
}

/// EXPIRE's time: unlike SET's, zero and negative are allowed and delete the key.
fn expire_deadline(n: &[u8], unit: u64, absolute: bool, cmd: &str) -> Result<Deadline, String> {
    let n = int(n)?;
    if n <= 0 {
        return Ok(Deadline::At(0));
    }
    Deadline::parse(n.to_string().as_bytes(), unit, absolute, cmd)
}

fn parse_scan(a: &[Bytes]) -> Result<Read, String> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or("ERR invalid cursor")?;
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    let mut opts = a[1..].chunks(2);
    for pair in opts.by_ref() {
        let [opt, value] = pair else {
            return Err(SYNTAX.into());
        };
        match word(opt).as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => {
                count = usize::try_from(int(value)?)
                    .ok()
                    .filter(|&c| c >= 1)
                    .ok_or(SYNTAX)?
                    .min(MAX_SCAN_COUNT)
            }
            "TYPE" => kind = Some(String::from_utf8_lossy(value).to_ascii_lowercase()),
            _ => return Err(SYNTAX.into()),
        }
    }
    Ok(Read::Scan {
        cursor,
        pattern,
        count,
        kind,
    })
}

/// TTL's rounding: the nearest whole second, as Redis answers.
fn remaining(at: Millis, now: Millis, ms: bool) -> i64 {
    let left = at.saturating_sub(now) as i64;
    if ms {
        left
    } else {
        (left + 500) / 1_000
    }
}

impl Read {
    /// The answer at `now`.
    pub fn answer(&self, db: &Db, now: Millis) -> Reply {
        match self {
            Read::Exists(keys) => {
                Reply::Int(keys.iter().filter(|k| db.get(k, now).is_some()).count() as i64)
            }
            Read::Type(k) => Reply::Status(
                db.get(k, now)
                    .map_or("none", |i| i.data.type_name())
                    .to_string(),
            ),
            Read::Ttl(k, ms) => Reply::Int(match db.get(k, now) {
                None => -2,
                Some(i) => i.expires_at.map_or(-1, |at| remaining(at, now, *ms)),
            }),
            Read::Keys(pattern) => {
                Reply::Array(db.keys(pattern, now).into_iter().map(Reply::Bulk).collect())
            }
            Read::Scan {
                cursor,
                pattern,
                count,
                kind,
            } => {
                let (next, keys) = db.scan(*cursor, *count, now, |k, item| {
                    pattern.as_ref().is_none_or(|p| crate::db::glob_match(p, k))
                        && kind.as_ref().is_none_or(|t| t == item.data.type_name())
                });
                Reply::Array(vec![
                    Reply::Bulk(next.to_string().into()),
                    Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                ])
            }
            Read::DbSize => Reply::Int(db.len(now) as i64),
        }
    }
}

impl Write {
    /// Applies the write.
    pub fn apply(self, db: &mut Db, at: Stamp) -> Reply {
        match self {
            Write::Del(keys) => {
                Reply::Int(keys.iter().filter(|k| db.remove(k, at).is_some()).count() as i64)
            }
            Write::Expire(k, deadline, cond) => {
                let Some(item) = db.get(&k, at.now) else {
                    return Reply::Int(0);
                };
                let new = deadline.at(at.now);
                let allowed = match (cond, item.expires_at) {
                    (None, _) => true,
                    (Some(ExpireIf::NoExpiry), cur) => cur.is_none(),
                    (Some(ExpireIf::HasExpiry), cur) => cur.is_some(),
                    (Some(ExpireIf::Later), cur) => cur.is_some_and(|c| new > c),
                    (Some(ExpireIf::Earlier), cur) => cur.is_none_or(|c| new < c),
                };
                if allowed {
                    db.set_expiry(&k, Some(new), at);
                }
                Reply::Int(allowed as i64)
            }
            Write::Persist(k) => match db.get(&k, at.now).and_then(|i| i.expires_at) {
                Some(_) => {
                    db.set_expiry(&k, None, at);
                    Reply::Int(1)
                }
                None => Reply::Int(0),
            },
            Write::Flush => {
                db.flush(at.index);
                Reply::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;

    #[test]
    fn expire_ttl_and_persist() {
        let mut t = Tdb::new();
        assert_eq!(t.run("EXPIRE k 10", 0), Reply::Int(0), "no such key");
        t.run("SET k v", 0);
        assert_eq!(t.run("TTL k", 0), Reply::Int(-1));
        assert_eq!(t.run("TTL nope", 0), Reply::Int(-2));
        assert_eq!(t.run("EXPIRE k 10", 1_000), Reply::Int(1));
        assert_eq!(t.run("TTL k", 1_000), Reply::Int(10));
        assert_eq!(t.run("PTTL k", 1_001), Reply::Int(9_999));
        assert_eq!(t.run("EXPIRE k 20 NX", 1_000), Reply::Int(0));
        assert_eq!(t.run("EXPIRE k 20 GT", 1_000), Reply::Int(1));
        assert_eq!(t.run("EXPIRE k 5 GT", 1_000), Reply::Int(0));
        assert_eq!(t.run("PEXPIRE k 5000 LT", 1_000), Reply::Int(1));
        assert_eq!(t.run("PERSIST k", 1_000), Reply::Int(1));
        assert_eq!(t.run("PERSIST k", 1_000), Reply::Int(0));
        assert_eq!(t.run("PEXPIREAT k 3000", 1_000), Reply::Int(1));
        assert_eq!(t.run("EXISTS k", 2_999), Reply::Int(1));
        assert_eq!(t.run("EXISTS k", 3_000), Reply::Int(0));
        t.run("SET j v", 4_000);
        assert_eq!(t.run("EXPIRE j 0", 4_000), Reply::Int(1), "zero deletes");
        assert_eq!(t.run("TYPE j", 4_000), Reply::Status("none".into()));
        assert!(matches!(t.run("EXPIRE j x", 4_000), Reply::Err(_)));
        assert!(matches!(t.run("EXPIRE j 1 ZZ", 4_000), Reply::Err(_)));
    }

    #[test]
    fn keys_scan_type_dbsize_flush() {
        let mut t = Tdb::new();
        t.run("MSET user:1 a user:2 b other c", 0);
        t.run("HSET h f v", 0);
        t.run("SET gone v PX 10", 0);
        assert_eq!(t.run("DBSIZE", 5), Reply::Int(5));
        assert_eq!(
            t.run("DBSIZE", 10),
            Reply::Int(4),
            "expired keys are not counted"
        );
        assert_eq!(
            t.run("KEYS user:*", 10),
            Reply::Array(vec![
                Reply::Bulk("user:1".into()),
                Reply::Bulk("user:2".into())
            ])
        );
        assert_eq!(t.run("TYPE h", 10), Reply::Status("hash".into()));
        assert_eq!(t.run("TYPE other", 10), Reply::Status("string".into()));
        let Reply::Array(scan) = t.run("SCAN 0 COUNT 1000 TYPE hash", 10) else {
            panic!()
        };
        assert_eq!(scan[0], Reply::Bulk("0".into()));
        assert_eq!(scan[1], Reply::Array(vec![Reply::Bulk("h".into())]));
        assert!(matches!(t.run("SCAN x", 10), Reply::Err(e) if e.contains("cursor")));
        assert!(matches!(t.run("SCAN 0 COUNT 0", 10), Reply::Err(_)));
        assert!(matches!(t.run("SCAN 0 MATCH", 10), Reply::Err(_)));
        assert_eq!(t.run("DEL user:1 user:1 nope", 10), Reply::Int(1));
        assert_eq!(t.run("FLUSHDB", 10), Reply::Ok);
        assert_eq!(t.run("DBSIZE", 10), Reply::Int(0));
    }
}
