//! Exactly-once client commands (dissertation section 6.3).
//!
//! A client that retries a command after a timeout or a leader change cannot know whether
//! the first attempt was applied: the old leader may have committed it just before dying.
//! Each client therefore tags its commands with a session (a random client id and a
//! sequence number that grows by one per command). The state machine remembers, per
//! client, the last sequence number applied and its response: a retry of that number gets
//! the remembered response and changes nothing.
//!
//! The table is part of the replicated state (it goes into snapshots) and every decision is
//! a function of the log alone, so replicas agree. It holds at most a configured number of
//! clients; beyond it the client whose last command is oldest in the log is forgotten. A
//! forgotten client's later commands are answered [`SessionOutcome::Expired`] instead of
//! being applied. The one case the table cannot tell apart is a retry of a client's *first*
//! command after the client was forgotten, which looks like a new client: that takes
//! `max_clients` other clients' commands between the attempt and its retry (100,000 by
//! default), so size the table above the number of clients active within a retry window.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A command's session: who sent it and its place in that client's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientSession {
    /// Chosen at random by the client, once.
    pub client: u64,
    /// 1 for the client's first command, then one more per command.
    pub seq: u64,
}

impl ClientSession {
    /// A new session with a random client id, before its first command.
    pub fn random() -> ClientSession {
        ClientSession {
            client: rand::random::<u64>() >> 1,
            seq: 0,
        }
    }

    /// Moves to the next command's sequence number and returns the tag for it.
    pub fn next_command(&mut self) -> ClientSession {
        self.seq += 1;
        *self
    }
}

/// What the table says about a command before it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutcome<R> {
    /// Not seen before: apply it, then [`SessionTable::record`] its response.
    Apply,
    /// A retry of the last command applied for this client: here is its response.
    Duplicate(R),
    /// Older than the last command applied for this client; its response is gone. Only a
    /// client that sends two commands at once sees this.
    Stale,
    /// The client was forgotten (the table was full) after this command may have applied;
    /// applying it again could apply it twice, so it is not applied.
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered<R> {
    seq: u64,
    response: R,
    /// The log index of the client's last command, for forgetting the oldest first.
    index: u64,
}

/// The replicated table of client sessions; `R` is the response remembered for a retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable<R> {
    clients: BTreeMap<u64, Remembered<R>>,
    max_clients: usize,
    /// Clients by the log index of their last command; rebuilt after decoding.
    #[serde(skip)]
    by_index: BTreeSet<(u64, u64)>,
}

/// How many clients a [`SessionTable`] remembers by default.
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;

impl<R: Clone> Default for SessionTable<R> {
    fn default() -> Self {
        SessionTable::new(DEFAULT_MAX_CLIENTS)
    }
}

impl<R: Clone> SessionTable<R> {
    /// An empty table remembering at most `max_clients` clients (at least 1).
    pub fn new(max_clients: usize) -> SessionTable<R> {
        SessionTable {
            clients: BTreeMap::new(),
            max_clients: max_clients.max(1),
            by_index: BTreeSet::new(),
        }
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Decides what to do with a command tagged `session`.
    pub fn check(&self, session: ClientSession) -> SessionOutcome<R> {
        match self.clients.get(&session.client) {
            Some(known) if session.seq == known.seq => {
                SessionOutcome::Duplicate(known.response.clone())
            }
            Some(known) if session.seq < known.seq => SessionOutcome::Stale,
            Some(_) => SessionOutcome::Apply,
            // Exactly once: an unknown client's first command is new; a later one means
            // the client was forgotten, and its earlier commands may have applied.
            None if session.seq <= 1 => SessionOutcome::Apply,
            None => SessionOutcome::Expired,
        }
    }

    /// Remembers `response` as the answer to `session`'s command, applied at log `index`;
    /// forgets the least recently active client if the table is over its size.
    pub fn record(&mut self, session: ClientSession, index: u64, response: R) {
        let old = self.clients.insert(
            session.client,
            Remembered {
                seq: session.seq,
                response,
                index,
            },
        );
        if let Some(old) = old {
            self.by_index.remove(&(old.index, session.client));
        }
        self.by_index.insert((index, session.client));
        while self.clients.len() > self.max_clients {
            let Some((_, oldest)) = self.by_index.pop_first() else {
                break;
            };
            self.clients.remove(&oldest);
        }
    }

    /// Rebuilds the derived index after the table was decoded (from a snapshot).
    pub fn rebuild(&mut self) {
        self.by_index = self
            .clients
            .iter()
            .map(|(&client, r)| (r.index, client))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(client: u64, seq: u64) -> ClientSession {
        ClientSession { client, seq }
    }

    #[test]
    fn a_retry_gets_the_first_response_and_an_older_command_is_stale() {
        let mut t = SessionTable::new(10);
        assert_eq!(t.check(s(1, 1)), SessionOutcome::Apply);
        t.record(s(1, 1), 5, "first");
        assert_eq!(t.check(s(1, 1)), SessionOutcome::Duplicate("first"));
        assert_eq!(t.check(s(1, 2)), SessionOutcome::Apply);
        t.record(s(1, 2), 6, "second");
        assert_eq!(t.check(s(1, 1)), SessionOutcome::Stale);
    }

    #[test]
    fn a_forgotten_client_is_never_applied_twice() {
        let mut t = SessionTable::new(2);
        t.record(s(1, 1), 1, ());
        t.record(s(2, 1), 2, ());
        t.record(s(1, 2), 3, ()); // client 1 is now the most recent
        t.record(s(3, 1), 4, ()); // over the size: client 2 (index 2) goes
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(s(2, 2)), SessionOutcome::Expired);
        // A forgotten client's first command looks new: the documented bound (a retry
        // after `max_clients` other clients acted).
        assert_eq!(t.check(s(2, 1)), SessionOutcome::Apply);
        assert_eq!(t.check(s(1, 2)), SessionOutcome::Duplicate(()));
        assert_eq!(
            t.check(s(9, 1)),
            SessionOutcome::Apply,
            "a new client starts at 1"
        );
    }

    #[test]
    fn a_decoded_table_forgets_in_the_same_order() {
        let mut t = SessionTable::new(2);
        t.record(s(1, 1), 1, 10u32);
        t.record(s(2, 1), 2, 20u32);
        let bytes = serde_json_like(&t);
        let mut back: SessionTable<u32> = bytes;
        back.rebuild();
        t.record(s(3, 1), 3, 30);
        back.record(s(3, 1), 3, 30);
        assert_eq!(t, back);
        assert_eq!(
            back.check(s(1, 2)),
            SessionOutcome::Expired,
            "client 1 was forgotten"
        );
        assert_eq!(back.check(s(2, 1)), SessionOutcome::Duplicate(20));
    }

    /// A serialization round trip through the serde data model (what a snapshot does).
    fn serde_json_like(t: &SessionTable<u32>) -> SessionTable<u32> {
        let bytes = postcard::to_allocvec(t).unwrap();
        postcard::from_bytes(&bytes).unwrap()
    }
}
