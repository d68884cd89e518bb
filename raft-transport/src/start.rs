//! One call to run a node on TCP: [`TcpNode::start`] binds the member's address, learns
//! every peer's address from the same [`Membership`], starts the node and serves both peers
//! and clients (see [`crate::client`]) on that one port.

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::{
    Config, LogStore, Membership, NodeId, RaftError, RaftNode, Seams, SnapshotStore, StateMachine,
};

use crate::tcp::{TcpConfig, TcpTransport};

/// The stores and state machine a node runs with (the seams other than the transport).
pub struct Stores {
    /// The log and hard state.
    pub log: Arc<dyn LogStore>,
    /// Snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The application.
    pub state_machine: Box<dyn StateMachine>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The membership names a member without an address.
    #[error("member {0} has no address in the membership (Membership::with_address)")]
    MissingAddress(NodeId),
    /// A member's address is not `IP:PORT`.
    #[error("member {id}'s address {address:?} is not IP:PORT")]
    BadAddress {
        /// The member.
        id: NodeId,
        /// What the membership says.
        address: String,
    },
    /// The node is not in the membership it was given (to join a running cluster, give an
    /// empty membership and `listen`, then add the node from the leader).
    #[error("node {0} is not a member of the configuration it was started with")]
    NotAMember(NodeId),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The node refused to start (configuration, stores).
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// A node running on TCP, with its transport.
pub struct TcpNode {
    /// The node.
    pub node: RaftNode,
    /// Its transport (address, counters, shutdown).
    pub transport: TcpTransport,
}

fn address_of(members: &Membership, id: NodeId) -> Result<SocketAddr, StartError> {
    let address = members
        .addresses
        .get(&id)
        .ok_or(StartError::MissingAddress(id))?;
    address.parse().map_err(|_| StartError::BadAddress {
        id,
        address: address.clone(),
    })
}

impl TcpNode {
    /// Starts node `id` of the cluster whose founding configuration is `members`. Every
    /// member needs an address (`IP:PORT`) in `members`: this node listens on its own, and
    /// dials the others at theirs; later members' addresses travel in the log. Peer and
    /// client connections share the port; `tcp.cluster_id` must match on every member and
    /// client.
    ///
    /// The peer list and the membership are one list, so they cannot disagree. To join a
    /// running cluster instead, call [`TcpNode::join`].
    pub async fn start(
        id: NodeId,
        members: Membership,
        config: Config,
        tcp: TcpConfig,
        stores: Stores,
    ) -> Result<TcpNode, StartError> {
        if !members.members().contains(&id) {
            return Err(StartError::NotAMember(id));
        }
        let listen = address_of(&members, id)?;
        let mut peers = Vec::new();
        for peer in members.members().into_iter().filter(|&p| p != id) {
            peers.push((peer, address_of(&members, peer)?));
        }
        Self::launch(id, listen, peers, members, config, tcp, stores).await
    }

    /// Starts node `id` listening on `listen` with empty stores' worth of configuration:
    /// it waits until the leader adds it (`RaftNode::add_learner` with this address), and
    /// learns the members' addresses from the log.
    pub async fn join(
        id: NodeId,
        listen: SocketAddr,
        config: Config,
        tcp: TcpConfig,
        stores: Stores,
    ) -> Result<TcpNode, StartError> {
        Self::launch(
            id,
            listen,
            Vec::new(),
            Membership::default(),
            config,
            tcp,
            stores,
        )
        .await
    }

    async fn launch(
        id: NodeId,
        listen: SocketAddr,
        peers: Vec<(NodeId, SocketAddr)>,
        members: Membership,
        config: Config,
        tcp: TcpConfig,
        stores: Stores,
    ) -> Result<TcpNode, StartError> {
        let transport = TcpTransport::bind(id, listen, tcp)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        for (peer, addr) in peers {
            transport.set_peer(peer, addr);
        }
        let seams = Seams {
            log: stores.log,
            snapshots: stores.snapshots,
            state_machine: stores.state_machine,
            transport: Arc::new(transport.clone()),
        };
        let node = match RaftNode::start(id, config, members, seams, None).await {
            Ok(node) => node,
            Err(e) => {
                transport.shutdown();
                return Err(e.into());
            }
        };
        transport.serve_node(&node);
        Ok(TcpNode { node, transport })
    }

    /// Stops the node and closes its connections.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
        self.transport.shutdown();
    }
}

impl Drop for TcpNode {
    /// Closes the transport, which also lets go of the node: once every other handle is
    /// dropped too, the node stops (as a `RaftNode` does when its last handle goes).
    fn drop(&mut self) {
        self.transport.shutdown();
    }
}
