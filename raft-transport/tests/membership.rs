//! Membership changes and leadership transfer on the real async node over the in-memory
//! network, each test named after what it shows. Everything runs on tokio's paused clock.

mod common;

use std::collections::BTreeSet;

use common::{cmd, nth, seed, within, Cluster};
use raft_core::{NodeId, RaftError, Role, TransferError};

fn ids(v: &[u64]) -> BTreeSet<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

async fn role(c: &Cluster, id: NodeId) -> Role {
    c.node(id).expect("up").status().await.expect("status").role
}

#[tokio::test(start_paused = true)]
async fn add_learner_catches_up() {
    let mut c = Cluster::new(3, seed(401)).await;
    for i in 0..20 {
        c.one(cmd(i), 3, true).await;
    }
    c.add_spare(NodeId(4)).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader");
    let m = within(10, node.add_learner(NodeId(4), "mem"))
        .await
        .expect("added");
    assert_eq!(m.learners, ids(&[4]));
    // The leader can wait for the learner to hold everything committed.
    let before = node.status().await.expect("status").commit_index;
    let matched = within(10, node.wait_caught_up(NodeId(4), 0))
        .await
        .expect("caught up");
    assert!(matched >= before, "{matched:?} < {before:?}");
    let follower = c
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != NodeId(4))
        .expect("a follower");
    let not_leader = c
        .node(follower)
        .expect("up")
        .wait_caught_up(NodeId(4), 0)
        .await;
    assert!(
        matches!(not_leader, Err(RaftError::NotLeader { .. })),
        "{not_leader:?}"
    );
    let stranger = node.wait_caught_up(NodeId(9), 0).await;
    let not_a_member = raft_core::ChangeError::NotAMember(NodeId(9));
    assert!(
        matches!(&stranger, Err(RaftError::Membership(e)) if *e == not_a_member),
        "{stranger:?}"
    );
    // Every entry reaches the learner, which never votes.
    c.one(cmd("after"), 4, true).await;
    assert_eq!(role(&c, NodeId(4)).await, Role::Learner);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn promote_learner_to_voter() {
    let mut c = Cluster::new(3, seed(402)).await;
    c.one(cmd("x"), 3, true).await;
    c.add_spare(NodeId(4)).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader");
    within(10, node.add_learner(NodeId(4), "mem"))
        .await
        .expect("added");
    let m = within(10, node.change_membership(ids(&[1, 2, 3, 4])))
        .await
        .expect("promoted");
    assert_eq!(m.voters, ids(&[1, 2, 3, 4]));
    assert!(m.outgoing.is_none() && m.learners.is_empty());
    c.one(cmd("y"), 4, true).await;
    assert_eq!(role(&c, NodeId(4)).await, Role::Follower);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn remove_follower() {
    let c = Cluster::new(3, seed(408)).await;
    c.one(cmd("x"), 3, true).await;
    let leader = c.check_one_leader().await;
    let removed = nth(&c, leader, 1);
    let node = c.node(leader).cloned().expect("leader");
    let m = within(10, node.remove(removed)).await.expect("removed");
    assert_eq!(m.voters.len(), 2);
    assert!(!m.members().contains(&removed));
    // The two that remain commit on their own; the removed node learns it was removed
    // and receives nothing more.
    let idx = c.one(cmd("y"), 2, true).await;
    let status = c.node(removed).expect("up").status().await.expect("status");
    assert!(status.removed, "{status:?}");
    assert!(!c.applied(removed).contains_key(&idx));
    assert_eq!(c.check_one_leader().await, leader);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn remove_leader_steps_down() {
    let c = Cluster::new(3, seed(403)).await;
    c.one(cmd("x"), 3, true).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader");
    let m = within(10, node.remove(leader)).await.expect("removed");
    assert!(!m.is_voter(leader));
    assert_eq!(role(&c, leader).await, Role::Learner);
    // The two others elect a leader among themselves and keep committing.
    let next = c.check_one_leader().await;
    assert_ne!(next, leader);
    c.one(cmd("y"), 2, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_second_change_while_one_is_in_progress_is_refused() {
    let mut c = Cluster::new(3, seed(404)).await;
    c.one(cmd("x"), 3, true).await;
    c.add_spare(NodeId(4)).await;
    c.add_spare(NodeId(5)).await;
    c.disconnect(NodeId(4));
    c.disconnect(NodeId(5));
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader");
    // The joint configuration cannot commit without 4 or 5.
    let mut voters = ids(&[4, 5]);
    voters.insert(leader);
    let pending = tokio::spawn({
        let node = node.clone();
        async move { node.change_membership(voters).await }
    });
    // Less than an election timeout: CheckQuorum would depose a leader that cannot reach
    // the new half for longer.
    Cluster::sleep(std::time::Duration::from_millis(50)).await;
    let second = node.add_learner(NodeId(6), "mem").await;
    assert!(
        matches!(
            second,
            Err(RaftError::Membership(raft_core::ChangeError::InProgress))
        ),
        "{second:?}"
    );
    c.connect(NodeId(4));
    c.connect(NodeId(5));
    within(20, pending).await.expect("task").expect("changed");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn transfer_to_up_to_date_follower() {
    let c = Cluster::new(3, seed(405)).await;
    c.one(cmd("x"), 3, true).await;
    let leader = c.check_one_leader().await;
    let target = nth(&c, leader, 1);
    let node = c.node(leader).cloned().expect("leader");
    within(10, node.transfer_leadership(target))
        .await
        .expect("transferred");
    assert_eq!(c.check_one_leader().await, target);
    c.one(cmd("y"), 3, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn transfer_to_dead_node_times_out_and_leader_resumes() {
    let mut c = Cluster::new(3, seed(406)).await;
    c.one(cmd("x"), 3, true).await;
    let leader = c.check_one_leader().await;
    let target = nth(&c, leader, 1);
    c.crash(target).await;
    let node = c.node(leader).cloned().expect("leader");
    let err = within(10, node.transfer_leadership(target)).await;
    assert!(
        matches!(err, Err(RaftError::Transfer(TransferError::TimedOut))),
        "{err:?}"
    );
    assert_eq!(role(&c, leader).await, Role::Leader);
    c.one(cmd("y"), 2, true).await;
    c.shutdown().await;
}

/// Runs a membership change on whichever node leads, retrying across leader changes.
async fn on_leader(c: &Cluster, change: raft_core::MembershipChange) -> raft_core::Membership {
    use raft_core::{ChangeError, MembershipChange};
    for _ in 0..50 {
        let leader = c.check_one_leader().await;
        let node = c.node(leader).cloned().expect("leader");
        let result = match &change {
            MembershipChange::AddLearner(id, _) => node.add_learner(*id, "mem").await,
            MembershipChange::SetVoters(v) => node.change_membership(v.clone()).await,
            MembershipChange::Remove(id) => node.remove(*id).await,
        };
        match result {
            Ok(m) => return m,
            // A retry of a change that did take effect.
            Err(RaftError::Membership(ChangeError::Unchanged)) => {
                return node.membership().await.expect("membership")
            }
            Err(RaftError::NotLeader { .. })
            | Err(RaftError::Membership(
                ChangeError::NotLeader(_) | ChangeError::InProgress | ChangeError::Lost,
            )) => Cluster::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => panic!("{change:?}: {e}"),
        }
    }
    panic!("{change:?} never took effect");
}

#[tokio::test(start_paused = true)]
async fn single_node_bootstrap_then_grow() {
    let mut c = Cluster::new(1, seed(407)).await;
    c.one(cmd("alone"), 1, true).await;
    for id in [2, 3] {
        c.add_spare(NodeId(id)).await;
        on_leader(
            &c,
            raft_core::MembershipChange::AddLearner(NodeId(id), None),
        )
        .await;
    }
    let m = on_leader(&c, raft_core::MembershipChange::SetVoters(ids(&[1, 2, 3]))).await;
    assert_eq!(m.voters, ids(&[1, 2, 3]));
    c.one(cmd("three"), 3, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn replace_every_member_one_by_one() {
    // Nodes 1, 2 and 3 are replaced by 4, 5 and 6 while commands keep committing; every
    // acknowledged command is on every final member, at its index.
    let mut c = Cluster::new(3, seed(408)).await;
    let mut acked = Vec::new();
    let mut voters = ids(&[1, 2, 3]);
    for (old, new) in [(1, 4), (2, 5), (3, 6)] {
        acked.push(c.one(cmd(format!("before {new}")), 3, true).await);
        c.add_spare(NodeId(new)).await;
        on_leader(
            &c,
            raft_core::MembershipChange::AddLearner(NodeId(new), None),
        )
        .await;
        acked.push(c.one(cmd(format!("learner {new}")), 3, true).await);
        voters.remove(&NodeId(old));
        voters.insert(NodeId(new));
        let m = on_leader(&c, raft_core::MembershipChange::SetVoters(voters.clone())).await;
        assert_eq!(m.voters, voters);
        acked.push(c.one(cmd(format!("voter {new}")), 3, true).await);
    }
    let leader = c.check_one_leader().await;
    assert!(voters.contains(&leader));
    for id in [4, 5, 6] {
        let applied = c.applied(NodeId(id));
        for index in &acked {
            assert!(applied.contains_key(index), "{id} lacks {index}");
        }
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn removed_node_restarting_does_not_disrupt() {
    let mut c = Cluster::new(3, seed(409)).await;
    c.one(cmd("x"), 3, true).await;
    let leader = c.check_one_leader().await;
    let removed = nth(&c, leader, 1);
    on_leader(&c, raft_core::MembershipChange::Remove(removed)).await;
    let term = c.check_terms().await;
    c.crash(removed).await;
    c.start(removed).await;
    Cluster::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(c.check_one_leader().await, leader);
    let s = c.node(leader).expect("up").status().await.expect("status");
    assert_eq!(s.term.0, term, "the removed node raised no term");
    let removed_node = c.node(removed).expect("up");
    let m = removed_node.membership().await.expect("membership");
    // It knows it is not a member. Not knowing after a restart whether its removal
    // committed, it may still ask for pre-votes, which no member in touch with the leader
    // grants (the term above did not move).
    assert!(!m.members().contains(&removed), "{m:?}");
    assert_ne!(role(&c, removed).await, Role::Leader);
    c.one(cmd("y"), 2, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn change_started_before_a_partition() {
    // A promotion starts, then the leader is cut off: the change either finishes under a
    // new leader or is reported lost; either way the cluster agrees on one configuration
    // and keeps committing.
    let mut c = Cluster::new(3, seed(410)).await;
    c.one(cmd("x"), 3, true).await;
    c.add_spare(NodeId(4)).await;
    on_leader(&c, raft_core::MembershipChange::AddLearner(NodeId(4), None)).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader");
    let change = tokio::spawn(async move { node.change_membership(ids(&[1, 2, 3, 4])).await });
    c.disconnect(leader);
    c.one(cmd("y"), 3, true).await;
    c.connect(leader);
    let outcome = within(20, change).await.expect("task");
    c.one(cmd("z"), 3, true).await;
    let mut seen = Vec::new();
    for id in c.ids() {
        seen.push(c.node(id).expect("up").membership().await.expect("m"));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    // The answer matches what the cluster ended with.
    let promoted = seen[0].voters.contains(&NodeId(4));
    match outcome {
        Ok(m) => assert!(promoted && m == seen[0], "{m:?} vs {seen:?}"),
        Err(RaftError::Membership(raft_core::ChangeError::Lost)) => assert!(!promoted),
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn transfer_to_lagging_follower() {
    let mut c = Cluster::new(3, seed(411)).await;
    c.one(cmd("x"), 3, true).await;
    let leader = c.check_one_leader().await;
    let target = nth(&c, leader, 1);
    c.disconnect(target);
    for i in 0..10 {
        c.one(cmd(i), 2, true).await;
    }
    c.connect(target);
    let node = c.node(leader).cloned().expect("leader");
    within(10, node.transfer_leadership(target))
        .await
        .expect("transferred");
    assert_eq!(c.check_one_leader().await, target);
    c.shutdown().await;
}
