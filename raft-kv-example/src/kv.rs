//! The replicated key-value state machine: commands, queries, and exactly-once sessions.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogIndex, SnapshotMeta, StateMachine, StateMachineError};
use serde::{Deserialize, Serialize};

/// A client session: the client's id and the sequence number of this command. Retrying a
/// command with the same pair returns the first answer instead of applying it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Chosen at random by the client, once.
    pub client: u64,
    /// Increases by one per command of that client.
    pub seq: u64,
}

/// A write, as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Set by clients that want exactly-once application.
    pub session: Option<Session>,
    /// What to do.
    pub op: WriteOp,
}

/// The write operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// SET key value
    Set(Bytes, Bytes),
    /// MSET key value [key value ...]
    MSet(Vec<(Bytes, Bytes)>),
    /// DEL key [key ...]
    Del(Vec<Bytes>),
    /// APPEND key value
    Append(Bytes, Bytes),
    /// INCRBY key delta (INCR is INCRBY 1)
    IncrBy(Bytes, i64),
}

/// The answer to a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// +OK
    Ok,
    /// An integer reply.
    Int(i64),
    /// An error reply (the write changed nothing).
    Err(String),
}

/// The read-only queries, answered after a linearizable read barrier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// GET key
    Get(Bytes),
    /// MGET key [key ...]
    MGet(Vec<Bytes>),
    /// EXISTS key [key ...]
    Exists(Vec<Bytes>),
    /// DBSIZE
    DbSize,
}

/// The answer to a query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// One value or nil.
    Value(Option<Bytes>),
    /// Several values or nils.
    Values(Vec<Option<Bytes>>),
    /// A count.
    Int(i64),
}

/// Most client sessions remembered; beyond it the least recently used is forgotten (a
/// client silent that long loses exactly-once protection for a retry, not its data).
pub const MAX_SESSIONS: usize = 100_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SessionEntry {
    seq: u64,
    result: Option<WriteResult>,
    last_index: u64,
}

/// Everything the state machine holds; a snapshot is this, encoded with postcard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KvState {
    data: BTreeMap<Bytes, Bytes>,
    sessions: HashMap<u64, SessionEntry>,
    applied: LogIndex,
}

/// The key-value [`StateMachine`]. Deterministic: the same log gives the same data and
/// answers on every replica. In memory: after a restart it is rebuilt from the log (or a
/// snapshot), so it reports applied index 0 until then.
#[derive(Debug, Default)]
pub struct KvStateMachine {
    state: KvState,
}

fn encode<T: Serialize>(v: &T) -> Result<Bytes, StateMachineError> {
    postcard::to_allocvec(v)
        .map(Bytes::from)
        .map_err(|e| StateMachineError(format!("cannot encode: {e}")))
}

impl KvStateMachine {
    /// An empty store.
    pub fn new() -> KvStateMachine {
        KvStateMachine::default()
    }

    /// Applies one write, at most once per session sequence number.
    fn apply_write(&mut self, index: LogIndex, w: Write) -> WriteResult {
        if let Some(s) = w.session {
            if let Some(known) = self.state.sessions.get(&s.client) {
                if s.seq <= known.seq {
                    // A retry of a command already applied: answer it, change nothing.
                    return known
                        .result
                        .clone()
                        .filter(|_| s.seq == known.seq)
                        .unwrap_or_else(|| {
                            WriteResult::Err("ERR stale session sequence number".into())
                        });
                }
            }
        }
        let result = self.apply_op(w.op);
        if let Some(s) = w.session {
            self.state.sessions.insert(
                s.client,
                SessionEntry {
                    seq: s.seq,
                    result: Some(result.clone()),
                    last_index: index.0,
                },
            );
            self.expire_sessions();
        }
        result
    }

    fn expire_sessions(&mut self) {
        if self.state.sessions.len() <= MAX_SESSIONS {
            return;
        }
        // Deterministic: the least recently used by log index, the same on every replica.
        if let Some(oldest) = self
            .state
            .sessions
            .iter()
            .min_by_key(|(id, s)| (s.last_index, **id))
            .map(|(id, _)| *id)
        {
            self.state.sessions.remove(&oldest);
        }
    }

    fn apply_op(&mut self, op: WriteOp) -> WriteResult {
        let data = &mut self.state.data;
        match op {
            WriteOp::Set(k, v) => {
                data.insert(k, v);
                WriteResult::Ok
            }
            WriteOp::MSet(pairs) => {
                for (k, v) in pairs {
                    data.insert(k, v);
                }
                WriteResult::Ok
            }
            WriteOp::Del(keys) => {
                WriteResult::Int(keys.iter().filter(|k| data.remove(*k).is_some()).count() as i64)
            }
            WriteOp::Append(k, v) => {
                let mut cur = data.get(&k).map(|b| b.to_vec()).unwrap_or_default();
                cur.extend_from_slice(&v);
                let len = cur.len() as i64;
                data.insert(k, Bytes::from(cur));
                WriteResult::Int(len)
            }
            WriteOp::IncrBy(k, delta) => {
                let current = match data.get(&k) {
                    None => 0,
                    Some(v) => match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => {
                            return WriteResult::Err(
                                "ERR value is not an integer or out of range".into(),
                            )
                        }
                    },
                };
                match current.checked_add(delta) {
                    Some(n) => {
                        data.insert(k, Bytes::from(n.to_string()));
                        WriteResult::Int(n)
                    }
                    None => WriteResult::Err("ERR increment or decrement would overflow".into()),
                }
            }
        }
    }

    fn answer(&self, q: Query) -> QueryResult {
        let data = &self.state.data;
        match q {
            Query::Get(k) => QueryResult::Value(data.get(&k).cloned()),
            Query::MGet(keys) => {
                QueryResult::Values(keys.iter().map(|k| data.get(k).cloned()).collect())
            }
            Query::Exists(keys) => {
                QueryResult::Int(keys.iter().filter(|k| data.contains_key(*k)).count() as i64)
            }
            Query::DbSize => QueryResult::Int(data.len() as i64),
        }
    }
}

#[async_trait]
impl StateMachine for KvStateMachine {
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError> {
        Ok(self.state.applied)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let response = match &e.payload {
                EntryPayload::Command(raw) => {
                    let result = match postcard::from_bytes::<Write>(raw) {
                        Ok(w) => self.apply_write(e.index(), w),
                        // Deterministic on every replica: a command that does not decode
                        // is answered with an error and changes nothing.
                        Err(err) => WriteResult::Err(format!("ERR undecodable command: {err}")),
                    };
                    encode(&result)?
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            };
            self.state.applied = e.index();
            out.push(response);
        }
        Ok(out)
    }

    async fn query(&self, query: Bytes) -> Result<Bytes, StateMachineError> {
        let q: Query = postcard::from_bytes(&query)
            .map_err(|e| StateMachineError(format!("bad query: {e}")))?;
        encode(&self.answer(q))
    }

    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        encode(&self.state)
    }

    async fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), StateMachineError> {
        let state: KvState = postcard::from_bytes(&data)
            .map_err(|e| StateMachineError(format!("bad snapshot: {e}")))?;
        if state.applied != meta.last_log_id.index {
            return Err(StateMachineError(format!(
                "snapshot data is at index {} but its metadata says {}",
                state.applied.0, meta.last_log_id.index.0
            )));
        }
        self.state = state;
        Ok(())
    }
}

/// Encodes a write for [`raft_core::RaftNode::propose`].
pub fn encode_write(w: &Write) -> Bytes {
    Bytes::from(postcard::to_allocvec(w).unwrap_or_default())
}

/// Encodes a query for [`raft_core::RaftNode::read`].
pub fn encode_query(q: &Query) -> Bytes {
    Bytes::from(postcard::to_allocvec(q).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::LogId;

    fn entry(index: u64, w: &Write) -> Entry {
        Entry {
            log_id: LogId::new(1, index),
            payload: EntryPayload::Command(encode_write(w)),
        }
    }

    fn w(op: WriteOp, session: Option<(u64, u64)>) -> Write {
        Write {
            session: session.map(|(client, seq)| Session { client, seq }),
            op,
        }
    }

    async fn apply(sm: &mut KvStateMachine, index: u64, write: Write) -> WriteResult {
        let out = sm.apply(&[entry(index, &write)]).await.unwrap();
        postcard::from_bytes(&out[0]).unwrap()
    }

    #[tokio::test]
    async fn snapshot_round_trip_restores_data_sessions_and_index() {
        let mut sm = KvStateMachine::new();
        apply(&mut sm, 1, w(WriteOp::Set("a".into(), "1".into()), None)).await;
        apply(&mut sm, 2, w(WriteOp::IncrBy("n".into(), 5), Some((7, 1)))).await;
        let snap = sm.snapshot().await.unwrap();
        let meta = SnapshotMeta {
            last_log_id: LogId::new(1, 2),
            membership: Default::default(),
        };
        let mut restored = KvStateMachine::new();
        restored.restore(&meta, snap).await.unwrap();
        assert_eq!(restored.applied_index().await.unwrap(), LogIndex(2));
        assert_eq!(
            restored.answer(Query::Get("a".into())),
            QueryResult::Value(Some("1".into()))
        );
        // The session survived: a retry is not applied twice.
        assert_eq!(
            apply(
                &mut restored,
                3,
                w(WriteOp::IncrBy("n".into(), 5), Some((7, 1)))
            )
            .await,
            WriteResult::Int(5)
        );
        assert_eq!(
            restored.answer(Query::Get("n".into())),
            QueryResult::Value(Some("5".into()))
        );
    }

    #[tokio::test]
    async fn a_retried_session_command_applies_once() {
        let mut sm = KvStateMachine::new();
        for index in 1..=3 {
            let r = apply(
                &mut sm,
                index,
                w(WriteOp::IncrBy("c".into(), 1), Some((1, 1))),
            )
            .await;
            assert_eq!(r, WriteResult::Int(1));
        }
        assert_eq!(
            apply(&mut sm, 4, w(WriteOp::IncrBy("c".into(), 1), Some((1, 2)))).await,
            WriteResult::Int(2)
        );
    }

    #[tokio::test]
    async fn incr_of_a_non_integer_is_an_error_that_changes_nothing() {
        let mut sm = KvStateMachine::new();
        apply(&mut sm, 1, w(WriteOp::Set("s".into(), "abc".into()), None)).await;
        assert!(matches!(
            apply(&mut sm, 2, w(WriteOp::IncrBy("s".into(), 1), None)).await,
            WriteResult::Err(_)
        ));
        assert_eq!(
            sm.answer(Query::Get("s".into())),
            QueryResult::Value(Some("abc".into()))
        );
    }

    #[tokio::test]
    async fn a_snapshot_with_mismatched_metadata_is_refused() {
        let mut sm = KvStateMachine::new();
        apply(&mut sm, 1, w(WriteOp::Set("a".into(), "1".into()), None)).await;
        let snap = sm.snapshot().await.unwrap();
        let meta = SnapshotMeta {
            last_log_id: LogId::new(1, 9),
            membership: Default::default(),
        };
        assert!(KvStateMachine::new().restore(&meta, snap).await.is_err());
    }
}
