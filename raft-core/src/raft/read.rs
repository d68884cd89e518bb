//! Linearizable reads (dissertation 6.4): ReadIndex at the leader with coalesced
//! confirmation rounds, follower reads, and lease reads (6.4.1). The queues live in
//! [`crate::read`].

use super::{Action, NotLeader, RaftCore};
use crate::message::{AppendEntries, MessageBody, ReadIndexRequest, ReadIndexResponse};
use crate::quorum;
use crate::read::{Batch, ReadId, ReadPath, ReadPolicy, Reader, MAX_SENDS};
use crate::types::{LogIndex, NodeId, Role};

impl RaftCore {
    /// Starts a linearizable read (ReadIndex) on any node; the answer comes as
    /// [`Action::ReadReady`] or [`Action::ReadFailed`]. Same as
    /// [`read`](Self::read)`(id, ReadPolicy::ReadIndex)`.
    pub fn read_index(&mut self, id: ReadId) -> Result<(), NotLeader> {
        self.read(id, ReadPolicy::ReadIndex)
    }

    /// Starts a read under `policy`. On the leader it is confirmed by a quorum round (or
    /// its lease); on a follower or learner the leader is asked for a read index, and the
    /// node serves the read once it has applied that index. The answer comes as
    /// [`Action::ReadReady`] (serve once `applied >= index`) or [`Action::ReadFailed`].
    /// Refused on a candidate (no leader to ask) and on a stopped core.
    /// [`ReadPolicy::Stale`] needs no core at all: it is answered at once at the applied
    /// index.
    pub fn read(&mut self, id: ReadId, policy: ReadPolicy) -> Result<(), NotLeader> {
        if self.fatal.is_some() {
            return Err(self.not_leader());
        }
        match (self.role, policy) {
            (_, ReadPolicy::Stale) => {
                let index = self.applied;
                self.actions.push(Action::ReadReady { id, index });
            }
            (Role::Leader, _) => self.leader_read(Reader::Local(id), policy == ReadPolicy::Lease),
            (Role::Follower | Role::Learner, _) => {
                self.follower_reads.waiting.push((id, policy));
                self.send_follower_reads();
            }
            (Role::Candidate | Role::PreCandidate, _) => return Err(self.not_leader()),
        }
        Ok(())
    }

    /// Reads served so far, by path.
    pub fn read_counts(&self) -> crate::read::ReadCounts {
        self.read_counts
    }

    // ----- at the leader --------------------------------------------------------------

    /// A read at the leader, its own or a follower's.
    fn leader_read(&mut self, reader: Reader, lease: bool) {
        if !self.committed_in_current_term() {
            // Section 8: the commit index is current only once an entry of this term is
            // committed; until then the read waits (and gets no lease either).
            self.reads.defer(reader);
            return;
        }
        if lease && self.lease_holds() {
            let index = self.log.committed;
            self.read_ready(reader, index, ReadPath::Lease);
            return;
        }
        self.register_read(reader);
    }

    /// A follower asks for a read index.
    pub(super) fn handle_read_index(&mut self, from: NodeId, req: ReadIndexRequest) {
        if self.progress.contains_key(&from) {
            self.leader_read(Reader::Remote { from, ctx: req.ctx }, req.lease);
        } else {
            self.refuse_read_index(from, req.ctx);
        }
    }

    /// Answers a read index request this node cannot serve (it does not lead).
    pub(super) fn refuse_read_index(&mut self, to: NodeId, ctx: u64) {
        let body = MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index: None });
        self.send(to, body);
    }

    /// Records a read at the current commit index; it is confirmed by the next round.
    pub(super) fn register_read(&mut self, reader: Reader) {
        let seq = self.fresh_seq();
        self.reads.register(reader, self.log.committed, seq);
        self.confirm_reads();
    }

    /// The sequence number to stamp on what is sent from now on, new unless nothing was
    /// sent with the current one: a read registered now is confirmed only by answers to
    /// messages sent after it.
    pub(super) fn fresh_seq(&mut self) -> u64 {
        if !self.seq_fresh {
            self.seq += 1;
            self.seq_fresh = true;
            let horizon = self.cfg.election_timeout_min;
            self.seq_ticks.record(self.seq, self.ticks, horizon);
        }
        self.seq
    }

    /// Releases the reads a quorum has confirmed, and sends the next confirmation round
    /// when reads wait and none is in flight.
    pub(super) fn confirm_reads(&mut self) {
        // Runs on every AppendEntries answer: with no read waiting, do nothing (no clone).
        if self.reads.is_empty() {
            return;
        }
        let me = self.id;
        let m = self.membership().clone();
        let progress = &self.progress;
        let ready = self.reads.confirm(|seq| {
            quorum::has_quorum(&m, |id| {
                id == me || progress.get(&id).is_some_and(|p| p.acked_seq >= seq)
            })
        });
        for (reader, index) in ready {
            self.read_ready(reader, index, ReadPath::LeaderReadIndex);
        }
        if self.reads.needs_round() {
            self.send_read_round();
        }
    }

    /// One confirmation round for every read registered so far: an empty AppendEntries to
    /// each follower at its match point. Unlike a heartbeat it leaves each follower's
    /// progress alone: reads never count toward a stalled pipeline, nor restart a probe.
    fn send_read_round(&mut self) {
        let seq = self.seq;
        self.seq_fresh = false;
        self.reads.round_sent(seq);
        for peer in self.progress.keys().copied().collect::<Vec<_>>() {
            let Some(pr) = self.progress.get(&peer) else {
                continue;
            };
            let prev = pr.match_index.max(self.log.purged().index);
            let Some(prev_log_id) = self.log.log_id_at(prev) else {
                continue;
            };
            let body = MessageBody::AppendEntries(AppendEntries {
                prev_log_id,
                entries: Vec::new(),
                leader_commit: self.log.committed,
                seq,
            });
            self.send(peer, body);
        }
    }

    /// A read confirmed at `index`: the reader may serve it once `index` is applied.
    fn read_ready(&mut self, reader: Reader, index: LogIndex, path: ReadPath) {
        match reader {
            Reader::Local(id) => {
                self.read_counts.count(path);
                self.actions.push(Action::ReadReady { id, index });
            }
            Reader::Remote { from, ctx } => {
                let index = Some(index);
                let body = MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index });
                self.send(from, body);
            }
        }
    }

    /// Fails every read waiting at this leader (it lost leadership).
    pub(super) fn fail_pending_reads(&mut self) {
        let leader_hint = self.leader.filter(|&l| l != self.id);
        for reader in self.reads.drain() {
            match reader {
                Reader::Local(id) => self.actions.push(Action::ReadFailed { id, leader_hint }),
                Reader::Remote { from, ctx } => self.refuse_read_index(from, ctx),
            }
        }
    }

    // ----- leases ---------------------------------------------------------------------

    /// Dissertation 6.4.1: the leader holds a lease while a quorum answered messages it
    /// sent less than [`Config::lease_ticks`](crate::Config::lease_ticks) ago. Each of
    /// those voters reset its election timer on receipt and, under CheckQuorum, ignores
    /// candidates until a full election timeout passes on its own clock, so no other leader
    /// can be elected before then (clock drift is within `lease_drift_ticks`). Never after
    /// this leader sent `TimeoutNow`, which asks a voter to disregard exactly that.
    pub(super) fn lease_holds(&self) -> bool {
        if !self.cfg.check_quorum || self.lease_forfeited || self.role != Role::Leader {
            return false;
        }
        let me = self.id;
        let now = self.ticks;
        let heard_at = |id: NodeId| -> Option<u64> {
            if id == me {
                return Some(now);
            }
            let p = self.progress.get(&id)?;
            self.seq_ticks.tick_of(p.acked_seq)
        };
        // The latest start a quorum vouches for: try each voter's, newest first.
        let m = self.membership();
        let mut starts: Vec<u64> = m.members().into_iter().filter_map(heard_at).collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        let start = starts
            .into_iter()
            .find(|&t| quorum::has_quorum(m, |id| heard_at(id).is_some_and(|h| h >= t)));
        start.is_some_and(|t| now < t + self.cfg.lease_ticks())
    }

    /// Leadership transfer: the target will campaign with voters told to disregard their
    /// leader, so this leader's lease ends now, for the rest of its term.
    pub(super) fn forfeit_lease(&mut self) {
        self.lease_forfeited = true;
    }

    // ----- at a follower --------------------------------------------------------------

    /// Sends the reads waiting at this follower to the leader it knows, in one request;
    /// if the leader changed since a request was sent, asks the new one for all of them
    /// (any leader's read index, obtained after the reads began, serves them).
    pub(super) fn send_follower_reads(&mut self) {
        let Some(leader) = self.leader.filter(|&l| l != self.id) else {
            return;
        };
        let fr = &mut self.follower_reads;
        if let Some(batch) = fr.in_flight.take_if(|b| b.leader != leader) {
            // A new leader: a fresh start for these reads.
            let mut reads = batch.reads;
            reads.append(&mut fr.waiting);
            fr.waiting = reads;
            fr.resends = 0;
        }
        if fr.in_flight.is_some() || fr.waiting.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut fr.waiting);
        fr.unsent_ticks = 0;
        let lease = reads.iter().all(|(_, p)| *p == ReadPolicy::Lease);
        let ctx = fr.next_ctx();
        let sends = std::mem::take(&mut fr.resends) + 1;
        fr.in_flight = Some(Batch {
            ctx,
            leader,
            reads,
            age: 0,
            sends,
        });
        self.send(
            leader,
            MessageBody::ReadIndex(ReadIndexRequest { ctx, lease }),
        );
    }

    /// A follower's ticks: a request unanswered for an election timeout is sent again
    /// (the request or its answer was lost); reads that found no leader to ask for two
    /// maximum election timeouts fail (a learner never campaigns, so nothing else would
    /// end their wait).
    pub(super) fn follower_reads_tick(&mut self) {
        let timeout = self.cfg.election_timeout_min;
        let fr = &mut self.follower_reads;
        if fr.waiting.is_empty() {
            fr.unsent_ticks = 0;
        } else {
            fr.unsent_ticks += 1;
            if fr.unsent_ticks >= 2 * self.cfg.election_timeout_max {
                fr.unsent_ticks = 0;
                for (id, _) in std::mem::take(&mut fr.waiting) {
                    let leader_hint = None;
                    self.actions.push(Action::ReadFailed { id, leader_hint });
                }
                return;
            }
        }
        let fr = &mut self.follower_reads;
        let Some(batch) = fr.in_flight.as_mut() else {
            return;
        };
        batch.age += 1;
        if batch.age < timeout {
            return;
        }
        let Some(batch) = fr.in_flight.take() else {
            return;
        };
        if batch.sends >= MAX_SENDS {
            // We hear the leader but it does not answer us: give up rather than wait on.
            let leader_hint = Some(batch.leader);
            for (id, _) in batch.reads {
                self.actions.push(Action::ReadFailed { id, leader_hint });
            }
        } else {
            let mut reads = batch.reads;
            reads.append(&mut fr.waiting);
            fr.waiting = reads;
            fr.resends = batch.sends;
        }
        self.send_follower_reads();
    }

    /// The leader's answer to this follower's request.
    pub(super) fn handle_read_index_response(&mut self, from: NodeId, resp: ReadIndexResponse) {
        let fr = &mut self.follower_reads;
        let Some(batch) = fr
            .in_flight
            .take_if(|b| b.ctx == resp.ctx && b.leader == from)
        else {
            return; // stale: a batch sent again or to another leader since
        };
        match resp.index {
            Some(index) => {
                for (id, _) in batch.reads {
                    self.read_counts.count(ReadPath::FollowerReadIndex);
                    self.actions.push(Action::ReadReady { id, index });
                }
            }
            None => {
                // The node we took for the leader is not: the caller retries elsewhere.
                let leader_hint = self.leader.filter(|&l| l != from);
                for (id, _) in batch.reads {
                    self.actions.push(Action::ReadFailed { id, leader_hint });
                }
            }
        }
        self.send_follower_reads();
    }

    /// Fails every read waiting at this node as a follower: it is about to campaign, so
    /// it knows no leader to ask.
    pub(super) fn fail_follower_reads(&mut self) {
        for id in self.follower_reads.drain() {
            let leader_hint = None;
            self.actions.push(Action::ReadFailed { id, leader_hint });
        }
    }
}
