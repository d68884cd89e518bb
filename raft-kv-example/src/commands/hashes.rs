//! Hash commands: HGET, HMGET, HGETALL, HKEYS, HVALS, HLEN, HEXISTS, HSET, HMSET, HSETNX,
//! HDEL, HINCRBY. A hash left without fields is removed, as in Redis.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{int, Cmd, ReadOp, Reply, WriteOp, WRONGTYPE};
use crate::db::{Data, Db, Millis, Stamp, Ttl};

/// A hash read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// HGET key field
    Get(Bytes, Bytes),
    /// `HMGET key field [field ...]`
    MGet(Bytes, Vec<Bytes>),
    /// HGETALL key: a map in RESP3, field-value pairs in RESP2.
    GetAll(Bytes),
    /// HKEYS key
    Keys(Bytes),
    /// HVALS key
    Vals(Bytes),
    /// HLEN key
    Len(Bytes),
    /// HEXISTS key field
    Exists(Bytes, Bytes),
}

/// A hash write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// `HSET key field value [field value ...]`: how many fields are new.
    Set(Bytes, Vec<(Bytes, Bytes)>),
    /// `HMSET key field value [field value ...]`: HSET answering OK (deprecated in Redis,
    /// still sent by client libraries).
    MSet(Bytes, Vec<(Bytes, Bytes)>),
    /// HSETNX key field value: 1 if set.
    SetNx(Bytes, Bytes, Bytes),
    /// `HDEL key field [field ...]`: how many were removed.
    Del(Bytes, Vec<Bytes>),
    /// HINCRBY key field delta
    IncrBy(Bytes, Bytes, i64),
}

/// Parses a hash command.
pub fn parse(name: &str, a: &[Bytes]) -> Result<Cmd, String> {
    let read = |r| Ok(Cmd::Read(ReadOp::Hash(r)));
    let write = |w| Ok(Cmd::Write(WriteOp::Hash(w)));
    let key = a[0].clone();
    match name {
        "HGET" => read(Read::Get(key, a[1].clone())),
        "HMGET" => read(Read::MGet(key, a[1..].to_vec())),
        "HGETALL" => read(Read::GetAll(key)),
        "HKEYS" => read(Read::Keys(key)),
        "HVALS" => read(Read::Vals(key)),
        "HLEN" => read(Read::Len(key)),
        "HEXISTS" => read(Read::Exists(key, a[1].clone())),
        "HSET" | "HMSET" if a.len() % 2 == 0 => Err(super::arity_error(name)),
        "HSET" => write(Write::Set(key, pairs(&a[1..]))),
        "HMSET" => write(Write::MSet(key, pairs(&a[1..]))),
        "HSETNX" => write(Write::SetNx(key, a[1].clone(), a[2].clone())),
        "HDEL" => write(Write::Del(key, a[1..].to_vec())),
        "HINCRBY" => write(Write::IncrBy(key, a[1].clone(), int(&a[2])?)),
        _ => Err(format!("ERR unknown hash command '{name}'")),
    }
}

fn pairs(a: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    a.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()
}

/// The hash at `key`: `Ok(None)` if absent, an error if it holds another type.
fn hash<'a>(
    db: &'a Db,
    key: &[u8],
    now: Millis,
) -> Result<Option<&'a BTreeMap<Bytes, Bytes>>, Reply> {
    match db.get(key, now).map(|i| &i.data) {
        None => Ok(None),
        Some(Data::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(Reply::Err(WRONGTYPE.into())),
    }
}

impl Read {
    /// The answer at `now`.
    pub fn answer(&self, db: &Db, now: Millis) -> Reply {
        self.run(db, now).unwrap_or_else(|e| e)
    }

    fn run(&self, db: &Db, now: Millis) -> Result<Reply, Reply> {
        let empty = BTreeMap::new();
        let field = |k: &Bytes, f: &Bytes| -> Result<Reply, Reply> {
            Ok(Reply::opt(
                hash(db, k, now)?.and_then(|h| h.get(f).cloned()),
            ))
        };
        Ok(match self {
            Read::Get(k, f) => field(k, f)?,
            Read::MGet(k, fs) => {
                let h = hash(db, k, now)?.unwrap_or(&empty);
                Reply::Array(fs.iter().map(|f| Reply::opt(h.get(f).cloned())).collect())
            }
            Read::GetAll(k) => Reply::Map(
                hash(db, k, now)?
                    .unwrap_or(&empty)
                    .iter()
                    .map(|(f, v)| (Reply::Bulk(f.clone()), Reply::Bulk(v.clone())))
                    .collect(),
            ),
            Read::Keys(k) => Reply::Array(
                hash(db, k, now)?
                    .unwrap_or(&empty)
                    .keys()
                    .cloned()
                    .map(Reply::Bulk)
                    .collect(),
            ),
            Read::Vals(k) => Reply::Array(
                hash(db, k, now)?
                    .unwrap_or(&empty)
                    .values()
                    .cloned()
                    .map(Reply::Bulk)
                    .collect(),
            ),
            Read::Len(k) => Reply::Int(hash(db, k, now)?.map_or(0, |h| h.len() as i64)),
            Read::Exists(k, f) => {
                Reply::Int(hash(db, k, now)?.is_some_and(|h| h.contains_key(f)) as i64)
            }
        })
    }
}

impl Write {
    /// Applies the write.
    pub fn apply(self, db: &mut Db, at: Stamp) -> Reply {
        self.run(db, at).unwrap_or_else(|e| e)
    }

    fn run(self, db: &mut Db, at: Stamp) -> Result<Reply, Reply> {
        Ok(match self {
            Write::Set(k, pairs) => {
                let h = fields(db, k, at)?;
                Reply::Int(
                    pairs
                        .into_iter()
                        .filter(|(f, v)| h.insert(f.clone(), v.clone()).is_none())
                        .count() as i64,
                )
            }
            Write::MSet(k, pairs) => {
                Write::Set(k, pairs).run(db, at)?;
                Reply::Ok
            }
            Write::SetNx(k, f, v) => {
                if hash(db, &k, at.now)?.is_some_and(|h| h.contains_key(&f)) {
                    return Ok(Reply::Int(0));
                }
                fields(db, k, at)?.insert(f, v);
                Reply::Int(1)
            }
            Write::Del(k, fs) => {
                if hash(db, &k, at.now)?.is_none() {
                    return Ok(Reply::Int(0));
                }
                let h = fields(db, k.clone(), at)?;
                let removed = fs.iter().filter(|f| h.remove(*f).is_some()).count();
                if h.is_empty() {
                    db.remove(&k, at);
                }
                Reply::Int(removed as i64)
            }
            Write::IncrBy(k, f, delta) => {
                let current = match hash(db, &k, at.now)?.and_then(|h| h.get(&f)) {
                    None => 0,
                    Some(v) => {
                        int(v).map_err(|_| Reply::Err("ERR hash value is not an integer".into()))?
                    }
                };
                let n = current.checked_add(delta).ok_or_else(|| {
                    Reply::Err("ERR increment or decrement would overflow".into())
                })?;
                fields(db, k, at)?.insert(f, n.to_string().into());
                Reply::Int(n)
            }
        })
    }
}

/// The fields of the hash at `key` for changing, creating an empty hash if absent.
fn fields(db: &mut Db, key: Bytes, at: Stamp) -> Result<&mut BTreeMap<Bytes, Bytes>, Reply> {
    if db.get(&key, at.now).is_none() {
        db.put(key.clone(), Data::Hash(BTreeMap::new()), Ttl::Clear, at);
    }
    match db.data_mut(&key, at) {
        Some(Data::Hash(h)) => Ok(h),
        _ => Err(Reply::Err(WRONGTYPE.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;

    #[test]
    fn hash_commands_follow_redis() {
        let mut t = Tdb::new();
        assert_eq!(t.run("HSET h a 1 b 2", 0), Reply::Int(2));
        assert_eq!(t.run("HSET h a 9 c 3", 0), Reply::Int(1));
        assert_eq!(t.run("HGET h a", 0), Reply::Bulk("9".into()));
        assert_eq!(t.run("HGET h zz", 0), Reply::Nil);
        assert_eq!(t.run("HLEN h", 0), Reply::Int(3));
        assert_eq!(t.run("HEXISTS h b", 0), Reply::Int(1));
        assert_eq!(t.run("HSETNX h b 7", 0), Reply::Int(0));
        assert_eq!(t.run("HINCRBY h n 5", 0), Reply::Int(5));
        assert_eq!(t.run("HINCRBY h n -7", 0), Reply::Int(-2));
        assert!(matches!(t.run("HINCRBY h a x", 0), Reply::Err(_)));
        t.run("HSET h s abc", 0);
        assert!(matches!(t.run("HINCRBY h s 1", 0), Reply::Err(e) if e.contains("not an integer")));
        assert_eq!(
            t.run("HMGET h a zz", 0),
            Reply::Array(vec![Reply::Bulk("9".into()), Reply::Nil])
        );
        assert_eq!(t.run("HDEL h a b c n s", 0), Reply::Int(5));
        assert_eq!(
            t.run("EXISTS h", 0),
            Reply::Int(0),
            "an empty hash is removed"
        );
        assert_eq!(t.run("HGETALL h", 0), Reply::Map(vec![]));
        assert!(matches!(t.run("HSET h a", 0), Reply::Err(e) if e.contains("wrong number")));
        assert_eq!(t.run("HMSET h a 1 b 2", 0), Reply::Ok);
        assert_eq!(t.run("HLEN h", 0), Reply::Int(2));
        t.run("DEL h", 0);
        t.run("SET s v", 0);
        assert_eq!(t.run("HSET s f v", 0), Reply::Err(WRONGTYPE.into()));
        assert_eq!(t.run("HGETALL s", 0), Reply::Err(WRONGTYPE.into()));
        assert_eq!(t.run("GET s", 0), Reply::Bulk("v".into()), "unchanged");
    }

    #[test]
    fn a_hash_keeps_its_expiry_when_written() {
        let mut t = Tdb::new();
        t.run("HSET h a 1", 0);
        t.run("PEXPIRE h 100", 0);
        t.run("HSET h b 2", 50);
        assert_eq!(t.run("PTTL h", 50), Reply::Int(50));
        assert_eq!(t.run("HLEN h", 100), Reply::Int(0));
    }
}
