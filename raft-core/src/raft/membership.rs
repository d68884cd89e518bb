//! Membership changes (section 6 of the Raft paper, dissertation chapter 4): learners are
//! added and removed directly; a new voter set goes through a joint configuration, which
//! the leader leaves on its own once the joint one is committed. A configuration takes
//! effect on every server as soon as it is in its log, committed or not.

use std::collections::{BTreeMap, BTreeSet};

use super::{NotLeader, RaftCore};
use crate::progress::Progress;
use crate::types::{EntryPayload, LogId, LogIndex, Membership, NodeId, Role};

/// A change to the cluster's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a member that receives the log but does not vote, with the address the
    /// transport reaches it at (recorded in the configuration; `None` when the transport
    /// already knows it).
    AddLearner(NodeId, Option<String>),
    /// Make this the voter set (through a joint configuration of the old and new sets).
    /// Learners named in it are promoted and keep their addresses; a new voter that was not
    /// a learner has none, so add members as learners first (they also catch up that way).
    SetVoters(BTreeSet<NodeId>),
    /// Remove a member: a learner at once, a voter through a joint configuration.
    Remove(NodeId),
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// Only the leader changes the configuration.
    #[error("not the leader{}", .0.leader_hint.map(|l| format!("; try the leader {l}")).unwrap_or_default())]
    NotLeader(NotLeader),
    /// A previous change is not finished (not committed yet, or still joint), or leadership
    /// is being transferred; one change at a time keeps every pair of successive
    /// configurations overlapping.
    #[error("a membership change or leadership transfer is in progress; retry once it is done")]
    InProgress,
    /// The change would leave the cluster without a voter.
    #[error("the change would leave no voter")]
    NoVoter,
    /// The configuration already is what the change asks for.
    #[error("the configuration already is what the change asks for")]
    Unchanged,
    /// Neither PreVote nor CheckQuorum is on, so a removed server could disrupt the
    /// cluster when it times out (dissertation 4.2.3).
    #[error("membership changes need pre_vote or check_quorum in the config: without them a removed server disrupts the cluster")]
    Disruptive,
    /// The change was appended but lost with its leader (a new leader's log replaced it);
    /// it did not take effect. Retry it.
    #[error("the change was lost in a leader change and did not take effect; retry it")]
    Lost,
    /// The core has stopped after a fatal error.
    #[error("the node has stopped")]
    Stopped,
    /// The server named is not a member this leader replicates to.
    #[error("node {0} is not a member of the cluster; add it first")]
    NotAMember(NodeId),
}

impl Membership {
    /// The configuration that `change` leads to from this (simple) one: a simple one for
    /// learner changes, a joint one when the voters change.
    pub fn changed(&self, change: &MembershipChange) -> Result<Membership, ChangeError> {
        let next = match change {
            MembershipChange::AddLearner(id, _) if self.members().contains(id) => {
                return Err(ChangeError::Unchanged)
            }
            MembershipChange::AddLearner(id, address) => {
                let mut next = self.clone();
                next.learners.insert(*id);
                if let Some(address) = address {
                    next.addresses.insert(*id, address.clone());
                }
                next
            }
            MembershipChange::Remove(id) if self.voters.contains(id) => {
                let mut voters = self.voters.clone();
                voters.remove(id);
                return self.changed(&MembershipChange::SetVoters(voters));
            }
            MembershipChange::Remove(id) if self.learners.contains(id) => {
                let mut next = self.clone();
                next.learners.remove(id);
                next
            }
            MembershipChange::Remove(_) => return Err(ChangeError::Unchanged),
            MembershipChange::SetVoters(voters) if voters.is_empty() => {
                return Err(ChangeError::NoVoter)
            }
            MembershipChange::SetVoters(voters) if *voters == self.voters => {
                return Err(ChangeError::Unchanged)
            }
            MembershipChange::SetVoters(voters) => Membership {
                voters: voters.clone(),
                outgoing: Some(self.voters.clone()),
                learners: self.learners.difference(voters).copied().collect(),
                addresses: self.addresses.clone(),
            },
        };
        Ok(next.keeping_members_addresses())
    }

    /// The configuration that ends a joint one: its incoming half alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            outgoing: None,
            learners: self.learners.clone(),
            addresses: self.addresses.clone(),
        }
        .keeping_members_addresses()
    }

    /// Drops the addresses of servers that are no longer members.
    fn keeping_members_addresses(mut self) -> Membership {
        let members = self.members();
        self.addresses.retain(|id, _| members.contains(id));
        self
    }
}

impl RaftCore {
    /// Proposes a membership change (leader only). Returns the id of the configuration
    /// entry appended; a voter change then leaves the joint configuration on its own once
    /// that entry is committed. Refused while another change is in progress.
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<LogId, ChangeError> {
        if self.fatal.is_some() {
            return Err(ChangeError::Stopped);
        }
        if self.role != Role::Leader {
            return Err(ChangeError::NotLeader(self.not_leader()));
        }
        // Dissertation 4.1: one change at a time, each starting from a committed, simple
        // configuration, so every two successive configurations share a majority.
        if self.config_change_pending() || self.transferring_to().is_some() {
            return Err(ChangeError::InProgress);
        }
        // Dissertation 4.2.3: without PreVote or CheckQuorum, a removed server that times
        // out raises its term and disrupts the cluster.
        if !self.cfg.pre_vote && !self.cfg.check_quorum {
            return Err(ChangeError::Disruptive);
        }
        let next = self.membership().changed(&change)?;
        Ok(self.append_own(vec![EntryPayload::Membership(next)]))
    }

    /// How the change whose configuration entry is `id` ended, if it has: the resulting
    /// configuration once the entry is committed (and, for a voter change, once the joint
    /// configuration it began was left and that commits too); [`ChangeError::Lost`] if the
    /// log no longer holds the entry (a new leader's log replaced it); `None` while under way.
    pub fn change_outcome(&self, id: LogId) -> Option<Result<Membership, ChangeError>> {
        let held = self.log.log_id_at(id.index);
        if id.index > self.log.last_index() || held.is_some_and(|h| h != id) {
            return Some(Err(ChangeError::Lost));
        }
        let committed = self.log.committed;
        if id.index > committed {
            return None;
        }
        let mut from = self.config_log.iter().skip_while(|(i, _)| *i < id.index);
        match from.next() {
            Some((i, m)) if *i == id.index && m.outgoing.is_none() => Some(Ok(m.clone())),
            // Joint: done when the configuration that leaves it commits.
            Some((i, _)) if *i == id.index => match from.next() {
                Some((next, m)) if *next <= committed => Some(Ok(m.clone())),
                _ => None,
            },
            // Compacted into the snapshot, so committed; done once nothing is pending.
            _ => (!self.config_change_pending()).then(|| Ok(self.membership().clone())),
        }
    }

    /// Whether a change is in progress: the latest configuration is uncommitted or joint.
    pub fn config_change_pending(&self) -> bool {
        self.config_uncommitted() || self.membership().outgoing.is_some()
    }

    /// The configuration in effect changed (appended, truncated away, or installed with a
    /// snapshot): this node's role and, on a leader, the followers it replicates to follow
    /// it at once (section 6: a configuration takes effect when appended).
    pub(super) fn config_changed(&mut self) {
        self.peers_epoch += 1;
        match self.role {
            Role::Leader => self.track_members(),
            Role::Follower | Role::Learner => self.role = self.follower_role(),
            // A candidate counts votes against the configuration in effect; its role
            // settles when the election ends.
            Role::Candidate | Role::PreCandidate => {}
        }
    }

    /// A leader replicates to the members of the configuration in effect and of the last
    /// committed one, and keeps replicating to a server a committed change removed until
    /// that server holds the change: a last heartbeat at its match point then tells it the
    /// change committed, so it stops campaigning instead of being cut off before it knows.
    /// New members are probed from the end of the log.
    pub(super) fn track_members(&mut self) {
        self.peers_epoch += 1;
        let me = self.id;
        let mut members = self.membership().members();
        members.extend(self.last_committed_config().members());
        members.remove(&me);
        let settled = self.config_log.last().map_or(LogIndex(0), |(i, _)| *i);
        let committed = self.log.committed;
        let done: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(id, p)| {
                !members.contains(id) && settled <= committed && p.match_index >= settled
            })
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.send_append(id, true);
            self.progress.remove(&id);
        }
        self.retiring = self.progress.keys().any(|id| !members.contains(id));
        let next = self.log.last_index().next();
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next));
        }
    }

    /// Every server this node may still need to reach, with the address a configuration
    /// records for it: the members of the configuration in effect and of the last committed
    /// one, and on a leader the servers it still replicates to (a removed one until it
    /// holds its removal). The latest address recorded wins.
    pub fn peers(&self) -> BTreeMap<NodeId, Option<String>> {
        let mut ids = self.membership().members();
        ids.extend(self.last_committed_config().members());
        ids.extend(self.progress.keys().copied());
        ids.remove(&self.id);
        let mut peers: BTreeMap<NodeId, Option<String>> =
            ids.into_iter().map(|id| (id, None)).collect();
        let configs =
            std::iter::once(&self.base_config).chain(self.config_log.iter().map(|(_, m)| m));
        for m in configs {
            for (id, address) in &m.addresses {
                if let Some(slot) = peers.get_mut(id) {
                    *slot = Some(address.clone());
                }
            }
        }
        peers
    }

    /// Changes whenever [`peers`](Self::peers) may have (a configuration appended,
    /// truncated, committed or installed, or followers tracked anew): the driver tells the
    /// transport then.
    pub fn peers_epoch(&self) -> (u64, LogIndex) {
        let last_committed = self.last_committed_config_entry();
        (
            self.peers_epoch,
            last_committed.map_or(LogIndex(0), |(i, _)| *i),
        )
    }

    /// On a leader, after the commit index moved: a committed joint configuration is left
    /// for its incoming half, and a leader the committed final configuration removed (or
    /// made a learner) steps down (dissertation 4.2.2).
    pub(super) fn advance_config(&mut self) {
        if self.role != Role::Leader || self.config_uncommitted() {
            return;
        }
        // Runs at every commit: look at the configuration without cloning it.
        if self.membership().outgoing.is_some() {
            let next = self.membership().leave_joint();
            self.append_own(vec![EntryPayload::Membership(next)]);
            return;
        }
        // The change is committed: servers it removed are let go once they know it.
        let latest = self.config_log.last().map_or(LogIndex(0), |(i, _)| *i);
        if latest > self.settled_config {
            self.settled_config = latest;
            self.track_members();
        }
        if !self.membership().is_voter(self.id) {
            tracing::debug!(node = %self.id, term = %self.hard.term, "removed from the voters; stepping down");
            // Tell everyone the final configuration is committed before going quiet.
            self.broadcast_heartbeat();
            self.become_follower(self.hard.term, None);
        }
    }

    /// Whether a committed configuration no longer names this node, after an earlier
    /// committed one did, and no later one names it again. Only committed configurations
    /// count: one merely appended may still be truncated away. (A server not yet added is
    /// named by none; one whose removal was compacted into its snapshot before it
    /// restarted no longer knows it was a member.)
    pub fn is_removed(&self) -> bool {
        let me = self.id;
        if self.membership().members().contains(&me)
            || self.last_committed_config().members().contains(&me)
        {
            return false;
        }
        let committed = self.log.committed;
        let earlier = self.config_log.iter().take_while(|(i, _)| *i <= committed);
        std::iter::once(&self.base_config)
            .chain(earlier.map(|(_, m)| m))
            .any(|m| m.members().contains(&me))
    }

    /// The last configuration known committed (the snapshot's when the log holds none).
    fn last_committed_config(&self) -> &Membership {
        self.last_committed_config_entry()
            .map_or(&self.base_config, |(_, m)| m)
    }

    /// The last configuration entry in the log known committed, if the log holds one.
    fn last_committed_config_entry(&self) -> Option<&(LogIndex, Membership)> {
        let committed = self.log.committed;
        self.config_log.iter().rev().find(|(i, _)| *i <= committed)
    }

    /// Whether this node may start an election: it votes in the last configuration known
    /// committed or in a later one. A change that removes it may not be finished, and the
    /// cluster may need it to finish it: with the leader gone, voters still in the joint
    /// configuration may need the vote of a removed server whose log is longer, and that
    /// server may be the only one able to win. Votes are counted against the configuration
    /// in effect either way.
    pub(super) fn may_campaign(&self) -> bool {
        let committed = self.log.committed;
        let last_committed = self.config_log.iter().rposition(|(i, _)| *i <= committed);
        let from_base = last_committed.is_none() && self.base_config.is_voter(self.id);
        let since = &self.config_log[last_committed.unwrap_or(0)..];
        from_base || since.iter().any(|(_, m)| m.is_voter(self.id))
    }

    /// Whether the latest configuration entry is not committed yet.
    fn config_uncommitted(&self) -> bool {
        self.config_log
            .last()
            .is_some_and(|(index, _)| *index > self.log.committed)
    }
}
