//! Rule tests for membership changes (section 6 of the Raft paper, dissertation chapter 4):
//! joint consensus, one change at a time, configurations in effect when appended, members
//! replicated to from the moment they are added, removed leaders stepping down, and
//! leadership transfer's TimeoutNow.

mod sim;

use std::collections::BTreeSet;

use raft_core::{
    ChangeError, Config, Entry, EntryPayload, LogId, LogIndex, Membership, MembershipChange,
    Message, MessageBody, NodeId, Role, Term,
};
use sim::{disk, Faults, Sim};

/// PreVote on (membership changes need it or CheckQuorum), CheckQuorum off so that
/// isolated leaders keep leading in these scripted runs.
fn cfg() -> Config {
    Config {
        pre_vote: true,
        check_quorum: false,
        ..Config::default()
    }
}

fn ids(v: &[u64]) -> BTreeSet<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

/// Voters 1, 2 and 3 with node 1 leading; nodes 4 and 5 started but not members.
fn three_and_two_spares() -> Sim {
    let mut sim = Sim::with_spares(
        1,
        Membership::new(ids(&[1, 2, 3])),
        &[NodeId(4), NodeId(5)],
        cfg(),
        Faults::none(),
    );
    sim.elect(1);
    sim.run_ticks(1);
    sim
}

fn change(sim: &mut Sim, c: MembershipChange) -> Result<LogId, ChangeError> {
    sim.with_core(NodeId(1), |core| core.change_membership(c))
        .expect("node 1 is up")
}

#[test]
fn joint_configuration_needs_both_majorities_to_commit() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(4));
    sim.isolate(NodeId(5));
    let joint = change(&mut sim, MembershipChange::SetVoters(ids(&[1, 4, 5]))).unwrap();
    sim.run_ticks(4);
    // The old majority {1, 2, 3} has it; the new one {1, 4, 5} does not.
    assert!(sim.core(1).commit_index() < joint.index);
    assert_eq!(sim.core(1).membership().outgoing, Some(ids(&[1, 2, 3])));
    sim.heal();
    sim.run_ticks(10);
    // Committed, then left by the leader on its own for the new configuration alone.
    let m = sim.core(1).membership().clone();
    assert_eq!(m, Membership::new(ids(&[1, 4, 5])));
    assert!(!sim.core(1).config_change_pending());
    assert_eq!(sim.core(4).membership(), &m);
}

/// A disk holding an entry at 1 and, at 2, the joint configuration {1,2,3} -> {1,4,5}.
fn joint_disk() -> (sim::Disk, Membership) {
    let joint = Membership {
        voters: ids(&[1, 4, 5]),
        outgoing: Some(ids(&[1, 2, 3])),
        learners: BTreeSet::new(),
        addresses: Default::default(),
    };
    let mut d = disk(1, &[1]);
    d.log.push(Entry {
        log_id: LogId::new(1, 2),
        payload: EntryPayload::Membership(joint.clone()),
    });
    (d, joint)
}

#[test]
fn joint_configuration_needs_both_majorities_to_elect() {
    // Every log holds the joint configuration {1,2,3} -> {1,4,5}. Node 1 can win the old
    // half (1, 2, 3) but not the new one while 4 and 5 are cut off.
    let (d, joint) = joint_disk();
    let mut sim = Sim::from_disks(1, cfg(), vec![d.clone(); 5]);
    assert_eq!(sim.core(1).membership(), &joint);
    sim.isolate(NodeId(4));
    sim.isolate(NodeId(5));
    sim.elect(1);
    assert_ne!(sim.core(1).role(), Role::Leader, "{}", sim.describe());
    sim.heal();
    sim.elect(1);
    assert_eq!(sim.core(1).role(), Role::Leader, "{}", sim.describe());
    // It then completes the change on its own.
    sim.run_ticks(4);
    assert_eq!(sim.core(1).membership(), &Membership::new(ids(&[1, 4, 5])));
}

#[test]
fn second_change_while_joint_is_refused() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(4));
    sim.isolate(NodeId(5));
    change(&mut sim, MembershipChange::SetVoters(ids(&[1, 4, 5]))).unwrap();
    sim.run_ticks(2);
    assert_eq!(
        change(&mut sim, MembershipChange::AddLearner(NodeId(5), None)),
        Err(ChangeError::InProgress)
    );
    assert!(sim.core(1).config_change_pending());
}

#[test]
fn a_change_before_the_last_one_commits_is_refused() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(2));
    sim.isolate(NodeId(3));
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    assert_eq!(
        change(&mut sim, MembershipChange::AddLearner(NodeId(5), None)),
        Err(ChangeError::InProgress)
    );
}

#[test]
fn a_change_is_refused_without_pre_vote_or_check_quorum() {
    let plain = Config {
        pre_vote: false,
        ..cfg()
    };
    let mut sim = Sim::new(1, 3, plain, Faults::none());
    sim.elect(1);
    let refused = sim.with_core(NodeId(1), |c| {
        c.change_membership(MembershipChange::Remove(NodeId(3)))
    });
    assert_eq!(refused, Some(Err(ChangeError::Disruptive)));
}

#[test]
fn a_change_that_leaves_no_voter_is_refused() {
    let mut sim = three_and_two_spares();
    assert_eq!(
        change(&mut sim, MembershipChange::SetVoters(BTreeSet::new())),
        Err(ChangeError::NoVoter)
    );
    let mut single = Sim::new(1, 1, cfg(), Faults::none());
    single.elect(1);
    let refused = single.with_core(NodeId(1), |c| {
        c.change_membership(MembershipChange::Remove(NodeId(1)))
    });
    assert_eq!(refused, Some(Err(ChangeError::NoVoter)));
}

#[test]
fn a_change_on_a_follower_names_the_leader() {
    let mut sim = three_and_two_spares();
    let refused = sim.with_core(NodeId(2), |c| {
        c.change_membership(MembershipChange::AddLearner(NodeId(4), None))
    });
    assert!(
        matches!(&refused, Some(Err(ChangeError::NotLeader(n))) if n.leader_hint == Some(NodeId(1))),
        "{refused:?}"
    );
}

#[test]
fn an_added_learner_is_replicated_to_at_once_and_never_votes() {
    let mut sim = three_and_two_spares();
    for _ in 0..3 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    assert!(sim.core(1).status().peers.contains_key(&NodeId(4)));
    sim.run_ticks(4);
    assert_eq!(sim.log(4), sim.log(1));
    assert_eq!(sim.core(4).role(), Role::Learner);
    // A learner's acknowledgement never counts toward a commit.
    assert_eq!(sim.core(1).membership().voters, ids(&[1, 2, 3]));
}

#[test]
fn a_new_member_is_probed_one_message_at_a_time() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(4));
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.take_in_flight();
    for _ in 0..3 {
        sim.propose(NodeId(1));
    }
    let to_4 = sim
        .in_flight()
        .iter()
        .filter(|m| m.to == NodeId(4) && matches!(m.body, MessageBody::AppendEntries(_)))
        .count();
    assert_eq!(to_4, 0, "the first probe is still unanswered");
}

#[test]
fn a_promoted_learner_votes_before_it_holds_its_promotion() {
    // Node 4 was promoted by a joint configuration only nodes 1 and 3 hold; node 1 then
    // needs node 4's vote for the new half. A server answers votes whatever its own
    // configuration says (dissertation 4.1), or this election could never be won.
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(4);
    sim.isolate(NodeId(4));
    change(&mut sim, MembershipChange::SetVoters(ids(&[1, 3, 4]))).unwrap();
    sim.run_ticks(1);
    assert_eq!(sim.core(4).role(), Role::Learner);
    sim.heal();
    sim.isolate(NodeId(2));
    sim.elect(1);
    assert_eq!(sim.core(1).role(), Role::Leader, "{}", sim.describe());
}

#[test]
fn a_promoted_learner_becomes_a_follower_when_the_change_is_appended() {
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(4);
    // Node 4 takes the joint configuration but no later message: not committed for it.
    let joint = change(&mut sim, MembershipChange::SetVoters(ids(&[1, 2, 3, 4]))).unwrap();
    let appends: Vec<Message> = sim
        .take_in_flight()
        .into_iter()
        .filter(|m| m.to == NodeId(4))
        .collect();
    for m in appends {
        sim.deliver(m);
    }
    assert!(sim.core(4).commit_index() < joint.index);
    assert_eq!(sim.core(4).role(), Role::Follower);
}

#[test]
fn a_removed_leader_steps_down_once_the_final_configuration_commits() {
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::Remove(NodeId(1))).unwrap();
    sim.run_ticks(2);
    let m = sim.core(2).membership().clone();
    assert_eq!(m, Membership::new(ids(&[2, 3])));
    assert_ne!(sim.core(1).role(), Role::Leader);
    assert!(sim.core(1).status().peers.is_empty());
    // The others elect a leader among themselves; node 1 never campaigns again.
    sim.run_ticks(cfg().election_timeout_max * 3);
    let leader = sim.leader().expect("a leader");
    assert!(leader == NodeId(2) || leader == NodeId(3));
    assert_eq!(sim.core(1).role(), Role::Learner);
}

#[test]
fn a_removed_follower_learns_its_removal_and_is_then_no_longer_replicated_to() {
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::Remove(NodeId(3))).unwrap();
    sim.run_ticks(4);
    assert_eq!(sim.core(1).membership(), &Membership::new(ids(&[1, 2])));
    assert!(!sim.core(1).status().peers.contains_key(&NodeId(3)));
    // Node 3 holds the configuration that removed it, knows it committed, and stays quiet.
    assert_eq!(sim.core(3).membership(), &Membership::new(ids(&[1, 2])));
    assert!(sim.core(3).commit_index() >= sim.core(1).commit_index());
    let term = sim.core(1).term();
    sim.run_ticks(cfg().election_timeout_max * 3);
    assert_eq!(sim.core(3).role(), Role::Learner);
    assert_eq!(sim.core(1).term(), term);
    assert_eq!(sim.leader(), Some(NodeId(1)));
    sim.take_in_flight();
    sim.propose(NodeId(1));
    assert!(sim.in_flight().iter().all(|m| m.to != NodeId(3)));
}

#[test]
fn timeout_now_is_honoured_only_from_the_known_leader() {
    let mut sim = three_and_two_spares();
    let term = sim.core(2).term();
    let timeout_now = |from: u64| Message {
        from: NodeId(from),
        to: NodeId(2),
        term,
        body: MessageBody::TimeoutNow,
    };
    sim.deliver(timeout_now(3));
    assert_eq!(sim.core(2).role(), Role::Follower);
    assert_eq!(sim.core(2).term(), term);
    sim.deliver(timeout_now(1));
    assert_eq!(sim.core(2).term(), Term(term.0 + 1));
}

#[test]
fn a_restarted_node_uses_the_configuration_of_its_snapshot_and_log() {
    // The membership at a snapshot's index travels in its metadata; later ones come from
    // the log. Checked through a restart of a cluster that grew.
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(4);
    let m = sim.core(1).membership().clone();
    sim.crash(NodeId(2));
    sim.restart(NodeId(2));
    assert_eq!(sim.core(2).membership(), &m);
    assert!(sim.core(2).commit_index() <= sim.core(1).commit_index());
    assert_eq!(
        sim.core(2).log_id_at(LogIndex(1)).map(|l| l.index),
        Some(LogIndex(1))
    );
}

#[test]
fn a_removed_leader_whose_log_the_cluster_needs_may_still_campaign() {
    // Node 1 leads {1, 2} and removes itself: the joint configuration commits, but the
    // final one ({2}) reaches only node 1 before it restarts. Node 2, still joint, needs
    // node 1's vote, which node 1 refuses (its log is longer); only node 1 can win, with
    // node 2's vote, and then finish the change and step down.
    let mut sim = Sim::new(1, 2, cfg(), Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    let joint = change(&mut sim, MembershipChange::SetVoters(ids(&[2]))).unwrap();
    // Deliver until node 2 holds the joint entry and node 1 knows it committed, but hold
    // back the final configuration from node 2.
    let held = sim.deliver_holding(|m| {
        m.to == NodeId(2)
            && matches!(&m.body, MessageBody::AppendEntries(a)
                if a.entries.iter().any(|e| e.index() > joint.index))
    });
    assert!(!held.is_empty());
    assert!(sim.core(1).commit_index() >= joint.index);
    assert_eq!(sim.core(1).membership(), &Membership::new(ids(&[2])));
    assert!(sim.core(2).membership().outgoing.is_some());
    sim.crash(NodeId(1));
    sim.restart(NodeId(1));
    sim.run_ticks(cfg().election_timeout_max * 4);
    assert_eq!(sim.leader(), Some(NodeId(2)), "{}", sim.describe());
    assert_eq!(sim.core(2).membership(), &Membership::new(ids(&[2])));
    assert_eq!(sim.core(1).role(), Role::Learner);
}

// ----- leadership transfer (dissertation 3.10) --------------------------------------------

fn transfer(sim: &mut Sim, to: u64) -> Result<(), raft_core::TransferError> {
    sim.with_core(NodeId(1), |c| c.transfer_leadership(NodeId(to)))
        .expect("node 1 is up")
}

#[test]
fn transfer_to_up_to_date_follower() {
    let mut sim = three_and_two_spares();
    sim.propose(NodeId(1));
    sim.deliver_all();
    let term = sim.core(1).term();
    sim.take_in_flight();
    transfer(&mut sim, 2).unwrap();
    // Up to date already: only TimeoutNow goes out, no probe.
    let to_2: Vec<&MessageBody> = sim.in_flight().iter().map(|m| &m.body).collect();
    assert_eq!(to_2, vec![&MessageBody::TimeoutNow]);
    sim.deliver_all();
    assert_eq!(sim.leader(), Some(NodeId(2)));
    assert_eq!(sim.core(2).term(), Term(term.0 + 1));
    assert_eq!(sim.core(1).transferring_to(), None);
}

#[test]
fn transfer_to_lagging_follower() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(3));
    for _ in 0..5 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    sim.heal();
    sim.take_in_flight();
    transfer(&mut sim, 3).unwrap();
    assert!(sim
        .in_flight()
        .iter()
        .all(|m| m.body != MessageBody::TimeoutNow));
    // No new entries while leadership is handed over; clients are sent to the target.
    let refused = sim.with_core(NodeId(1), |c| c.propose([bytes::Bytes::from("x")]));
    assert!(
        matches!(&refused, Some(Err(raft_core::ProposeError::NotLeader(n))) if n.leader_hint == Some(NodeId(3))),
        "{refused:?}"
    );
    sim.deliver_all();
    assert_eq!(sim.leader(), Some(NodeId(3)), "{}", sim.describe());
    assert_eq!(sim.log(3)[..7], sim.log(1)[..7]);
}

#[test]
fn transfer_to_dead_node_times_out_and_leader_resumes() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(3));
    sim.propose(NodeId(1));
    sim.deliver_all();
    transfer(&mut sim, 3).unwrap();
    for _ in 0..cfg().election_timeout_min - 1 {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    assert_eq!(sim.core(1).transferring_to(), Some(NodeId(3)));
    sim.with_core(NodeId(1), |c| c.tick());
    assert_eq!(sim.core(1).transferring_to(), None);
    assert_eq!(sim.core(1).role(), Role::Leader);
    assert!(
        sim.propose(NodeId(1)).is_some(),
        "proposals are taken again"
    );
}

#[test]
fn a_transfer_needs_another_voter_and_no_transfer_in_progress() {
    use raft_core::TransferError;
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(2);
    assert_eq!(
        transfer(&mut sim, 1),
        Err(TransferError::NotAVoter(NodeId(1)))
    );
    assert_eq!(
        transfer(&mut sim, 4),
        Err(TransferError::NotAVoter(NodeId(4)))
    );
    sim.isolate(NodeId(3));
    transfer(&mut sim, 3).unwrap();
    assert_eq!(transfer(&mut sim, 2), Err(TransferError::InProgress));
    let refused = sim.with_core(NodeId(2), |c| c.transfer_leadership(NodeId(3)));
    assert!(matches!(refused, Some(Err(TransferError::NotLeader(_)))));
}

#[test]
fn adding_a_member_again_or_removing_a_stranger_changes_nothing() {
    let mut sim = three_and_two_spares();
    for c in [
        MembershipChange::AddLearner(NodeId(2), None),
        MembershipChange::Remove(NodeId(5)),
        MembershipChange::SetVoters(ids(&[1, 2, 3])),
    ] {
        assert_eq!(change(&mut sim, c), Err(ChangeError::Unchanged));
    }
}

#[test]
fn a_learner_is_removed_at_once() {
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(2);
    change(&mut sim, MembershipChange::Remove(NodeId(4))).unwrap();
    assert_eq!(sim.core(1).membership(), &Membership::new(ids(&[1, 2, 3])));
}

#[test]
fn the_joint_configuration_is_left_only_once_it_is_committed() {
    // Entry k commits (both halves hold it) while the joint configuration at k + 1 does
    // not (4 and 5 never receive it): the leader must stay joint.
    let mut sim = three_and_two_spares();
    for id in [4, 5] {
        change(&mut sim, MembershipChange::AddLearner(NodeId(id), None)).unwrap();
        sim.run_ticks(2);
    }
    let k = sim.propose(NodeId(1)).expect("leader").index;
    let joint = change(&mut sim, MembershipChange::SetVoters(ids(&[1, 4, 5]))).unwrap();
    assert_eq!(joint.index, k.next());
    sim.deliver_filtered(
        |m| {
            let joint_to_new_half = (m.to == NodeId(4) || m.to == NodeId(5))
                && matches!(&m.body, MessageBody::AppendEntries(a)
                    if a.entries.iter().any(|e| e.index() >= joint.index));
            !joint_to_new_half
        },
        |_| {},
    );
    assert_eq!(sim.core(1).commit_index(), k);
    assert_eq!(sim.core(1).membership().outgoing, Some(ids(&[1, 2, 3])));
    assert_eq!(sim.core(1).last_log_id(), joint);
}

#[test]
fn a_candidate_rejected_by_one_half_of_a_joint_configuration_steps_down_at_once() {
    // Every log holds the joint configuration {1,2,3} -> {1,4,5}; 4 and 5 hold a longer
    // log and refuse node 1. The old half would elect it, the new half cannot: the
    // election is lost, and node 1 does not wait for its timer to find out.
    let (base, _) = joint_disk();
    let mut longer = base.clone();
    longer
        .log
        .extend(disk(1, &[1, 1, 1]).log.into_iter().skip(2));
    let disks = vec![base.clone(), base.clone(), base, longer.clone(), longer];
    let mut sim = Sim::from_disks(1, cfg(), disks);
    sim.elect(1);
    assert_eq!(sim.core(1).role(), Role::Follower, "{}", sim.describe());
}

#[test]
fn a_removed_server_that_was_away_learns_its_removal_when_it_comes_back() {
    // Node 3 is cut off while a change removes it; the change commits without it. When it
    // comes back the leader still replicates to it until it holds the final configuration
    // and knows it committed, and only then lets it go.
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(3));
    change(&mut sim, MembershipChange::Remove(NodeId(3))).unwrap();
    sim.run_ticks(4);
    assert_eq!(sim.core(1).membership(), &Membership::new(ids(&[1, 2])));
    assert!(!sim.core(1).config_change_pending());
    assert!(
        sim.core(1).status().peers.contains_key(&NodeId(3)),
        "still tracked"
    );
    sim.heal();
    sim.run_ticks(6);
    assert_eq!(sim.core(3).membership(), &Membership::new(ids(&[1, 2])));
    assert!(sim.core(3).commit_index() >= sim.core(1).commit_index());
    assert_eq!(sim.core(3).role(), Role::Learner);
    assert!(
        !sim.core(1).status().peers.contains_key(&NodeId(3)),
        "let go"
    );
}

#[test]
fn no_membership_change_during_a_transfer_and_no_transfer_during_a_change() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(3));
    transfer(&mut sim, 3).unwrap();
    assert_eq!(
        change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)),
        Err(ChangeError::InProgress)
    );
    for _ in 0..cfg().election_timeout_min {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    sim.heal();
    sim.isolate(NodeId(4));
    sim.isolate(NodeId(5));
    change(&mut sim, MembershipChange::SetVoters(ids(&[1, 4, 5]))).unwrap();
    assert_eq!(
        transfer(&mut sim, 2),
        Err(raft_core::TransferError::InProgress)
    );
}

// ----- following a change to its end (what `RaftNode`'s calls wait for) ------------------

fn outcome(sim: &Sim, id: LogId) -> Option<Result<Membership, ChangeError>> {
    sim.core(1).change_outcome(id)
}

#[test]
fn a_learner_change_ends_when_its_entry_commits() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(2));
    sim.isolate(NodeId(3));
    let id = change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(2);
    assert_eq!(outcome(&sim, id), None);
    sim.heal();
    // The lost appends are resent once the pipeline counts as stalled.
    sim.run_ticks(cfg().election_timeout_min * 2);
    let m = outcome(&sim, id).expect("ended").expect("took effect");
    assert_eq!(m.learners, ids(&[4]));
    assert_eq!(m.voters, ids(&[1, 2, 3]));
}

#[test]
fn a_voter_change_ends_only_when_the_joint_configuration_is_left() {
    let mut sim = three_and_two_spares();
    let joint = change(&mut sim, MembershipChange::SetVoters(ids(&[1, 2]))).unwrap();
    // The joint entry commits; the entry that leaves it reaches nobody yet.
    let held = sim.deliver_holding(|m| {
        matches!(&m.body, MessageBody::AppendEntries(a)
            if a.entries.iter().any(|e| e.index() > joint.index))
    });
    assert!(sim.core(1).commit_index() >= joint.index);
    assert!(sim.core(1).last_log_id().index > joint.index);
    assert_eq!(outcome(&sim, joint), None);
    for m in held {
        sim.deliver(m);
    }
    sim.run_ticks(2);
    assert_eq!(
        outcome(&sim, joint),
        Some(Ok(Membership::new(ids(&[1, 2]))))
    );
    // A later change under way does not make the finished one pending again.
    sim.isolate(NodeId(2));
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    assert!(sim.core(1).config_change_pending());
    assert_eq!(
        outcome(&sim, joint),
        Some(Ok(Membership::new(ids(&[1, 2]))))
    );
}

#[test]
fn a_change_replaced_by_a_new_leaders_log_is_lost() {
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(1));
    let id = change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.elect(2);
    sim.propose(NodeId(2));
    sim.propose(NodeId(2));
    sim.deliver_all();
    assert_eq!(outcome(&sim, id), None, "node 1 does not know yet");
    sim.heal();
    sim.run_ticks(4);
    assert_eq!(outcome(&sim, id), Some(Err(ChangeError::Lost)));
}

#[test]
fn a_new_leader_tracks_the_servers_of_the_last_committed_configuration() {
    // Node 1 removes 3 (cut off); the joint configuration commits and node 2 receives the
    // final one, but not its commit. Node 2, elected, still replicates to node 3 (a
    // member of the last configuration it knows committed) so that 3 learns its removal.
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(3));
    let joint = change(&mut sim, MembershipChange::Remove(NodeId(3))).unwrap();
    sim.deliver_holding(|m| {
        m.from == NodeId(1)
            && m.to == NodeId(2)
            && matches!(&m.body, MessageBody::AppendEntries(a)
                if a.leader_commit > joint.index)
    });
    let core2 = sim.core(2);
    assert_eq!(core2.membership(), &Membership::new(ids(&[1, 2])));
    assert!(core2.commit_index() <= joint.index, "{:?}", core2.status());
    sim.elect(2);
    assert_eq!(sim.core(2).role(), Role::Leader, "{}", sim.describe());
    assert!(sim.core(2).status().peers.contains_key(&NodeId(3)));
}

#[test]
fn a_change_compacted_into_a_snapshot_has_ended() {
    let cfg = Config {
        snapshot_threshold: 0,
        snapshot_trailing: 0,
        ..cfg()
    };
    let mut sim = Sim::with_spares(
        1,
        Membership::new(ids(&[1, 2, 3])),
        &[NodeId(4)],
        cfg,
        Faults::none(),
    );
    sim.elect(1);
    sim.run_ticks(1);
    let id = change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(4);
    sim.propose(NodeId(1));
    sim.deliver_all();
    sim.with_core(NodeId(1), |c| c.snapshot_now());
    sim.run_ticks(1);
    assert!(sim.core(1).first_log_index() > id.index, "compacted");
    let m = outcome(&sim, id).expect("ended").expect("took effect");
    assert_eq!(m.learners, ids(&[4]));
    // A later change committed after the compaction does not make the first one pending.
    change(&mut sim, MembershipChange::Remove(NodeId(4))).unwrap();
    sim.run_ticks(4);
    let m = outcome(&sim, id)
        .expect("still ended")
        .expect("took effect");
    assert!(
        m.learners.is_empty(),
        "the configuration now in effect: {m:?}"
    );
}

#[test]
fn a_finished_change_stays_finished_while_a_later_one_is_under_way() {
    let mut sim = three_and_two_spares();
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(4);
    let second = change(&mut sim, MembershipChange::AddLearner(NodeId(5), None)).unwrap();
    sim.run_ticks(4);
    let m = outcome(&sim, second).expect("ended").expect("took effect");
    assert_eq!(m.learners, ids(&[4, 5]));
    // A third change cannot commit: the second one's outcome is still its own, found past
    // the first change's configuration.
    sim.isolate(NodeId(2));
    sim.isolate(NodeId(3));
    change(&mut sim, MembershipChange::Remove(NodeId(4))).unwrap();
    sim.run_ticks(4);
    assert!(sim.core(1).config_change_pending());
    let m = outcome(&sim, second)
        .expect("still ended")
        .expect("took effect");
    assert_eq!(
        m.learners,
        ids(&[4, 5]),
        "the second change's own configuration"
    );
}

// ----- members carry their addresses ----------------------------------------------------------

#[test]
fn an_added_members_address_reaches_every_peer_table_and_leaves_with_it() {
    let mut sim = three_and_two_spares();
    let addr = sim::address_of(NodeId(4));
    let learner = MembershipChange::AddLearner(NodeId(4), Some(addr.clone()));
    change(&mut sim, learner).unwrap();
    sim.run_ticks(4);
    // Every member, the leader included, now knows where node 4 is; node 4 knows the others
    // by id only (founders configured without addresses).
    for id in [1, 2, 3] {
        let peers = sim.core(id).peers();
        assert_eq!(
            peers.get(&NodeId(4)),
            Some(&Some(addr.clone())),
            "node {id}"
        );
        assert!(
            !peers.contains_key(&NodeId(id)),
            "a node is not its own peer"
        );
    }
    assert_eq!(sim.core(4).peers().get(&NodeId(1)), Some(&None));
    // Promoted, it keeps its address.
    change(&mut sim, MembershipChange::SetVoters(ids(&[1, 2, 3, 4]))).unwrap();
    sim.run_ticks(6);
    let m = sim.core(1).membership().clone();
    assert_eq!((m.voters, m.outgoing), (ids(&[1, 2, 3, 4]), None));
    assert_eq!(m.addresses.get(&NodeId(4)), Some(&addr));
    // Removed: once the removal is committed everywhere, no peer table names it.
    let before = sim.core(2).peers_epoch();
    change(&mut sim, MembershipChange::Remove(NodeId(4))).unwrap();
    sim.run_ticks(10);
    assert!(sim.core(1).membership().addresses.is_empty());
    for id in [1, 2, 3] {
        assert!(!sim.core(id).peers().contains_key(&NodeId(4)), "node {id}");
    }
    assert_ne!(
        sim.core(2).peers_epoch(),
        before,
        "the driver must hear of the change"
    );
}

#[test]
fn a_node_is_removed_only_by_a_committed_configuration() {
    let mut sim = three_and_two_spares();
    // Node 4 holds the configuration that adds it before anyone knows it committed: it is
    // being added, not removed.
    sim.isolate(NodeId(2));
    sim.isolate(NodeId(3));
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(4);
    assert!(sim.core(4).membership().learners.contains(&NodeId(4)));
    assert!(!sim.core(4).status().removed);
    sim.heal();
    sim.run_ticks(6);
    assert!(!sim.core(4).status().removed);
    // Its removal appended but not committed: still a member.
    sim.isolate(NodeId(2));
    sim.isolate(NodeId(3));
    change(&mut sim, MembershipChange::Remove(NodeId(4))).unwrap();
    sim.run_ticks(4);
    assert!(!sim.core(4).membership().members().contains(&NodeId(4)));
    assert!(
        !sim.core(4).status().removed,
        "the removal may still be truncated away"
    );
    // Committed, and told so by the leader's last heartbeat: removed.
    sim.heal();
    sim.run_ticks(10);
    assert!(sim.core(4).status().removed);
}

#[test]
fn the_peers_epoch_changes_exactly_when_the_servers_to_reach_change() {
    let epoch = |sim: &Sim, id: u64| sim.core(id).peers_epoch();
    let mut sim = three_and_two_spares();
    // Ordinary commits change nothing: the transport is not told again at every commit.
    let e = epoch(&sim, 1);
    for _ in 0..3 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    assert_eq!(epoch(&sim, 1), e);
    // A configuration appended but not committed: every holder must reach the new member.
    sim.isolate(NodeId(2));
    sim.isolate(NodeId(3));
    let (e1, e4) = (epoch(&sim, 1), epoch(&sim, 4));
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    sim.run_ticks(2);
    assert_ne!(epoch(&sim, 1), e1);
    assert_ne!(epoch(&sim, 4), e4, "a learner holding its own addition");
    sim.heal();
    sim.run_ticks(10);
    // Removed while cut off, node 4 is still replicated to until it holds its removal;
    // letting it go then is a change of its own.
    sim.isolate(NodeId(4));
    change(&mut sim, MembershipChange::Remove(NodeId(4))).unwrap();
    sim.run_ticks(4);
    assert!(
        sim.core(1).peers().contains_key(&NodeId(4)),
        "still being let go"
    );
    let e1 = epoch(&sim, 1);
    sim.heal();
    sim.run_ticks(30);
    assert!(!sim.core(1).peers().contains_key(&NodeId(4)));
    assert_ne!(epoch(&sim, 1), e1);
}

#[test]
fn a_configuration_truncated_away_leaves_the_peer_table() {
    // Node 1 appends the addition of node 4 while cut off; nodes 2 and 3 elect a leader
    // without it, whose log replaces it on node 1: node 4 leaves node 1's peers again.
    let mut sim = three_and_two_spares();
    sim.isolate(NodeId(1));
    change(&mut sim, MembershipChange::AddLearner(NodeId(4), None)).unwrap();
    assert!(sim.core(1).peers().contains_key(&NodeId(4)));
    sim.campaign(2);
    sim.deliver_all();
    assert_eq!(sim.core(2).role(), Role::Leader);
    for _ in 0..3 {
        sim.propose(NodeId(2));
        sim.deliver_all();
    }
    let before = sim.core(1).peers_epoch();
    sim.heal();
    sim.run_ticks(10);
    assert_eq!(
        sim.core(1).log_id_at(sim.core(2).last_log_id().index),
        Some(sim.core(2).last_log_id())
    );
    assert!(!sim.core(1).membership().learners.contains(&NodeId(4)));
    assert!(!sim.core(1).peers().contains_key(&NodeId(4)));
    assert_ne!(
        sim.core(1).peers_epoch(),
        before,
        "the transport must hear of it"
    );
}

#[test]
fn a_learner_stops_naming_a_leader_it_has_not_heard_from_for_an_election_timeout() {
    let mut sim = three_and_two_spares();
    let added = change(
        &mut sim,
        MembershipChange::AddLearner(NodeId(4), Some(sim::address_of(NodeId(4)))),
    )
    .unwrap();
    sim.run_ticks(5);
    assert!(sim.core(1).commit_index() >= added.index);
    assert_eq!(sim.core(4).leader(), Some(NodeId(1)));
    // Refusals name the leader, with its address when the membership has one.
    let refused = sim.with_core(NodeId(4), |c| c.propose([bytes::Bytes::from("x")]));
    assert!(
        matches!(&refused, Some(Err(raft_core::ProposeError::NotLeader(n))) if n.leader_hint == Some(NodeId(1))),
        "{refused:?}"
    );
    // The leader goes silent: a learner never campaigns, yet after an election timeout
    // it must stop sending clients to a leader that may be dead.
    sim.isolate(NodeId(4));
    let max = cfg().election_timeout_max;
    sim.run_ticks(max + 1);
    assert_eq!(sim.core(4).leader(), None);
    sim.heal();
    sim.run_ticks(5);
    assert_eq!(
        sim.core(4).leader(),
        Some(NodeId(1)),
        "named again once heard"
    );
}

#[test]
fn a_refusal_carries_the_leaders_address_from_the_membership() {
    let mut sim = Sim::with_spares(
        1,
        Membership::new(ids(&[1, 2, 3])).with_address(NodeId(1), sim::address_of(NodeId(1))),
        &[],
        cfg(),
        Faults::none(),
    );
    sim.elect(1);
    sim.run_ticks(1);
    let refused = sim.with_core(NodeId(2), |c| c.propose([bytes::Bytes::from("x")]));
    let Some(Err(raft_core::ProposeError::NotLeader(n))) = refused else {
        panic!("{refused:?}")
    };
    let address = sim::address_of(NodeId(1));
    assert_eq!(n.leader_address.as_deref(), Some(address.as_str()));
    assert_eq!(
        n.to_string(),
        format!("not the leader; the leader is n1 at {address}")
    );
}
