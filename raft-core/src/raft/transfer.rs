//! Leadership transfer (dissertation 3.10): the leader stops taking proposals, brings the
//! target's log up to date, and sends it `TimeoutNow`; the target campaigns at once. A
//! transfer that has not ended within an election timeout is abandoned and the leader
//! carries on.

use super::{NotLeader, RaftCore};
use crate::message::MessageBody;
use crate::progress::ReplicationState;
use crate::types::{NodeId, Role};

/// A leadership transfer in progress.
#[derive(Debug)]
pub(super) struct Transfer {
    /// The voter to hand leadership to.
    target: NodeId,
    /// Ticks since the transfer began.
    elapsed: u64,
    /// Whether `TimeoutNow` has been sent.
    sent: bool,
}

/// Why a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader hands leadership over.
    #[error("not the leader{}", .0.leader_hint.map(|l| format!("; try the leader {l}")).unwrap_or_default())]
    NotLeader(NotLeader),
    /// The target is this node, or not a voter of the configuration in effect.
    #[error("{0} is not another voter of the configuration")]
    NotAVoter(NodeId),
    /// Another transfer, or a membership change, is in progress.
    #[error("a leadership transfer or membership change is in progress; retry once it is done")]
    InProgress,
    /// The target did not take over within an election timeout; this node leads on.
    #[error("the leadership transfer timed out; this node is still the leader")]
    TimedOut,
    /// This node lost leadership, but to another node than the target (another election
    /// overtook the transfer).
    #[error("leadership went to {0}, not to the transfer's target")]
    Superseded(NodeId),
}

impl RaftCore {
    /// Starts handing leadership to `target`, a voter: proposals are refused (with `target`
    /// as the leader hint) until the transfer ends, `target` is brought up to date and then
    /// told to campaign. Abandoned after an election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader || self.fatal.is_some() {
            return Err(TransferError::NotLeader(self.not_leader()));
        }
        if target == self.id || !self.membership().is_voter(target) {
            return Err(TransferError::NotAVoter(target));
        }
        // The target must campaign with the leader's whole log: nothing may be appended
        // after TimeoutNow, as leaving a joint configuration would.
        if self.transfer.is_some() || self.config_change_pending() {
            return Err(TransferError::InProgress);
        }
        self.transfer = Some(Transfer {
            target,
            elapsed: 0,
            sent: false,
        });
        // Bring the target up to date now rather than after a stalled pipeline's timeout,
        // which is as long as the transfer's: resend from its match point.
        let last = self.log.last_index();
        if let Some(pr) = self.progress.get_mut(&target) {
            if pr.match_index < last && pr.state == ReplicationState::Replicate {
                pr.become_probe();
            }
        }
        self.send_append(target, false);
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// The target of the transfer in progress, if any.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.as_ref().map(|t| t.target)
    }

    /// Sends `TimeoutNow` once the target's log matches ours (dissertation 3.10: the target
    /// must be able to win, so its log must be as up to date as the leader's).
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let last = self.log.last_index();
        let Some(t) = self.transfer.as_mut().filter(|t| !t.sent) else {
            return;
        };
        let caught_up = self
            .progress
            .get(&t.target)
            .is_some_and(|p| p.match_index == last);
        if caught_up {
            t.sent = true;
            let target = t.target;
            // Dissertation 6.4.1: the target's voters disregard our lease; it ends first.
            self.forfeit_lease();
            self.send(target, MessageBody::TimeoutNow);
        }
    }

    /// Leader ticks: a transfer still going after an election timeout is abandoned (the
    /// target may be down), and the leader takes proposals again.
    pub(super) fn transfer_tick(&mut self) {
        if let Some(t) = self.transfer.as_mut() {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.election_timeout_min {
                tracing::debug!(node = %self.id, target = %t.target, "leadership transfer timed out; resuming");
                self.transfer = None;
            }
        }
    }
}
