//! Rule tests for snapshots and log compaction (section 7 and Figure 13 of the extended Raft
//! paper): the leader streams a snapshot to a follower that needs compacted entries, chunk
//! by chunk; the follower takes chunks only in order, and installs per Figure 13's rules.

mod sim;

use bytes::Bytes;
use raft_core::message::{InstallSnapshot, SnapshotResponse};
use raft_core::{
    Config, LogId, LogIndex, Membership, Message, MessageBody, NodeId, ReplicationState,
    SnapshotMeta, Term,
};
use sim::{disk, encode_state, Faults, Sim};

/// A snapshot every 5 entries, no trailing window, and 16-byte chunks: the simulated state
/// machine's image is 16 bytes per entry, so a snapshot of n entries is n chunks.
fn cfg() -> Config {
    Config {
        pre_vote: false,
        check_quorum: false,
        snapshot_threshold: 5,
        snapshot_trailing: 0,
        snapshot_chunk_bytes: 16,
        ..Config::default()
    }
}

/// Node 1 leads; node 3 missed 12 entries that nodes 1 and 2 applied and compacted.
fn node_3_behind_a_compacted_log() -> Sim {
    let mut sim = Sim::new(1, 3, cfg(), Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    sim.isolate(NodeId(3));
    for _ in 0..12 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    sim.run_ticks(2);
    let leader = sim.core(1).status();
    assert!(leader.snapshot_index >= LogIndex(10), "{leader:?}");
    assert!(leader.first_log_index > sim.core(3).last_log_id().index.next());
    sim.heal();
    sim
}

fn chunks_to_3(msgs: &[Message]) -> Vec<Message> {
    msgs.iter()
        .filter(|m| m.to == NodeId(3) && matches!(m.body, MessageBody::InstallSnapshot(_)))
        .cloned()
        .collect()
}

fn offset(m: &Message) -> u64 {
    match &m.body {
        MessageBody::InstallSnapshot(c) => c.offset,
        _ => unreachable!("a chunk"),
    }
}

/// Ticks the leader and delivers everything but snapshot chunks to node 3 until such chunks
/// appear; returns them (taken off the wire, undelivered).
fn first_chunks(sim: &mut Sim) -> Vec<Message> {
    for _ in 0..cfg().election_timeout_min * 4 {
        sim.with_core(NodeId(1), |c| c.tick());
        for _ in 0..100 {
            let msgs = sim.take_in_flight();
            if msgs.is_empty() {
                break;
            }
            let chunks = chunks_to_3(&msgs);
            if !chunks.is_empty() {
                return chunks;
            }
            for m in msgs {
                sim.deliver(m);
            }
        }
    }
    panic!("the leader never sent a snapshot{}", sim.describe());
}

fn caught_up(sim: &Sim) -> bool {
    sim.core(3).last_log_id() == sim.core(1).last_log_id()
        && sim.nodes[&NodeId(3)].applied == sim.nodes[&NodeId(1)].applied
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_install_snapshot() {
    // Reference: section 7, "the leader must occasionally send snapshots to followers that
    // lag behind".
    let mut sim = node_3_behind_a_compacted_log();
    sim.run_ticks(cfg().election_timeout_min * 4);
    assert!(caught_up(&sim), "{}", sim.describe());
    assert!(sim.count("InstallSnapshot") > 4, "sent in many chunks");
    assert!(sim.core(3).status().snapshot_index >= LogIndex(10));
    let (_, state) = sim.core(1).status().peers[&NodeId(3)];
    assert_eq!(
        state,
        ReplicationState::Replicate,
        "replication continues after it"
    );
}

#[test]
fn out_of_order_and_duplicate_chunks_are_ignored() {
    // Figure 13, receiver: chunks are written at their offset in order; a chunk that is not
    // the next one is answered with the offset expected, and changes nothing.
    let mut sim = node_3_behind_a_compacted_log();
    let chunks = first_chunks(&mut sim);
    assert!(chunks.len() >= 3, "{chunks:?}");
    for m in chunks.iter().rev() {
        sim.deliver(m.clone());
    }
    let answers: Vec<u64> = sim
        .take_in_flight()
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::SnapshotResponse(SnapshotResponse { next_offset, .. }) => {
                Some(next_offset)
            }
            _ => None,
        })
        .collect();
    let len = |m: &Message| match &m.body {
        MessageBody::InstallSnapshot(c) => c.data.len() as u64,
        _ => 0,
    };
    // Only the first chunk (delivered last) was taken.
    assert_eq!(answers.last(), Some(&len(&chunks[0])), "{answers:?}");
    assert!(answers[..answers.len() - 1].iter().all(|&a| a == 0));
    // In order now, the first one duplicated: the duplicate is ignored.
    for m in &chunks {
        sim.deliver(m.clone());
    }
    sim.take_in_flight();
    sim.run_ticks(cfg().election_timeout_min * 4);
    assert!(caught_up(&sim), "{}", sim.describe());
}

#[test]
fn a_lost_chunk_is_resent_from_the_confirmed_offset() {
    let mut sim = node_3_behind_a_compacted_log();
    let chunks = first_chunks(&mut sim);
    let lost = offset(&chunks[1]);
    sim.deliver(chunks[0].clone());
    for m in &chunks[2..] {
        sim.deliver(m.clone());
    }
    // The follower keeps answering with the lost chunk's offset; once the transfer stalls,
    // the leader resends from there, not from the start.
    let mut resent = Vec::new();
    for _ in 0..cfg().election_timeout_min * 2 {
        sim.with_core(NodeId(1), |c| c.tick());
        for m in sim.take_in_flight() {
            if m.to == NodeId(3) && matches!(m.body, MessageBody::InstallSnapshot(_)) {
                resent.push(offset(&m));
            }
            sim.deliver(m);
        }
        sim.deliver_all();
        if !resent.is_empty() {
            break;
        }
    }
    assert_eq!(resent.first(), Some(&lost), "{resent:?}");
    sim.run_ticks(cfg().election_timeout_min * 4);
    assert!(caught_up(&sim), "{}", sim.describe());
}

#[test]
fn a_transfer_that_makes_no_progress_restarts_and_the_follower_is_never_stuck() {
    // Every chunk of the first attempt is lost: the follower still gets heartbeats (its
    // election timer stays quiet), and the leader starts over.
    let mut sim = node_3_behind_a_compacted_log();
    let term = sim.core(1).term();
    drop(first_chunks(&mut sim));
    sim.run_ticks(cfg().election_timeout_min * 6);
    assert!(caught_up(&sim), "{}", sim.describe());
    assert_eq!(sim.core(3).term(), term, "node 3 never started an election");
}

/// A snapshot of entries 1..=last (terms from `terms`) as node 2 would send it, with the
/// entries recorded as applied cluster-wide (the simulator checks restored state).
fn leader_snapshot(sim: &mut Sim, terms: &[u64], last: u64) -> (SnapshotMeta, Bytes) {
    let entries = disk(0, terms).log;
    for e in &entries[..last as usize] {
        sim.applied_at.insert(e.index(), e.clone());
    }
    let meta = SnapshotMeta {
        last_log_id: entries[last as usize - 1].log_id,
        membership: Membership::new((1..=3).map(NodeId)),
    };
    (meta, encode_state(&entries[..last as usize]))
}

fn install(sim: &mut Sim, term: u64, meta: SnapshotMeta, data: Bytes) {
    let body = MessageBody::InstallSnapshot(InstallSnapshot {
        meta,
        offset: 0,
        data,
        done: true,
    });
    sim.deliver(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(term),
        body,
    });
}

#[test]
fn install_keeps_the_log_after_a_snapshot_entry_it_holds() {
    // Reference: Figure 13, receiver rule 6: "If existing log entry has same index and term
    // as snapshot's last included entry, retain log entries following it and reply".
    let terms = [1; 10];
    let mut sim = Sim::from_disks(
        1,
        cfg(),
        vec![disk(1, &terms), disk(1, &terms), disk(1, &[])],
    );
    let (meta, data) = leader_snapshot(&mut sim, &terms, 5);
    install(&mut sim, 1, meta, data);
    let core = sim.core(1);
    assert_eq!(core.first_log_index(), LogIndex(6));
    assert_eq!(core.last_log_id(), LogId::new(1, 10), "entries 6..=10 kept");
    assert_eq!(
        sim.nodes[&NodeId(1)].applied.len(),
        5,
        "state machine reset to 5"
    );
}

#[test]
fn install_discards_a_log_that_disagrees_with_the_snapshot() {
    // Reference: Figure 13, receiver rules 7 and 8: discard the entire log and reset the
    // state machine from the snapshot.
    let leader = [1, 1, 3, 3, 3];
    let mut sim = Sim::from_disks(
        1,
        cfg(),
        vec![
            disk(2, &[1, 1, 2, 2, 2, 2]),
            disk(3, &leader),
            disk(3, &leader),
        ],
    );
    let (meta, data) = leader_snapshot(&mut sim, &leader, 4);
    install(&mut sim, 3, meta, data);
    let core = sim.core(1);
    assert_eq!(
        core.last_log_id(),
        LogId::new(3, 4),
        "nothing of term 2 is left"
    );
    assert_eq!(core.first_log_index(), LogIndex(5));
    assert_eq!(sim.nodes[&NodeId(1)].applied.len(), 4);
    // --- and a restart resumes from the snapshot, not from index 0
    sim.crash(NodeId(1));
    sim.restart(NodeId(1));
    assert_eq!(sim.core(1).last_log_id(), LogId::new(3, 4));
    assert_eq!(sim.nodes[&NodeId(1)].applied.len(), 4);
}

#[test]
fn the_follower_leaves_snapshot_state_as_soon_as_it_confirms_the_install() {
    // Its confirmation alone moves it back to log replication: no heartbeat is needed.
    let mut sim = node_3_behind_a_compacted_log();
    let chunks = first_chunks(&mut sim);
    for m in chunks {
        sim.deliver(m);
    }
    for _ in 0..1000 {
        let msgs = sim.take_in_flight();
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            sim.deliver(m);
        }
    }
    assert!(caught_up(&sim), "{}", sim.describe());
    let (_, state) = sim.core(1).status().peers[&NodeId(3)];
    assert_eq!(state, ReplicationState::Replicate);
}

#[test]
fn the_byte_trigger_counts_only_entries_after_the_snapshot() {
    // snapshot_log_bytes bounds the log by size (large entries); the trailing window behind
    // a snapshot cannot be purged, so it must not count, or every apply would snapshot again.
    let cfg = Config {
        snapshot_threshold: 0,
        snapshot_log_bytes: 1000,
        snapshot_trailing: 50,
        ..cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    for _ in 0..20 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    // ~38 bytes an entry: 21 entries are under 1,000 bytes.
    assert_eq!(sim.snapshots_built, 0, "{:?}", sim.core(1).status());
    for _ in 0..10 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    assert!(sim.snapshots_built >= 3, "every node took one");
    let built = sim.snapshots_built;
    let log_bytes = sim.core(1).status().log_bytes;
    assert!(
        log_bytes >= 1000,
        "the trailing window keeps the log: {log_bytes}"
    );
    sim.propose(NodeId(1));
    sim.deliver_all();
    assert_eq!(
        sim.snapshots_built, built,
        "the trailing window retriggered a snapshot"
    );
}

/// Three nodes that all took a snapshot at 5 or later and purged their logs behind it.
fn compacted_cluster() -> Sim {
    let mut sim = Sim::new(1, 3, cfg(), Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    for _ in 0..7 {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    sim.run_ticks(2);
    assert!(
        sim.core(2).first_log_index() > LogIndex(5),
        "{:?}",
        sim.core(2).status()
    );
    sim.take_in_flight();
    sim
}

#[test]
fn a_conflict_hint_never_points_below_the_compacted_log() {
    // Fast backtracking (section 5.3) from a compacted log: the first index of the
    // conflicting term is at most where the log begins.
    let mut sim = compacted_cluster();
    let first = sim.core(2).first_log_index();
    let last = sim.core(2).last_log_id().index;
    let term = sim.core(2).term().0;
    let probe = raft_core::message::AppendEntries {
        prev_log_id: LogId::new(term + 1, last.0),
        entries: Vec::new(),
        leader_commit: LogIndex(0),
        seq: 0,
    };
    sim.deliver(Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(term + 1),
        body: MessageBody::AppendEntries(probe),
    });
    let hints: Vec<LogIndex> = sim
        .take_in_flight()
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse(raft_core::message::AppendResponse {
                outcome: raft_core::message::AppendOutcome::Conflict { conflict_index, .. },
                ..
            }) => Some(conflict_index),
            _ => None,
        })
        .collect();
    assert_eq!(hints, vec![first]);
}

/// Delivers to node 2 an AppendEntries from node 1 in `term`.
fn append_from_1_to_2(sim: &mut Sim, term: Term, prev: LogId, entries: Vec<raft_core::Entry>) {
    let req = raft_core::message::AppendEntries {
        prev_log_id: prev,
        entries,
        leader_commit: LogIndex(0),
        seq: 0,
    };
    sim.deliver(Message {
        from: NodeId(1),
        to: NodeId(2),
        term,
        body: MessageBody::AppendEntries(req),
    });
}

#[test]
fn an_append_reaching_back_into_the_compacted_log_is_accepted() {
    // Entries at or below the purge point are committed and covered by the snapshot: an
    // AppendEntries whose prev lies below it matches, and only its newer entries count.
    let mut sim = compacted_cluster();
    let last = sim.core(2).last_log_id();
    let term = sim.core(1).term();
    // Re-send from index 2 everything node 2 has, plus one new entry.
    let mut entries: Vec<raft_core::Entry> = sim
        .applied_at
        .range(LogIndex(2)..)
        .map(|(_, e)| e.clone())
        .collect();
    entries.retain(|e| e.index() <= last.index);
    let new = raft_core::Entry {
        log_id: LogId {
            term,
            index: last.index.next(),
        },
        payload: raft_core::EntryPayload::Command(Bytes::from_static(b"new")),
    };
    entries.push(new.clone());
    let prev = LogId {
        term: sim.applied_at[&LogIndex(1)].term(),
        index: LogIndex(1),
    };
    append_from_1_to_2(&mut sim, term, prev, entries);
    assert_eq!(sim.core(2).last_log_id(), new.log_id);
}

#[test]
fn the_log_byte_count_follows_compaction() {
    let sim = compacted_cluster();
    let core = sim.core(2);
    let held: usize = (core.first_log_index().0..=core.last_log_id().index.0)
        .map(|i| core.entry(LogIndex(i)).expect("in memory").size_hint())
        .sum();
    assert_eq!(core.status().log_bytes, held);
    assert_eq!(core.status().log_cache_bytes, held);
}

fn manual() -> Config {
    Config {
        snapshot_threshold: 0,
        ..cfg()
    }
}

fn applied_cluster(cfg: Config, entries: usize) -> Sim {
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    for _ in 0..entries {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    sim.run_ticks(2);
    sim
}

#[test]
fn snapshot_now_takes_one_at_once_and_only_when_something_is_new() {
    let mut sim = applied_cluster(manual(), 4);
    assert_eq!(
        sim.snapshots_built, 0,
        "no policy snapshot with threshold 0"
    );
    let applied = sim.core(1).status().applied_index;
    assert_eq!(sim.with_core(NodeId(1), |c| c.snapshot_now()), Some(true));
    assert_eq!(sim.core(1).status().snapshot_index, applied);
    assert_eq!(
        sim.with_core(NodeId(1), |c| c.snapshot_now()),
        Some(false),
        "nothing new"
    );
    // --- while one is being written, a second request joins it rather than starting another
    sim.propose(NodeId(1));
    sim.deliver_all();
    sim.faults.disk = 0.0;
    assert_eq!(sim.with_core(NodeId(1), |c| c.snapshot_now()), Some(true));
    assert!(sim.core(1).snapshot_building());
    assert_eq!(sim.with_core(NodeId(1), |c| c.snapshot_now()), Some(false));
    // --- a failed build lets the next request start again
    sim.with_core(NodeId(1), |c| c.snapshot_build_failed());
    assert!(!sim.core(1).snapshot_building());
    assert_eq!(sim.with_core(NodeId(1), |c| c.snapshot_now()), Some(true));
}

#[test]
fn the_count_trigger_fires_at_exactly_the_threshold() {
    // Section 7: a snapshot once `snapshot_threshold` entries were applied since the last.
    let sim = applied_cluster(cfg(), 3);
    assert_eq!(sim.core(1).status().applied_index, LogIndex(4), "no-op + 3");
    assert_eq!(sim.core(1).status().snapshot_index, LogIndex(0));
    let mut sim = sim;
    sim.propose(NodeId(1));
    sim.deliver_all();
    sim.run_ticks(2);
    assert_eq!(sim.core(1).status().snapshot_index, LogIndex(5));
}

#[test]
fn a_stale_or_foreign_snapshot_report_changes_nothing() {
    let mut sim = applied_cluster(manual(), 6);
    let older = sim.core(1).snapshot_meta_at(LogIndex(3)).expect("held");
    sim.with_core(NodeId(1), |c| c.snapshot_now());
    let before = sim.core(1).status();
    sim.with_core(NodeId(1), |c| c.snapshot_built(&older, 1));
    let foreign = SnapshotMeta {
        last_log_id: LogId::new(before.term.0 + 3, before.snapshot_index.0 + 1),
        membership: before.membership.clone(),
    };
    sim.with_core(NodeId(1), |c| c.snapshot_built(&foreign, 1));
    let after = sim.core(1).status();
    assert_eq!(after.snapshot_index, before.snapshot_index);
    assert_eq!(after.first_log_index, before.first_log_index);
    assert_eq!(after.snapshot_bytes, before.snapshot_bytes);
}

#[test]
fn a_snapshot_loaded_after_leadership_was_lost_is_not_kept() {
    let mut sim = applied_cluster(manual(), 6);
    sim.with_core(NodeId(1), |c| c.snapshot_now());
    let meta = sim.nodes[&NodeId(1)].disk.snapshot.clone().expect("taken");
    sim.with_core(NodeId(2), |c| c.snapshot_loaded(meta.0, meta.1));
    assert_eq!(sim.core(2).status().snapshot_sending_bytes, 0);
}

#[test]
fn a_failed_snapshot_load_sends_the_follower_back_to_probing() {
    // The follower is not left waiting in snapshot state for bytes that will not come; the
    // next heartbeat probes it again (and asks for a snapshot again if it still needs one).
    let mut sim = node_3_behind_a_compacted_log();
    sim.faults.disk = 0.0; // the load stays outstanding
    for _ in 0..cfg().election_timeout_min * 3 {
        sim.with_core(NodeId(1), |c| c.tick());
        sim.deliver_all();
        if sim.core(1).status().peers[&NodeId(3)].1 == ReplicationState::Snapshot {
            break;
        }
    }
    assert_eq!(
        sim.core(1).status().peers[&NodeId(3)].1,
        ReplicationState::Snapshot
    );
    sim.with_core(NodeId(1), |c| c.snapshot_load_failed());
    assert_eq!(
        sim.core(1).status().peers[&NodeId(3)].1,
        ReplicationState::Probe
    );
}

#[test]
fn an_append_whose_prev_contradicts_the_purge_point_is_rejected() {
    // The last purged entry is still known by id: an AppendEntries claiming another term
    // there does not match (Figure 2, AppendEntries rule 2), even though the entry is gone.
    let mut sim = compacted_cluster();
    let core = sim.core(2);
    let purged = core
        .log_id_at(core.first_log_index().prev())
        .expect("the purge point is known");
    let term = sim.core(1).term();
    let prev = LogId {
        term: Term(purged.term.0 + 1),
        index: purged.index,
    };
    append_from_1_to_2(&mut sim, term, prev, Vec::new());
    let rejected = sim.in_flight().into_iter().any(|m| {
        matches!(
            &m.body,
            MessageBody::AppendResponse(raft_core::message::AppendResponse {
                outcome: raft_core::message::AppendOutcome::Conflict { .. },
                ..
            })
        )
    });
    assert!(rejected, "{:?}", sim.in_flight());
}

#[test]
fn a_zero_byte_limit_turns_the_byte_trigger_off() {
    let cfg = Config {
        snapshot_log_bytes: 0,
        ..cfg()
    };
    let sim = applied_cluster(cfg, 3);
    assert_eq!(sim.core(1).status().applied_index, LogIndex(4));
    assert_eq!(sim.snapshots_requested, 0);
}

#[test]
fn the_policy_never_asks_for_a_second_snapshot_while_one_is_being_built() {
    let mut sim = applied_cluster(cfg(), 3);
    // The disk holds snapshot writes back: the first one stays in progress.
    sim.faults.disk = 0.0;
    for _ in 0..12 {
        sim.propose(NodeId(1));
        for _ in 0..4 {
            for id in sim.ids() {
                sim.complete_writes(id, usize::MAX);
            }
            sim.deliver_all();
        }
    }
    assert!(sim.core(1).snapshot_building());
    assert!(sim.core(1).status().applied_index >= LogIndex(15));
    let leader_requests = sim.snapshots_requested;
    assert!(
        (1..=3).contains(&leader_requests),
        "one per node at most: {leader_requests}"
    );
}

fn is_chunk_to_3_at(m: &Message, at: u64) -> bool {
    m.to == NodeId(3) && matches!(&m.body, MessageBody::InstallSnapshot(c) if c.offset == at)
}

#[test]
fn the_leader_keeps_four_chunks_in_flight() {
    let mut sim = node_3_behind_a_compacted_log();
    let chunks = first_chunks(&mut sim);
    let offsets: Vec<u64> = chunks.iter().map(offset).collect();
    assert_eq!(offsets, vec![0, 16, 32, 48]);
}

#[test]
fn a_silent_transfer_resends_at_the_stall_limit_and_restarts_at_twice_that() {
    // A transfer whose chunks all vanish: after `stall_limit` heartbeats without progress
    // the leader resends from the confirmed offset; after twice that it starts over. An
    // answer that confirms nothing new (a duplicate) does not count as progress.
    let mut sim = node_3_behind_a_compacted_log();
    first_chunks(&mut sim);
    sim.isolate(NodeId(3));
    let limit = cfg().election_timeout_min / cfg().heartbeat_interval;
    let term = sim.core(1).term();
    let sending = sim.core(1).status().snapshot_index;
    let duplicate = Message {
        from: NodeId(3),
        to: NodeId(1),
        term,
        body: MessageBody::SnapshotResponse(SnapshotResponse {
            last_log_id: sim
                .core(1)
                .snapshot_meta_at(sending)
                .expect("held")
                .last_log_id,
            next_offset: 0,
            done: false,
        }),
    };
    let mut resent_at = Vec::new();
    for hb in 1..=2 * limit {
        for _ in 0..cfg().heartbeat_interval {
            sim.with_core(NodeId(1), |c| c.tick());
        }
        if sim.in_flight().iter().any(|m| is_chunk_to_3_at(m, 0)) {
            resent_at.push(hb);
        }
        sim.take_in_flight();
        let dup = duplicate.clone();
        sim.with_core(NodeId(1), |c| c.step(dup));
    }
    assert_eq!(resent_at, vec![limit, 2 * limit]);
}

#[test]
fn a_finished_transfer_releases_the_loaded_snapshot() {
    // The snapshot loaded for node 3 stays in memory while the transfer needs it, and not
    // a heartbeat longer.
    let mut sim = node_3_behind_a_compacted_log();
    first_chunks(&mut sim);
    let held = sim.core(1).status().snapshot_sending_bytes;
    assert!(held > 0);
    sim.run_ticks(cfg().election_timeout_min * 2);
    assert!(caught_up(&sim), "{}", sim.describe());
    assert_eq!(sim.core(1).status().snapshot_sending_bytes, 0);
}

/// The 16-byte chunk of a snapshot at byte `at`.
fn chunk(meta: &SnapshotMeta, data: &Bytes, at: usize) -> MessageBody {
    let end = (at + 16).min(data.len());
    MessageBody::InstallSnapshot(InstallSnapshot {
        meta: meta.clone(),
        offset: at as u64,
        data: data.slice(at..end),
        done: end == data.len(),
    })
}

/// Delivers `body` from node 2 to node 1 and returns node 1's answer to a chunk.
fn to_1(sim: &mut Sim, body: MessageBody) -> Option<SnapshotResponse> {
    sim.take_in_flight();
    sim.deliver(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body,
    });
    sim.take_in_flight().into_iter().find_map(|m| match m.body {
        MessageBody::SnapshotResponse(r) => Some(r),
        _ => None,
    })
}

#[test]
fn stray_chunks_never_disturb_a_transfer_in_progress() {
    let terms = [1; 20];
    let mut sim = Sim::from_disks(1, cfg(), vec![disk(1, &[]), disk(1, &[]), disk(1, &[])]);
    // Snapshot A (4 entries) installed whole: node 1 has committed 4.
    let (a, a_data) = leader_snapshot(&mut sim, &terms, 4);
    install(&mut sim, 1, a.clone(), a_data.clone());
    assert_eq!(sim.core(1).commit_index(), LogIndex(4));
    // Snapshot B (10 entries) arrives in order, two chunks so far.
    let (b, b_data) = leader_snapshot(&mut sim, &terms, 10);
    to_1(&mut sim, chunk(&b, &b_data, 0));
    let r = to_1(&mut sim, chunk(&b, &b_data, 16)).expect("answered");
    assert_eq!(r.next_offset, 32);
    // A late chunk of A (covered by the commit) and a mid-transfer chunk of another
    // snapshot C: both answered, neither replaces B's transfer.
    to_1(&mut sim, chunk(&a, &a_data, 0));
    let (c, c_data) = leader_snapshot(&mut sim, &terms, 12);
    let r = to_1(&mut sim, chunk(&c, &c_data, 32)).expect("answered");
    assert_eq!((r.last_log_id, r.next_offset), (c.last_log_id, 0));
    let r = to_1(&mut sim, chunk(&b, &b_data, 32)).expect("answered");
    assert_eq!((r.last_log_id, r.next_offset), (b.last_log_id, 48));
}

#[test]
fn an_installed_snapshot_brings_its_configuration_and_the_role_that_follows() {
    // Node 4, a learner, installs a snapshot whose configuration makes it a voter.
    let learners = Membership {
        learners: [NodeId(4)].into(),
        ..Membership::new((1..=3).map(NodeId))
    };
    let mut sim = Sim::with_membership(1, learners, cfg(), Faults::none());
    assert_eq!(sim.core(4).role(), raft_core::Role::Learner);
    let (mut meta, data) = leader_snapshot(&mut sim, &[1; 5], 5);
    meta.membership = Membership::new((1..=4).map(NodeId));
    sim.deliver(Message {
        from: NodeId(1),
        to: NodeId(4),
        term: Term(1),
        body: MessageBody::InstallSnapshot(InstallSnapshot {
            meta: meta.clone(),
            offset: 0,
            data,
            done: true,
        }),
    });
    assert_eq!(sim.core(4).membership(), &meta.membership);
    assert_eq!(sim.core(4).role(), raft_core::Role::Follower);
}

#[test]
fn a_configuration_after_an_installed_snapshot_stays_in_effect() {
    // Node 1's log holds a configuration at 6; a snapshot at 4 (which its log holds) keeps
    // the entries after 4, and that configuration with them.
    let grown = Membership {
        learners: [NodeId(4)].into(),
        ..Membership::new((1..=3).map(NodeId))
    };
    let mut log = disk(1, &[1; 5]);
    log.log.push(raft_core::Entry {
        log_id: LogId::new(1, 6),
        payload: raft_core::EntryPayload::Membership(grown.clone()),
    });
    let mut sim = Sim::from_disks(1, cfg(), vec![log, disk(1, &[]), disk(1, &[])]);
    assert_eq!(sim.core(1).membership(), &grown);
    let (meta, data) = leader_snapshot(&mut sim, &[1; 5], 4);
    install(&mut sim, 1, meta, data);
    assert_eq!(sim.core(1).first_log_index(), LogIndex(5));
    assert_eq!(sim.core(1).membership(), &grown);
}

#[test]
fn a_follower_receiving_a_snapshot_gets_no_appends_for_new_proposals() {
    // While chunks stream, new entries wait for the install: only heartbeats (and chunks)
    // go to the follower, not an empty AppendEntries per proposal.
    let mut sim = node_3_behind_a_compacted_log();
    first_chunks(&mut sim);
    let (_, state) = sim.core(1).status().peers[&NodeId(3)];
    assert_eq!(state, raft_core::ReplicationState::Snapshot);
    sim.take_in_flight();
    for _ in 0..3 {
        sim.propose(NodeId(1));
    }
    let appends: Vec<_> = sim
        .in_flight()
        .into_iter()
        .filter(|m| m.to == NodeId(3) && matches!(m.body, MessageBody::AppendEntries(_)))
        .collect();
    assert!(appends.is_empty(), "{appends:?}");
}
