//! String commands: GET, MGET, STRLEN, SET (with NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL),
//! SETNX, GETSET, GETDEL, MSET, APPEND, INCR, INCRBY, DECR, DECRBY.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{int, word, Cmd, Deadline, ReadOp, Reply, WriteOp, SYNTAX, WRONGTYPE};
use crate::db::{Data, Db, Millis, Stamp, Ttl};

/// The longest string APPEND may build (Redis's `proto-max-bulk-len` is 512 MB; a value
/// must also fit in one reply a client or a forwarding node accepts).
pub const MAX_STRING: usize = 32 << 20;

/// A string read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// GET key
    Get(Bytes),
    /// `MGET key [key ...]`: nil for missing keys and keys of another type.
    MGet(Vec<Bytes>),
    /// STRLEN key
    StrLen(Bytes),
}

/// SET's condition on the key's existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// NX: only if the key does not exist.
    Absent,
    /// XX: only if it exists.
    Present,
}

/// SET's expiry option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTtl {
    /// No option: the key no longer expires.
    Clear,
    /// KEEPTTL.
    Keep,
    /// EX, PX, EXAT or PXAT.
    Deadline(Deadline),
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    /// The key.
    pub key: Bytes,
    /// The new value.
    pub value: Bytes,
    /// NX or XX.
    pub condition: Option<Condition>,
    /// GET: answer with the old value.
    pub get: bool,
    /// The expiry option.
    pub ttl: SetTtl,
}

/// A string write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// SET with its options.
    Set(Set),
    /// SETNX key value: 1 if set, 0 if the key existed.
    SetNx(Bytes, Bytes),
    /// GETSET key value: the old value; the expiry is cleared.
    GetSet(Bytes, Bytes),
    /// GETDEL key
    GetDel(Bytes),
    /// `MSET key value [key value ...]`
    MSet(Vec<(Bytes, Bytes)>),
    /// APPEND key value: the new length.
    Append(Bytes, Bytes),
    /// INCRBY key delta (INCR, DECR and DECRBY too).
    IncrBy(Bytes, i64),
}

/// Parses a string command.
pub fn parse(name: &str, a: &[Bytes]) -> Result<Cmd, String> {
    let read = |r| Ok(Cmd::Read(ReadOp::Str(r)));
    let write = |w| Ok(Cmd::Write(WriteOp::Str(w)));
    match name {
        "GET" => read(Read::Get(a[0].clone())),
        "MGET" => read(Read::MGet(a.to_vec())),
        "STRLEN" => read(Read::StrLen(a[0].clone())),
        "SET" => write(Write::Set(parse_set(a)?)),
        "SETNX" => write(Write::SetNx(a[0].clone(), a[1].clone())),
        "GETSET" => write(Write::GetSet(a[0].clone(), a[1].clone())),
        "GETDEL" => write(Write::GetDel(a[0].clone())),
        "MSET" if a.len() % 2 == 0 => write(Write::MSet(
            a.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect(),
        )),
        "MSET" => Err(super::arity_error(name)),
        "APPEND" => write(Write::Append(a[0].clone(), a[1].clone())),
        "INCR" => write(Write::IncrBy(a[0].clone(), 1)),
        "DECR" => write(Write::IncrBy(a[0].clone(), -1)),
        "INCRBY" => write(Write::IncrBy(a[0].clone(), int(&a[1])?)),
        "DECRBY" => {
            let d = int(&a[1])?;
            let d = d
                .checked_neg()
                .ok_or("ERR decrement would overflow".to_string())?;
            write(Write::IncrBy(a[0].clone(), d))
        }
        _ => Err(format!("ERR unknown string command '{name}'")),
    }
}

fn parse_set(a: &[Bytes]) -> Result<Set, String> {
    let mut set = Set {
        key: a[0].clone(),
        value: a[1].clone(),
        condition: None,
        get: false,
        ttl: SetTtl::Clear,
    };
    let mut i = 2;
    while i < a.len() {
        let opt = word(&a[i]);
        let mut deadline = |unit, absolute| -> Result<SetTtl, String> {
            let n = a.get(i + 1).ok_or(SYNTAX)?;
            i += 1;
            Ok(SetTtl::Deadline(Deadline::parse(n, unit, absolute, "set")?))
        };
        let ttl = match opt.as_str() {
            "NX" | "XX" if set.condition.is_some() => return Err(SYNTAX.into()),
            "NX" => {
                set.condition = Some(Condition::Absent);
                None
            }
            "XX" => {
                set.condition = Some(Condition::Present);
                None
            }
            "GET" => {
                set.get = true;
                None
            }
            "KEEPTTL" => Some(SetTtl::Keep),
            "EX" => Some(deadline(1_000, false)?),
            "PX" => Some(deadline(1, false)?),
            "EXAT" => Some(deadline(1_000, true)?),
            "PXAT" => Some(deadline(1, true)?),
            _ => return Err(SYNTAX.into()),
        };
        if let Some(ttl) = ttl {
            if set.ttl != SetTtl::Clear {
                return Err(SYNTAX.into());
            }
            set.ttl = ttl;
        }
        i += 1;
    }
    Ok(set)
}

/// The string at `key`: `Ok(None)` if absent, an error if it holds another type.
fn string(db: &Db, key: &[u8], now: Millis) -> Result<Option<Bytes>, Reply> {
    match db.get(key, now).map(|i| &i.data) {
        None => Ok(None),
        Some(Data::Str(v)) => Ok(Some(v.clone())),
        Some(_) => Err(Reply::Err(WRONGTYPE.into())),
    }
}

impl Read {
    /// The answer at `now`.
    pub fn answer(&self, db: &Db, now: Millis) -> Reply {
        let run = || -> Result<Reply, Reply> {
            Ok(match self {
                Read::Get(k) => Reply::opt(string(db, k, now)?),
                Read::MGet(keys) => Reply::Array(
                    keys.iter()
                        .map(|k| Reply::opt(string(db, k, now).ok().flatten()))
                        .collect(),
                ),
                Read::StrLen(k) => Reply::Int(string(db, k, now)?.map_or(0, |v| v.len() as i64)),
            })
        };
        run().unwrap_or_else(|e| e)
    }
}

impl Write {
    /// Applies the write.
    pub fn apply(self, db: &mut Db, at: Stamp) -> Reply {
        self.run(db, at).unwrap_or_else(|e| e)
    }

    fn run(self, db: &mut Db, at: Stamp) -> Result<Reply, Reply> {
        Ok(match self {
            Write::Set(s) => set(db, s, at)?,
            Write::SetNx(k, v) => {
                if db.get(&k, at.now).is_some() {
                    Reply::Int(0)
                } else {
                    db.put(k, Data::Str(v), Ttl::Clear, at);
                    Reply::Int(1)
                }
            }
            Write::GetSet(k, v) => {
                let old = string(db, &k, at.now)?;
                db.put(k, Data::Str(v), Ttl::Clear, at);
                Reply::opt(old)
            }
            Write::GetDel(k) => {
                let old = string(db, &k, at.now)?;
                if old.is_some() {
                    db.remove(&k, at);
                }
                Reply::opt(old)
            }
            Write::MSet(pairs) => {
                for (k, v) in pairs {
                    db.put(k, Data::Str(v), Ttl::Clear, at);
                }
                Reply::Ok
            }
            Write::Append(k, v) => {
                let mut cur = string(db, &k, at.now)?
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                cur.extend_from_slice(&v);
                let len = cur.len() as i64;
                db.put(k, Data::Str(cur.into()), Ttl::Keep, at);
                Reply::Int(len)
            }
            Write::IncrBy(k, delta) => {
                let current = match string(db, &k, at.now)? {
                    None => 0,
                    Some(v) => int(&v).map_err(Reply::Err)?,
                };
                let n = current.checked_add(delta).ok_or_else(|| {
                    Reply::Err("ERR increment or decrement would overflow".into())
                })?;
                db.put(k, Data::Str(n.to_string().into()), Ttl::Keep, at);
                Reply::Int(n)
            }
        })
    }
}

fn set(db: &mut Db, s: Set, at: Stamp) -> Result<Reply, Reply> {
    // SET ... GET on a key of another type is an error and sets nothing.
    let old = if s.get {
        string(db, &s.key, at.now)?
    } else {
        None
    };
    let exists = db.get(&s.key, at.now).is_some();
    let allowed = match s.condition {
        None => true,
        Some(Condition::Absent) => !exists,
        Some(Condition::Present) => exists,
    };
    if allowed {
        let ttl = match s.ttl {
            SetTtl::Clear => Ttl::Clear,
            SetTtl::Keep => Ttl::Keep,
            SetTtl::Deadline(d) => Ttl::At(d.at(at.now)),
        };
        db.put(s.key, Data::Str(s.value), ttl, at);
    }
    Ok(match (s.get, allowed) {
        (true, _) => Reply::opt(old),
        (false, true) => Reply::Ok,
        (false, false) => Reply::Nil,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;

    #[test]
    fn set_options_follow_redis() {
        let mut t = Tdb::new();
        assert_eq!(t.run("SET k v NX", 1_000), Reply::Ok);
        assert_eq!(t.run("SET k w NX", 1_000), Reply::Nil);
        assert_eq!(t.run("SET k w XX GET", 1_000), Reply::Bulk("v".into()));
        assert_eq!(t.run("SET other w XX", 1_000), Reply::Nil);
        assert_eq!(t.run("SET k x PX 500", 1_000), Reply::Ok);
        assert_eq!(t.run("PTTL k", 1_100), Reply::Int(400));
        assert_eq!(t.run("SET k y KEEPTTL", 1_200), Reply::Ok);
        assert_eq!(t.run("PTTL k", 1_200), Reply::Int(300));
        assert_eq!(
            t.run("GET k", 1_500),
            Reply::Nil,
            "expired by the stamped time"
        );
        assert_eq!(t.run("SET k v EXAT 10", 2_000), Reply::Ok);
        assert_eq!(t.run("TTL k", 2_000), Reply::Int(8));
        assert_eq!(t.run("SET k v", 2_000), Reply::Ok);
        assert_eq!(
            t.run("TTL k", 2_000),
            Reply::Int(-1),
            "a plain SET clears the ttl"
        );
        for bad in [
            "SET k v NX XX",
            "SET k v EX",
            "SET k v EX 0",
            "SET k v EX -1",
            "SET k v EX x",
            "SET k v EX 1 PX 1",
            "SET k v KEEPTTL EX 1",
            "SET k v BOGUS",
        ] {
            assert!(matches!(t.run(bad, 2_000), Reply::Err(_)), "{bad}");
        }
    }

    #[test]
    fn the_lock_pattern_expires() {
        let mut t = Tdb::new();
        assert_eq!(t.run("SET lock a NX PX 100", 0), Reply::Ok);
        assert_eq!(t.run("SET lock b NX PX 100", 50), Reply::Nil);
        assert_eq!(t.run("SET lock b NX PX 100", 100), Reply::Ok);
        assert_eq!(t.run("GET lock", 150), Reply::Bulk("b".into()));
    }

    #[test]
    fn counters_and_old_value_commands() {
        let mut t = Tdb::new();
        assert_eq!(t.run("INCR n", 0), Reply::Int(1));
        assert_eq!(t.run("DECRBY n 5", 0), Reply::Int(-4));
        assert_eq!(t.run("DECR n", 0), Reply::Int(-5));
        assert!(matches!(
            t.run("DECRBY n -9223372036854775808", 0),
            Reply::Err(_)
        ));
        assert_eq!(t.run("SETNX n 1", 0), Reply::Int(0));
        assert_eq!(t.run("GETSET n 7", 0), Reply::Bulk("-5".into()));
        assert_eq!(t.run("STRLEN n", 0), Reply::Int(1));
        assert_eq!(t.run("GETDEL n", 0), Reply::Bulk("7".into()));
        assert_eq!(t.run("GET n", 0), Reply::Nil);
        assert_eq!(t.run("APPEND s ab", 0), Reply::Int(2));
        assert!(matches!(t.run("INCR s", 0), Reply::Err(e) if e == super::super::NOT_INTEGER));
        assert_eq!(t.run("MSET a 1 b 2", 0), Reply::Ok);
        assert_eq!(
            t.run("MGET a nope b", 0),
            Reply::Array(vec![
                Reply::Bulk("1".into()),
                Reply::Nil,
                Reply::Bulk("2".into())
            ])
        );
    }

    #[test]
    fn string_commands_refuse_a_hash() {
        let mut t = Tdb::new();
        t.run("HSET h f v", 0);
        for cmd in [
            "GET h",
            "STRLEN h",
            "INCR h",
            "APPEND h x",
            "GETSET h x",
            "SET h x GET",
        ] {
            assert_eq!(t.run(cmd, 0), Reply::Err(WRONGTYPE.into()), "{cmd}");
        }
        assert_eq!(
            t.run("SET h x", 0),
            Reply::Ok,
            "a plain SET replaces any type"
        );
    }
}
