//! The network seam: one-way delivery of Raft messages.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::message::Message;
use crate::types::NodeId;

/// Sends Raft messages to peers.
///
/// Contract:
/// - [`send`](Transport::send) hands the message over and returns without waiting for the
///   peer: a slow or dead peer never blocks the node. When a queue is full the message is
///   dropped (and counted); Raft retransmits what matters.
/// - Messages may be lost, delayed, duplicated or reordered; Raft stays safe. Delivering
///   them in order per peer keeps replication fast.
/// - Received messages are handed to the destination node's [`Inbox`].
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for delivery to `msg.to`.
    async fn send(&self, msg: Message);

    /// The largest encoded message this transport carries, if it has a limit. The node
    /// refuses to start with a [`Config`](crate::Config) whose messages could exceed it
    /// (see [`Config::validate_for_transport`](crate::Config::validate_for_transport)).
    fn max_message_bytes(&self) -> Option<usize> {
        None
    }

    /// The servers this node may need to reach changed: at start, and whenever a
    /// configuration is appended, committed, truncated away or installed with a snapshot.
    /// `peers` names every one of them (this node excluded), with the address its latest
    /// configuration records, if any ([`Membership::addresses`](crate::Membership)).
    ///
    /// A transport with a peer table adds or updates the servers given an address, keeps
    /// what it knows of those given none, and forgets the servers no longer named (so a
    /// removed member is no longer dialed or accepted). Messages queued for a forgotten
    /// server may be dropped. Called from the node's driver: it must not block. The default
    /// does nothing, for transports that route by node id alone.
    fn update_peers(&self, peers: &BTreeMap<NodeId, Option<String>>) {
        let _ = peers;
    }
}

/// The receiving end a transport feeds: a bounded queue into one node.
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: mpsc::Sender<Message>,
}

impl Inbox {
    /// An inbox and the node-side receiver, holding at most `capacity` messages.
    pub fn channel(capacity: usize) -> (Inbox, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Inbox { tx }, rx)
    }

    /// Delivers a received message without waiting. Returns false when the node's queue is
    /// full or the node has stopped (the message is dropped; Raft copes with loss).
    pub fn deliver(&self, msg: Message) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    /// Whether the node behind this inbox has stopped (messages can no longer arrive).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Delivers a received message, waiting for room (back-pressure for snapshot chunks).
    /// Returns false when the node has stopped.
    pub async fn deliver_wait(&self, msg: Message) -> bool {
        self.tx.send(msg).await.is_ok()
    }
}
