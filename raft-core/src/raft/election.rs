//! Leader election (section 5.2) with PreVote and CheckQuorum (dissertation 9.6, 6.2).

use super::RaftCore;
use crate::message::{
    AppendOutcome, AppendResponse, Message, MessageBody, RequestVote, VoteResponse,
};
use crate::quorum;
use crate::types::{Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, Role, Term};

impl RaftCore {
    /// Applies the term rules common to every role. Returns false if the message is done
    /// with (stale, or ignored).
    pub(super) fn step_term(&mut self, msg: &Message) -> bool {
        use std::cmp::Ordering;
        match msg.term.cmp(&self.hard.term) {
            Ordering::Equal => true,
            Ordering::Greater => self.step_higher_term(msg),
            Ordering::Less => {
                self.answer_stale(msg);
                false
            }
        }
    }

    fn step_higher_term(&mut self, msg: &Message) -> bool {
        match &msg.body {
            MessageBody::RequestVote(req) => {
                // CheckQuorum: while we hear from a leader, a disruptive candidate is ignored,
                // unless the leader itself asked for the election (leadership transfer).
                if self.in_lease() && !req.transfer {
                    return false;
                }
                if req.pre_vote {
                    return true; // a PreVote never changes our term
                }
                self.become_follower(msg.term, None);
            }
            // A granted pre-vote carries the term the candidate is about to campaign in.
            MessageBody::VoteResponse(resp) if resp.pre_vote && resp.granted => {}
            MessageBody::AppendEntries(_)
            | MessageBody::InstallSnapshot(_)
            | MessageBody::TimeoutNow => self.become_follower(msg.term, Some(msg.from)),
            // Figure 2, "Rules for Servers": a higher term in any RPC makes us a follower.
            _ => self.become_follower(msg.term, None),
        }
        true
    }

    /// Answers a message from an older term so its sender learns our term and steps down.
    fn answer_stale(&mut self, msg: &Message) {
        match &msg.body {
            MessageBody::AppendEntries(req) => {
                // A refusal confirms no read: seq 0 (an echo could vouch for a newer run of
                // the old leader that reuses the number).
                let body = MessageBody::AppendResponse(AppendResponse {
                    seq: 0,
                    outcome: AppendOutcome::Conflict {
                        rejected_prev: req.prev_log_id.index,
                        conflict_term: None,
                        conflict_index: req.prev_log_id.index,
                    },
                });
                self.send(msg.from, body);
            }
            MessageBody::RequestVote(req) => {
                let body = MessageBody::VoteResponse(VoteResponse {
                    granted: false,
                    pre_vote: req.pre_vote,
                });
                self.send(msg.from, body);
            }
            MessageBody::ReadIndex(req) => self.refuse_read_index(msg.from, req.ctx),
            _ => {}
        }
    }

    /// Whether a leader was heard from within the minimum election timeout (CheckQuorum),
    /// or this node started less than that ago: it may have heard from a leader just
    /// before going down, and that leader's lease reads count on it (dissertation 6.4.1).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader.is_some() || self.just_started)
            && self.election_elapsed < self.cfg.election_timeout_min
    }

    /// Ticks of a follower, learner or candidate: campaign when the election timer fires.
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_timeout_min {
            self.just_started = false;
        }
        if self.election_elapsed >= self.randomized_timeout {
            self.reset_election_timer();
            // Not heard from the leader for an election timeout: stop naming it to
            // clients (a learner, which never campaigns, would otherwise name it forever).
            if self.leader != Some(self.id) {
                self.leader = None;
            }
            if self.may_campaign() {
                self.campaign(self.cfg.pre_vote, false);
            }
        }
    }

    /// Starts an election at once, skipping PreVote and the CheckQuorum lease, as the target
    /// of a leadership transfer does (etcd's `Campaign`): for operators and tests. A node
    /// without a vote, a leader, or a stopped core does nothing. Its vote requests ask voters
    /// to disregard the current leader, so a leader serving lease reads
    /// ([`ReadPolicy::Lease`](crate::ReadPolicy::Lease)) may be deposed inside its lease:
    /// use leadership transfer instead, which ends the lease first.
    pub fn campaign_now(&mut self) {
        if self.may_campaign() && self.role != Role::Leader && self.fatal.is_none() {
            self.campaign(false, true);
        }
    }

    /// Elections this node started (PreVote rounds not counted), and how many it won.
    pub fn elections(&self) -> (u64, u64) {
        self.elections
    }

    /// Starts a PreVote round, or an election in the next term.
    pub(super) fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        // A candidate knows no leader to ask for read indexes.
        self.fail_follower_reads();
        self.just_started = false;
        let term = if pre_vote {
            self.role = Role::PreCandidate;
            self.hard.term.next()
        } else {
            self.role = Role::Candidate;
            self.elections.0 += 1;
            let term = self.hard.term.next();
            // Section 5.2: increment the term and vote for self, durably, before asking.
            self.save_hard_state(HardState {
                term,
                voted_for: Some(self.id),
            });
            term
        };
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        let last_log_id = self.log.last_log_id();
        for peer in self.voter_peers() {
            let body = MessageBody::RequestVote(RequestVote {
                last_log_id,
                pre_vote,
                transfer,
            });
            self.send_with_term(peer, term, body);
        }
        // A sole voter has won already (once its vote is durable, see `tally_votes`).
        self.tally_votes();
    }

    /// Counts votes; acts on a decided election.
    pub(super) fn tally_votes(&mut self) {
        // Section 5.2: a candidate's own vote counts once it is durable. Other voters answer
        // only after that (their replies wait for our write), but a vote of our own that
        // decides alone would otherwise let a crash forget the term we led, and lead it twice.
        let own_vote_durable =
            self.role != Role::Candidate || self.persisted_write >= self.hard_state_write;
        let counts = |id: NodeId| id != self.id || own_vote_durable;
        let m = self.membership();
        let won = quorum::has_quorum(m, |id| self.votes.get(&id) == Some(&true) && counts(id));
        let lost = quorum::is_out_of_reach(m, |id| self.votes.get(&id) == Some(&false));
        if won {
            if self.role == Role::PreCandidate {
                self.campaign(false, false);
            } else {
                self.become_leader();
            }
        } else if lost {
            self.become_follower(self.hard.term, None);
        }
    }

    /// RequestVote and PreVote, in every role.
    pub(super) fn handle_vote_request(&mut self, from: NodeId, term: Term, req: RequestVote) {
        // Figure 2, RequestVote rule 2: grant if we have not voted for another in this term
        // and the candidate's log is at least as up-to-date as ours (section 5.4.1).
        let can_vote = self.hard.voted_for == Some(from)
            || (self.hard.voted_for.is_none() && self.leader.is_none())
            || (req.pre_vote && term > self.hard.term);
        let up_to_date = req.last_log_id >= self.log.last_log_id();
        // Dissertation 4.1: votes are answered without consulting our configuration (a
        // learner just promoted may not hold the change yet); the candidate counts only
        // the voters of its own.
        let granted = can_vote && up_to_date;
        if granted && !req.pre_vote {
            self.save_hard_state(HardState {
                term: self.hard.term,
                voted_for: Some(from),
            });
            self.reset_election_timer();
        }
        // A granted pre-vote answers in the candidate's future term, so it is not stale there.
        let reply_term = if granted && req.pre_vote {
            term
        } else {
            self.hard.term
        };
        let body = MessageBody::VoteResponse(VoteResponse {
            granted,
            pre_vote: req.pre_vote,
        });
        self.send_with_term(from, reply_term, body);
    }

    /// Messages to a candidate or pre-candidate.
    pub(super) fn step_candidate(&mut self, msg: Message) {
        match msg.body {
            MessageBody::VoteResponse(resp) => {
                let current = (self.role == Role::PreCandidate) == resp.pre_vote;
                if current {
                    self.votes.insert(msg.from, resp.granted);
                    self.tally_votes();
                }
            }
            MessageBody::RequestVote(req) => self.handle_vote_request(msg.from, msg.term, req),
            // Section 5.2: an AppendEntries from a leader of our term ends the election.
            MessageBody::AppendEntries(_) | MessageBody::InstallSnapshot(_) => {
                self.become_follower(msg.term, Some(msg.from));
                self.step_follower(msg);
            }
            MessageBody::ReadIndex(req) => self.refuse_read_index(msg.from, req.ctx),
            _ => {}
        }
    }

    /// Takes office: a no-op entry in the new term (section 8) and replication to all.
    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.elections.1 += 1;
        self.leader = Some(self.id);
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.progress.clear();
        self.settled_config = LogIndex(0);
        // A new term: no answer from an earlier one vouches for this leader's reads or
        // lease. Sequence numbers start above every earlier term's (terms only grow, also
        // across restarts, while the counter itself restarts from 0), so an answer to a
        // message of an earlier term, or of this node's previous run, confirms nothing.
        self.seq_ticks.clear();
        self.seq = self.seq.max(self.hard.term.0 << 32);
        self.seq_fresh = false;
        self.lease_forfeited = false;
        // The members of the configuration in effect and of the last committed one.
        self.track_members();
        tracing::debug!(node = %self.id, term = %self.hard.term, "became leader");
        self.append_own(vec![EntryPayload::Blank]);
    }

    /// Leader ticks for CheckQuorum: step down when a quorum went silent for an election
    /// timeout (dissertation 6.2).
    pub(super) fn check_quorum_tick(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed < self.cfg.election_timeout_min {
            return;
        }
        self.election_elapsed = 0;
        if !self.cfg.check_quorum {
            return;
        }
        let me = self.id;
        let active = quorum::has_quorum(self.membership(), |id| {
            id == me || self.progress.get(&id).is_some_and(|p| p.recent_active)
        });
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        if !active {
            tracing::debug!(node = %self.id, term = %self.hard.term, "lost contact with a quorum; stepping down");
            self.become_follower(self.hard.term, None);
        }
    }

    /// Builds this leader's next entries and starts replicating them.
    pub(super) fn append_own(&mut self, payloads: Vec<EntryPayload>) -> LogId {
        let term = self.hard.term;
        let mut index = self.log.last_index();
        let mut entries = Vec::with_capacity(payloads.len());
        for payload in payloads {
            index = index.next();
            entries.push(Entry {
                log_id: LogId { term, index },
                payload,
            });
        }
        // Leader Append-Only (Figure 3): a leader only ever adds to the end of its log.
        for e in &entries {
            self.log.push(e.clone());
        }
        self.note_appended(&entries);
        let last = self.log.last_log_id();
        self.persist(super::PersistOp::Append(entries));
        self.broadcast_append();
        self.maybe_commit();
        last
    }
}
