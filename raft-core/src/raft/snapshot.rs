//! Snapshots and log compaction (section 7, Figure 13): when to take a snapshot, purging the
//! log behind it, streaming it to followers that need compacted entries, and installing a
//! leader's snapshot on a follower.
//!
//! The core never touches snapshot bytes it does not have to: the driver builds snapshots
//! ([`Action::BuildSnapshot`]) and loads them for sending ([`Action::LoadSnapshot`]); the
//! core cuts the loaded bytes into InstallSnapshot chunks (cheap `Bytes` slices), paces them
//! with a window, and resends lost ones by offset.

use bytes::{Bytes, BytesMut};

use super::{Action, PersistOp, RaftCore};
use crate::message::{InstallSnapshot, MessageBody, SnapshotResponse};
use crate::progress::{ReplicationState, SnapshotSend};
use crate::types::{LogId, LogIndex, Membership, NodeId, Role, SnapshotMeta};

/// Chunks in flight to one follower, beyond what it confirmed.
const SNAPSHOT_WINDOW: u64 = 4;

/// A leader's snapshot being received: its description and the bytes so far, in order.
#[derive(Debug)]
pub(super) struct Incoming {
    meta: SnapshotMeta,
    data: BytesMut,
}

impl RaftCore {
    // ----- taking snapshots --------------------------------------------------------------

    /// Starts a snapshot when the policy says so: `snapshot_threshold` entries applied
    /// since the last one, or the log holding `snapshot_log_bytes`.
    pub(super) fn maybe_snapshot(&mut self) {
        if self.snapshot_building || self.fatal.is_some() {
            return;
        }
        let since = self
            .applied
            .0
            .saturating_sub(self.log.snapshot_last().index.0);
        if since == 0 {
            return; // nothing new to snapshot
        }
        let threshold = self.cfg.snapshot_threshold;
        let by_count = threshold > 0 && since >= threshold;
        // Only what a new snapshot would let us purge counts (not the trailing window).
        let limit = self.cfg.snapshot_log_bytes;
        let by_bytes = limit > 0 && self.log.bytes_after_snapshot() >= limit;
        if by_count || by_bytes {
            self.request_snapshot();
        }
    }

    fn request_snapshot(&mut self) {
        self.snapshot_building = true;
        self.actions.push(Action::BuildSnapshot);
    }

    /// Asks for a snapshot now, whatever the policy (for operators and tests). Returns
    /// false when one is already being built or nothing was applied since the last one.
    pub fn snapshot_now(&mut self) -> bool {
        let new = self.applied > self.log.snapshot_last().index;
        if self.fatal.is_some() || self.snapshot_building || !new {
            return false;
        }
        self.request_snapshot();
        true
    }

    /// Whether a snapshot is being built.
    pub fn snapshot_building(&self) -> bool {
        self.snapshot_building
    }

    /// What a snapshot of the state machine at `index` (an applied index) is: the id of the
    /// entry there and the configuration in effect at it. `None` if the log no longer holds
    /// that entry.
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        let last_log_id = self.log.log_id_at(index)?;
        Some(SnapshotMeta {
            last_log_id,
            membership: self.membership_at(index),
        })
    }

    /// The configuration in effect at `index`: the last one at or before it.
    fn membership_at(&self, index: LogIndex) -> Membership {
        self.config_log
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_config.clone())
    }

    /// The snapshot asked for with [`Action::BuildSnapshot`] is durable in the snapshot
    /// store (`bytes` long): the log behind it can go.
    pub fn snapshot_built(&mut self, meta: &SnapshotMeta, bytes: u64) {
        self.snapshot_building = false;
        let id = meta.last_log_id;
        // Stale if a leader's newer snapshot was installed meanwhile.
        if self.fatal.is_some() || id <= self.log.snapshot_last() || !self.log.matches(id) {
            return;
        }
        self.snapshot_bytes = bytes;
        self.log.set_snapshot(id);
        self.rebase_config(id, &meta.membership);
        self.compact_log();
    }

    /// Building the snapshot failed; the policy will ask again.
    pub fn snapshot_build_failed(&mut self) {
        self.snapshot_building = false;
    }

    /// The configuration at the snapshot becomes the base; later ones stay in the log.
    fn rebase_config(&mut self, id: LogId, membership: &Membership) {
        let before = self.membership().clone();
        self.base_config = membership.clone();
        self.config_log.retain(|(i, _)| *i > id.index);
        if *self.membership() != before {
            self.config_changed();
        }
    }

    /// Section 7: purges the log up to the snapshot, minus `snapshot_trailing` entries kept
    /// for followers that are only slightly behind (they then need no snapshot).
    fn compact_log(&mut self) {
        let snapshot = self.log.snapshot_last().index;
        let upto = LogIndex(snapshot.0.saturating_sub(self.cfg.snapshot_trailing));
        if upto <= self.log.purged().index {
            return;
        }
        let Some(id) = self.log.log_id_at(upto) else {
            return;
        };
        self.log.compact(id);
        self.persist(PersistOp::Purge(id));
    }

    // ----- leader: streaming a snapshot to a follower ------------------------------------

    /// The follower `to` needs entries this log no longer holds: send it a snapshot.
    pub(super) fn start_snapshot_send(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state != ReplicationState::Snapshot {
                pr.become_snapshot();
            }
        }
        self.send_snapshot(to);
    }

    /// Whether the loaded snapshot reaches where our log begins (a follower that installs
    /// it can continue from our log).
    fn source_usable(&self) -> bool {
        self.snapshot_source
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id.index >= self.log.purged().index)
    }

    /// Sends the chunks the window allows, loading the snapshot first if needed.
    fn send_snapshot(&mut self, to: NodeId) {
        if !self.source_usable() {
            if !self.snapshot_loading {
                self.snapshot_loading = true;
                self.actions.push(Action::LoadSnapshot);
            }
            return;
        }
        let Some((meta, data)) = self.snapshot_source.clone() else {
            return;
        };
        let chunk = self.cfg.snapshot_chunk_bytes as u64;
        let size = data.len() as u64;
        let mut chunks = Vec::new();
        {
            let Some(pr) = self.progress.get_mut(&to) else {
                return;
            };
            if pr.state != ReplicationState::Snapshot {
                return;
            }
            let transfer = pr
                .snapshot
                .get_or_insert_with(|| SnapshotSend::new(meta.clone()));
            if transfer.meta.last_log_id != meta.last_log_id {
                // Only a snapshot that reaches our log is loaded: the older one in
                // progress could not catch the follower up. The follower starts over.
                *transfer = SnapshotSend::new(meta.clone());
            }
            while !transfer.sent_done && transfer.next - transfer.acked < SNAPSHOT_WINDOW * chunk {
                let end = (transfer.next + chunk).min(size);
                chunks.push(InstallSnapshot {
                    meta: meta.clone(),
                    offset: transfer.next,
                    data: data.slice(transfer.next as usize..end as usize),
                    done: end == size,
                });
                transfer.next = end;
                transfer.sent_done = end == size;
            }
        }
        for c in chunks {
            self.send(to, MessageBody::InstallSnapshot(c));
        }
    }

    /// The driver read the latest snapshot for sending.
    pub fn snapshot_loaded(&mut self, meta: SnapshotMeta, data: Bytes) {
        self.snapshot_loading = false;
        if self.fatal.is_some() || self.role != Role::Leader {
            return;
        }
        self.snapshot_source = Some((meta, data));
        if !self.source_usable() {
            // Older than our log's start (the store fell back past a damaged snapshot):
            // loading again would read the same one.
            self.snapshot_source = None;
            return self.snapshot_load_failed();
        }
        for to in self.peers_in_snapshot() {
            self.send_snapshot(to);
        }
    }

    /// Reading the snapshot failed: those followers go back to probing, which will ask
    /// for a snapshot again at the next heartbeat.
    pub fn snapshot_load_failed(&mut self) {
        self.snapshot_loading = false;
        for to in self.peers_in_snapshot() {
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.become_probe();
            }
        }
    }

    fn peers_in_snapshot(&self) -> Vec<NodeId> {
        self.progress
            .iter()
            .filter(|(_, p)| p.state == ReplicationState::Snapshot)
            .map(|(&id, _)| id)
            .collect()
    }

    /// A follower's answer to a chunk: slide the window, or finish the transfer.
    pub(super) fn handle_snapshot_response(&mut self, from: NodeId, resp: SnapshotResponse) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        // Answers about another snapshot, or to a finished transfer, are stale.
        let Some(t) = pr
            .snapshot
            .as_mut()
            .filter(|t| t.meta.last_log_id == resp.last_log_id)
        else {
            return;
        };
        if resp.done {
            pr.snapshot_installed(resp.last_log_id.index);
            self.release_snapshot_source();
            self.send_append(from, false);
            return;
        }
        if resp.next_offset > t.acked {
            t.acked = resp.next_offset.min(t.next);
            t.stalls = 0;
        } else if resp.next_offset < t.acked {
            // The follower lost what it had (it restarted): resend from where it is.
            t.rewind(resp.next_offset);
        }
        self.send_snapshot(from);
    }

    /// At each heartbeat: a transfer without progress resends from the last confirmed
    /// byte, then restarts from scratch (the follower leaves snapshot state through a probe).
    pub(super) fn snapshot_heartbeat(&mut self, to: NodeId, stall_limit: u32) {
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        if let Some(t) = pr.snapshot.as_mut() {
            t.stalls += 1;
            if t.stalls >= 2 * stall_limit {
                pr.become_probe();
                return;
            }
            if t.stalls % stall_limit == 0 {
                let acked = t.acked;
                t.rewind(acked);
            }
        }
        self.send_snapshot(to);
    }

    /// Frees the loaded snapshot once no follower needs it.
    pub(super) fn release_snapshot_source(&mut self) {
        // Runs at every heartbeat: look without collecting.
        let streaming = self
            .progress
            .values()
            .any(|p| p.state == ReplicationState::Snapshot);
        if !streaming {
            self.snapshot_source = None;
        }
    }

    // ----- follower: receiving and installing --------------------------------------------

    /// Figure 13, receiver: chunks are taken in order only; stale, duplicate and reordered
    /// ones are answered with the offset expected next, so the leader resends from there.
    pub(super) fn handle_install_snapshot(&mut self, leader: NodeId, req: InstallSnapshot) {
        self.leader = Some(leader);
        self.election_elapsed = 0;
        let id = req.meta.last_log_id;
        let end = req.offset + req.data.len() as u64;
        let installing = self
            .restore_pending
            .as_ref()
            .is_some_and(|(_, m, _)| m.last_log_id.index >= id.index);
        if id.index <= self.log.committed || installing {
            // We already hold everything it covers (committed entries match the leader's).
            // A transfer of a newer snapshot in progress is kept: this may be a late
            // duplicate of an older one.
            let committed = self.log.committed;
            if self
                .incoming
                .as_ref()
                .is_some_and(|inc| inc.meta.last_log_id.index <= committed)
            {
                self.incoming = None;
            }
            return self.answer_snapshot(leader, id, end, true);
        }
        let mut incoming = match self.incoming.take() {
            Some(inc) if inc.meta == req.meta => inc,
            _ if req.offset == 0 => Incoming {
                meta: req.meta.clone(),
                data: BytesMut::new(),
            },
            other => {
                self.incoming = other;
                return self.answer_snapshot(leader, id, 0, false);
            }
        };
        let have = incoming.data.len() as u64;
        if req.offset != have {
            self.incoming = Some(incoming);
            return self.answer_snapshot(leader, id, have, false);
        }
        incoming.data.extend_from_slice(&req.data);
        if !req.done {
            self.incoming = Some(incoming);
            return self.answer_snapshot(leader, id, end, false);
        }
        self.install_snapshot(incoming.meta, incoming.data.freeze());
        // Held until the snapshot is durable (see `send_with_term`).
        self.answer_snapshot(leader, id, end, true);
    }

    fn answer_snapshot(&mut self, leader: NodeId, id: LogId, next_offset: u64, done: bool) {
        let body = MessageBody::SnapshotResponse(SnapshotResponse {
            last_log_id: id,
            next_offset,
            done,
        });
        self.send(leader, body);
    }

    /// Figure 13, receiver rules 5 to 8: save the snapshot, keep the log after it if the log
    /// holds its last entry (else discard the whole log), then reset the state machine from
    /// it. The snapshot is durable before the log forgets what it covers, so a crash in
    /// between leaves a state that restarts cleanly.
    fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        let id = meta.last_log_id;
        let first = self.log.first_index();
        let had_entries = self.log.last_index() >= first;
        let discarded = self.log.install_snapshot(id);
        if discarded {
            self.note_truncated(first);
        }
        self.rebase_config(id, &meta.membership);
        let write = self.persist(PersistOp::Snapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        self.pending_stable.push_back((write, id));
        if discarded && had_entries {
            self.persist(PersistOp::Truncate(first));
        }
        self.persist(PersistOp::Purge(id));
        self.snapshot_bytes = data.len() as u64;
        self.restore_pending = Some((write, meta, data));
    }

    /// Once the installed snapshot is durable, the state machine may be reset from it.
    pub(super) fn release_restore(&mut self, upto: super::WriteId) {
        if self
            .restore_pending
            .as_ref()
            .is_some_and(|(write, _, _)| *write <= upto)
        {
            if let Some((_, meta, data)) = self.restore_pending.take() {
                self.apply_sent = self.apply_sent.max(meta.last_log_id.index);
                self.actions.push(Action::RestoreSnapshot { meta, data });
            }
        }
    }
}
