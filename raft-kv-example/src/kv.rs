//! The replicated key-value state machine: writes stamped with the leader's time, queries,
//! and exactly-once sessions. The commands themselves live in [`crate::commands`].

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::session::{ClientSession, SessionOutcome, SessionTable};
use raft_core::{Entry, EntryPayload, LogIndex, SnapshotMeta, StateMachine, StateMachineError};
use serde::{Deserialize, Serialize};

use crate::commands::{Change, ReadOp, Reply};
use crate::db::{Db, Millis};

/// A client session: the client's id and the sequence number of this command. Retrying a
/// command with the same pair returns the first answer instead of applying it again (the
/// framework's session layer, [`raft_core::session`]).
pub type Session = ClientSession;

/// A write, as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Set by clients that want exactly-once application.
    pub session: Option<Session>,
    /// The proposing leader's clock (ms since the Unix epoch). Replicas apply the write at
    /// this time, never at their own, so expiry is the same everywhere.
    pub at_ms: Millis,
    /// What to do.
    pub op: Change,
}

/// A read, answered after a linearizable read barrier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A data read at the serving node's clock (never before the last applied write's).
    Data {
        /// The serving node's clock, ms since the Unix epoch.
        at_ms: Millis,
        /// What to read.
        op: ReadOp,
    },
    /// WATCH: the applied index the read saw; EXEC aborts if a watched key changed after.
    AppliedIndex,
}

/// Everything the state machine holds; a snapshot is this, encoded with postcard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KvState {
    db: Db,
    sessions: SessionTable<Reply>,
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
    fn apply_write(&mut self, index: LogIndex, w: Write) -> Reply {
        if let Some(s) = w.session {
            match self.state.sessions.check(s) {
                SessionOutcome::Apply => {}
                // A retry of a command already applied: answer it, change nothing.
                SessionOutcome::Duplicate(reply) => return reply,
                SessionOutcome::Stale => {
                    return Reply::Err("ERR stale session sequence number".into())
                }
                SessionOutcome::Expired => {
                    return Reply::Err(
                        "ERR session expired: this command may have applied already; check, then continue with a new client id".into(),
                    )
                }
            }
        }
        let stamp = self.state.db.begin(index.0, w.at_ms);
        let result = w.op.apply(&mut self.state.db, stamp);
        if let Some(s) = w.session {
            self.state.sessions.record(s, index.0, result.clone());
        }
        result
    }

    fn answer(&self, q: Query) -> Reply {
        match q {
            Query::Data { at_ms, op } => op.answer(&self.state.db, self.state.db.read_time(at_ms)),
            Query::AppliedIndex => Reply::Int(self.state.applied.0 as i64),
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
                    // Only this server proposes, so an entry that does not decode was written
                    // by another format of it: applying around it would let replicas of
                    // different versions diverge, so the node stops and says why.
                    let w = postcard::from_bytes::<Write>(raw).map_err(|err| {
                        StateMachineError(format!(
                            "entry {} is not a command of this raft-kv version (another log format?): {err}",
                            e.index().0
                        ))
                    })?;
                    let result = self.apply_write(e.index(), w);
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
        let mut state: KvState = postcard::from_bytes(&data)
            .map_err(|e| StateMachineError(format!("bad snapshot: {e}")))?;
        if state.applied != meta.last_log_id.index {
            return Err(StateMachineError(format!(
                "snapshot data is at index {} but its metadata says {}",
                state.applied.0, meta.last_log_id.index.0
            )));
        }
        state.db.rebuild_indexes();
        state.sessions.rebuild();
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
    use crate::commands::{self, Cmd, Queued, Transaction};
    use raft_core::LogId;

    /// The write `line` (words split on spaces) stamped `at_ms`, with an optional session.
    fn w(line: &str, at_ms: Millis, session: Option<(u64, u64)>) -> Write {
        let Cmd::Write(op) = cmd(line) else {
            panic!("{line} is not a write")
        };
        Write {
            session: session.map(|(client, seq)| Session { client, seq }),
            at_ms,
            op: Change::One(op),
        }
    }

    fn words(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn cmd(line: &str) -> Cmd {
        let words = words(line);
        commands::parse(&commands::word(&words[0]), &words[1..])
            .unwrap()
            .unwrap()
    }

    fn get(sm: &KvStateMachine, key: &str, at_ms: Millis) -> Reply {
        let Cmd::Read(op) = cmd(&format!("GET {key}")) else {
            unreachable!()
        };
        sm.answer(Query::Data { at_ms, op })
    }

    async fn apply(sm: &mut KvStateMachine, index: u64, write: Write) -> Reply {
        let e = Entry {
            log_id: LogId::new(1, index),
            payload: EntryPayload::Command(encode_write(&write)),
        };
        let out = sm.apply(&[e]).await.unwrap();
        postcard::from_bytes(&out[0]).unwrap()
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: LogId::new(1, index),
            membership: Default::default(),
        }
    }

    #[tokio::test]
    async fn snapshot_round_trip_restores_data_expiries_hashes_sessions_and_index() {
        let mut sm = KvStateMachine::new();
        apply(&mut sm, 1, w("SET a 1 PX 1000", 0, None)).await;
        apply(&mut sm, 2, w("INCRBY n 5", 0, Some((7, 1)))).await;
        apply(&mut sm, 3, w("HSET h f v", 0, None)).await;
        let snap = sm.snapshot().await.unwrap();
        let mut restored = KvStateMachine::new();
        restored.restore(&meta(3), snap).await.unwrap();
        assert_eq!(restored.applied_index().await.unwrap(), LogIndex(3));
        assert_eq!(get(&restored, "a", 999), Reply::Bulk("1".into()));
        assert_eq!(
            get(&restored, "a", 1_000),
            Reply::Nil,
            "the expiry came along"
        );
        // The session survived: a retry is not applied twice.
        assert_eq!(
            apply(&mut restored, 4, w("INCRBY n 5", 0, Some((7, 1)))).await,
            Reply::Int(5)
        );
        assert_eq!(get(&restored, "n", 0), Reply::Bulk("5".into()));
        assert_eq!(
            apply(&mut restored, 5, w("HINCRBY h c 2", 0, None)).await,
            Reply::Int(2)
        );
        // The expiry index was rebuilt: the next write removes the expired key.
        apply(&mut restored, 6, w("SET b 1", 2_000, None)).await;
        assert!(!restored.state.db.keys(b"*", 0).contains(&Bytes::from("a")));
    }

    #[tokio::test]
    async fn a_retried_session_command_applies_once() {
        let mut sm = KvStateMachine::new();
        for index in 1..=3 {
            let r = apply(&mut sm, index, w("INCR c", 0, Some((1, 1)))).await;
            assert_eq!(r, Reply::Int(1));
        }
        assert_eq!(
            apply(&mut sm, 4, w("INCR c", 0, Some((1, 2)))).await,
            Reply::Int(2)
        );
    }

    #[tokio::test]
    async fn replicas_expire_by_the_stamp_in_the_log_not_their_clock() {
        // Two replicas apply the same entries at different wall-clock moments: same state.
        let log = [
            w("SET k v PX 100", 1_000, None),
            w("SET j v", 1_050, None),
            w("SET x v", 1_200, None),
        ];
        let mut a = KvStateMachine::new();
        let mut b = KvStateMachine::new();
        for (i, e) in log.iter().enumerate() {
            apply(&mut a, i as u64 + 1, e.clone()).await;
        }
        for (i, e) in log.iter().enumerate() {
            apply(&mut b, i as u64 + 1, e.clone()).await;
        }
        assert_eq!(a.snapshot().await.unwrap(), b.snapshot().await.unwrap());
        // A leader whose clock is behind does not bring the key back.
        apply(&mut a, 4, w("SET y v", 500, None)).await;
        assert_eq!(get(&a, "k", 0), Reply::Nil);
    }

    #[tokio::test]
    async fn exec_applies_all_at_once_and_watch_aborts_on_a_change() {
        let mut sm = KvStateMachine::new();
        apply(&mut sm, 1, w("SET k 1", 0, None)).await;
        let watched = |since| Transaction {
            watch: Some((since, vec![Bytes::from("k")])),
            cmds: ["INCR k", "GET k", "SET other x", "PING"]
                .map(|c| commands::queue(&words(c)).unwrap())
                .to_vec(),
        };
        let exec = |t| Write {
            session: None,
            at_ms: 0,
            op: Change::Exec(t),
        };
        assert_eq!(
            apply(&mut sm, 2, exec(watched(1))).await,
            Reply::Array(vec![
                Reply::Int(2),
                Reply::Bulk("2".into()),
                Reply::Ok,
                Reply::Status("PONG".into())
            ])
        );
        // k changed at index 2, after a WATCH that read at index 1.
        assert_eq!(apply(&mut sm, 3, exec(watched(1))).await, Reply::Aborted);
        assert_eq!(
            get(&sm, "k", 0),
            Reply::Bulk("2".into()),
            "an aborted EXEC changes nothing"
        );
        // An error inside a transaction does not stop the others (as in Redis).
        let t = Transaction {
            watch: None,
            cmds: vec![Queued::Cmd(cmd("HSET k f v")), Queued::Cmd(cmd("INCR k"))],
        };
        let Reply::Array(r) = apply(&mut sm, 4, exec(t)).await else {
            panic!()
        };
        assert!(matches!(r[0], Reply::Err(_)) && r[1] == Reply::Int(3));
    }

    #[tokio::test]
    async fn an_entry_of_another_format_stops_the_node_instead_of_being_skipped() {
        let mut sm = KvStateMachine::new();
        let e = Entry {
            log_id: LogId::new(1, 1),
            payload: EntryPayload::Command(Bytes::from_static(b"\xff\xff\xff\xff")),
        };
        let err = sm.apply(&[e]).await.unwrap_err().to_string();
        assert!(
            err.contains("not a command of this raft-kv version"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_snapshot_with_mismatched_metadata_is_refused() {
        let mut sm = KvStateMachine::new();
        apply(&mut sm, 1, w("SET a 1", 0, None)).await;
        let snap = sm.snapshot().await.unwrap();
        assert!(KvStateMachine::new().restore(&meta(9), snap).await.is_err());
    }
}
