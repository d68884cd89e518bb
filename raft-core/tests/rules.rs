//! Rule tests on the sans-IO core: each rule of Figure 2, the logs of Figure 7, the commit
//! hazard of Figure 8, PreVote, CheckQuorum and ReadIndex. References are to the extended
//! Raft paper (Ongaro & Ousterhout) and Ongaro's dissertation.

mod sim;

use bytes::Bytes;
use raft_core::message::{AppendEntries, AppendOutcome, RequestVote, VoteResponse};
use raft_core::{
    Action, Config, EntryPayload, LogId, LogIndex, Membership, Message, MessageBody, NodeId,
    PersistOp, ProposeError, ReadPolicy, ReplicationState, Role, Term,
};
use sim::{disk, Faults, Sim};

fn cfg() -> Config {
    Config::default()
}

fn plain_cfg() -> Config {
    Config {
        pre_vote: false,
        check_quorum: false,
        ..Config::default()
    }
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

fn vote_request(last: LogId) -> MessageBody {
    MessageBody::RequestVote(RequestVote {
        last_log_id: last,
        pre_vote: false,
        transfer: false,
    })
}

fn append(prev: LogId, entries: &[(u64, u64)], commit: u64) -> MessageBody {
    MessageBody::AppendEntries(AppendEntries {
        prev_log_id: prev,
        entries: entries
            .iter()
            .map(|&(t, i)| raft_core::Entry {
                log_id: LogId::new(t, i),
                payload: EntryPayload::Command(Bytes::from(format!("t{t}i{i}"))),
            })
            .collect(),
        leader_commit: LogIndex(commit),
        seq: 0,
    })
}

/// Delivers `m` to its recipient and returns what the recipient sent back to `m.from`.
fn exchange(sim: &mut Sim, m: Message) -> Vec<MessageBody> {
    let from = m.from;
    sim.take_in_flight();
    sim.deliver(m);
    sim.take_in_flight()
        .into_iter()
        .filter(|r| r.to == from)
        .map(|r| r.body)
        .collect()
}

fn granted(replies: &[MessageBody]) -> bool {
    matches!(
        replies,
        [MessageBody::VoteResponse(VoteResponse {
            granted: true,
            ..
        })]
    )
}

fn three() -> Sim {
    Sim::new(1, 3, plain_cfg(), Faults::none())
}

// ----- Figure 2, Rules for All Servers --------------------------------------------------

#[test]
fn higher_term_in_a_response_makes_a_leader_step_down() {
    // Reference: Figure 2, Rules for All Servers, "If RPC request or response contains term
    // T > currentTerm: set currentTerm = T, convert to follower".
    let mut sim = three();
    sim.elect(1);
    assert_eq!(sim.core(1).role(), Role::Leader);
    let term = sim.core(1).term().0;
    sim.deliver(msg(
        2,
        1,
        term + 5,
        MessageBody::AppendResponse(raft_core::message::AppendResponse {
            seq: 0,
            outcome: AppendOutcome::Success {
                match_index: LogIndex(0),
            },
        }),
    ));
    assert_eq!(sim.core(1).role(), Role::Follower);
    assert_eq!(sim.core(1).term(), Term(term + 5));
}

#[test]
fn applied_entries_are_applied_in_log_order_exactly_once() {
    // Reference: Figure 2, "If commitIndex > lastApplied: increment lastApplied, apply".
    let mut sim = three();
    sim.elect(1);
    for _ in 0..5 {
        sim.propose(NodeId(1));
    }
    sim.run_ticks(4);
    for id in 1..=3 {
        let applied: Vec<u64> = sim.nodes[&NodeId(id)]
            .applied
            .iter()
            .map(|e| e.index().0)
            .collect();
        assert_eq!(applied, (1..=6).collect::<Vec<_>>(), "node {id}");
    }
}

// ----- Figure 2, RequestVote RPC -----------------------------------------------------------

#[test]
fn vote_rejected_for_candidate_with_stale_term() {
    // Reference: Figure 2, RequestVote rule 1: reply false if term < currentTerm.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(5, &[]), disk(5, &[]), disk(5, &[])],
    );
    let replies = exchange(&mut sim, msg(2, 1, 4, vote_request(LogId::default())));
    assert!(!granted(&replies));
    assert_eq!(sim.core(1).status().voted_for, None);
}

#[test]
fn a_candidate_that_lost_does_not_vote_again_in_its_term() {
    // Reference: Figure 2, RequestVote rule 2: its vote in the term went to itself; losing
    // the election does not free it.
    let mut sim = Sim::new(1, 3, plain_cfg(), Faults::none());
    sim.campaign(1);
    let term = sim.core(1).term().0;
    let refusal = || {
        MessageBody::VoteResponse(VoteResponse {
            granted: false,
            pre_vote: false,
        })
    };
    sim.take_in_flight();
    sim.deliver(msg(2, 1, term, refusal()));
    sim.deliver(msg(3, 1, term, refusal()));
    assert_eq!(sim.core(1).role(), Role::Follower, "lost");
    let last = sim.core(1).last_log_id();
    assert!(!granted(&exchange(
        &mut sim,
        msg(2, 1, term, vote_request(last))
    )));
    assert_eq!(sim.core(1).status().voted_for, Some(NodeId(1)));
}

#[test]
fn at_most_one_vote_per_term() {
    // Reference: Figure 2, RequestVote rule 2: votedFor is null or candidateId.
    let mut sim = three();
    assert!(granted(&exchange(
        &mut sim,
        msg(2, 1, 1, vote_request(LogId::default()))
    )));
    assert!(!granted(&exchange(
        &mut sim,
        msg(3, 1, 1, vote_request(LogId::default()))
    )));
    // The same candidate asking again (a retransmission) gets the same answer.
    assert!(granted(&exchange(
        &mut sim,
        msg(2, 1, 1, vote_request(LogId::default()))
    )));
}

#[test]
fn vote_denied_to_candidate_with_less_up_to_date_log() {
    // Reference: section 5.4.1: compare the last entries' terms, then the logs' lengths.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(3, &[1, 3]), disk(3, &[]), disk(3, &[])],
    );
    assert!(!granted(&exchange(
        &mut sim,
        msg(2, 1, 4, vote_request(LogId::new(2, 1)))
    )));
    assert!(!granted(&exchange(
        &mut sim,
        msg(3, 1, 5, vote_request(LogId::new(3, 1)))
    )));
    assert!(granted(&exchange(
        &mut sim,
        msg(2, 1, 6, vote_request(LogId::new(3, 2)))
    )));
}

#[test]
fn vote_granted_to_candidate_with_higher_last_term_and_shorter_log() {
    // Reference: section 5.4.1: the later term is more up-to-date, whatever the lengths.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(3, &[1, 1, 1, 1]), disk(3, &[]), disk(3, &[])],
    );
    assert!(granted(&exchange(
        &mut sim,
        msg(2, 1, 4, vote_request(LogId::new(2, 1)))
    )));
}

#[test]
fn vote_is_not_sent_until_the_vote_is_durable() {
    // Reference: Figure 2, "Persistent state ... updated on stable storage before
    // responding to RPCs".
    let mut sim = three();
    sim.faults.disk = 0.0;
    let replies = exchange(&mut sim, msg(2, 1, 1, vote_request(LogId::default())));
    assert!(
        replies.is_empty(),
        "vote sent before it was durable: {replies:?}"
    );
    assert_eq!(sim.pending_writes(1), 1);
    sim.complete_writes(NodeId(1), usize::MAX);
    let replies: Vec<MessageBody> = sim.take_in_flight().into_iter().map(|m| m.body).collect();
    assert!(granted(&replies));
    assert_eq!(sim.nodes[&NodeId(1)].disk.hard.voted_for, Some(NodeId(2)));
}

// ----- Figure 2, AppendEntries RPC ---------------------------------------------------------

#[test]
fn follower_rejects_append_from_stale_term() {
    // Reference: Figure 2, AppendEntries rule 1: reply false if term < currentTerm.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(5, &[]), disk(5, &[]), disk(5, &[])],
    );
    let replies = exchange(
        &mut sim,
        msg(2, 1, 4, append(LogId::default(), &[(4, 1)], 0)),
    );
    assert!(matches!(
        replies.as_slice(),
        [MessageBody::AppendResponse(r)] if matches!(r.outcome, AppendOutcome::Conflict { .. })
    ));
    assert!(sim.log(1).is_empty());
}

#[test]
fn follower_rejects_append_when_prev_entry_is_missing() {
    // Reference: Figure 2, AppendEntries rule 2 (log too short): the hint is our last + 1.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(2, &[1, 1]), disk(2, &[]), disk(2, &[])],
    );
    let replies = exchange(
        &mut sim,
        msg(2, 1, 2, append(LogId::new(2, 5), &[(2, 6)], 0)),
    );
    let [MessageBody::AppendResponse(r)] = replies.as_slice() else {
        panic!("expected one response, got {replies:?}")
    };
    assert_eq!(
        r.outcome,
        AppendOutcome::Conflict {
            rejected_prev: LogIndex(5),
            conflict_term: None,
            conflict_index: LogIndex(3)
        }
    );
}

#[test]
fn follower_rejects_append_when_prev_term_differs_and_hints_the_term_start() {
    // Reference: Figure 2, AppendEntries rule 2, with the section 5.3 optimization: the
    // rejection names the conflicting term and the first index we hold of it.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(4, &[1, 2, 2, 2]), disk(4, &[]), disk(4, &[])],
    );
    let replies = exchange(&mut sim, msg(2, 1, 4, append(LogId::new(3, 4), &[], 0)));
    let [MessageBody::AppendResponse(r)] = replies.as_slice() else {
        panic!("expected one response, got {replies:?}")
    };
    assert_eq!(
        r.outcome,
        AppendOutcome::Conflict {
            rejected_prev: LogIndex(4),
            conflict_term: Some(Term(2)),
            conflict_index: LogIndex(2)
        }
    );
}

#[test]
fn conflicting_suffix_is_truncated_and_replaced() {
    // Reference: Figure 2, AppendEntries rules 3 and 4.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(3, &[1, 2, 2, 2]), disk(3, &[]), disk(3, &[])],
    );
    exchange(
        &mut sim,
        msg(2, 1, 3, append(LogId::new(1, 1), &[(3, 2)], 0)),
    );
    assert_eq!(sim.log(1), vec![LogId::new(1, 1), LogId::new(3, 2)]);
    let disk_ids: Vec<LogId> = sim.nodes[&NodeId(1)]
        .disk
        .log
        .iter()
        .map(|e| e.log_id)
        .collect();
    assert_eq!(
        disk_ids,
        vec![LogId::new(1, 1), LogId::new(3, 2)],
        "truncation reached the disk"
    );
}

#[test]
fn stale_append_does_not_truncate_matching_entries() {
    // Reference: Figure 2, AppendEntries rule 3 truncates only on a *conflict*: a delayed
    // AppendEntries carrying a prefix must not remove later entries.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(2, &[1, 2, 2, 2]), disk(2, &[]), disk(2, &[])],
    );
    let replies = exchange(
        &mut sim,
        msg(2, 1, 2, append(LogId::new(1, 1), &[(2, 2)], 0)),
    );
    assert_eq!(sim.log(1).len(), 4);
    assert!(matches!(
        replies.as_slice(),
        [MessageBody::AppendResponse(r)] if r.outcome == AppendOutcome::Success { match_index: LogIndex(2) }
    ));
}

#[test]
fn commit_index_is_min_of_leader_commit_and_last_new_entry() {
    // Reference: Figure 2, AppendEntries rule 5.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(2, &[1, 1, 1, 1]), disk(2, &[]), disk(2, &[])],
    );
    // Our entries 3..4 are not known to match the leader's: commit stops at 2.
    exchange(
        &mut sim,
        msg(2, 1, 2, append(LogId::new(1, 1), &[(1, 2)], 4)),
    );
    assert_eq!(sim.core(1).commit_index(), LogIndex(2));
    exchange(
        &mut sim,
        msg(2, 1, 2, append(LogId::new(1, 2), &[(1, 3), (1, 4)], 3)),
    );
    assert_eq!(sim.core(1).commit_index(), LogIndex(3));
}

#[test]
fn append_is_not_acknowledged_until_durable() {
    // Reference: Figure 2, "Persistent state": log[] is on stable storage before replying.
    let mut sim = three();
    sim.faults.disk = 0.0;
    let replies = exchange(
        &mut sim,
        msg(2, 1, 1, append(LogId::default(), &[(1, 1)], 0)),
    );
    assert!(
        replies.is_empty(),
        "acknowledged before durable: {replies:?}"
    );
    sim.complete_writes(NodeId(1), usize::MAX);
    let replies: Vec<MessageBody> = sim.take_in_flight().into_iter().map(|m| m.body).collect();
    assert!(matches!(
        replies.as_slice(),
        [MessageBody::AppendResponse(r)] if r.outcome == AppendOutcome::Success { match_index: LogIndex(1) }
    ));
}

#[test]
fn a_held_acknowledgement_is_withdrawn_when_its_entry_is_truncated() {
    // Reference: Figure 2, "Persistent state". Node 1 stores (1,1) for leader 2 of term 1;
    // before that is durable, leader 3 of term 2 replaces it with (2,1). The held answer to
    // leader 2 would vouch for an entry node 1 no longer stores: it must never be sent.
    let mut sim = three();
    sim.faults.disk = 0.0;
    sim.deliver(msg(2, 1, 1, append(LogId::default(), &[(1, 1)], 0)));
    sim.deliver(msg(3, 1, 2, append(LogId::default(), &[(2, 1)], 0)));
    assert!(sim.in_flight().is_empty(), "answered before durable");
    sim.complete_writes(NodeId(1), usize::MAX);
    let replies: Vec<Message> = sim.take_in_flight();
    assert!(
        replies.iter().all(|m| m.to != NodeId(2)),
        "acknowledged a replaced entry: {replies:?}"
    );
    assert!(matches!(
        replies.as_slice(),
        [Message { to: NodeId(3), body: MessageBody::AppendResponse(r), .. }]
            if r.outcome == AppendOutcome::Success { match_index: LogIndex(1) }
    ));
}

#[test]
fn a_failed_write_stops_the_node_and_sends_nothing_that_depends_on_it() {
    // Fail-stop: the acknowledgement waiting for the failed append is dropped, and the
    // node stops with the cause.
    let mut sim = three();
    sim.faults.disk = 0.0;
    sim.deliver(msg(2, 1, 1, append(LogId::default(), &[(1, 1)], 0)));
    sim.fail_write(NodeId(1));
    assert!(sim.in_flight().is_empty(), "{:?}", sim.in_flight());
    assert!(!sim.nodes[&NodeId(1)].is_up(), "the node stopped");
    assert!(matches!(
        sim.stops.as_slice(),
        [(NodeId(1), raft_core::FatalError::WriteFailed { .. })]
    ));
    sim.restart(NodeId(1));
    assert_eq!(
        sim.core(1).last_log_id(),
        LogId::default(),
        "nothing was durable"
    );
}

#[test]
fn a_leader_asking_to_truncate_a_committed_entry_stops_the_node() {
    // Leader Completeness (section 5.4) means no leader ever does this; if one does (a
    // store lost acknowledged data), the follower refuses in release builds too.
    let mut sim = three();
    sim.expect_fatal = true;
    sim.deliver(msg(2, 1, 1, append(LogId::default(), &[(1, 1), (1, 2)], 2)));
    assert_eq!(sim.core(1).commit_index(), LogIndex(2));
    sim.take_in_flight();
    sim.deliver(msg(3, 1, 2, append(LogId::default(), &[(2, 1)], 0)));
    assert!(sim.in_flight().is_empty(), "{:?}", sim.in_flight());
    assert!(matches!(
        sim.stops.as_slice(),
        [(
            NodeId(1),
            raft_core::FatalError::TruncateCommitted {
                from: LogIndex(1),
                committed: LogIndex(2)
            }
        )]
    ));
    sim.restart(NodeId(1));
    assert_eq!(
        sim.log(1),
        vec![LogId::new(1, 1), LogId::new(1, 2)],
        "the log is intact"
    );
}

/// Voter 1 alone, learner 2, with writes completed only by hand.
fn sole_voter_and_a_learner() -> Sim {
    let members = raft_core::Membership {
        learners: [NodeId(2)].into(),
        ..raft_core::Membership::new([NodeId(1)])
    };
    let mut sim = Sim::with_membership(1, members, plain_cfg(), Faults::none());
    sim.faults.disk = 0.0;
    sim
}

#[test]
fn a_leader_sends_nothing_in_its_term_before_the_term_is_durable() {
    // A single voter wins at once. Had its AppendEntries overtaken the write of its new term,
    // a crash would let it lead that term again with other entries, and the learner that
    // stored the first ones would apply a different command at the same index.
    let mut sim = sole_voter_and_a_learner();
    sim.campaign(1);
    assert!(sim.in_flight().is_empty(), "{:?}", sim.in_flight());
    sim.complete_writes(NodeId(1), usize::MAX);
    assert_eq!(sim.core(1).role(), Role::Leader);
    assert!(
        sim.in_flight()
            .iter()
            .any(|m| matches!(m.body, MessageBody::AppendEntries(_))),
        "replication starts once the term is durable"
    );
}

#[test]
fn a_sole_voter_leads_only_once_its_vote_is_durable() {
    // Seed 1238868 of the 1,000,000-seed run: voter 2, alone in its configuration, led term 6
    // from a vote still in memory, crashed before it reached the disk, restarted in term 5,
    // and granted term 6 to another candidate: two leaders of term 6.
    let mut sim = sole_voter_and_a_learner();
    sim.campaign(1);
    assert_eq!(
        sim.core(1).role(),
        Role::Candidate,
        "the vote is not durable yet"
    );
    sim.crash(NodeId(1));
    sim.restart(NodeId(1));
    assert_eq!(
        sim.core(1).term(),
        Term(0),
        "the term it never led is forgotten"
    );
    sim.campaign(1);
    sim.complete_writes(NodeId(1), usize::MAX);
    assert_eq!(sim.core(1).role(), Role::Leader);
    assert_eq!(sim.core(1).term(), Term(1));
}

#[test]
fn a_durable_write_of_a_replaced_entry_does_not_make_its_replacement_durable() {
    // Node 1 appends (1,2) for leader 2; before that is durable, leader 3 of term 2 replaces
    // it with (2,2). The first write completing says nothing about (2,2).
    let mut sim = three();
    sim.faults.disk = 0.0;
    sim.deliver(msg(2, 1, 1, append(LogId::default(), &[(1, 1)], 0)));
    sim.complete_writes(NodeId(1), usize::MAX);
    sim.deliver(msg(2, 1, 1, append(LogId::new(1, 1), &[(1, 2)], 0)));
    sim.deliver(msg(3, 1, 2, append(LogId::new(1, 1), &[(2, 2)], 0)));
    sim.complete_writes(NodeId(1), 1); // only the append of (1,2)
    assert_eq!(sim.core(1).status().stable_index, LogIndex(1));
    sim.complete_writes(NodeId(1), usize::MAX);
    assert_eq!(sim.core(1).status().stable_index, LogIndex(2));
}

#[test]
fn a_stale_durability_report_changes_nothing() {
    // Reports can arrive late; an older one must not make the core think less is durable
    // (which would hold back answers that are already safe to send).
    let mut sim = three();
    sim.faults.disk = 0.0;
    sim.deliver(msg(2, 1, 1, append(LogId::default(), &[(1, 1), (1, 2)], 0)));
    sim.complete_writes(NodeId(1), usize::MAX);
    sim.take_in_flight();
    sim.with_core(NodeId(1), |c| c.persisted(1));
    let replies = exchange(&mut sim, msg(3, 1, 1, vote_request(LogId::new(1, 2))));
    assert!(
        matches!(replies.as_slice(), [MessageBody::VoteResponse(_)]),
        "{replies:?}"
    );
}

#[test]
fn messages_not_addressed_to_this_node_or_from_itself_are_ignored() {
    let mut sim = three();
    let term = sim.core(1).term();
    let stray = |from: u64, to: u64| Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term.0 + 5),
        body: append(LogId::default(), &[], 0),
    };
    sim.with_core(NodeId(1), |c| c.step(stray(2, 3)));
    sim.with_core(NodeId(1), |c| c.step(stray(1, 1)));
    assert_eq!(
        sim.core(1).term(),
        term,
        "a misdelivered message changed the term"
    );
}

#[test]
fn a_core_restored_from_a_log_with_a_gap_stops_at_once() {
    let entries = disk(1, &[1, 1, 1]).log;
    let init = raft_core::InitialState {
        entries: vec![entries[0].clone(), entries[2].clone()],
        bootstrap: raft_core::Membership::new([NodeId(1)]),
        ..raft_core::InitialState::default()
    };
    let core = raft_core::RaftCore::new(NodeId(1), cfg(), init, 1);
    assert!(
        matches!(core.fatal(), Some(raft_core::FatalError::Restore(_))),
        "{:?}",
        core.fatal()
    );
}

#[test]
fn a_held_acknowledgement_of_entries_before_a_truncation_is_still_sent() {
    // Only acknowledgements of replaced entries are withdrawn; one for the untouched prefix
    // stays true and goes out.
    let mut sim = three();
    sim.faults.disk = 0.0;
    sim.deliver(msg(2, 1, 1, append(LogId::default(), &[(1, 1)], 0)));
    sim.deliver(msg(2, 1, 1, append(LogId::new(1, 1), &[(1, 2)], 0)));
    sim.deliver(msg(3, 1, 2, append(LogId::new(1, 1), &[(2, 2)], 0)));
    sim.complete_writes(NodeId(1), usize::MAX);
    let to_2: Vec<MessageBody> = sim
        .take_in_flight()
        .into_iter()
        .filter(|m| m.to == NodeId(2))
        .map(|m| m.body)
        .collect();
    assert!(
        matches!(to_2.as_slice(), [MessageBody::AppendResponse(r)] if r.outcome == AppendOutcome::Success { match_index: LogIndex(1) }),
        "{to_2:?}"
    );
}

#[test]
fn a_learner_ignores_timeout_now() {
    // Leadership transfer only ever targets a voter; a learner that campaigned could be
    // elected by the voters' grants without being one.
    let members = raft_core::Membership {
        learners: [NodeId(4)].into(),
        ..raft_core::Membership::new([NodeId(1), NodeId(2), NodeId(3)])
    };
    let mut sim = Sim::with_membership(1, members, plain_cfg(), Faults::none());
    sim.campaign(4);
    assert_eq!(sim.core(4).role(), Role::Learner);
    assert!(sim.in_flight().is_empty(), "{:?}", sim.in_flight());
}

#[test]
fn a_leader_refuses_a_vote_in_its_own_term_and_says_so() {
    // Reference: Figure 2, RequestVote rule 2: the leader voted for itself in this term.
    let mut sim = Sim::new(1, 3, plain_cfg(), Faults::none());
    sim.elect(1);
    let term = sim.core(1).term().0;
    let last = sim.core(1).last_log_id();
    let replies = exchange(&mut sim, msg(2, 1, term, vote_request(last)));
    assert!(
        matches!(
            replies.as_slice(),
            [MessageBody::VoteResponse(VoteResponse {
                granted: false,
                ..
            })]
        ),
        "{replies:?}"
    );
}

#[test]
fn a_candidate_asks_only_voters() {
    // Section 6: learners receive the log but take no part in elections.
    let members = raft_core::Membership {
        learners: [NodeId(4)].into(),
        ..raft_core::Membership::new([NodeId(1), NodeId(2), NodeId(3)])
    };
    let mut sim = Sim::with_membership(1, members, plain_cfg(), Faults::none());
    sim.campaign(1);
    let asked: Vec<NodeId> = sim
        .in_flight()
        .iter()
        .filter(|m| matches!(m.body, MessageBody::RequestVote(_)))
        .map(|m| m.to)
        .collect();
    assert_eq!(asked, vec![NodeId(2), NodeId(3)]);
}

// ----- Figure 2, Rules for Followers and Candidates ----------------------------------------

#[test]
fn follower_campaigns_after_its_election_timeout() {
    // Reference: section 5.2, and Figure 2, Rules for Followers.
    let mut sim = three();
    for _ in 0..cfg().election_timeout_min - 1 {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    assert_eq!(sim.core(1).role(), Role::Follower);
    for _ in 0..cfg().election_timeout_max - cfg().election_timeout_min {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    assert_eq!(sim.core(1).role(), Role::Candidate);
    assert_eq!(sim.core(1).term(), Term(1));
    assert_eq!(sim.core(1).status().voted_for, Some(NodeId(1)));
}

#[test]
fn election_timeouts_are_randomized_per_node() {
    // Reference: section 5.2: randomized election timeouts make split votes rare.
    let first_timeout = |seed| {
        let mut sim = Sim::new(seed, 3, plain_cfg(), Faults::none());
        (1..=100)
            .find(|_| {
                sim.with_core(NodeId(1), |c| c.tick());
                sim.core(1).role() == Role::Candidate
            })
            .expect("times out within 100 ticks")
    };
    let timeouts: std::collections::BTreeSet<u64> = (0..20).map(first_timeout).collect();
    assert!(timeouts.len() > 3, "timeouts barely vary: {timeouts:?}");
    assert!(
        timeouts.iter().all(|&t| (10..20).contains(&t)),
        "{timeouts:?}"
    );
}

#[test]
fn candidate_with_a_majority_becomes_leader_and_appends_a_noop() {
    // Reference: section 5.2; the no-op of section 8.
    let mut sim = three();
    sim.elect(2);
    assert_eq!(sim.core(2).role(), Role::Leader);
    assert_eq!(sim.log(2), vec![LogId::new(1, 1)]);
    assert_eq!(
        sim.core(2).entry(LogIndex(1)).map(|e| &e.payload),
        Some(&EntryPayload::Blank)
    );
    sim.run_ticks(2);
    assert_eq!(sim.core(1).leader(), Some(NodeId(2)));
    assert_eq!(sim.core(3).commit_index(), LogIndex(1));
}

#[test]
fn candidate_without_a_majority_does_not_lead() {
    let mut sim = three();
    sim.isolate(NodeId(1));
    sim.elect(1);
    assert_eq!(sim.core(1).role(), Role::Candidate);
}

#[test]
fn candidate_steps_down_on_append_from_leader_of_its_term() {
    // Reference: section 5.2: "If the leader's term is at least as large as the
    // candidate's current term, the candidate recognizes the leader as legitimate".
    let mut sim = three();
    sim.isolate(NodeId(1));
    sim.elect(1);
    sim.heal();
    exchange(&mut sim, msg(2, 1, 1, append(LogId::default(), &[], 0)));
    assert_eq!(sim.core(1).role(), Role::Follower);
    assert_eq!(sim.core(1).leader(), Some(NodeId(2)));
}

#[test]
fn candidate_restarts_the_election_in_a_new_term_after_a_split_vote() {
    let mut sim = three();
    sim.isolate(NodeId(1));
    sim.elect(1);
    assert_eq!(sim.core(1).term(), Term(1));
    sim.tick_node(1, cfg().election_timeout_max);
    assert_eq!(sim.core(1).role(), Role::Candidate);
    assert_eq!(sim.core(1).term(), Term(2));
}

// ----- Figure 2, Rules for Leaders ---------------------------------------------------------

#[test]
fn leader_sends_heartbeats_while_idle() {
    let mut sim = three();
    sim.elect(1);
    let before = sim.count("AppendEntries");
    sim.tick_node(1, cfg().heartbeat_interval * 5);
    let sent = sim.count("AppendEntries") - before;
    assert_eq!(sent, 2 * 5, "one heartbeat per follower per interval");
}

#[test]
fn leader_commits_an_entry_of_its_term_once_a_majority_stores_it() {
    // Reference: Figure 2, Rules for Leaders, last rule.
    let mut sim = three();
    sim.elect(1);
    sim.isolate(NodeId(3));
    let lid = sim.propose(NodeId(1)).expect("leader accepts");
    sim.deliver_all();
    assert_eq!(sim.core(1).commit_index(), lid.index);
}

#[test]
fn leader_does_not_commit_without_a_majority() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.isolate(NodeId(1));
    let lid = sim.propose(NodeId(1)).expect("leader accepts");
    sim.run_ticks(5);
    assert!(sim.core(1).commit_index() < lid.index);
}

#[test]
fn leader_counts_itself_only_once_its_own_log_is_durable() {
    // The leader writes its log while followers write theirs, but never counts an entry it
    // could still lose in a crash.
    let mut sim = Sim::new(1, 1, plain_cfg(), Faults::none());
    sim.elect(1);
    sim.faults.disk = 0.0;
    let lid = sim.propose(NodeId(1)).expect("leader accepts");
    assert!(sim.core(1).commit_index() < lid.index);
    sim.complete_writes(NodeId(1), usize::MAX);
    assert_eq!(sim.core(1).commit_index(), lid.index);
}

#[test]
fn proposal_on_a_follower_fails_with_the_leader_hint() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(1);
    let err = sim
        .with_core(NodeId(2), |c| c.propose([Bytes::from_static(b"x")]))
        .expect("node is up")
        .expect_err("followers refuse proposals");
    assert_eq!(
        err,
        ProposeError::NotLeader(raft_core::NotLeader {
            leader_hint: Some(NodeId(1)),
            leader_address: None,
        })
    );
}

#[test]
fn a_command_larger_than_max_entry_bytes_is_refused_and_nothing_is_appended() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(1);
    let before = sim.core(1).last_log_id();
    let max = cfg().max_entry_bytes;
    let big = Bytes::from(vec![0u8; max + 1]);
    let err = sim
        .with_core(NodeId(1), |c| c.propose([Bytes::from_static(b"ok"), big]))
        .expect("node is up")
        .expect_err("too large");
    assert_eq!(err, ProposeError::TooLarge { size: max + 1, max });
    assert_eq!(
        sim.core(1).last_log_id(),
        before,
        "the whole batch is refused"
    );
    let fits = Bytes::from(vec![0u8; max]);
    assert!(sim
        .with_core(NodeId(1), |c| c.propose([fits]))
        .expect("node is up")
        .is_ok());
}

#[test]
fn proposals_are_batched_up_to_the_entry_limit() {
    let mut sim = Sim::new(
        1,
        3,
        Config {
            max_entries_per_append: 4,
            ..plain_cfg()
        },
        Faults::none(),
    );
    sim.elect(1);
    sim.run_ticks(2);
    sim.isolate(NodeId(2)); // only node 3 receives
    let cmds: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("c{i}"))).collect();
    sim.with_core(NodeId(1), |c| c.propose(cmds))
        .expect("up")
        .expect("leader");
    let sizes: Vec<usize> = sim
        .in_flight()
        .iter()
        .filter(|m| m.to == NodeId(3))
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries(a) => Some(a.entries.len()),
            _ => None,
        })
        .collect();
    // Pipelined: three AppendEntries of at most four entries, all sent before any answer.
    assert_eq!(sizes, vec![4, 4, 2]);
}

#[test]
fn a_batch_fills_the_byte_budget_exactly() {
    let entry = raft_core::ENTRY_OVERHEAD + 300;
    let (_, sizes) = batches_to_node_3(3 * entry, 6);
    assert_eq!(sizes, vec![3, 3]);
}

/// A leader with `max_bytes_per_append` of `max_bytes` proposes `n` commands of 300 bytes
/// at once; returns the cluster and the entry count of each AppendEntries to node 3.
fn batches_to_node_3(max_bytes: usize, n: usize) -> (Sim, Vec<usize>) {
    let cfg = Config {
        max_bytes_per_append: max_bytes,
        ..plain_cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(2);
    sim.isolate(NodeId(2));
    let cmds: Vec<Bytes> = (0..n).map(|_| Bytes::from(vec![7u8; 300])).collect();
    sim.with_core(NodeId(1), |c| c.propose(cmds))
        .expect("up")
        .expect("leader");
    let sizes = sim
        .in_flight()
        .iter()
        .filter(|m| m.to == NodeId(3))
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries(a) => Some(a.entries.len()),
            _ => None,
        })
        .collect();
    (sim, sizes)
}

#[test]
fn proposals_are_batched_up_to_the_byte_limit() {
    let (mut sim, sizes) = batches_to_node_3(1000, 10);
    // About 324 bytes an entry: three fit in 1000 bytes, a fourth would not.
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    // One entry larger than the limit still travels, alone.
    sim.with_core(NodeId(1), |c| c.propose([Bytes::from(vec![1u8; 5000])]))
        .expect("up")
        .expect("leader");
    let last = sim
        .in_flight()
        .iter()
        .rev()
        .find(|m| m.to == NodeId(3))
        .map(|m| m.body.clone());
    assert!(matches!(last, Some(MessageBody::AppendEntries(a)) if a.entries.len() == 1));
}

#[test]
fn pipeline_is_bounded_by_the_inflight_window() {
    let mut sim = Sim::new(
        1,
        3,
        Config {
            max_entries_per_append: 1,
            max_inflight: 3,
            ..plain_cfg()
        },
        Faults::none(),
    );
    sim.elect(1);
    sim.run_ticks(2);
    sim.take_in_flight();
    let cmds: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("c{i}"))).collect();
    sim.with_core(NodeId(1), |c| c.propose(cmds))
        .expect("up")
        .expect("leader");
    let to3 = sim.in_flight().iter().filter(|m| m.to == NodeId(3)).count();
    assert_eq!(to3, 3);
    sim.deliver_all();
    assert_eq!(
        sim.core(3).last_log_id().index,
        LogIndex(11),
        "the window refills as acks arrive"
    );
}

#[test]
fn a_heartbeat_does_not_disturb_a_pipeline_in_flight() {
    // Entries in flight are not resent at the next heartbeat: the heartbeat is an empty
    // AppendEntries at the match point and leaves the window as it was.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    sim.take_in_flight(); // in flight: not yet delivered
    for _ in 0..cfg().heartbeat_interval {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    let resent = sim
        .in_flight()
        .iter()
        .filter(|m| matches!(&m.body, MessageBody::AppendEntries(a) if !a.entries.is_empty()))
        .count();
    assert_eq!(resent, 0, "{:?}", sim.in_flight());
    // The next proposal goes out alone: the window still starts after the entry in flight.
    sim.take_in_flight();
    let next = sim.propose(NodeId(1)).expect("leader").index;
    let firsts: Vec<LogIndex> = sim
        .in_flight()
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries(a) => a.entries.first().map(|e| e.index()),
            _ => None,
        })
        .collect();
    assert_eq!(firsts, vec![next, next], "{:?}", sim.in_flight());
}

#[test]
fn lost_pipelined_appends_are_resent_after_the_pipeline_stalls() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    sim.take_in_flight(); // every AppendEntries carrying the entry is lost
    sim.run_ticks(cfg().election_timeout_min + cfg().heartbeat_interval * 2);
    assert_eq!(sim.core(2).last_log_id().index, LogIndex(2));
    assert_eq!(sim.core(1).commit_index(), LogIndex(2));
}

#[test]
fn a_slow_pipeline_is_not_reset_before_the_stall_limit() {
    // Entries merely in flight across a heartbeat are not presumed lost: the follower stays
    // in replicate state until the pipeline has been silent for an election timeout.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    for _ in 0..cfg().heartbeat_interval * 2 {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    let peers = sim.core(1).status().peers;
    assert!(
        peers
            .values()
            .all(|(_, state)| *state == raft_core::ReplicationState::Replicate),
        "{peers:?}"
    );
}

/// A leader that sends one entry per AppendEntries with one in flight, and node 3 (whose
/// messages `hold` keeps back) some entries behind: the situation of seeds 1036942, 1038202,
/// 3003553, 3060109, 3066901, 3160377 and 3174201 of the 100,000-seed runs.
fn window_of_one_with_node_3_behind(entries: usize) -> (Sim, Vec<Message>) {
    let cfg = Config {
        max_entries_per_append: 1,
        max_inflight: 1,
        ..plain_cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(2);
    let mut held = Vec::new();
    for _ in 0..entries {
        sim.propose(NodeId(1));
        held.extend(sim.deliver_holding(|m| m.to == NodeId(3) || m.from == NodeId(3)));
    }
    (sim, held)
}

fn match_of_3(sim: &Sim) -> (LogIndex, raft_core::ReplicationState) {
    sim.core(1).status().peers[&NodeId(3)]
}

#[test]
fn a_follower_behind_a_window_of_one_gains_one_entry_per_round_trip() {
    // Nothing is lost and nothing waits for a heartbeat: every acknowledgement releases the
    // next entry, so 15 entries take 15 round trips (the seeds above were this, slowed by a
    // delay of up to 6 steps per hop, not a stuck pipeline).
    let (mut sim, held) = window_of_one_with_node_3_behind(15);
    let last = sim.core(1).last_log_id().index;
    assert_eq!(held.len(), 1, "one AppendEntries in flight: {held:?}");
    for m in held {
        sim.deliver(m);
    }
    let mut hops = 1;
    while match_of_3(&sim).0 < last {
        let msgs = sim.take_in_flight();
        assert!(!msgs.is_empty(), "pipeline idle at {:?}", match_of_3(&sim));
        for m in msgs {
            sim.deliver(m);
        }
        hops += 1;
    }
    assert_eq!(hops, 2 * 15, "one request and one answer per entry");
    assert_eq!(match_of_3(&sim).1, raft_core::ReplicationState::Replicate);
    assert_eq!(sim.core(3).last_log_id(), sim.core(1).last_log_id());
}

#[test]
fn a_full_pipeline_sends_nothing_until_a_slot_frees() {
    // A window of one, full: a new proposal waits for the acknowledgement; it sends no
    // empty AppendEntries in its place (only heartbeats go out with a full window).
    let cfg = Config {
        max_inflight: 1,
        ..plain_cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    sim.deliver_all();
    sim.propose(NodeId(1));
    let first = sim.take_in_flight();
    assert!(first.iter().any(|m| m.to == NodeId(3)), "{first:?}");
    sim.propose(NodeId(1));
    let to_3: Vec<_> = sim
        .in_flight()
        .into_iter()
        .filter(|m| m.to == NodeId(3))
        .collect();
    assert!(to_3.is_empty(), "sent with a full window: {to_3:?}");
}

#[test]
fn lost_append_in_replicate_is_resent_within_the_stall_limit() {
    // The one AppendEntries in flight to node 3 is lost: the heartbeats at the match point
    // succeed but cannot move it, so after `election_timeout_min / heartbeat_interval`
    // silent heartbeats the leader probes again from the match point.
    let (mut sim, held) = window_of_one_with_node_3_behind(15);
    drop(held);
    let stall_limit = cfg().election_timeout_min / cfg().heartbeat_interval;
    let before = match_of_3(&sim).0;
    let mut heartbeats = 0;
    while match_of_3(&sim).0 == before {
        sim.tick_node(1, cfg().heartbeat_interval);
        heartbeats += 1;
        assert!(
            heartbeats <= stall_limit,
            "no resend after {heartbeats} heartbeats"
        );
    }
    sim.deliver_all();
    assert_eq!(sim.core(3).last_log_id(), sim.core(1).last_log_id());
}

// ----- Figure 7 ----------------------------------------------------------------------------

#[test]
fn figure_7_follower_logs_converge_to_the_leaders() {
    // Reference: section 5.3, Figure 7: the leader for term 8 and followers (a)-(f).
    let leader = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    let mut disks = vec![disk(7, leader)];
    disks.extend(followers.iter().map(|f| disk(7, f)));
    let mut sim = Sim::from_disks(7, plain_cfg(), disks);
    sim.elect(1);
    assert_eq!(sim.core(1).role(), Role::Leader);
    assert_eq!(sim.core(1).term(), Term(8));
    sim.tick_node(1, cfg().heartbeat_interval * 2);
    let expected = sim.log(1);
    assert_eq!(expected.len(), 11);
    for id in 2..=7 {
        assert_eq!(
            sim.log(id),
            expected,
            "follower ({})",
            (b'a' + id as u8 - 2) as char
        );
        assert_eq!(sim.core(id).commit_index(), LogIndex(11));
    }
}

#[test]
fn fast_backtracking_needs_one_round_trip_per_conflicting_term() {
    // Reference: section 5.3: with the conflict hint, one rejection per term, not per entry.
    let mut disks = vec![disk(7, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6])];
    disks.push(disk(7, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3])); // Figure 7 (f)
    disks.push(disk(7, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]));
    let mut sim = Sim::from_disks(1, plain_cfg(), disks);
    sim.campaign(1);
    let mut rejections = 0;
    sim.deliver_filtered(
        |m| {
            if let MessageBody::AppendResponse(r) = &m.body {
                if m.from == NodeId(2) && matches!(r.outcome, AppendOutcome::Conflict { .. }) {
                    rejections += 1;
                }
            }
            true
        },
        |_| {},
    );
    assert_eq!(sim.log(2), sim.log(1));
    // Entry-by-entry backup would need 8 rejections (indexes 11 down to 4).
    assert!(rejections <= 3, "{rejections} rejections");
}

#[test]
fn fast_backtracking_resends_only_what_the_follower_lacks() {
    // Reference: section 5.3. The follower's conflicting term (2) is one the leader also has,
    // so the leader resumes after its own last entry of term 2 instead of resending the
    // follower's whole term-2 run.
    let leader = [1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3];
    let stale = [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2];
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(3, &leader), disk(3, &stale), disk(3, &leader)],
    );
    sim.campaign(1);
    let mut carried = 0;
    sim.deliver_filtered(
        |m| {
            if let MessageBody::AppendEntries(a) = &m.body {
                if m.to == NodeId(2) {
                    carried += a.entries.len();
                }
            }
            true
        },
        |_| {},
    );
    assert_eq!(sim.log(2), sim.log(1));
    // The first probe carries the new no-op (1 entry); the retry carries 10..12 (3 entries).
    // Resending from the start of the follower's term 2 would carry 11.
    assert!(
        carried <= 4,
        "{carried} entries sent to repair a 3-entry divergence"
    );
}

// ----- Figure 8 ----------------------------------------------------------------------------

/// Figure 8 (c): S1 leads term 4 and holds index 2 from term 2; S5 holds index 2 from term 3.
fn figure_8_state() -> Sim {
    let disks = vec![
        disk(3, &[1, 2]),
        disk(3, &[1, 2]),
        disk(3, &[1]),
        disk(3, &[1]),
        disk(3, &[1, 3]),
    ];
    let mut sim = Sim::from_disks(
        8,
        Config {
            max_entries_per_append: 1,
            ..plain_cfg()
        },
        disks,
    );
    sim.campaign(1);
    // Only the election between S1..S4 gets through: S5 hears nothing, nothing replicates.
    sim.deliver_filtered(
        |m| {
            m.to != NodeId(5)
                && matches!(
                    m.body,
                    MessageBody::RequestVote(_) | MessageBody::VoteResponse(_)
                )
        },
        |_| {},
    );
    assert_eq!(sim.core(1).role(), Role::Leader);
    assert_eq!(sim.core(1).term(), Term(4));
    // The next heartbeat probes every follower again.
    for _ in 0..cfg().heartbeat_interval {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    sim
}

/// Campaigns `id` until it leads (a first round may hit voters that voted in that term).
fn elect_eventually(sim: &mut Sim, id: u64) {
    for _ in 0..3 {
        sim.elect(id);
        if sim.core(id).role() == Role::Leader {
            return;
        }
    }
}

#[test]
fn figure_8_leader_does_not_commit_a_previous_term_entry_by_counting_replicas() {
    // Reference: section 5.4.2, Figure 8.
    let mut sim = figure_8_state();
    let holds = |sim: &Sim, id: u64, lid: LogId| {
        sim.core(id).entry(lid.index).map(|e| e.log_id) == Some(lid)
    };
    // S1 replicates index 2 (term 2) to S3 but not its own term-4 entry: its first probe
    // (prev = index 2) is rejected by S3, which lacks index 2; the retry carries index 2;
    // the follow-up carrying index 3 is lost. S2 takes everything, so index 2 is on S1, S2
    // and S3 (a majority) while index 3 is on S1 and S2 only.
    let term2 = LogId::new(2, 2);
    let mut probes_after_2 = 0;
    sim.deliver_filtered(
        |m| match &m.body {
            MessageBody::AppendEntries(a) if m.to == NodeId(3) => {
                if a.prev_log_id == term2 {
                    probes_after_2 += 1;
                }
                a.prev_log_id != term2 || probes_after_2 == 1
            }
            _ => m.to == NodeId(2) || m.from == NodeId(2) || m.from == NodeId(3),
        },
        |sim| {
            assert!(
                sim.core(1).commit_index() < LogIndex(2),
                "index 2 committed while only replicas of a term-2 entry were counted"
            );
        },
    );
    assert!(
        (1..=3).all(|id| holds(&sim, id, term2)),
        "a majority stores index 2 from term 2"
    );
    // Figure 8 (d): S1 crashes; S5 can still win (S2, S3, S4 find its log up to date) and
    // overwrite index 2, which is why it must not have been committed.
    sim.crash(NodeId(1));
    sim.take_in_flight();
    elect_eventually(&mut sim, 5);
    assert_eq!(sim.core(5).role(), Role::Leader);
    sim.tick_node(5, 4);
    for id in 2..=4 {
        assert_eq!(
            sim.core(id).entry(LogIndex(2)).map(|e| e.log_id),
            Some(LogId::new(3, 2))
        );
    }
}

#[test]
fn figure_8_entry_of_a_previous_term_commits_with_one_of_the_current_term() {
    // Reference: Figure 8 (e): once the term-4 entry is on a majority, index 2 commits too,
    // and S5 can no longer be elected.
    let mut sim = figure_8_state();
    sim.isolate(NodeId(5));
    sim.tick_node(1, 2);
    assert_eq!(sim.core(1).commit_index(), LogIndex(3));
    sim.crash(NodeId(1));
    sim.heal();
    elect_eventually(&mut sim, 5);
    assert_ne!(sim.core(5).role(), Role::Leader);
    assert_eq!(
        sim.core(2).entry(LogIndex(2)).map(|e| e.log_id),
        Some(LogId::new(2, 2))
    );
}

// ----- PreVote and CheckQuorum -------------------------------------------------------------

fn stable_leader(cfg: Config) -> Sim {
    let mut sim = Sim::new(3, 3, cfg, Faults::none());
    sim.run_ticks(cfg_max(&sim) * 3);
    assert!(sim.leader().is_some(), "a leader emerges");
    sim
}

fn cfg_max(sim: &Sim) -> u64 {
    sim.cfg.election_timeout_max
}

#[test]
fn pre_vote_stops_a_rejoining_partitioned_node_from_disrupting_the_leader() {
    // Reference: dissertation 9.6.
    let mut sim = stable_leader(cfg());
    let leader = sim.leader().expect("leader");
    let term = sim.core(leader.0).term();
    let lonely = sim
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    sim.isolate(lonely);
    sim.run_ticks(cfg().election_timeout_max * 5);
    assert_eq!(
        sim.core(lonely.0).term(),
        term,
        "PreVote keeps the isolated node's term"
    );
    sim.heal();
    sim.run_ticks(cfg().election_timeout_max * 2);
    assert_eq!(sim.leader(), Some(leader));
    assert_eq!(sim.core(leader.0).term(), term);
}

#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    // The contrast that shows what PreVote prevents.
    let mut sim = stable_leader(plain_cfg());
    let leader = sim.leader().expect("leader");
    let term = sim.core(leader.0).term();
    let lonely = sim
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    sim.isolate(lonely);
    sim.run_ticks(plain_cfg().election_timeout_max * 5);
    assert!(sim.core(lonely.0).term() > term);
    sim.heal();
    sim.run_ticks(plain_cfg().election_timeout_max * 2);
    assert!(
        sim.core(leader.0).term() > term,
        "the leader's term was bumped"
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    // Reference: dissertation 6.2.
    let mut sim = stable_leader(cfg());
    let leader = sim.leader().expect("leader");
    sim.isolate(leader);
    sim.tick_node(leader.0, cfg().election_timeout_min * 2);
    assert_ne!(sim.core(leader.0).role(), Role::Leader);
}

#[test]
fn check_quorum_steps_down_after_exactly_one_silent_election_timeout() {
    // Reference: dissertation 6.2: the leader checks its quorum once per election timeout.
    // Right after the election every follower answered; isolated from then on, the first
    // check still sees those answers, the second (two timeouts in) finds a silent quorum.
    let mut sim = Sim::new(3, 3, cfg(), Faults::none());
    sim.elect(1);
    sim.isolate(NodeId(1));
    let min = cfg().election_timeout_min;
    for _ in 0..2 * min - 1 {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    assert_eq!(
        sim.core(1).role(),
        Role::Leader,
        "not before the second check"
    );
    sim.with_core(NodeId(1), |c| c.tick());
    assert_eq!(sim.core(1).role(), Role::Follower, "at the second check");
}

#[test]
fn check_quorum_lease_ends_after_exactly_the_minimum_election_timeout() {
    // Reference: dissertation 6.2 and 9.6: a follower that heard from the leader within the
    // minimum election timeout ignores vote requests; from that timeout on it considers them.
    let cfg = Config {
        election_timeout_min: 10,
        election_timeout_max: 100, // the follower's own timer fires later than the lease ends
        ..cfg()
    };
    let mut sim = Sim::new(5, 3, cfg.clone(), Faults::none());
    sim.elect(1);
    sim.tick_node(1, cfg.heartbeat_interval); // a heartbeat: node 2's lease starts now
    let term = sim.core(2).term().0;
    let last = sim.core(2).last_log_id();
    sim.take_in_flight();
    for _ in 0..cfg.election_timeout_min - 1 {
        sim.with_core(NodeId(2), |c| c.tick());
    }
    let ask = |t| msg(3, 2, t, vote_request(last));
    assert!(
        !granted(&exchange(&mut sim, ask(term + 1))),
        "inside the lease"
    );
    sim.with_core(NodeId(2), |c| c.tick());
    assert_eq!(
        sim.core(2).role(),
        Role::Follower,
        "its own timer has not fired"
    );
    assert!(
        granted(&exchange(&mut sim, ask(term + 1))),
        "the lease is over"
    );
}

#[test]
fn a_refused_vote_from_a_higher_term_makes_a_candidate_step_down() {
    // Reference: Figure 2, Rules for All Servers: a response with a higher term converts
    // the candidate to follower in that term, granted or not.
    let mut sim = Sim::new(1, 3, plain_cfg(), Faults::none());
    sim.campaign(1);
    let term = sim.core(1).term().0;
    let refusal = MessageBody::VoteResponse(VoteResponse {
        granted: false,
        pre_vote: false,
    });
    sim.deliver(msg(2, 1, term + 3, refusal));
    assert_eq!(sim.core(1).role(), Role::Follower);
    assert_eq!(sim.core(1).term(), Term(term + 3));
}

#[test]
fn a_refused_pre_vote_from_a_higher_term_makes_a_pre_candidate_step_down() {
    // Reference: dissertation 9.6: a refused pre-vote carries the voter's current term, which
    // the pre-candidate adopts (only a granted one carries the pre-candidate's future term).
    let mut sim = Sim::new(1, 3, cfg(), Faults::none());
    sim.with_core(NodeId(1), |c| {
        for _ in 0..cfg().election_timeout_max {
            c.tick();
        }
    });
    assert_eq!(sim.core(1).role(), Role::PreCandidate);
    let term = sim.core(1).term().0;
    let refusal = MessageBody::VoteResponse(VoteResponse {
        granted: false,
        pre_vote: true,
    });
    sim.deliver(msg(2, 1, term + 5, refusal));
    assert_eq!(sim.core(1).role(), Role::Follower);
    assert_eq!(sim.core(1).term(), Term(term + 5));
}

#[test]
fn a_vote_request_from_a_stale_term_is_answered_with_our_term() {
    // Reference: Figure 2, RequestVote rule 1: the reply carries currentTerm, so a stale
    // candidate learns it is behind and steps down.
    let mut sim = Sim::from_disks(
        1,
        plain_cfg(),
        vec![disk(5, &[]), disk(5, &[]), disk(5, &[])],
    );
    sim.take_in_flight();
    sim.deliver(msg(2, 1, 4, vote_request(LogId::default())));
    let replies = sim.take_in_flight();
    assert!(
        matches!(
            replies.as_slice(),
            [Message {
                to: NodeId(2),
                term: Term(5),
                body: MessageBody::VoteResponse(VoteResponse { granted: false, .. }),
                ..
            }]
        ),
        "{replies:?}"
    );
}

#[test]
fn a_refused_pre_vote_is_answered_in_the_voters_term() {
    // Reference: dissertation 9.6: only a granted pre-vote answers in the candidate's future
    // term; a refusal carries the voter's term.
    // (Without CheckQuorum: a just-started voter would ignore the request altogether.)
    let quiet = Config {
        check_quorum: false,
        ..cfg()
    };
    let mut sim = Sim::from_disks(1, quiet, vec![disk(5, &[5, 5]), disk(5, &[]), disk(5, &[])]);
    sim.take_in_flight();
    let pre_vote = MessageBody::RequestVote(RequestVote {
        last_log_id: LogId::default(), // behind our log: refused
        pre_vote: true,
        transfer: false,
    });
    sim.deliver(msg(2, 1, 6, pre_vote));
    let replies = sim.take_in_flight();
    assert!(
        matches!(
            replies.as_slice(),
            [Message {
                term: Term(5),
                body: MessageBody::VoteResponse(VoteResponse {
                    granted: false,
                    pre_vote: true
                }),
                ..
            }]
        ),
        "{replies:?}"
    );
}

#[test]
fn a_pre_vote_for_our_own_term_is_refused_once_we_follow_a_leader() {
    // Reference: dissertation 9.6: a pre-vote is granted only for a later term; in our own
    // term the usual rule holds (we follow a leader, so no vote).
    let mut sim = Sim::new(1, 3, plain_cfg(), Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    let term = sim.core(2).term().0;
    let pre_vote = MessageBody::RequestVote(RequestVote {
        last_log_id: sim.core(2).last_log_id(),
        pre_vote: true,
        transfer: false,
    });
    assert!(!granted(&exchange(&mut sim, msg(3, 2, term, pre_vote))));
}

#[test]
fn a_read_on_a_sole_voter_needs_no_heartbeat_round() {
    // Dissertation 6.4: a quorum of one confirms the read at once; learners are not asked.
    let members = raft_core::Membership {
        learners: [NodeId(2)].into(),
        ..raft_core::Membership::new([NodeId(1)])
    };
    let mut sim = Sim::with_membership(1, members, plain_cfg(), Faults::none());
    sim.campaign(1);
    sim.deliver_all();
    let before = sim.count("AppendEntries");
    sim.read(NodeId(1));
    assert_eq!(sim.reads_served, 1);
    assert_eq!(sim.count("AppendEntries"), before, "no heartbeat round");
}

#[test]
fn without_check_quorum_an_isolated_leader_keeps_leading() {
    let mut sim = stable_leader(plain_cfg());
    let leader = sim.leader().expect("leader");
    sim.isolate(leader);
    sim.tick_node(leader.0, cfg().election_timeout_min * 2);
    assert_eq!(sim.core(leader.0).role(), Role::Leader);
}

#[test]
fn check_quorum_followers_ignore_vote_requests_while_the_leader_is_heard() {
    let mut sim = stable_leader(cfg());
    let leader = sim.leader().expect("leader");
    let follower = sim
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    let other = sim
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != follower)
        .expect("other");
    let term = sim.core(follower.0).term().0;
    let last = sim.core(follower.0).last_log_id();
    let replies = exchange(
        &mut sim,
        msg(other.0, follower.0, term + 1, vote_request(last)),
    );
    assert!(replies.is_empty());
    assert_eq!(
        sim.core(follower.0).term().0,
        term,
        "the lease kept our term"
    );
}

// ----- ReadIndex ---------------------------------------------------------------------------

#[test]
fn read_index_is_served_after_a_quorum_confirms_leadership() {
    // Reference: dissertation 6.4.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    sim.deliver_all();
    let commit = sim.core(1).commit_index();
    let read = sim.read(NodeId(1));
    assert_eq!(
        sim.read_results.get(&read),
        None,
        "not before a quorum answered"
    );
    sim.deliver_all();
    assert_eq!(sim.read_results.get(&read), Some(&Some(commit)));
}

#[test]
fn read_index_waits_for_the_leaders_first_commit_in_its_term() {
    // Reference: dissertation 6.4 step 1: until its no-op commits, a new leader does not know
    // the commit index.
    let mut sim = three();
    sim.campaign(1);
    sim.deliver_filtered(|m| !matches!(m.body, MessageBody::AppendEntries(_)), |_| {});
    assert_eq!(sim.core(1).role(), Role::Leader);
    let read = sim.read(NodeId(1));
    assert_eq!(sim.read_results.get(&read), None);
    sim.run_ticks(2);
    assert_eq!(sim.read_results.get(&read), Some(&Some(LogIndex(1))));
}

/// Five nodes: node 1 led, then was cut off with node 2 while node 3 was elected by the
/// other three and committed an entry (returned); nodes 1 and 2 do not know yet.
fn deposed_leader() -> (Sim, LogId) {
    let mut sim = Sim::new(1, 5, plain_cfg(), Faults::none());
    sim.elect(1);
    sim.run_ticks(2);
    sim.partition(&[NodeId(1), NodeId(2)]);
    sim.elect(3);
    let new_commit = sim.propose(NodeId(3)).expect("new leader accepts");
    sim.run_ticks(2);
    (sim, new_commit)
}

#[test]
fn deposed_leader_serves_no_read_index_read() {
    let (mut sim, new_commit) = deposed_leader();
    assert_eq!(
        sim.core(1).role(),
        Role::Leader,
        "the old leader does not know yet"
    );
    let read = sim.read(NodeId(1));
    sim.run_ticks(cfg().election_timeout_max * 2);
    assert_eq!(
        sim.read_results.get(&read),
        None,
        "a deposed leader confirmed a read"
    );
    sim.heal();
    sim.run_ticks(2);
    assert_eq!(
        sim.read_results.get(&read),
        Some(&None),
        "the read fails on step-down"
    );
    assert!(sim.core(1).commit_index() >= new_commit.index);
}

#[test]
fn a_read_failed_by_a_new_leaders_append_names_that_leader() {
    // The deposed leader learns the new leader from its AppendEntries, and says so.
    let mut sim = Sim::new(1, 3, plain_cfg(), Faults::none());
    sim.elect(1);
    sim.run_ticks(2);
    let read = sim.read(NodeId(1));
    sim.take_in_flight(); // its confirmation round is lost
    let term = sim.core(1).term().0;
    let last = sim.core(1).last_log_id();
    sim.deliver(msg(3, 1, term + 1, append(last, &[], 0)));
    assert_eq!(sim.read_hints.get(&read), Some(&Some(NodeId(3))));
}

#[test]
fn read_index_on_a_candidate_is_refused() {
    // A candidate knows no leader to ask for a read index.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(1);
    sim.faults.loss = 1.0;
    sim.tick_node(2, cfg().election_timeout_max);
    assert_eq!(sim.core(2).role(), Role::Candidate);
    let err = sim
        .with_core(NodeId(2), |c| c.read_index(7))
        .expect("up")
        .expect_err("candidates refuse");
    assert_eq!(err.leader_hint, None);
}

/// AppendEntries `m` carries entries.
fn carries_entries(m: &Message) -> bool {
    matches!(&m.body, MessageBody::AppendEntries(a) if !a.entries.is_empty())
}

#[test]
fn reads_are_coalesced_into_one_heartbeat_round() {
    // Reference: dissertation 6.4: one round of heartbeats confirms every read registered
    // before it; a read arriving while a round is in flight waits for the next one.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    let appends = sim.take_in_flight(); // entries in flight, not yet answered
    let before = sim.count("AppendEntries");
    let reads: Vec<u64> = (0..1000).map(|_| sim.read(NodeId(1))).collect();
    let rounds = (sim.count("AppendEntries") - before) / 2;
    assert_eq!(
        rounds, 1,
        "1,000 reads while one round is in flight: one round"
    );
    for m in appends {
        sim.deliver(m);
    }
    sim.deliver_all();
    assert!(reads
        .iter()
        .all(|r| sim.read_results.get(r).is_some_and(Option::is_some)));
    let rounds = (sim.count("AppendEntries") - before) / 2;
    assert!(rounds <= 3, "{rounds} rounds for 1,000 reads");
}

#[test]
fn reads_never_demote_a_replicating_follower() {
    // Read confirmation is not replication: it never counts toward the stall detector
    // (which demotes a follower to Probe, and each probe resends a batch).
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    // The entries stay in flight (their acknowledgements are slow), while reads go on.
    let held: Vec<Message> = sim.take_in_flight();
    for _ in 0..1000 {
        let read = sim.read(NodeId(1));
        sim.deliver_all();
        assert!(sim.read_results.get(&read).is_some_and(Option::is_some));
        for (peer, (_, state)) in sim.core(1).status().peers {
            assert_eq!(
                state,
                ReplicationState::Replicate,
                "{peer} demoted by reads"
            );
        }
    }
    assert!(held.iter().any(carries_entries));
}

#[test]
fn an_answer_from_an_earlier_term_confirms_no_read() {
    // Sequence numbers restart from 0 when a node restarts; an answer still on the wire to
    // a message of its previous run (an earlier term) must not confirm a read of this one.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    let old_term = sim.core(1).term().0;
    sim.crash(NodeId(1));
    sim.restart(NodeId(1));
    sim.elect(1);
    sim.run_ticks(2);
    let term = sim.core(1).term().0;
    assert!(term > old_term);
    let read = sim.read(NodeId(1));
    sim.take_in_flight(); // the confirmation round is lost
                          // A late answer from node 2 echoing a number the previous run used, in this term.
    let stale = MessageBody::AppendResponse(raft_core::message::AppendResponse {
        seq: (old_term << 32) + 1_000,
        outcome: AppendOutcome::Success {
            match_index: LogIndex(0),
        },
    });
    sim.deliver(msg(2, 1, term, stale));
    assert_eq!(
        sim.read_results.get(&read),
        None,
        "confirmed by a stale answer"
    );
}

// ----- Follower reads (dissertation 6.4) ---------------------------------------------------

#[test]
fn follower_read_waits_for_the_read_index() {
    // The follower gets the leader's commit index as its read index, even one it has not
    // applied yet: it must wait until it has (the node does; the core says which index).
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    let lid = sim.propose(NodeId(1)).expect("leader");
    // Node 3 does not get the entry; node 2 does, so it commits.
    sim.deliver_filtered(|m| m.to != NodeId(3) || !carries_entries(m), |_| {});
    assert_eq!(sim.core(1).commit_index(), lid.index);
    assert!(sim.core(3).commit_index() < lid.index);
    let read = sim.read(NodeId(3));
    sim.deliver_filtered(|m| m.to != NodeId(3) || !carries_entries(m), |_| {});
    assert_eq!(sim.read_results.get(&read), Some(&Some(lid.index)));
    assert!(
        sim.core(3).status().applied_index < lid.index,
        "the read index is ahead of what node 3 applied: it waits"
    );
    assert_eq!(sim.core(3).read_counts().follower_read_index, 1);
}

#[test]
fn follower_read_batches_every_waiting_read_into_one_request() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    let before = sim.count("ReadIndex");
    let reads: Vec<u64> = (0..100).map(|_| sim.read(NodeId(2))).collect();
    sim.deliver_all();
    assert!(
        sim.count("ReadIndex") - before <= 2,
        "one request, then one for the rest"
    );
    assert!(reads
        .iter()
        .all(|r| sim.read_results.get(r).is_some_and(Option::is_some)));
}

#[test]
fn follower_read_fails_over_when_the_leader_changes() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    let read = sim.read(NodeId(3));
    // Its request to node 1 is lost, and node 2 takes over.
    sim.deliver_filtered(|m| !matches!(m.body, MessageBody::ReadIndex(_)), |_| {});
    sim.elect(2);
    sim.run_ticks(2);
    assert_eq!(sim.core(3).leader(), Some(NodeId(2)));
    let commit = sim.core(2).commit_index();
    assert!(
        sim.read_results
            .get(&read)
            .is_some_and(|r| r.is_some_and(|i| i >= commit)),
        "the read went to the new leader: {:?}",
        sim.read_results.get(&read)
    );
}

#[test]
fn follower_read_is_refused_by_a_deposed_leader() {
    let (mut sim, new_commit) = deposed_leader();
    assert_eq!(
        sim.core(2).leader(),
        Some(NodeId(1)),
        "node 2 does not know"
    );
    let read = sim.read(NodeId(2));
    sim.run_ticks(cfg().election_timeout_max * 2);
    assert!(
        !matches!(sim.read_results.get(&read), Some(Some(_))),
        "the deposed leader gave a read index"
    );
    sim.heal();
    sim.run_ticks(4);
    match sim.read_results.get(&read) {
        Some(Some(index)) => assert!(*index >= new_commit.index, "stale read index {index}"),
        Some(None) => {}
        None => panic!("the read never ended"),
    }
}

#[test]
fn a_read_index_request_to_a_non_leader_is_refused_at_once() {
    // The asker learns at once that it asked the wrong node, rather than after its resend
    // timeout.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    let term = sim.core(2).term().0;
    let ask = MessageBody::ReadIndex(raft_core::message::ReadIndexRequest {
        ctx: 7,
        lease: false,
    });
    let replies = exchange(&mut sim, msg(3, 2, term, ask));
    assert!(
        matches!(
            replies.as_slice(),
            [MessageBody::ReadIndexResponse(
                raft_core::message::ReadIndexResponse {
                    ctx: 7,
                    index: None
                }
            )]
        ),
        "{replies:?}"
    );
}

/// The ctx of the one ReadIndex request in flight from `from`.
fn read_request_ctx(sim: &Sim, from: u64) -> u64 {
    let ctxs: Vec<u64> = sim
        .in_flight()
        .iter()
        .filter(|m| m.from == NodeId(from))
        .filter_map(|m| match &m.body {
            MessageBody::ReadIndex(r) => Some(r.ctx),
            _ => None,
        })
        .collect();
    assert_eq!(ctxs.len(), 1, "one request in flight");
    ctxs[0]
}

#[test]
fn follower_read_sends_one_request_at_a_time() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.take_in_flight();
    let first = sim.read(NodeId(2));
    let second = sim.read(NodeId(2));
    let _ = read_request_ctx(&sim, 2); // one request, though two reads wait
    sim.deliver_all();
    for r in [first, second] {
        assert!(
            sim.read_results.get(&r).is_some_and(Option::is_some),
            "read {r}"
        );
    }
}

#[test]
fn a_read_index_answer_from_another_node_is_ignored() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.take_in_flight();
    let read = sim.read(NodeId(2));
    let ctx = read_request_ctx(&sim, 2);
    sim.take_in_flight();
    let term = sim.core(2).term().0;
    // Node 3 is not who node 2 asked: its "answer" must not serve the read.
    let forged = MessageBody::ReadIndexResponse(raft_core::message::ReadIndexResponse {
        ctx,
        index: Some(LogIndex(0)),
    });
    sim.deliver(msg(3, 2, term, forged));
    assert_eq!(sim.read_results.get(&read), None);
    // Nor does the leader's answer to another batch.
    let other = MessageBody::ReadIndexResponse(raft_core::message::ReadIndexResponse {
        ctx: ctx.wrapping_add(1),
        index: Some(LogIndex(0)),
    });
    sim.deliver(msg(1, 2, term, other));
    assert_eq!(sim.read_results.get(&read), None);
}

#[test]
fn follower_read_fails_when_the_follower_campaigns() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.faults.loss = 1.0;
    let read = sim.read(NodeId(2));
    sim.tick_node(2, cfg().election_timeout_max);
    assert_ne!(sim.core(2).role(), Role::Follower);
    assert_eq!(sim.read_results.get(&read), Some(&None));
}

#[test]
fn follower_read_unanswered_three_times_fails() {
    // A one-way link: the follower hears the leader, but its requests never arrive.
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.blocked.insert((NodeId(2), NodeId(1)));
    let read = sim.read(NodeId(2));
    let min = cfg().election_timeout_min;
    let before = sim.count("ReadIndex");
    sim.run_ticks(3 * min - 1);
    assert_eq!(
        sim.read_results.get(&read),
        None,
        "failed before its third send timed out"
    );
    assert_eq!(
        sim.count("ReadIndex") - before,
        2,
        "resent after each election timeout"
    );
    sim.run_ticks(1);
    assert_eq!(sim.read_results.get(&read), Some(&None));
}

#[test]
fn follower_read_with_no_leader_fails_after_two_election_timeouts() {
    // A learner never campaigns, so only this bound ends a read that finds no leader.
    let m = Membership {
        learners: [NodeId(2)].into_iter().collect(),
        ..Membership::new([NodeId(1)])
    };
    let mut sim = Sim::with_membership(1, m, plain_cfg(), Faults::none());
    sim.isolate(NodeId(2));
    let read = sim.read(NodeId(2));
    let max = cfg().election_timeout_max;
    sim.tick_node(2, 2 * max - 1);
    assert_eq!(sim.read_results.get(&read), None);
    sim.tick_node(2, 1);
    assert_eq!(sim.read_results.get(&read), Some(&None));
}

#[test]
fn a_follower_read_refused_names_no_leader_it_knows_is_not_one() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    sim.take_in_flight();
    let read = sim.read(NodeId(2));
    let ctx = read_request_ctx(&sim, 2);
    sim.take_in_flight();
    let term = sim.core(2).term().0;
    let refusal =
        MessageBody::ReadIndexResponse(raft_core::message::ReadIndexResponse { ctx, index: None });
    sim.deliver(msg(1, 2, term, refusal));
    assert_eq!(sim.read_results.get(&read), Some(&None));
    assert_eq!(
        sim.read_hints.get(&read),
        Some(&None),
        "node 1 just said it does not lead"
    );
}

#[test]
fn a_follower_asks_for_the_lease_only_for_lease_reads() {
    for (policy, lease) in [(ReadPolicy::Lease, true), (ReadPolicy::ReadIndex, false)] {
        let mut sim = leased();
        sim.read_policy = policy;
        sim.take_in_flight();
        sim.read(NodeId(2));
        let asked = sim.in_flight().iter().find_map(|m| match &m.body {
            MessageBody::ReadIndex(r) => Some(r.lease),
            _ => None,
        });
        assert_eq!(asked, Some(lease), "{policy:?}");
    }
}

#[test]
fn follower_lease_read_is_answered_from_the_leaders_lease_and_a_read_index_read_is_not() {
    let mut sim = leased();
    sim.take_in_flight();
    sim.read(NodeId(2));
    let ctx = read_request_ctx(&sim, 2);
    sim.take_in_flight();
    let term = sim.core(1).term().0;
    let ask = |lease| MessageBody::ReadIndex(raft_core::message::ReadIndexRequest { ctx, lease });
    // Asking for a lease read: answered at once, no round.
    let replies = exchange(&mut sim, msg(2, 1, term, ask(true)));
    assert!(
        matches!(replies.as_slice(), [MessageBody::ReadIndexResponse(r)] if r.index.is_some()),
        "{replies:?}"
    );
    // Asking for ReadIndex: a round first (heartbeats out, no answer yet).
    let replies = exchange(&mut sim, msg(2, 1, term, ask(false)));
    assert!(
        !replies
            .iter()
            .any(|r| matches!(r, MessageBody::ReadIndexResponse(_))),
        "answered without a round: {replies:?}"
    );
    assert!(replies
        .iter()
        .any(|r| matches!(r, MessageBody::AppendEntries(_))));
}

#[test]
fn follower_read_request_lost_is_sent_again() {
    let mut sim = three();
    sim.elect(1);
    sim.run_ticks(2);
    let read = sim.read(NodeId(2));
    sim.deliver_filtered(|m| !matches!(m.body, MessageBody::ReadIndex(_)), |_| {});
    assert_eq!(sim.read_results.get(&read), None);
    sim.run_ticks(cfg().election_timeout_min);
    assert!(sim.read_results.get(&read).is_some_and(Option::is_some));
}

// ----- Lease reads (dissertation 6.4.1) ------------------------------------------------

fn lease_cfg() -> Config {
    Config {
        read_policy: ReadPolicy::Lease,
        ..cfg()
    }
}

/// A leader (node 1) whose last heartbeat round a quorum answered.
fn leased() -> Sim {
    let mut sim = Sim::new(1, 3, lease_cfg(), Faults::none());
    sim.read_policy = ReadPolicy::Lease;
    sim.elect(1);
    sim.run_ticks(cfg().heartbeat_interval);
    sim
}

/// Starts a read at node 1 and checks it is not served from a lease at once.
fn assert_no_lease_read(sim: &mut Sim, why: &str) {
    let read = sim.read(NodeId(1));
    assert_eq!(sim.read_results.get(&read), None, "{why}");
    assert_eq!(sim.core(1).read_counts().lease, 0, "{why}");
}

#[test]
fn lease_read_is_served_within_the_lease() {
    let mut sim = leased();
    let before = sim.count("AppendEntries");
    let read = sim.read(NodeId(1));
    assert_eq!(
        sim.read_results.get(&read),
        Some(&Some(sim.core(1).commit_index()))
    );
    assert_eq!(sim.count("AppendEntries"), before, "no round");
    assert_eq!(sim.core(1).read_counts().lease, 1);
}

#[test]
fn lease_read_is_refused_after_the_lease_expires() {
    let mut sim = leased();
    // Nobody answers from now on: the lease runs out lease_ticks after the last round
    // a quorum answered was sent.
    sim.isolate(NodeId(1));
    sim.run_ticks(lease_cfg().lease_ticks());
    assert_no_lease_read(&mut sim, "served without a lease");
}

#[test]
fn lease_read_is_refused_after_a_term_change() {
    let mut sim = leased();
    // A higher term reaches the leader: it steps down, and its lease goes with it.
    let term = sim.core(1).term().0;
    let last = sim.core(1).last_log_id();
    sim.deliver(msg(3, 1, term + 1, append(last, &[], 0)));
    assert_ne!(sim.core(1).role(), Role::Leader);
    assert_no_lease_read(&mut sim, "served from the old term's lease");
}

#[test]
fn lease_read_is_refused_after_a_transfer() {
    let mut sim = leased();
    sim.with_core(NodeId(1), |c| c.transfer_leadership(NodeId(2)))
        .expect("up")
        .expect("accepted");
    // TimeoutNow is on its way: the target's voters will disregard this leader's lease.
    assert!(sim
        .in_flight()
        .iter()
        .any(|m| matches!(m.body, MessageBody::TimeoutNow)));
    assert_eq!(sim.core(1).role(), Role::Leader);
    assert_no_lease_read(&mut sim, "served from a forfeited lease");
}

#[test]
fn a_restarted_voter_ignores_candidates_for_an_election_timeout() {
    // Dissertation 6.4.1: a leader's lease counts on a quorum ignoring candidates for an
    // election timeout after they heard from it; a voter that restarts right after has
    // forgotten it did, so it waits that long before granting anything.
    let mut sim = leased();
    sim.crash(NodeId(3));
    sim.restart(NodeId(3));
    let term = sim.core(3).term().0;
    let last = sim.core(1).last_log_id();
    let replies = exchange(&mut sim, msg(2, 3, term + 1, vote_request(last)));
    assert!(
        replies.is_empty(),
        "answered a candidate at once: {replies:?}"
    );
    sim.tick_node(3, cfg().election_timeout_min - 1);
    let replies = exchange(&mut sim, msg(2, 3, term + 1, vote_request(last)));
    assert!(
        replies.is_empty(),
        "answered within the election timeout: {replies:?}"
    );
}

// ----- Durability ordering across a crash -------------------------------------------------

#[test]
fn a_crash_before_the_vote_is_durable_loses_no_promise() {
    let mut sim = three();
    sim.faults.disk = 0.0;
    exchange(&mut sim, msg(2, 1, 1, vote_request(LogId::default())));
    sim.crash(NodeId(1));
    sim.restart(NodeId(1));
    // The vote was never sent, so voting for another candidate in term 1 is safe.
    sim.faults.disk = 1.0;
    assert!(granted(&exchange(
        &mut sim,
        msg(3, 1, 1, vote_request(LogId::default()))
    )));
}

#[test]
fn persist_actions_are_ordered_before_the_messages_that_depend_on_them() {
    let mut sim = three();
    sim.faults.disk = 0.0;
    sim.with_core(NodeId(1), |c| {
        c.step(msg(2, 1, 1, vote_request(LogId::default())));
        let actions = c.take_actions();
        assert!(matches!(
            actions.as_slice(),
            [Action::Persist {
                op: PersistOp::HardState(_),
                ..
            }]
        ));
    });
}

fn grown() -> raft_core::Membership {
    raft_core::Membership {
        learners: [NodeId(4)].into(),
        ..raft_core::Membership::new([NodeId(1), NodeId(2), NodeId(3)])
    }
}

fn config_entry(term: u64, index: u64) -> raft_core::Entry {
    raft_core::Entry {
        log_id: LogId::new(term, index),
        payload: EntryPayload::Membership(grown()),
    }
}

#[test]
fn a_configuration_takes_effect_when_appended_and_ends_with_its_truncation() {
    // Section 6: a server uses the latest configuration in its log, committed or not; one
    // that a new leader's log replaces no longer counts.
    let mut sim = three();
    let body = MessageBody::AppendEntries(AppendEntries {
        prev_log_id: LogId::default(),
        entries: vec![config_entry(1, 1)],
        leader_commit: LogIndex(0),
        seq: 0,
    });
    sim.deliver(msg(2, 1, 1, body));
    assert_eq!(sim.core(1).membership(), &grown());
    sim.deliver(msg(3, 1, 2, append(LogId::default(), &[(2, 1)], 0)));
    assert_eq!(
        sim.core(1).membership(),
        &raft_core::Membership::new([NodeId(1), NodeId(2), NodeId(3)])
    );
}

#[test]
fn a_restarted_node_uses_the_latest_configuration_in_its_log() {
    let mut entries = disk(1, &[1, 1]).log;
    entries.push(config_entry(1, 3));
    let init = raft_core::InitialState {
        entries,
        bootstrap: raft_core::Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        ..raft_core::InitialState::default()
    };
    let core = raft_core::RaftCore::new(NodeId(1), cfg(), init, 1);
    assert_eq!(core.membership(), &grown());
}

#[test]
fn a_truncation_after_a_configuration_keeps_it_in_effect() {
    let mut sim = three();
    let body = MessageBody::AppendEntries(AppendEntries {
        prev_log_id: LogId::default(),
        entries: vec![
            config_entry(1, 1),
            raft_core::Entry {
                log_id: LogId::new(1, 2),
                payload: EntryPayload::Blank,
            },
        ],
        leader_commit: LogIndex(0),
        seq: 0,
    });
    sim.deliver(msg(2, 1, 1, body));
    // A new leader replaces index 2 only: the configuration at 1 stays.
    sim.deliver(msg(3, 1, 2, append(LogId::new(1, 1), &[(2, 2)], 0)));
    assert_eq!(sim.core(1).last_log_id(), LogId::new(2, 2));
    assert_eq!(sim.core(1).membership(), &grown());
}

#[test]
fn a_snapshot_carries_the_configuration_in_effect_at_its_index() {
    let mut entries = disk(1, &[1, 1]).log;
    entries.push(config_entry(1, 3));
    entries.extend(disk(1, &[1, 1, 1, 1]).log.into_iter().skip(3));
    let bootstrap = raft_core::Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let init = raft_core::InitialState {
        entries,
        bootstrap: bootstrap.clone(),
        ..raft_core::InitialState::default()
    };
    let core = raft_core::RaftCore::new(NodeId(1), cfg(), init, 1);
    let at = |i: u64| core.snapshot_meta_at(LogIndex(i)).expect("held").membership;
    assert_eq!(at(2), bootstrap);
    assert_eq!(at(3), grown());
    assert_eq!(at(4), grown());
    assert_eq!(core.id(), NodeId(1));
    assert!(core.debug_progress().contains("writes"));
}

#[test]
fn a_full_window_sends_nothing_more_until_an_answer() {
    // One AppendEntries in flight to node 3 (window of one): a new proposal sends it
    // nothing, not even an empty message, until node 3 answers.
    let cfg = raft_core::Config {
        max_inflight: 1,
        ..plain_cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(2);
    sim.propose(NodeId(1));
    sim.deliver_holding(|m| m.to == NodeId(3) || m.from == NodeId(3));
    sim.propose(NodeId(1));
    let to_3 = sim.in_flight().iter().filter(|m| m.to == NodeId(3)).count();
    assert_eq!(to_3, 0, "{:?}", sim.in_flight());
}
