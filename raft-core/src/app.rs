//! Typed applications: declare your command, response and query types, write `apply` and
//! `query` as plain functions, and get a [`StateMachine`] with exactly-once sessions and
//! snapshots for free.
//!
//! ```
//! use raft_core::app::App;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter(i64);
//!
//! #[derive(Serialize, Deserialize)]
//! enum Cmd { Add(i64) }
//!
//! impl App for Counter {
//!     type Command = Cmd;
//!     type Response = Result<i64, String>; // the application's own errors are responses
//!     type Query = ();
//!     type QueryResponse = i64;
//!
//!     fn apply(&mut self, cmd: Cmd) -> Self::Response {
//!         let Cmd::Add(n) = cmd;
//!         self.0 = self.0.checked_add(n).ok_or("overflow")?;
//!         Ok(self.0)
//!     }
//!
//!     fn query(&self, _: &()) -> i64 {
//!         self.0
//!     }
//! }
//! // `AppStateMachine::new(Counter::default())` is the state machine to start a node with;
//! // `AppNode::<Counter>::new(node).propose(Cmd::Add(2)).await` returns `Ok(Ok(2))`.
//! ```
//!
//! What you get:
//! - **Your errors are responses.** `apply` cannot fail: a deterministic refusal
//!   (insufficient funds, a missing key) is part of `Response`, reaches the caller, and
//!   never stops a node. Only a failure of the machinery itself (a snapshot that cannot be
//!   encoded) is fatal, as [`StateMachine::apply`] documents.
//! - **Exactly once.** Commands proposed with a [`ClientSession`] (the TCP client in
//!   `raft-transport` does this for every command) are applied once however often they are
//!   retried; the session table lives in the replicated state and in snapshots.
//! - **Snapshots.** The application is serialized with postcard as a whole, with the
//!   session table and the applied index. This suits state that fits in memory; a
//!   state machine that keeps its data on disk implements [`StateMachine`] itself.

use std::marker::PhantomData;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{RaftError, StateMachineError};
use crate::node::RaftNode;
use crate::session::{ClientSession, SessionOutcome, SessionTable};
use crate::state_machine::StateMachine;
use crate::types::{Entry, EntryPayload, LogIndex, SnapshotMeta};

/// A replicated application: its state is `Self`, changed only by [`App::apply`].
///
/// Like every state machine it must be deterministic: no clocks, randomness or I/O in
/// `apply`; the same commands in the same order give the same state and responses on every
/// replica. (A time the application needs travels in the command, stamped by the proposer.)
pub trait App: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// A change, as proposed by clients.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// The answer to a command, including the application's own errors.
    type Response: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    /// A read-only question.
    type Query: Serialize + DeserializeOwned + Send + 'static;
    /// The answer to a query.
    type QueryResponse: Serialize + DeserializeOwned + Send + 'static;

    /// Applies one committed command.
    fn apply(&mut self, command: Self::Command) -> Self::Response;

    /// Answers a query from the current state (after a linearizable read barrier).
    fn query(&self, query: &Self::Query) -> Self::QueryResponse;
}

/// A command as it travels through the log: the application's command and, for
/// exactly-once application, its session.
#[derive(Serialize, Deserialize)]
pub struct Envelope<C> {
    /// Set by clients that retry (see [`crate::session`]).
    pub session: Option<ClientSession>,
    /// The application's command.
    pub command: C,
}

/// The outcome of one command, as the state machine answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<R> {
    /// Applied (or a retry of an applied command): the application's response.
    Applied(R),
    /// The session was forgotten and the command may have applied already; it was not
    /// applied again. Start a new session and check the state before retrying.
    SessionExpired,
    /// The command is older than the session's latest; it was not applied.
    Stale,
    /// The entry did not decode as this application's command (another application's log,
    /// or a client built against other types). Deterministic: nothing changed anywhere.
    Undecodable(String),
}

/// Encodes a command for [`RaftNode::propose`].
pub fn encode_command<C: Serialize>(
    session: Option<ClientSession>,
    command: &C,
) -> Result<Bytes, RaftError> {
    #[derive(Serialize)]
    struct Borrowed<'a, C> {
        session: Option<ClientSession>,
        command: &'a C,
    }
    postcard::to_allocvec(&Borrowed { session, command })
        .map(Bytes::from)
        .map_err(|e| RaftError::Codec(format!("cannot encode the command: {e}")))
}

/// Decodes what [`AppStateMachine`] answered to a command.
pub fn decode_outcome<R: DeserializeOwned>(raw: &[u8]) -> Result<Outcome<R>, RaftError> {
    postcard::from_bytes(raw)
        .map_err(|e| RaftError::Codec(format!("cannot decode the command's outcome: {e}")))
}

/// Everything an [`AppStateMachine`] snapshots, as decoded.
#[derive(Deserialize)]
struct Image<A, R> {
    applied: LogIndex,
    sessions: SessionTable<R>,
    app: A,
}

/// The same fields, borrowed, as encoded (same order, so the same bytes).
#[derive(Serialize)]
struct ImageRef<'a, A, R> {
    applied: LogIndex,
    sessions: &'a SessionTable<R>,
    app: &'a A,
}

/// The [`StateMachine`] of an [`App`]: decodes commands, applies each once per session, and
/// snapshots the application with its session table.
pub struct AppStateMachine<A: App> {
    app: A,
    sessions: SessionTable<A::Response>,
    applied: LogIndex,
}

impl<A: App> AppStateMachine<A> {
    /// A state machine starting from `app` (the state before the first entry).
    pub fn new(app: A) -> AppStateMachine<A> {
        AppStateMachine {
            app,
            sessions: SessionTable::default(),
            applied: LogIndex(0),
        }
    }

    /// The same, remembering at most `max_clients` sessions. Every replica must use the
    /// same value, and it must not change over the cluster's life: which client is
    /// forgotten decides what a retry does, so replicas with different sizes could answer
    /// differently. (A snapshot carries the size it was taken with.)
    pub fn with_max_clients(app: A, max_clients: usize) -> AppStateMachine<A> {
        AppStateMachine {
            sessions: SessionTable::new(max_clients),
            ..AppStateMachine::new(app)
        }
    }

    /// The application's current state.
    pub fn app(&self) -> &A {
        &self.app
    }

    fn apply_one(&mut self, index: LogIndex, raw: &[u8]) -> Outcome<A::Response> {
        let envelope: Envelope<A::Command> = match postcard::from_bytes(raw) {
            Ok(e) => e,
            Err(e) => return Outcome::Undecodable(e.to_string()),
        };
        let Some(session) = envelope.session else {
            return Outcome::Applied(self.app.apply(envelope.command));
        };
        match self.sessions.check(session) {
            SessionOutcome::Duplicate(r) => Outcome::Applied(r),
            SessionOutcome::Stale => Outcome::Stale,
            SessionOutcome::Expired => Outcome::SessionExpired,
            SessionOutcome::Apply => {
                let response = self.app.apply(envelope.command);
                self.sessions.record(session, index.0, response.clone());
                Outcome::Applied(response)
            }
        }
    }
}

fn sm_err(what: &str) -> impl FnOnce(postcard::Error) -> StateMachineError + '_ {
    move |e| StateMachineError(format!("{what}: {e}"))
}

#[async_trait]
impl<A: App> StateMachine for AppStateMachine<A> {
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError> {
        Ok(self.applied)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let response = match &e.payload {
                EntryPayload::Command(raw) => {
                    let outcome = self.apply_one(e.index(), raw);
                    postcard::to_allocvec(&outcome)
                        .map(Bytes::from)
                        .map_err(sm_err("cannot encode a response"))?
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            };
            self.applied = e.index();
            out.push(response);
        }
        Ok(out)
    }

    async fn query(&self, query: Bytes) -> Result<Bytes, StateMachineError> {
        let q: A::Query = postcard::from_bytes(&query).map_err(sm_err("bad query"))?;
        postcard::to_allocvec(&self.app.query(&q))
            .map(Bytes::from)
            .map_err(sm_err("cannot encode a query response"))
    }

    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        let image = ImageRef {
            applied: self.applied,
            sessions: &self.sessions,
            app: &self.app,
        };
        postcard::to_allocvec(&image)
            .map(Bytes::from)
            .map_err(sm_err("cannot encode the snapshot"))
    }

    async fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), StateMachineError> {
        let mut image: Image<A, A::Response> =
            postcard::from_bytes(&data).map_err(sm_err("bad snapshot"))?;
        if image.applied != meta.last_log_id.index {
            return Err(StateMachineError(format!(
                "snapshot data is at index {} but its metadata says {}",
                image.applied.0, meta.last_log_id.index.0
            )));
        }
        image.sessions.rebuild();
        self.app = image.app;
        self.sessions = image.sessions;
        self.applied = image.applied;
        Ok(())
    }
}

/// A [`RaftNode`] running an [`AppStateMachine<A>`], spoken to in `A`'s types.
pub struct AppNode<A: App> {
    node: RaftNode,
    _app: PhantomData<fn() -> A>,
}

impl<A: App> Clone for AppNode<A> {
    fn clone(&self) -> Self {
        AppNode::new(self.node.clone())
    }
}

impl<A: App> AppNode<A> {
    /// Wraps a node started with an [`AppStateMachine<A>`].
    pub fn new(node: RaftNode) -> AppNode<A> {
        AppNode {
            node,
            _app: PhantomData,
        }
    }

    /// The untyped node underneath (membership, status, bytes).
    pub fn raft(&self) -> &RaftNode {
        &self.node
    }

    /// Proposes `command` on this node (which must be the leader) and returns the
    /// application's response once it is committed and applied. Without a session: a
    /// caller that retries after an error whose outcome is unknown should use
    /// [`propose_in`](AppNode::propose_in).
    pub async fn propose(&self, command: A::Command) -> Result<A::Response, RaftError> {
        self.submit(None, &command).await
    }

    /// Proposes `command` tagged with `session` (see [`ClientSession::next_command`]); retrying with
    /// the same tag, on this node or another, applies it at most once.
    pub async fn propose_in(
        &self,
        session: ClientSession,
        command: A::Command,
    ) -> Result<A::Response, RaftError> {
        self.submit(Some(session), &command).await
    }

    async fn submit(
        &self,
        session: Option<ClientSession>,
        command: &A::Command,
    ) -> Result<A::Response, RaftError> {
        let raw = self.node.propose(encode_command(session, command)?).await?;
        match decode_outcome(&raw)? {
            Outcome::Applied(r) => Ok(r),
            Outcome::SessionExpired => Err(RaftError::Session(
                "the session was forgotten; the command may have applied already".into(),
            )),
            Outcome::Stale => Err(RaftError::Session(
                "the command is older than the session's latest; not applied".into(),
            )),
            Outcome::Undecodable(e) => Err(RaftError::Codec(e)),
        }
    }

    /// Answers `query` linearizably (the node's default [`ReadPolicy`](crate::ReadPolicy)).
    pub async fn query(&self, query: &A::Query) -> Result<A::QueryResponse, RaftError> {
        let q = postcard::to_allocvec(query)
            .map_err(|e| RaftError::Codec(format!("cannot encode the query: {e}")))?;
        let raw = self.node.read(Bytes::from(q)).await?;
        postcard::from_bytes(&raw)
            .map_err(|e| RaftError::Codec(format!("cannot decode the query response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;

    #[derive(Default, Serialize, Deserialize)]
    struct Counter(i64);

    impl App for Counter {
        type Command = i64;
        type Response = Result<i64, String>;
        type Query = ();
        type QueryResponse = i64;

        fn apply(&mut self, n: i64) -> Result<i64, String> {
            self.0 = self.0.checked_add(n).ok_or("overflow")?;
            Ok(self.0)
        }

        fn query(&self, _: &()) -> i64 {
            self.0
        }
    }

    fn entry(index: u64, session: Option<ClientSession>, n: i64) -> Entry {
        Entry {
            log_id: LogId::new(1, index),
            payload: EntryPayload::Command(encode_command(session, &n).unwrap()),
        }
    }

    async fn apply(sm: &mut AppStateMachine<Counter>, e: Entry) -> Outcome<Result<i64, String>> {
        decode_outcome(&sm.apply(&[e]).await.unwrap()[0]).unwrap()
    }

    #[tokio::test]
    async fn an_application_error_is_a_response_and_changes_nothing() {
        let mut sm = AppStateMachine::new(Counter(i64::MAX));
        let r = apply(&mut sm, entry(1, None, 1)).await;
        assert_eq!(r, Outcome::Applied(Err("overflow".into())));
        assert_eq!(sm.app().0, i64::MAX);
        assert_eq!(sm.applied_index().await.unwrap(), LogIndex(1));
    }

    #[tokio::test]
    async fn a_retried_command_applies_once_even_after_a_snapshot() {
        let mut sm = AppStateMachine::new(Counter::default());
        let mut session = ClientSession::random();
        let tag = session.next_command();
        assert_eq!(
            apply(&mut sm, entry(1, Some(tag), 5)).await,
            Outcome::Applied(Ok(5))
        );
        let snap = sm.snapshot().await.unwrap();
        let mut restored = AppStateMachine::new(Counter::default());
        let meta = SnapshotMeta {
            last_log_id: LogId::new(1, 1),
            membership: Default::default(),
        };
        restored.restore(&meta, snap).await.unwrap();
        // The retry reaches a replica that was rebuilt from the snapshot.
        assert_eq!(
            apply(&mut restored, entry(2, Some(tag), 5)).await,
            Outcome::Applied(Ok(5))
        );
        assert_eq!(restored.app().0, 5);
        let next = session.next_command();
        assert_eq!(
            apply(&mut restored, entry(3, Some(next), 1)).await,
            Outcome::Applied(Ok(6))
        );
        assert_eq!(
            apply(&mut restored, entry(4, Some(tag), 5)).await,
            Outcome::Stale
        );
    }

    #[tokio::test]
    async fn a_foreign_entry_is_refused_deterministically() {
        let mut sm = AppStateMachine::new(Counter::default());
        let e = Entry {
            log_id: LogId::new(1, 1),
            payload: EntryPayload::Command(Bytes::from_static(b"\xff\xff\xff")),
        };
        assert!(matches!(apply(&mut sm, e).await, Outcome::Undecodable(_)));
        assert_eq!(sm.applied_index().await.unwrap(), LogIndex(1));
    }

    #[tokio::test]
    async fn queries_answer_in_the_application_types() {
        let mut sm = AppStateMachine::new(Counter::default());
        apply(&mut sm, entry(1, None, 7)).await;
        let raw = sm
            .query(Bytes::from(postcard::to_allocvec(&()).unwrap()))
            .await;
        assert_eq!(postcard::from_bytes::<i64>(&raw.unwrap()).unwrap(), 7);
    }
}
