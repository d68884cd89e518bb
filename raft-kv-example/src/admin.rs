//! Cluster administration: the `RAFT.*` commands that change the membership, and how a
//! member's addresses travel in the configuration.
//!
//! | command | what it does |
//! |---|---|
//! | `RAFT.ADDLEARNER id raft_addr [client_addr]` | adds a learner; it catches up (by snapshot if needed) |
//! | `RAFT.PROMOTE id` | once the learner has caught up, makes it a voter (through a joint configuration) |
//! | `RAFT.REMOVE id` | removes a member, the leader included |
//! | `RAFT.TRANSFER id` | hands leadership to the voter `id` |
//!
//! Each answers `+OK` once the change is committed (or leadership moved); any node accepts
//! them and forwards them to the leader. `raft-kv admin` sends them from the command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{ChangeError, Message, NodeId, RaftError, RaftNode, Transport};
use raft_transport::TcpTransport;

use crate::client::{ClientError, KvClient};

/// How far behind the commit index a learner may be when it is promoted.
pub const PROMOTE_MAX_LAG: u64 = 64;
/// How long `RAFT.PROMOTE` waits for the learner to catch up.
pub const PROMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A membership command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// `RAFT.ADDLEARNER id raft_addr [client_addr]`
    AddLearner(NodeId, MemberAddr),
    /// `RAFT.PROMOTE id`
    Promote(NodeId),
    /// `RAFT.REMOVE id`
    Remove(NodeId),
    /// `RAFT.TRANSFER id`
    Transfer(NodeId),
}

/// Where a member is reached: its Raft address and, optionally, its client (RESP)
/// address, written `RAFT_ADDR` or `RAFT_ADDR/CLIENT_ADDR` in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    /// Raft traffic.
    pub raft: SocketAddr,
    /// Redis clients, so followers can forward to this member when it leads.
    pub client: Option<SocketAddr>,
}

impl std::fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.client {
            Some(c) => write!(f, "{}/{c}", self.raft),
            None => write!(f, "{}", self.raft),
        }
    }
}

impl std::str::FromStr for MemberAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MemberAddr, String> {
        let addr = |a: &str| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("'{a}' is not IP:PORT"))
        };
        Ok(match s.split_once('/') {
            Some((raft, client)) => MemberAddr {
                raft: addr(raft)?,
                client: Some(addr(client)?),
            },
            None => MemberAddr {
                raft: addr(s)?,
                client: None,
            },
        })
    }
}

fn utf8(b: &Bytes) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "ERR arguments must be text".to_string())
}

fn node_id(b: &Bytes) -> Result<NodeId, String> {
    utf8(b)?.parse().map(NodeId).map_err(|_| {
        format!(
            "ERR node id '{}' is not a number",
            String::from_utf8_lossy(b)
        )
    })
}

impl AdminCommand {
    /// Parses `RAFT.<name>` with its arguments; `None` if `name` is not an admin command.
    /// An `Err` is the error reply for a malformed one.
    pub fn parse(name: &str, args: &[Bytes]) -> Option<Result<AdminCommand, String>> {
        let parsed = match (name, args) {
            ("RAFT.ADDLEARNER", [id, raft]) => {
                Self::add_learner(id, &String::from_utf8_lossy(raft))
            }
            ("RAFT.ADDLEARNER", [id, raft, client]) => {
                let both = format!(
                    "{}/{}",
                    String::from_utf8_lossy(raft),
                    String::from_utf8_lossy(client)
                );
                Self::add_learner(id, &both)
            }
            ("RAFT.PROMOTE", [id]) => node_id(id).map(AdminCommand::Promote),
            ("RAFT.REMOVE", [id]) => node_id(id).map(AdminCommand::Remove),
            ("RAFT.TRANSFER", [id]) => node_id(id).map(AdminCommand::Transfer),
            ("RAFT.ADDLEARNER" | "RAFT.PROMOTE" | "RAFT.REMOVE" | "RAFT.TRANSFER", _) => {
                Err(format!(
                    "ERR wrong number of arguments for '{}' command",
                    name.to_ascii_lowercase()
                ))
            }
            _ => return None,
        };
        Some(parsed)
    }

    fn add_learner(id: &Bytes, addr: &str) -> Result<AdminCommand, String> {
        let addr = addr.parse().map_err(|e| format!("ERR {e}"))?;
        Ok(AdminCommand::AddLearner(node_id(id)?, addr))
    }

    /// The command's RESP arguments (what `raft-kv admin` sends).
    pub fn to_args(&self) -> Vec<String> {
        let (name, id) = match self {
            AdminCommand::AddLearner(id, addr) => {
                let mut v = vec!["RAFT.ADDLEARNER".into(), id.0.to_string()];
                v.push(addr.raft.to_string());
                v.extend(addr.client.map(|c| c.to_string()));
                return v;
            }
            AdminCommand::Promote(id) => ("RAFT.PROMOTE", id),
            AdminCommand::Remove(id) => ("RAFT.REMOVE", id),
            AdminCommand::Transfer(id) => ("RAFT.TRANSFER", id),
        };
        vec![name.into(), id.0.to_string()]
    }

    /// Carries the command out on `node`; resolves once the change is committed (or
    /// leadership moved). [`RaftError::NotLeader`] on a follower, for forwarding.
    pub async fn execute(&self, node: &RaftNode) -> Result<(), RaftError> {
        match self {
            AdminCommand::AddLearner(id, addr) => {
                node.add_learner(*id, addr.to_string()).await?;
            }
            AdminCommand::Promote(id) => {
                // A learner far behind would hold up commits while the joint configuration
                // waits for it: promote once it holds all but a few entries.
                let caught_up = node.wait_caught_up(*id, PROMOTE_MAX_LAG);
                tokio::time::timeout(PROMOTE_WAIT, caught_up)
                    .await
                    .map_err(|_| RaftError::Membership(ChangeError::InProgress))??;
                let mut voters = node.membership().await?.voters;
                voters.insert(*id);
                node.change_membership(voters).await?;
            }
            AdminCommand::Remove(id) => {
                node.remove(*id).await?;
            }
            AdminCommand::Transfer(id) => node.transfer_leadership(*id).await?,
        }
        Ok(())
    }
}

/// Sends `command` to the cluster through any of `endpoints` (client addresses) and waits
/// for it to be carried out; retried on another node while the leader changes.
pub async fn send(
    endpoints: Vec<SocketAddr>,
    command: &AdminCommand,
    auth: &crate::security::ClientAuth,
) -> Result<(), ClientError> {
    let mut client = KvClient::with_auth(endpoints, auth.clone());
    // A promotion first waits for the learner to catch up.
    client.attempt_timeout = PROMOTE_WAIT + std::time::Duration::from_secs(5);
    let args = command.to_args().into_iter().map(Bytes::from).collect();
    client.call(args).await.map(|_| ())
}

/// Each member's client address, for forwarding: given by hand (`--peer-clients`) and
/// learned from the configuration as members are added and removed.
pub type ClientAddrs = Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>;

/// The TCP transport, reading members' addresses as [`MemberAddr`]: the Raft half goes
/// to the TCP peer table, the client half to the forwarding table.
pub struct KvTransport {
    tcp: TcpTransport,
    clients: ClientAddrs,
}

impl KvTransport {
    /// Wraps `tcp`; `clients` is shared with the server that forwards.
    pub fn new(tcp: TcpTransport, clients: ClientAddrs) -> KvTransport {
        KvTransport { tcp, clients }
    }
}

#[async_trait]
impl Transport for KvTransport {
    async fn send(&self, msg: Message) {
        self.tcp.send(msg).await
    }

    fn max_message_bytes(&self) -> Option<usize> {
        self.tcp.max_message_bytes()
    }

    fn update_peers(&self, peers: &BTreeMap<NodeId, Option<String>>) {
        let parse = |a: &str| a.parse::<MemberAddr>().ok();
        self.tcp
            .update_peers_with(peers, |a| parse(a).map(|m| m.raft));
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        clients.retain(|id, _| peers.contains_key(id));
        for (id, addr) in peers {
            if let Some(client) = addr.as_deref().and_then(parse).and_then(|m| m.client) {
                clients.insert(*id, client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn admin_commands_parse_and_print_back() {
        let add = AdminCommand::parse(
            "RAFT.ADDLEARNER",
            &[b("4"), b("127.0.0.1:7003"), b("127.0.0.1:6383")],
        );
        let want =
            AdminCommand::AddLearner(NodeId(4), "127.0.0.1:7003/127.0.0.1:6383".parse().unwrap());
        assert_eq!(add, Some(Ok(want.clone())));
        assert_eq!(
            want.to_args(),
            ["RAFT.ADDLEARNER", "4", "127.0.0.1:7003", "127.0.0.1:6383"]
        );
        assert_eq!(
            AdminCommand::parse("RAFT.PROMOTE", &[b("4")]),
            Some(Ok(AdminCommand::Promote(NodeId(4))))
        );
        assert!(
            matches!(AdminCommand::parse("RAFT.REMOVE", &[b("x")]), Some(Err(e)) if e.contains("not a number"))
        );
        assert!(
            matches!(AdminCommand::parse("RAFT.ADDLEARNER", &[b("4"), b("nowhere")]), Some(Err(e)) if e.contains("IP:PORT"))
        );
        assert!(
            matches!(AdminCommand::parse("RAFT.TRANSFER", &[]), Some(Err(e)) if e.contains("wrong number"))
        );
        assert_eq!(AdminCommand::parse("GET", &[b("k")]), None);
    }

    #[test]
    fn a_member_address_is_a_raft_address_and_optionally_a_client_one() {
        let only: MemberAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(only.client, None);
        assert_eq!(only.to_string(), "127.0.0.1:7000");
        let both: MemberAddr = "127.0.0.1:7000/127.0.0.1:6379".parse().unwrap();
        assert_eq!(both.to_string().parse::<MemberAddr>().unwrap(), both);
        assert!("127.0.0.1:7000/".parse::<MemberAddr>().is_err());
    }
}
