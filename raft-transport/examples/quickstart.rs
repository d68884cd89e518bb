//! Three Raft nodes in one process: in-memory stores, the in-memory network, a tiny state
//! machine. Run with `cargo run -p raft-transport --example quickstart`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Config, Entry, EntryPayload, LogIndex, Membership, NodeId, RaftNode, ReadPolicy, Role, Seams,
    SnapshotMeta, StateMachine, StateMachineError,
};
use raft_storage::{MemLogStore, MemSnapshotStore};
use raft_transport::MemNetwork;

/// Appends every command to a list; a query returns how many there are.
#[derive(Default)]
struct Journal {
    applied: LogIndex,
    lines: Vec<Bytes>,
}

#[async_trait]
impl StateMachine for Journal {
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError> {
        Ok(self.applied)
    }
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut out = Vec::new();
        for e in entries {
            self.applied = e.index();
            if let EntryPayload::Command(c) = &e.payload {
                self.lines.push(c.clone());
            }
            out.push(Bytes::from(format!("line {}", self.lines.len())));
        }
        Ok(out)
    }
    async fn query(&self, _q: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::from(self.lines.len().to_string()))
    }
    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        Err(StateMachineError("not needed in this example".into()))
    }
    async fn restore(&mut self, _m: &SnapshotMeta, _d: Bytes) -> Result<(), StateMachineError> {
        Err(StateMachineError("not needed in this example".into()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let network = MemNetwork::new(7);
    let config = Config {
        tick_interval: Duration::from_millis(10),
        ..Config::default()
    };
    let mut nodes = Vec::new();
    for id in ids {
        let seams = Seams {
            log: Arc::new(MemLogStore::new()),
            snapshots: Arc::new(MemSnapshotStore::default()),
            state_machine: Box::new(Journal::default()),
            transport: network.transport(id),
        };
        let node = RaftNode::start(id, config.clone(), Membership::new(ids), seams, None).await?;
        network.register(id, node.inbox()); // where received messages go
        nodes.push(node);
    }
    // Wait for an election.
    let leader = loop {
        let mut found = None;
        for n in &nodes {
            if n.status().await?.role == Role::Leader {
                found = Some(n.clone());
            }
        }
        match found {
            Some(l) => break l,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let reply = leader.propose(Bytes::from("hello, raft")).await?; // resolves once applied
    let count = leader.read(Bytes::new()).await?; // linearizable read
                                                  // Any node serves linearizable reads: a follower asks the leader for a read index.
    let follower = nodes
        .iter()
        .find(|n| n.id() != leader.id())
        .expect("3 nodes");
    let seen = follower
        .read_with(Bytes::new(), ReadPolicy::ReadIndex)
        .await?;
    assert_eq!(seen, count, "a follower's read sees the acknowledged write");
    let status = leader.status().await?;
    println!(
        "leader {} in term {}: {} / {} line(s); commit index {}",
        status.id.0,
        status.term.0,
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&count),
        status.commit_index.0
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
