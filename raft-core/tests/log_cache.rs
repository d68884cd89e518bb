//! Rule tests for the bounded log cache: the core keeps in memory only the most recent
//! applied entries (`Config::log_cache_bytes`), knows every other stored entry by id, and a
//! leader reads entries back from the log store (`Action::ReadEntries`) for a follower that
//! needs them.

mod sim;

use bytes::Bytes;
use raft_core::{
    Config, Entry, EntryMeta, EntryPayload, FatalError, InitialState, LogId, LogIndex, Membership,
    MessageBody, NodeId, RaftCore, SnapshotMeta,
};
use sim::{Faults, Sim};

/// No snapshots, no PreVote or CheckQuorum, and no applied entry kept in memory.
fn cfg() -> Config {
    Config {
        pre_vote: false,
        check_quorum: false,
        snapshot_threshold: 0,
        snapshot_log_bytes: 0,
        log_cache_bytes: 0,
        max_entries_per_append: 4,
        ..Config::default()
    }
}

/// Node 1 leads; node 3 missed `n` entries that nodes 1 and 2 applied (and, with the cache
/// at 0 bytes, dropped from memory).
fn node_3_behind(cfg: Config, n: usize) -> Sim {
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    sim.isolate(NodeId(3));
    for _ in 0..n {
        sim.propose(NodeId(1));
        sim.deliver_all();
    }
    sim.run_ticks(1);
    sim.heal();
    sim
}

/// The leader's next read request for node 3, ticking until it asks (reads are held).
fn read_for_3(sim: &mut Sim) -> (std::ops::Range<LogIndex>, usize) {
    for _ in 0..cfg().election_timeout_min * 4 {
        let reads = sim.take_reads(1);
        if let Some((to, range, max_bytes)) = reads.into_iter().next() {
            assert_eq!(to, NodeId(3));
            return (range, max_bytes);
        }
        sim.with_core(NodeId(1), |c| c.tick());
        sim.deliver_all();
    }
    panic!("the leader never read entries for node 3{}", sim.describe());
}

/// What node 1's disk holds in `range`.
fn disk_entries(sim: &Sim, range: std::ops::Range<LogIndex>) -> Vec<Entry> {
    sim.nodes[&NodeId(1)]
        .disk
        .log
        .iter()
        .filter(|e| range.contains(&e.index()))
        .cloned()
        .collect()
}

/// Node 3 behind entries no longer in memory; the leader's read for it, taken unanswered:
/// where it starts and what the disk holds for it. The wire is left empty.
fn read_held_for_3() -> (Sim, LogIndex, Vec<Entry>) {
    let mut sim = node_3_behind(cfg(), 30);
    sim.hold_reads = true;
    let (range, _) = read_for_3(&mut sim);
    let from = range.start;
    let entries = disk_entries(&sim, range);
    sim.take_in_flight();
    (sim, from, entries)
}

fn appends_to_3(sim: &Sim) -> Vec<(LogId, Vec<LogId>)> {
    sim.in_flight()
        .into_iter()
        .filter(|m| m.to == NodeId(3))
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries(a) if !a.entries.is_empty() => {
                Some((a.prev_log_id, a.entries.iter().map(|e| e.log_id).collect()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_lagging_follower_is_served_from_the_log_store_when_memory_no_longer_holds_its_entries() {
    let mut sim = node_3_behind(cfg(), 30);
    let leader = sim.core(1).status();
    assert_eq!(leader.log_cache_bytes, 0, "applied entries left memory");
    assert!(sim.core(1).entry(LogIndex(5)).is_none());
    assert_eq!(
        sim.core(1).log_id_at(LogIndex(5)).map(|l| l.index),
        Some(LogIndex(5))
    );
    sim.run_ticks(10);
    assert!(
        sim.entries_read > 0,
        "the leader read entries from its disk"
    );
    assert_eq!(sim.log(3), sim.log(1));
    assert_eq!(sim.core(3).commit_index(), sim.core(1).commit_index());
    assert_eq!(sim.nodes[&NodeId(3)].applied.len(), 31);
}

#[test]
fn memory_holds_the_cache_budget_however_large_the_entries() {
    // The default snapshot policy (10,000 entries, 1,000 kept behind a snapshot) would keep
    // 40 entries of 1 MiB in the log; memory keeps only what the 4 MiB budget allows.
    let cfg = Config {
        log_cache_bytes: 4 << 20,
        max_bytes_per_append: 2 << 20,
        pre_vote: false,
        check_quorum: false,
        ..Config::default()
    };
    let mut sim = Sim::new(1, 3, cfg.clone(), Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    for _ in 0..40 {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        sim.with_core(NodeId(1), |c| c.propose([big]).expect("leader"));
        sim.deliver_all();
    }
    sim.run_ticks(1);
    for id in 1..=3 {
        let status = sim.core(id).status();
        assert_eq!(status.applied_index, LogIndex(41), "{status:?}");
        assert!(status.log_bytes >= 40 << 20, "{status:?}");
        assert!(status.log_cache_bytes <= cfg.log_cache_bytes, "{status:?}");
    }
}

#[test]
fn entries_still_in_memory_are_sent_without_a_read() {
    let mut sim = node_3_behind(
        Config {
            log_cache_bytes: 1 << 20,
            ..cfg()
        },
        30,
    );
    sim.hold_reads = true;
    sim.run_ticks(10);
    assert!(sim.take_reads(1).is_empty());
    assert_eq!(sim.log(3), sim.log(1));
}

#[test]
fn a_probe_reads_one_appends_worth_up_to_where_memory_begins() {
    let mut sim = node_3_behind(cfg(), 30);
    sim.hold_reads = true;
    let (range, max_bytes) = read_for_3(&mut sim);
    // A probe: one AppendEntries' worth (nothing is in memory, so not up to memory).
    assert_eq!(max_bytes, cfg().max_bytes_per_append);
    let count = cfg().max_entries_per_append as u64;
    assert_eq!(range.end.0 - range.start.0, count, "{range:?}");
}

#[test]
fn entries_read_back_are_sent_after_the_right_previous_entry() {
    let (mut sim, from, entries) = read_held_for_3();
    sim.with_core(NodeId(1), |c| c.entries_read(NodeId(3), from, entries));
    let appends = appends_to_3(&sim);
    assert_eq!(appends.len(), 1, "a probe carries one batch: {appends:?}");
    let (prev, ids) = &appends[0];
    assert_eq!(prev.index, from.prev());
    assert_eq!(sim.core(1).log_id_at(prev.index), Some(*prev));
    assert_eq!(ids.len(), cfg().max_entries_per_append);
    assert_eq!(ids[0].index, from);
}

#[test]
fn a_read_answered_after_the_follower_moved_on_is_ignored() {
    let (mut sim, from, entries) = read_held_for_3();
    // An answer for another start (an older read) changes nothing.
    let other = from.next();
    sim.with_core(NodeId(1), |c| {
        c.entries_read(NodeId(3), other, entries[1..].to_vec())
    });
    assert!(appends_to_3(&sim).is_empty());
    assert!(
        sim.take_reads(1).is_empty(),
        "the outstanding read is still awaited"
    );
    // Nor one after the leader stepped down.
    let term = sim.core(1).term();
    sim.with_core(NodeId(1), |c| {
        c.step(raft_core::Message {
            from: NodeId(2),
            to: NodeId(1),
            term: raft_core::Term(term.0 + 1),
            body: MessageBody::TimeoutNow,
        })
    });
    assert_ne!(sim.core(1).role(), raft_core::Role::Leader);
    sim.with_core(NodeId(1), |c| c.entries_read(NodeId(3), from, entries));
    assert!(appends_to_3(&sim).is_empty());
}

#[test]
fn a_failed_read_is_retried_at_the_next_heartbeat() {
    let mut sim = node_3_behind(cfg(), 30);
    sim.hold_reads = true;
    let (range, _) = read_for_3(&mut sim);
    sim.with_core(NodeId(1), |c| c.entries_read_failed(NodeId(3), range.start));
    for _ in 0..cfg().heartbeat_interval {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    let again = sim.take_reads(1);
    assert_eq!(
        again.first().map(|r| r.1.start),
        Some(range.start),
        "{again:?}"
    );
    // While a read is outstanding, no second one starts.
    for _ in 0..cfg().heartbeat_interval * 3 {
        sim.with_core(NodeId(1), |c| c.tick());
    }
    assert!(sim.take_reads(1).is_empty());
}

#[test]
fn a_store_that_returns_other_entries_stops_the_leader() {
    let (mut sim, from, mut entries) = read_held_for_3();
    sim.expect_fatal = true;
    entries[2].log_id.term.0 += 1;
    sim.with_core(NodeId(1), |c| c.entries_read(NodeId(3), from, entries));
    assert!(
        matches!(
            sim.stops.last(),
            Some((NodeId(1), FatalError::StoreMismatch { .. }))
        ),
        "{:?}",
        sim.stops
    );
    assert!(appends_to_3(&sim).is_empty(), "nothing foreign was sent");
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(term, index),
        payload: EntryPayload::Command(Bytes::from(format!("e{index}"))),
    }
}

fn restored(stored: &[Entry], entries: &[Entry], snapshot: u64) -> RaftCore {
    let init = InitialState {
        snapshot: Some(SnapshotMeta {
            last_log_id: LogId::new(1, snapshot),
            membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        }),
        stored: stored.iter().map(EntryMeta::from).collect(),
        entries: entries.to_vec(),
        applied: LogIndex(snapshot),
        ..InitialState::default()
    };
    RaftCore::new(NodeId(1), cfg(), init, 1)
}

#[test]
fn a_restart_knows_the_entries_behind_the_snapshot_by_id_only() {
    let all: Vec<Entry> = (1..=10).map(|i| entry(1, i)).collect();
    let core = restored(&all[..6], &all[6..], 8);
    assert!(core.fatal().is_none(), "{:?}", core.fatal());
    assert_eq!(core.first_log_index(), LogIndex(1));
    assert_eq!(core.log_id_at(LogIndex(3)), Some(LogId::new(1, 3)));
    assert!(core.entry(LogIndex(3)).is_none());
    assert_eq!(core.last_log_id(), LogId::new(1, 10));
    let status = core.status();
    let size = |r: std::ops::Range<usize>| all[r].iter().map(Entry::size_hint).sum::<usize>();
    assert_eq!(status.log_bytes, size(0..10));
    // Entries 7 and 8 were applied (the snapshot covers them) and leave memory at once.
    assert_eq!(status.log_cache_bytes, size(8..10));
}

#[test]
fn a_restart_refuses_entries_left_out_of_memory_that_the_snapshot_does_not_cover() {
    let all: Vec<Entry> = (1..=10).map(|i| entry(1, i)).collect();
    let core = restored(&all[..6], &all[6..], 4);
    assert!(
        matches!(core.fatal(), Some(FatalError::Restore(_))),
        "{:?}",
        core.fatal()
    );
}

#[test]
fn the_cache_keeps_applied_entries_up_to_exactly_its_budget() {
    // Entries of one size: a budget of exactly two of them keeps exactly two.
    let payload = Bytes::from(vec![1u8; 1000]);
    let size = Entry {
        log_id: LogId::new(1, 1),
        payload: EntryPayload::Command(payload.clone()),
    }
    .size_hint();
    let cfg = Config {
        log_cache_bytes: 2 * size,
        ..cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    for _ in 0..10 {
        let p = payload.clone();
        sim.with_core(NodeId(1), |c| c.propose([p]).expect("leader"));
        sim.deliver_all();
    }
    sim.run_ticks(1);
    for id in 1..=3 {
        let status = sim.core(id).status();
        assert_eq!(status.applied_index, LogIndex(11), "{status:?}");
        assert_eq!(status.log_cache_bytes, 2 * size, "{id}: {status:?}");
        assert!(sim.core(id).entry(LogIndex(10)).is_some());
        assert!(sim.core(id).entry(LogIndex(9)).is_none());
    }
}

#[test]
fn the_byte_counts_follow_a_truncation() {
    // Node 2 holds three entries of a deposed term-2 leader; the term-4 leader's log
    // replaces them from index 3 on (Figure 2, AppendEntries rule 3).
    let disks = vec![
        sim::disk(3, &[1, 1]),
        sim::disk(2, &[1, 1, 2, 2, 2]),
        sim::disk(3, &[1, 1]),
    ];
    let cfg = Config {
        log_cache_bytes: 1 << 20,
        ..cfg()
    };
    let mut sim = Sim::from_disks(1, cfg, disks);
    sim.elect(1);
    sim.run_ticks(1);
    let core = sim.core(2);
    assert_eq!(core.last_log_id(), sim.core(1).last_log_id());
    let held: usize = (1..=core.last_log_id().index.0)
        .map(|i| core.entry(LogIndex(i)).expect("in memory").size_hint())
        .sum();
    let status = core.status();
    assert_eq!(status.log_bytes, held, "{status:?}");
    assert_eq!(status.log_cache_bytes, held, "{status:?}");
}

#[test]
fn a_read_answer_never_overfills_a_replicating_followers_window() {
    // Node 3 replicates with a window of two one-entry AppendEntries. Its answers are held
    // while nodes 1 and 2 commit and apply more (leaving memory); when they arrive, the
    // window frees and the leader reads what comes next from its disk.
    let cfg = Config {
        max_inflight: 2,
        max_entries_per_append: 1,
        ..cfg()
    };
    let mut sim = Sim::new(1, 3, cfg, Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    sim.hold_reads = true;
    let mut held = Vec::new();
    for _ in 0..10 {
        sim.propose(NodeId(1));
        held.extend(sim.deliver_holding(|m| m.to == NodeId(3) || m.from == NodeId(3)));
    }
    assert_eq!(held.len(), 2, "the window holds two: {held:?}");
    for m in held {
        sim.deliver(m);
    }
    // Node 3's first acknowledgement frees a slot: the leader asks for what comes next
    // (one entry); the second finds that read outstanding and starts none.
    sim.deliver_filtered(|m| m.to == NodeId(1), |_| {});
    let reads = sim.take_reads(1);
    let [(to, range, _)] = reads.as_slice() else {
        panic!("one read: {reads:?}{}", sim.describe());
    };
    assert_eq!(*to, NodeId(3));
    assert_eq!(range.end.0 - range.start.0, 1, "{range:?}");
    // Answered with more than asked, it sends only what the window (two) allows.
    let from = range.start;
    let more = disk_entries(&sim, from..LogIndex(from.0 + 5));
    sim.take_in_flight();
    sim.with_core(NodeId(1), |c| c.entries_read(NodeId(3), from, more));
    assert_eq!(appends_to_3(&sim).len(), 2, "{:?}", appends_to_3(&sim));
}

#[test]
fn a_read_never_answered_is_asked_again_after_the_stall_limit_and_heartbeats_go_on() {
    let mut sim = node_3_behind(cfg(), 30);
    sim.hold_reads = true;
    let (range, _) = read_for_3(&mut sim);
    let limit = cfg().election_timeout_min / cfg().heartbeat_interval;
    let mut heartbeats = 0;
    for hb in 1..=limit {
        sim.take_in_flight();
        for _ in 0..cfg().heartbeat_interval {
            sim.with_core(NodeId(1), |c| c.tick());
        }
        heartbeats += sim
            .in_flight()
            .iter()
            .filter(|m| m.to == NodeId(3) && matches!(&m.body, MessageBody::AppendEntries(_)))
            .count();
        let reads = sim.take_reads(1);
        if hb < limit {
            assert!(reads.is_empty(), "heartbeat {hb}: {reads:?}");
        } else {
            assert_eq!(reads.first().map(|r| r.1.start), Some(range.start));
        }
    }
    assert_eq!(
        heartbeats as u64, limit,
        "one heartbeat each time while reading"
    );
}

#[test]
fn a_replicating_follower_waiting_on_a_read_stays_replicating_when_the_read_is_asked_again() {
    // Window of one: node 3's only AppendEntries is held back while nodes 1 and 2 commit,
    // apply and (cache 0) drop five more entries. Its acknowledgement then frees the window
    // with nothing in flight, and the next entries must be read from disk. A read that is
    // never answered is asked again after the stall limit; nothing was lost on the wire,
    // so the pipeline stays in Replicate.
    let cfg = Config {
        max_inflight: 1,
        max_entries_per_append: 1,
        ..cfg()
    };
    let mut sim = Sim::new(1, 3, cfg.clone(), Faults::none());
    sim.elect(1);
    sim.run_ticks(1);
    let mut held = Vec::new();
    let settle = |sim: &mut Sim, held: &mut Vec<raft_core::Message>| {
        for _ in 0..100 {
            let msgs = sim.take_in_flight();
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                if m.to == NodeId(3) || m.from == NodeId(3) {
                    held.push(m);
                } else {
                    sim.deliver(m);
                }
            }
        }
    };
    for _ in 0..6 {
        sim.propose(NodeId(1));
        settle(&mut sim, &mut held);
    }
    let last = sim.core(1).last_log_id().index;
    assert_eq!(sim.core(1).commit_index(), last);
    sim.hold_reads = true;
    // Node 3 stores the one entry sent to it and acknowledges it.
    let first = held.remove(0);
    sim.deliver(first);
    for m in sim.take_in_flight() {
        if m.to == NodeId(1) {
            sim.deliver(m);
        }
    }
    let state = sim.core(1).status().peers[&NodeId(3)].1;
    assert_eq!(state, raft_core::ReplicationState::Replicate);
    assert_eq!(
        sim.take_reads(1).len(),
        1,
        "the next entries are read from disk"
    );
    let limit = cfg.election_timeout_min / cfg.heartbeat_interval;
    for _ in 0..limit * cfg.heartbeat_interval {
        sim.with_core(NodeId(1), |c| c.tick());
        sim.take_in_flight();
    }
    assert_eq!(sim.take_reads(1).len(), 1, "the read is asked again");
    let state = sim.core(1).status().peers[&NodeId(3)].1;
    assert_eq!(state, raft_core::ReplicationState::Replicate);
}
