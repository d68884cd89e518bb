//! Log replication (section 5.3) and commitment (section 5.4.2).

use super::{Action, PersistOp, ProposeError, RaftCore};
use crate::error::FatalError;
use crate::log;
use crate::message::{AppendEntries, AppendOutcome, AppendResponse, Message, MessageBody};
use crate::progress::ReplicationState;
use crate::quorum;
use crate::types::{Entry, EntryPayload, LogId, LogIndex, NodeId, Role, Term};

impl RaftCore {
    pub(super) fn propose_payloads(
        &mut self,
        payloads: impl Iterator<Item = EntryPayload>,
    ) -> Result<LogId, ProposeError> {
        if self.fatal.is_some() {
            return Err(ProposeError::Stopped);
        }
        if self.role != Role::Leader {
            return Err(self.not_leader().into());
        }
        if let Some(target) = self.transferring_to() {
            // Dissertation 3.10: no new entries while leadership is handed over.
            return Err(ProposeError::NotLeader(
                self.not_leader_hinting(Some(target)),
            ));
        }
        let payloads: Vec<EntryPayload> = payloads.collect();
        let max = self.cfg.max_entry_bytes;
        if let Some(size) = payloads
            .iter()
            .map(EntryPayload::size)
            .find(|&size| size > max)
        {
            // Every AppendEntries must fit the transport's frame limit, which bounds entries.
            return Err(ProposeError::TooLarge { size, max });
        }
        if payloads.is_empty() {
            return Ok(self.log.last_log_id());
        }
        Ok(self.append_own(payloads))
    }

    /// Leader ticks: heartbeats, stalled pipelines and CheckQuorum.
    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        self.check_quorum_tick();
        self.transfer_tick();
    }

    /// Messages to a leader.
    pub(super) fn step_leader(&mut self, msg: Message) {
        match msg.body {
            MessageBody::AppendResponse(resp) => self.handle_append_response(msg.from, resp),
            MessageBody::SnapshotResponse(resp) => self.handle_snapshot_response(msg.from, resp),
            MessageBody::RequestVote(req) => self.handle_vote_request(msg.from, msg.term, req),
            MessageBody::ReadIndex(req) => self.handle_read_index(msg.from, req),
            MessageBody::AppendEntries(_) => {
                // Election Safety makes this impossible; never act on it.
                tracing::error!(node = %self.id, from = %msg.from, term = %msg.term, "second leader in one term");
            }
            _ => {}
        }
    }

    /// Messages to a follower or learner.
    pub(super) fn step_follower(&mut self, msg: Message) {
        match msg.body {
            MessageBody::AppendEntries(req) => {
                self.leader = Some(msg.from);
                self.election_elapsed = 0;
                self.handle_append_entries(msg.from, req);
            }
            MessageBody::InstallSnapshot(req) => self.handle_install_snapshot(msg.from, req),
            MessageBody::RequestVote(req) => self.handle_vote_request(msg.from, msg.term, req),
            // Leadership transfer (dissertation 3.10): campaign at once, skipping PreVote,
            // when the leader we know asks.
            MessageBody::TimeoutNow if self.leader == Some(msg.from) => self.campaign_now(),
            MessageBody::ReadIndexResponse(resp) => {
                self.handle_read_index_response(msg.from, resp);
            }
            MessageBody::ReadIndex(req) => self.refuse_read_index(msg.from, req.ctx),
            _ => {}
        }
    }

    fn handle_append_entries(&mut self, leader: NodeId, req: AppendEntries) {
        // Figure 2, AppendEntries rule 2: reply false if the log has no entry at prevLogIndex
        // whose term matches prevLogTerm.
        if let Some(hint) = self.log.check_prev(req.prev_log_id) {
            let body = MessageBody::AppendResponse(AppendResponse {
                seq: req.seq,
                outcome: AppendOutcome::Conflict {
                    rejected_prev: req.prev_log_id.index,
                    conflict_term: hint.term,
                    conflict_index: hint.index,
                },
            });
            self.send(leader, body);
            return;
        }
        let last_new = req
            .entries
            .last()
            .map(|e| e.index())
            .unwrap_or(req.prev_log_id.index);
        let merge = match self.log.merge(req.entries) {
            Ok(merge) => merge,
            Err(e) => return self.halt(e),
        };
        if let Some(from) = merge.truncated_from {
            self.note_truncated(from);
            self.persist(PersistOp::Truncate(from));
        }
        if !merge.appended.is_empty() {
            self.note_appended(&merge.appended);
            self.persist(PersistOp::Append(merge.appended));
        }
        // Figure 2, AppendEntries rule 5: commitIndex = min(leaderCommit, index of last new entry).
        let commit = req.leader_commit.min(last_new);
        self.log.committed = self.log.committed.max(commit);
        let body = MessageBody::AppendResponse(AppendResponse {
            seq: req.seq,
            outcome: AppendOutcome::Success {
                match_index: last_new,
            },
        });
        // Held until the writes above are durable (see `send_with_term`).
        self.send(leader, body);
        self.maybe_apply();
    }

    fn handle_append_response(&mut self, from: NodeId, resp: AppendResponse) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_seq = pr.acked_seq.max(resp.seq);
        match resp.outcome {
            AppendOutcome::Success { match_index } => {
                if pr.ack(match_index) {
                    self.maybe_commit();
                    self.maybe_send_timeout_now();
                    if self.retiring {
                        self.track_members();
                    }
                }
            }
            AppendOutcome::Conflict {
                rejected_prev,
                conflict_term,
                conflict_index,
            } => {
                let retry_at = self
                    .backtrack(conflict_term, conflict_index)
                    .min(rejected_prev);
                let pr = self
                    .progress
                    .get_mut(&from)
                    .expect("invariant: checked above");
                if !pr.reject(rejected_prev, retry_at) {
                    self.confirm_reads();
                    return;
                }
            }
        }
        self.confirm_reads();
        self.send_append(from, false);
    }

    /// Fast backtracking (section 5.3, "the leader can decrement nextIndex to bypass all of
    /// the conflicting entries in that term"): skip a whole conflicting term per round trip.
    fn backtrack(&self, conflict_term: Option<Term>, conflict_index: LogIndex) -> LogIndex {
        match conflict_term.and_then(|t| self.log.last_index_of_term(t)) {
            // We hold entries of that term: the follower can match up to our last one of it.
            Some(last) => last.next(),
            // We have none of that term: skip all of the follower's entries of it.
            None => conflict_index,
        }
    }

    /// Every server this leader replicates to (members, and removed servers that do not
    /// know of their removal yet).
    fn followers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    /// Sends each follower what it is missing.
    pub(super) fn broadcast_append(&mut self) {
        for peer in self.followers() {
            self.send_append(peer, false);
        }
    }

    /// Heartbeats: an empty AppendEntries at the match point of replicating followers, and a
    /// resent probe to probing ones. Also restarts pipelines that stopped making progress.
    pub(super) fn broadcast_heartbeat(&mut self) {
        // Each heartbeat round gets its own sequence number: its answers renew the lease,
        // and confirm every read registered before it.
        let seq = self.fresh_seq();
        // A pipeline silent for an election timeout has lost a message.
        let stall_limit =
            (self.cfg.election_timeout_min / self.cfg.heartbeat_interval).max(2) as u32;
        self.release_snapshot_source();
        for peer in self.followers() {
            let last = self.log.last_index();
            if let Some(pr) = self.progress.get_mut(&peer) {
                if pr.read_stalled(stall_limit) {
                    tracing::warn!(node = %self.id, follower = %peer, "a log read for a follower was never answered; asking again");
                }
                match pr.state {
                    ReplicationState::Probe => pr.probe_sent = false,
                    // Lost pipelined messages leave entries outstanding with nothing to
                    // trigger a rejection: probe again from the match point.
                    ReplicationState::Replicate => {
                        if pr.heartbeat_stalled(last, stall_limit) {
                            pr.become_probe();
                        }
                    }
                    ReplicationState::Snapshot => {
                        self.snapshot_heartbeat(peer, stall_limit);
                    }
                }
            }
            self.send_append(peer, true);
        }
        if !self.reads.is_empty() {
            self.reads.round_sent(seq);
        }
    }

    /// Sends `to` what it is missing, as many AppendEntries as its pipeline allows;
    /// `heartbeat` sends one even with nothing new.
    pub(super) fn send_append(&mut self, to: NodeId, heartbeat: bool) {
        if self.send_one_append(to, heartbeat) {
            while self.send_one_append(to, false) {}
        }
    }

    /// Sends one AppendEntries to `to` if its progress allows. Returns whether it carried
    /// entries (so another may follow).
    fn send_one_append(&mut self, to: NodeId, heartbeat: bool) -> bool {
        let max_inflight = self.cfg.max_inflight;
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.can_send(max_inflight) && self.log.is_evicted(pr.next_index) {
            self.read_entries(to);
        }
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        let state = pr.state;
        let replicating = state == ReplicationState::Replicate;
        let (prev_index, entries) = if pr.can_send(max_inflight) {
            let entries = self.log.slice(
                pr.next_index,
                self.cfg.max_entries_per_append,
                self.cfg.max_bytes_per_append,
            );
            match (entries.is_empty(), replicating) {
                (false, _) | (true, false) => (pr.next_index.prev(), entries),
                // Nothing new: a heartbeat at the match point, which the follower surely has.
                (true, true) if heartbeat => (self.heartbeat_prev(pr.match_index), entries),
                (true, true) => return false,
            }
        } else if heartbeat && (replicating || pr.is_reading()) {
            // Also keeps a probed follower's election timer quiet while its entries are read.
            (self.heartbeat_prev(pr.match_index), Vec::new())
        } else if heartbeat && state == ReplicationState::Snapshot {
            // Keeps its election timer quiet while the snapshot streams; it succeeds (and
            // ends the transfer early) if the follower turns out to hold our first entry.
            (pr.match_index.max(self.log.purged().index), Vec::new())
        } else {
            return false;
        };
        self.send_entries(to, prev_index, entries)
    }

    /// Sends `to` an AppendEntries with `entries` after `prev_index` and records it in its
    /// progress. Returns whether it carried entries.
    fn send_entries(&mut self, to: NodeId, prev_index: LogIndex, entries: Vec<Entry>) -> bool {
        let Some(prev_log_id) = self.log.log_id_at(prev_index) else {
            // The entries this follower needs were compacted away.
            self.start_snapshot_send(to);
            return false;
        };
        let last = entries.last().map(|e| e.index());
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        let state = pr.state;
        if let Some(last) = last {
            pr.sent(last);
        } else if state == ReplicationState::Probe && !pr.is_reading() {
            pr.sent(prev_index);
        }
        let body = MessageBody::AppendEntries(AppendEntries {
            prev_log_id,
            entries,
            leader_commit: self.log.committed,
            seq: self.seq,
        });
        self.seq_fresh = false;
        self.send(to, body);
        // Another may follow; a probe's window of one then refuses it.
        last.is_some()
    }

    /// The entries `to` needs next left memory: asks the driver to read them from the log
    /// store, as many as its window allows, up to where memory begins. A read brings no
    /// more than the cache budget (or one AppendEntries' worth), so reading for a lagging
    /// follower does not undo the bound on memory.
    fn read_entries(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let from = pr.next_index;
        let appends = pr.window(self.cfg.max_inflight);
        let per_append = self.cfg.max_bytes_per_append;
        let bytes = per_append.saturating_mul(appends);
        let count = self.cfg.max_entries_per_append.saturating_mul(appends) as u64;
        let end = self
            .log
            .first_cached()
            .min(LogIndex(from.0.saturating_add(count)));
        pr.start_read(from);
        self.actions.push(Action::ReadEntries {
            to,
            range: from..end,
            max_bytes: bytes.min(self.cfg.log_cache_bytes.max(per_append)),
        });
    }

    /// The entries asked for with [`Action::ReadEntries`] for `to`, from `from` on: sends
    /// them as the follower's window allows, then carries on from memory (or reads more).
    pub fn entries_read(&mut self, to: NodeId, from: LogIndex, entries: Vec<Entry>) {
        // Only a leader has progress (stepping down clears it), so a read answered after
        // leadership was lost finds none below.
        if self.fatal.is_some() {
            return;
        }
        if !self
            .progress
            .get_mut(&to)
            .is_some_and(|pr| pr.finish_read(from))
        {
            return; // stale: the follower's progress moved on meanwhile
        }
        if entries.is_empty() {
            // A store that breaks its contract: retry at the next heartbeat, not at once.
            return;
        }
        if let Some(e) = self.foreign_entry(from, &entries) {
            // Sending it would break Log Matching on the follower.
            let expected = self.log.log_id_at(e.index());
            return self.halt(FatalError::StoreMismatch {
                found: e.log_id,
                expected,
            });
        }
        let mut rest = &entries[..];
        while let Some(first) = rest.first() {
            let sendable = self.progress.get(&to).is_some_and(|pr| {
                pr.can_send(self.cfg.max_inflight) && pr.next_index == first.index()
            });
            if !sendable {
                break;
            }
            let batch = log::batch(
                rest.iter(),
                self.cfg.max_entries_per_append,
                self.cfg.max_bytes_per_append,
            );
            rest = &rest[batch.len()..];
            self.send_entries(to, first.index().prev(), batch);
        }
        self.send_append(to, false);
    }

    /// The first of `entries` (read from the store from `from` on) that is not the entry
    /// our log holds at its index; entries purged since the read began do not count. Ids
    /// are compared, not payloads: the store's own checksums cover those.
    fn foreign_entry<'a>(&self, from: LogIndex, entries: &'a [Entry]) -> Option<&'a Entry> {
        let purged = self.log.purged().index;
        entries.iter().enumerate().find_map(|(i, e)| {
            let wrong_place = e.index().0 != from.0 + i as u64;
            let ours = e.index() <= purged || self.log.matches(e.log_id);
            (wrong_place || !ours).then_some(e)
        })
    }

    /// Reading entries for `to` failed: the next heartbeat tries again.
    pub fn entries_read_failed(&mut self, to: NodeId, from: LogIndex) {
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.finish_read(from);
        }
    }

    /// Where an empty heartbeat points: the match point, or where our log begins when the
    /// match point was compacted (a follower lagging with entries in flight needs no
    /// snapshot for that; if it lacks our first entry, the answer says so).
    fn heartbeat_prev(&self, match_index: LogIndex) -> LogIndex {
        match_index.max(self.log.purged().index)
    }

    /// Advances the commit index to what a quorum has durably stored.
    pub(super) fn maybe_commit(&mut self) {
        let me = self.id;
        let stable = self.log.stable;
        let candidate = quorum::committed_index(self.membership(), |id| {
            if id == me {
                stable
            } else {
                self.progress
                    .get(&id)
                    .map(|p| p.match_index)
                    .unwrap_or_default()
            }
        });
        if candidate <= self.log.committed {
            return;
        }
        // Section 5.4.2: only entries of the leader's current term are committed by counting
        // replicas; earlier ones commit indirectly with them (Figure 8).
        if self.log.term_at(candidate) != Some(self.hard.term) {
            return;
        }
        let first_commit_in_term = !self.committed_in_current_term();
        self.log.committed = candidate;
        if first_commit_in_term {
            for reader in self.reads.take_deferred() {
                self.register_read(reader);
            }
        }
        self.maybe_apply();
        self.advance_config();
    }

    /// Whether this leader has committed an entry of its own term.
    pub(super) fn committed_in_current_term(&self) -> bool {
        self.log.term_at(self.log.committed) == Some(self.hard.term)
    }
}
