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
    let m = within(10, node.add_learner(NodeId(4)))
        .await
        .expect("added");
    assert_eq!(m.learners, ids(&[4]));
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
    within(10, node.add_learner(NodeId(4)))
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
    let second = node.add_learner(NodeId(6)).await;
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
