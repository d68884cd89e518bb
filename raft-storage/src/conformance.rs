//! The conformance suite: the `LogStore` and `SnapshotStore` contracts as executable
//! cases. Every implementation in this crate passes it; run it against your own backend
//! with one call:
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use raft_core::StorageError;
//! use raft_storage::conformance::{self, Stores, StoreHarness};
//! use raft_storage::{MemLogStore, MemSnapshotStore};
//!
//! /// Makes fresh stores for each case. A durable backend also implements `reopen`.
//! struct MyHarness;
//!
//! #[async_trait]
//! impl StoreHarness for MyHarness {
//!     async fn create(&mut self) -> Result<Stores, StorageError> {
//!         Ok(Stores {
//!             log: Arc::new(MemLogStore::new()),
//!             snapshots: Arc::new(MemSnapshotStore::new(2)),
//!         })
//!     }
//!
//!     /// These stores forget everything on a restart. A durable backend says `true` and
//!     /// implements `reopen`; the suite fails its durability cases if it does not.
//!     fn durable(&self) -> bool {
//!         false
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let report = conformance::run("my-backend", &mut MyHarness).await;
//! report.assert_passed(); // panics listing every failed case
//! # });
//! ```

pub mod crash;
mod steps;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, LogId, LogIndex, LogStore, LogWrite, Membership, NodeId,
    SnapshotMeta, SnapshotStore, StorageError, Term,
};

/// A pair of stores under test.
pub struct Stores {
    /// The log store.
    pub log: Arc<dyn LogStore>,
    /// The snapshot store.
    pub snapshots: Arc<dyn SnapshotStore>,
}

/// What the suite needs from a backend author: fresh stores, and for durable backends a
/// way to reopen them as after a restart.
#[async_trait]
pub trait StoreHarness: Send {
    /// New, empty stores. Each case calls this once.
    async fn create(&mut self) -> Result<Stores, StorageError>;

    /// Whether the stores keep what they acknowledged across a restart. Declared, not
    /// guessed: for a durable store the cases that reopen it are run, and a harness that
    /// says `true` but leaves out [`reopen`](Self::reopen) fails them (its durability
    /// would otherwise go unchecked while the report still passed). Only a volatile
    /// store's durability cases are skipped.
    fn durable(&self) -> bool;

    /// Reopens the stores last created, as a restarted process would. The case drops every
    /// handle to the old stores first. `Ok(None)` (the default) means the harness cannot:
    /// the durability cases are skipped for a volatile store and fail for a durable one.
    async fn reopen(&mut self) -> Result<Option<Stores>, StorageError> {
        Ok(None)
    }

    /// Damages the latest snapshot's stored bytes (as a disk would). Returns false when
    /// the harness cannot; the corruption case is then skipped.
    async fn corrupt_latest_snapshot(&mut self) -> bool {
        false
    }

    /// How many snapshots the stores keep, if the harness configured a limit; the pruning
    /// case is skipped otherwise.
    fn snapshots_kept(&self) -> Option<usize> {
        None
    }

    /// How many finished snapshots exist now, if the harness can tell.
    async fn snapshot_count(&mut self) -> Option<usize> {
        None
    }
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The contract held.
    Passed,
    /// The case does not apply to this backend (for example durability of an in-memory one).
    Skipped(&'static str),
    /// The contract was broken; the message says how.
    Failed(String),
}

/// The results of a run.
#[derive(Debug)]
pub struct Report {
    /// The backend's name, as given to [`run`].
    pub backend: String,
    /// Every case's name and outcome, in order.
    pub outcomes: Vec<(&'static str, Outcome)>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }

    /// Cases that were skipped.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// The failed cases with their messages.
    pub fn failures(&self) -> Vec<(&'static str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(n, o)| match o {
                Outcome::Failed(m) => Some((*n, m.as_str())),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, o)| f(o)).count()
    }

    /// Panics with every failed case, unless all passed or were skipped.
    pub fn assert_passed(&self) {
        let failures = self.failures();
        if !failures.is_empty() {
            let list: Vec<String> = failures
                .iter()
                .map(|(n, m)| format!("  {n}: {m}"))
                .collect();
            panic!(
                "conformance: {} failed {} of {} cases:\n{}",
                self.backend,
                failures.len(),
                self.outcomes.len(),
                list.join("\n")
            );
        }
    }
}

type CaseFn =
    for<'a> fn(&'a mut dyn StoreHarness) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A case's body: `Err` with a message on a broken contract.
type CaseResult = Result<Outcome, String>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite, by name.
        pub fn case_names() -> Vec<&'static str> {
            vec![$(stringify!($name)),*]
        }

        fn all_cases() -> Vec<(&'static str, CaseFn)> {
            vec![$((stringify!($name), (|h| Box::pin(async move {
                match $name(h).await {
                    Ok(o) => o,
                    Err(m) => Outcome::Failed(m),
                }
            })) as CaseFn)),*]
        }
    };
}

/// Runs every case against stores from `harness`, prints one summary line, and returns
/// the report (call [`Report::assert_passed`] to fail a test on any broken contract).
pub async fn run(backend: &str, harness: &mut dyn StoreHarness) -> Report {
    let mut outcomes = Vec::new();
    for (name, case) in all_cases() {
        let steps = steps::Steps::default();
        let mut recording = steps::Recording {
            inner: &mut *harness,
            steps: steps.clone(),
        };
        let outcome = match case(&mut recording).await {
            // The operations that led there, to replay against the store by hand.
            Outcome::Failed(why) => {
                Outcome::Failed(format!("{why}\n    after: {}", steps.describe()))
            }
            other => other,
        };
        outcomes.push((name, outcome));
    }
    let report = Report {
        backend: backend.to_string(),
        outcomes,
    };
    println!(
        "conformance: {}: {} cases, {} passed, {} skipped, {} failed",
        report.backend,
        report.outcomes.len(),
        report.passed(),
        report.skipped(),
        report.failures().len()
    );
    report
}

cases!(
    empty_store_has_default_hard_state_and_empty_log,
    append_and_read_back,
    appends_in_several_batches_read_back_in_order,
    append_of_nothing_changes_nothing,
    append_with_a_gap_is_rejected,
    append_overlapping_existing_entries_is_rejected,
    read_stops_at_the_byte_budget,
    read_returns_one_entry_even_over_budget,
    read_past_the_end_stops_early,
    read_of_an_empty_range_is_empty,
    entries_respects_range_end,
    term_lookup_finds_each_entry,
    term_past_the_end_is_none,
    term_of_index_zero_is_term_zero,
    truncate_in_the_middle,
    truncate_at_the_first_index_empties_the_log,
    truncate_past_the_end_changes_nothing,
    append_after_truncate_overwrites_the_suffix,
    truncate_below_the_first_index_is_rejected,
    purge_moves_first_index_and_keeps_last_purged_term,
    purge_past_the_end_empties_the_log_and_moves_its_start,
    append_after_purge_continues_the_log,
    read_of_a_purged_index_is_rejected,
    purge_at_or_below_last_purged_is_a_noop,
    hard_state_saves_and_loads,
    hard_state_overwrite_keeps_the_latest,
    payload_kinds_round_trip,
    large_entry_round_trips,
    reads_concurrent_with_appends_see_a_prefix,
    reopen_keeps_hard_state,
    reopen_keeps_entries,
    reopen_keeps_truncation_and_purge,
    truncate_then_reopen_without_purge,
    append_after_truncate_then_reopen,
    hard_state_and_entries_written_together_survive_reopen,
    write_batch_applies_ops_in_order_and_survives_reopen,
    write_batch_checks_each_op_against_the_ones_before_it,
    write_batch_of_nothing_changes_nothing,
    no_snapshot_at_first,
    snapshot_written_in_chunks_reads_back_whole,
    newer_snapshot_becomes_the_latest,
    abandoned_snapshot_writer_leaves_the_previous_one,
    snapshot_checksum_mismatch_is_reported,
    old_snapshots_are_pruned,
    reopen_keeps_the_latest_snapshot,
    reopen_after_purge_keeps_first_index_and_last_purged_term,
    snapshot_streamed_in_many_small_chunks_reads_back_byte_identical,
    abandoned_snapshot_writer_leaves_the_previous_one_across_reopen,
    higher_snapshot_stays_the_latest_when_a_lower_one_finishes_after_it,
    damaged_latest_snapshot_falls_back_to_the_previous_one,
    snapshot_then_purge_then_reopen_is_consistent,
    purge_then_reopen_then_snapshot_is_consistent,
);

// ----- helpers -------------------------------------------------------------------------

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(term, index),
        payload: EntryPayload::Command(Bytes::from(format!("command {term}/{index}"))),
    }
}

fn entries(term: u64, from: u64, to: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(term, i)).collect()
}

fn ids(es: &[Entry]) -> Vec<LogId> {
    es.iter().map(|e| e.log_id).collect()
}

fn ok<T>(what: &str, r: Result<T, StorageError>) -> Result<T, String> {
    r.map_err(|e| format!("{what} failed: {e}"))
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn expect_invalid<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, StorageError>,
) -> Result<(), String> {
    match r {
        Err(StorageError::Invalid(_)) => Ok(()),
        Err(other) => Err(format!("{what}: expected an Invalid error, got {other}")),
        Ok(v) => Err(format!("{what}: expected an Invalid error, got Ok({v:?})")),
    }
}

async fn fresh(h: &mut dyn StoreHarness) -> Result<Stores, String> {
    ok("creating the stores", h.create().await)
}

async fn read_all(log: &dyn LogStore) -> Result<Vec<Entry>, String> {
    let st = ok("log_state", log.log_state().await)?;
    if st.last.index < st.first_index() {
        return Ok(Vec::new());
    }
    ok(
        "entries",
        log.entries(st.first_index()..st.last.index.next(), usize::MAX)
            .await,
    )
}

/// Drops `stores` and reopens; `None` when the backend is volatile (the case skips). A
/// durable backend whose harness cannot reopen fails the case.
async fn reopen(h: &mut dyn StoreHarness, stores: Stores) -> Result<Option<Stores>, String> {
    drop(stores);
    let reopened = ok("reopening the stores", h.reopen().await)?;
    if reopened.is_none() && h.durable() {
        return Err("the harness declares a durable store but StoreHarness::reopen returned None: implement it, or this case cannot check that the store keeps what it acknowledged".into());
    }
    Ok(reopened)
}

fn meta(term: u64, index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId::new(term, index),
        membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

async fn write_snapshot(
    snaps: &dyn SnapshotStore,
    m: &SnapshotMeta,
    data: &[u8],
) -> Result<(), String> {
    let mut w = ok("begin", snaps.begin(m).await)?;
    for chunk in data.chunks(7) {
        ok("write", w.write(chunk).await)?;
    }
    ok("finish", w.finish().await)?;
    Ok(())
}

fn expect_same_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "{what}: {} bytes where {} were written, first difference at byte {at}",
        got.len(),
        want.len()
    ))
}

/// Checks that both `latest` and `read_latest` name `want` with `data`.
async fn expect_latest(
    what: &str,
    snaps: &dyn SnapshotStore,
    want: &SnapshotMeta,
    data: &[u8],
) -> Result<(), String> {
    expect_eq(
        &format!("latest {what}"),
        ok("latest", snaps.latest().await)?,
        Some(want.clone()),
    )?;
    let Some((got, bytes)) = ok("read_latest", snaps.read_latest().await)? else {
        return Err(format!("read_latest {what}: no snapshot, want {want:?}"));
    };
    expect_eq(&format!("read_latest {what}"), &got, want)?;
    expect_same_bytes(&format!("snapshot data {what}"), &bytes, data)
}

/// Checks the state a (restarted) node finds after compacting up to `base`: the snapshot
/// with its data, and the log starting right after it with `tail` intact.
async fn expect_compacted(
    what: &str,
    s: &Stores,
    base: &SnapshotMeta,
    data: &[u8],
    tail: &[Entry],
) -> Result<(), String> {
    expect_latest(what, &*s.snapshots, base, data).await?;
    let st = ok("log_state", s.log.log_state().await)?;
    let at = base.last_log_id;
    expect_eq(&format!("last purged {what}"), st.last_purged, at)?;
    expect_eq(
        &format!("first index {what}"),
        st.first_index(),
        at.index.next(),
    )?;
    expect_eq(
        &format!("term of the last purged index {what}"),
        ok("term", s.log.term(at.index).await)?,
        Some(at.term),
    )?;
    expect_eq(
        &format!("entries {what}"),
        ids(&read_all(&*s.log).await?),
        ids(tail),
    )
}

// ----- log cases -----------------------------------------------------------------------

async fn empty_store_has_default_hard_state_and_empty_log(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    expect_eq(
        "hard state",
        ok("hard_state", s.log.hard_state().await)?,
        HardState::default(),
    )?;
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last", st.last, LogId::default())?;
    expect_eq("first index", st.first_index(), LogIndex(1))?;
    expect_eq("entries", read_all(&*s.log).await?.len(), 0)?;
    Ok(Outcome::Passed)
}

async fn append_and_read_back(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let es = entries(1, 1, 5);
    ok("append", s.log.append(&es).await)?;
    expect_eq("entries", read_all(&*s.log).await?, es)?;
    expect_eq(
        "last",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::new(1, 5),
    )?;
    Ok(Outcome::Passed)
}

async fn appends_in_several_batches_read_back_in_order(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    ok("append", s.log.append(&entries(2, 4, 4)).await)?;
    ok("append", s.log.append(&entries(3, 5, 9)).await)?;
    let got = ids(&read_all(&*s.log).await?);
    let want: Vec<LogId> = [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (3, 6),
        (3, 7),
        (3, 8),
        (3, 9),
    ]
    .iter()
    .map(|&(t, i)| LogId::new(t, i))
    .collect();
    expect_eq("entries", got, want)?;
    Ok(Outcome::Passed)
}

async fn append_of_nothing_changes_nothing(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 2)).await)?;
    ok("empty append", s.log.append(&[]).await)?;
    expect_eq(
        "last",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::new(1, 2),
    )?;
    Ok(Outcome::Passed)
}

async fn append_with_a_gap_is_rejected(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 2)).await)?;
    expect_invalid("append at 4 after 2", s.log.append(&entries(1, 4, 5)).await)?;
    expect_invalid(
        "append with an internal gap",
        s.log.append(&[entry(1, 3), entry(1, 5)]).await,
    )?;
    expect_eq(
        "last unchanged",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::new(1, 2),
    )?;
    Ok(Outcome::Passed)
}

async fn append_overlapping_existing_entries_is_rejected(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    expect_invalid(
        "append at 2 over existing entries",
        s.log.append(&entries(2, 2, 4)).await,
    )?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 1, 3)),
    )?;
    Ok(Outcome::Passed)
}

async fn read_stops_at_the_byte_budget(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let big: Vec<Entry> = (1..=10)
        .map(|i| Entry {
            log_id: LogId::new(1, i),
            payload: EntryPayload::Command(Bytes::from(vec![i as u8; 1000])),
        })
        .collect();
    ok("append", s.log.append(&big).await)?;
    let got = ok(
        "entries",
        s.log.entries(LogIndex(1)..LogIndex(11), 3500).await,
    )?;
    if got.is_empty() || got.len() > 4 {
        return Err(format!(
            "a 3500-byte budget over 1000-byte entries returned {} entries",
            got.len()
        ));
    }
    expect_eq("prefix", ids(&got), ids(&big[..got.len()]))?;
    Ok(Outcome::Passed)
}

async fn read_returns_one_entry_even_over_budget(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    let got = ok("entries", s.log.entries(LogIndex(2)..LogIndex(4), 1).await)?;
    expect_eq("entries", ids(&got), vec![LogId::new(1, 2)])?;
    Ok(Outcome::Passed)
}

async fn read_past_the_end_stops_early(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    let got = ok(
        "entries",
        s.log.entries(LogIndex(2)..LogIndex(100), usize::MAX).await,
    )?;
    expect_eq("entries", ids(&got), ids(&entries(1, 2, 3)))?;
    let none = ok(
        "entries",
        s.log.entries(LogIndex(7)..LogIndex(9), usize::MAX).await,
    )?;
    expect_eq("entries past the end", none.len(), 0)?;
    Ok(Outcome::Passed)
}

/// `entries(a..b)` stops before `b`, whatever the budget: a reader that asked for two
/// entries of five gets two.
async fn entries_respects_range_end(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 5)).await)?;
    let got = ok(
        "entries",
        s.log.entries(LogIndex(1)..LogIndex(3), usize::MAX).await,
    )?;
    expect_eq("entries(1..3)", ids(&got), ids(&entries(1, 1, 2)))?;
    let got = ok(
        "entries",
        s.log.entries(LogIndex(3)..LogIndex(4), usize::MAX).await,
    )?;
    expect_eq("entries(3..4)", ids(&got), ids(&entries(1, 3, 3)))?;
    Ok(Outcome::Passed)
}

async fn read_of_an_empty_range_is_empty(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    let got = ok(
        "entries",
        s.log.entries(LogIndex(2)..LogIndex(2), usize::MAX).await,
    )?;
    expect_eq("entries", got.len(), 0)?;
    Ok(Outcome::Passed)
}

async fn term_lookup_finds_each_entry(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok(
        "append",
        s.log
            .append(&[entry(1, 1), entry(1, 2), entry(3, 3), entry(4, 4)])
            .await,
    )?;
    for (i, t) in [(0, 0), (1, 1), (2, 1), (3, 3), (4, 4)] {
        expect_eq(
            &format!("term at {i}"),
            ok("term", s.log.term(LogIndex(i)).await)?,
            Some(Term(t)),
        )?;
    }
    Ok(Outcome::Passed)
}

async fn term_past_the_end_is_none(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 2)).await)?;
    expect_eq(
        "term at 3",
        ok("term", s.log.term(LogIndex(3)).await)?,
        None,
    )?;
    Ok(Outcome::Passed)
}

/// Index 0 is the empty prefix every log shares, with term 0.
async fn term_of_index_zero_is_term_zero(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    expect_eq(
        "term(0) of an empty store",
        ok("term", s.log.term(LogIndex(0)).await)?,
        Some(Term(0)),
    )?;
    ok("append", s.log.append(&entries(1, 1, 2)).await)?;
    expect_eq(
        "term(0) after appends",
        ok("term", s.log.term(LogIndex(0)).await)?,
        Some(Term(0)),
    )?;
    Ok(Outcome::Passed)
}

async fn truncate_in_the_middle(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 6)).await)?;
    ok("truncate", s.log.truncate(LogIndex(4)).await)?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 1, 3)),
    )?;
    expect_eq(
        "last",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::new(1, 3),
    )?;
    expect_eq(
        "term at 4",
        ok("term", s.log.term(LogIndex(4)).await)?,
        None,
    )?;
    Ok(Outcome::Passed)
}

async fn truncate_at_the_first_index_empties_the_log(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 4)).await)?;
    ok("truncate", s.log.truncate(LogIndex(1)).await)?;
    expect_eq("entries", read_all(&*s.log).await?.len(), 0)?;
    expect_eq(
        "last",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::default(),
    )?;
    Ok(Outcome::Passed)
}

async fn truncate_past_the_end_changes_nothing(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 4)).await)?;
    ok("truncate", s.log.truncate(LogIndex(9)).await)?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 1, 4)),
    )?;
    Ok(Outcome::Passed)
}

async fn append_after_truncate_overwrites_the_suffix(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 5)).await)?;
    ok("truncate", s.log.truncate(LogIndex(3)).await)?;
    ok("append", s.log.append(&entries(2, 3, 4)).await)?;
    let got = ids(&read_all(&*s.log).await?);
    let want = vec![
        LogId::new(1, 1),
        LogId::new(1, 2),
        LogId::new(2, 3),
        LogId::new(2, 4),
    ];
    expect_eq("entries", got, want)?;
    Ok(Outcome::Passed)
}

async fn truncate_below_the_first_index_is_rejected(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 6)).await)?;
    ok("purge", s.log.purge(LogId::new(1, 3)).await)?;
    expect_invalid(
        "truncate at 2 after purging 3",
        s.log.truncate(LogIndex(2)).await,
    )?;
    expect_invalid(
        "truncate at 3 after purging 3",
        s.log.truncate(LogIndex(3)).await,
    )?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 4, 6)),
    )?;
    Ok(Outcome::Passed)
}

async fn purge_moves_first_index_and_keeps_last_purged_term(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    ok(
        "append",
        s.log
            .append(&[entry(1, 1), entry(2, 2), entry(2, 3), entry(3, 4)])
            .await,
    )?;
    ok("purge", s.log.purge(LogId::new(2, 2)).await)?;
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged", st.last_purged, LogId::new(2, 2))?;
    expect_eq("first index", st.first_index(), LogIndex(3))?;
    expect_eq("last", st.last, LogId::new(3, 4))?;
    expect_eq(
        "term of last purged",
        ok("term", s.log.term(LogIndex(2)).await)?,
        Some(Term(2)),
    )?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        vec![LogId::new(2, 3), LogId::new(3, 4)],
    )?;
    Ok(Outcome::Passed)
}

async fn purge_past_the_end_empties_the_log_and_moves_its_start(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    ok("purge", s.log.purge(LogId::new(4, 10)).await)?;
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged", st.last_purged, LogId::new(4, 10))?;
    expect_eq("last", st.last, LogId::new(4, 10))?;
    expect_eq("entries", read_all(&*s.log).await?.len(), 0)?;
    Ok(Outcome::Passed)
}

async fn append_after_purge_continues_the_log(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 3)).await)?;
    ok("purge", s.log.purge(LogId::new(1, 3)).await)?;
    ok("append", s.log.append(&entries(2, 4, 5)).await)?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(2, 4, 5)),
    )?;
    ok("purge past the end", s.log.purge(LogId::new(5, 20)).await)?;
    expect_invalid(
        "append at 6 after purging to 20",
        s.log.append(&entries(5, 6, 6)).await,
    )?;
    ok("append", s.log.append(&entries(5, 21, 22)).await)?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(5, 21, 22)),
    )?;
    Ok(Outcome::Passed)
}

async fn read_of_a_purged_index_is_rejected(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 5)).await)?;
    ok("purge", s.log.purge(LogId::new(1, 3)).await)?;
    expect_invalid(
        "entries from 2",
        s.log.entries(LogIndex(2)..LogIndex(5), usize::MAX).await,
    )?;
    expect_invalid("term at 1", s.log.term(LogIndex(1)).await)?;
    Ok(Outcome::Passed)
}

async fn purge_at_or_below_last_purged_is_a_noop(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 5)).await)?;
    ok("purge", s.log.purge(LogId::new(1, 3)).await)?;
    ok("purge again", s.log.purge(LogId::new(1, 3)).await)?;
    ok("purge lower", s.log.purge(LogId::new(1, 2)).await)?;
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged", st.last_purged, LogId::new(1, 3))?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 4, 5)),
    )?;
    Ok(Outcome::Passed)
}

async fn hard_state_saves_and_loads(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let hs = HardState {
        term: Term(7),
        voted_for: Some(NodeId(3)),
    };
    ok("save", s.log.save_hard_state(&hs).await)?;
    expect_eq("hard state", ok("load", s.log.hard_state().await)?, hs)?;
    Ok(Outcome::Passed)
}

async fn hard_state_overwrite_keeps_the_latest(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    for t in 1..=5 {
        let hs = HardState {
            term: Term(t),
            voted_for: (t % 2 == 0).then_some(NodeId(t)),
        };
        ok("save", s.log.save_hard_state(&hs).await)?;
    }
    let want = HardState {
        term: Term(5),
        voted_for: None,
    };
    expect_eq("hard state", ok("load", s.log.hard_state().await)?, want)?;
    Ok(Outcome::Passed)
}

async fn payload_kinds_round_trip(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let mut joint = Membership::new([NodeId(1), NodeId(2)]);
    joint.outgoing = Some([NodeId(1), NodeId(3)].into_iter().collect());
    joint.learners.insert(NodeId(9));
    let es = vec![
        Entry {
            log_id: LogId::new(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: LogId::new(1, 2),
            payload: EntryPayload::Membership(joint),
        },
        Entry {
            log_id: LogId::new(1, 3),
            payload: EntryPayload::Command(Bytes::new()),
        },
    ];
    ok("append", s.log.append(&es).await)?;
    expect_eq("entries", read_all(&*s.log).await?, es)?;
    Ok(Outcome::Passed)
}

async fn large_entry_round_trips(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let e = Entry {
        log_id: LogId::new(1, 1),
        payload: EntryPayload::Command(Bytes::from(data)),
    };
    ok("append", s.log.append(std::slice::from_ref(&e)).await)?;
    expect_eq("entry", read_all(&*s.log).await?, vec![e])?;
    Ok(Outcome::Passed)
}

async fn reads_concurrent_with_appends_see_a_prefix(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let log = s.log.clone();
    let writer = tokio::spawn(async move {
        for i in 1..=200u64 {
            log.append(&[entry(1, i)]).await?;
        }
        Ok::<(), StorageError>(())
    });
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let st = ok("log_state", s.log.log_state().await)?;
        let got = ok(
            "entries",
            s.log
                .entries(LogIndex(1)..st.last.index.next(), usize::MAX)
                .await,
        )?;
        // Each read sees a contiguous prefix of what was appended, at least up to what the
        // log state said before the read.
        if got.len() < st.last.index.0 as usize
            || ids(&got) != ids(&entries(1, 1, got.len() as u64))
        {
            return Err(format!(
                "a concurrent read saw {} entries, not a prefix of {}",
                got.len(),
                st.last.index.0
            ));
        }
        reads += 1;
        tokio::task::yield_now().await;
    }
    let joined = writer
        .await
        .map_err(|e| format!("the writer task failed: {e}"))?;
    ok("writer", joined)?;
    expect_eq("entries", read_all(&*s.log).await?.len(), 200)?;
    Ok(Outcome::Passed)
}

async fn reopen_keeps_hard_state(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let hs = HardState {
        term: Term(4),
        voted_for: Some(NodeId(2)),
    };
    ok("save", s.log.save_hard_state(&hs).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    expect_eq(
        "hard state after reopen",
        ok("load", s.log.hard_state().await)?,
        hs,
    )?;
    Ok(Outcome::Passed)
}

async fn reopen_keeps_entries(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let es = entries(2, 1, 50);
    ok("append", s.log.append(&es).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    expect_eq("entries after reopen", read_all(&*s.log).await?, es)?;
    expect_eq(
        "last",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::new(2, 50),
    )?;
    Ok(Outcome::Passed)
}

async fn reopen_keeps_truncation_and_purge(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 10)).await)?;
    ok("truncate", s.log.truncate(LogIndex(8)).await)?;
    ok("purge", s.log.purge(LogId::new(1, 3)).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged after reopen", st.last_purged, LogId::new(1, 3))?;
    expect_eq("last after reopen", st.last, LogId::new(1, 7))?;
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 4, 7)),
    )?;
    Ok(Outcome::Passed)
}

/// A truncation alone must reach the disk: a purge (which may rewrite the whole file)
/// must not be what makes it stick.
async fn truncate_then_reopen_without_purge(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 10)).await)?;
    ok("truncate", s.log.truncate(LogIndex(8)).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last after reopen", st.last, LogId::new(1, 7))?;
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 1, 7)),
    )?;
    expect_eq(
        "term at 8 after reopen",
        ok("term", s.log.term(LogIndex(8)).await)?,
        None,
    )?;
    Ok(Outcome::Passed)
}

/// A new leader's entries replace a truncated suffix, and the replacement is what a
/// restart finds (not the old entries, not a mix).
async fn append_after_truncate_then_reopen(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 6)).await)?;
    ok("truncate", s.log.truncate(LogIndex(4)).await)?;
    ok("append", s.log.append(&entries(2, 4, 5)).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    let mut want = entries(1, 1, 3);
    want.extend(entries(2, 4, 5));
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        ids(&want),
    )?;
    expect_eq(
        "last after reopen",
        ok("log_state", s.log.log_state().await)?.last,
        LogId::new(2, 5),
    )?;
    Ok(Outcome::Passed)
}

/// Hard state and entries written in turn all survive: neither write may be made
/// durable by the other one's sync.
async fn hard_state_and_entries_written_together_survive_reopen(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    let first = HardState {
        term: Term(2),
        voted_for: Some(NodeId(1)),
    };
    let last = HardState {
        term: Term(3),
        voted_for: None,
    };
    ok("save_hard_state", s.log.save_hard_state(&first).await)?;
    ok("append", s.log.append(&entries(2, 1, 3)).await)?;
    ok("save_hard_state", s.log.save_hard_state(&last).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    expect_eq(
        "hard state after reopen",
        ok("hard_state", s.log.hard_state().await)?,
        last,
    )?;
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        ids(&entries(2, 1, 3)),
    )?;
    Ok(Outcome::Passed)
}

/// A group commit: a purge, a term change, a truncation, the appends after it and another
/// term change in one `write_batch`, applied in that order and durable together.
async fn write_batch_applies_ops_in_order_and_survives_reopen(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 5)).await)?;
    let voted = HardState {
        term: Term(2),
        voted_for: Some(NodeId(2)),
    };
    let later = HardState {
        term: Term(3),
        voted_for: None,
    };
    let batch = vec![
        LogWrite::Purge(LogId::new(1, 1)),
        LogWrite::HardState(voted),
        LogWrite::Truncate(LogIndex(3)),
        LogWrite::Append(entries(2, 3, 4)),
        LogWrite::Append(entries(2, 5, 5)),
        LogWrite::HardState(later),
    ];
    ok("write_batch", s.log.write_batch(batch).await)?;
    let want = vec![entry(1, 2), entry(2, 3), entry(2, 4), entry(2, 5)];
    expect_eq(
        "entries after the batch",
        ids(&read_all(&*s.log).await?),
        ids(&want),
    )?;
    expect_eq(
        "hard state after the batch",
        ok("hard_state", s.log.hard_state().await)?,
        later,
    )?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        ids(&want),
    )?;
    expect_eq(
        "hard state after reopen",
        ok("hard_state", s.log.hard_state().await)?,
        later,
    )?;
    let state = ok("log_state", s.log.log_state().await)?;
    expect_eq(
        "last purged after reopen",
        state.last_purged,
        LogId::new(1, 1),
    )?;
    Ok(Outcome::Passed)
}

/// Each op of a batch is checked against the log the ops before it left: an append right
/// after a truncation in the same batch is contiguous, one with a gap is refused.
async fn write_batch_checks_each_op_against_the_ones_before_it(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    let batch = vec![
        LogWrite::Append(entries(1, 1, 3)),
        LogWrite::Append(entries(1, 4, 4)),
        LogWrite::Truncate(LogIndex(2)),
        LogWrite::Append(entries(2, 2, 2)),
    ];
    ok("a contiguous write_batch", s.log.write_batch(batch).await)?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        vec![LogId::new(1, 1), LogId::new(2, 2)],
    )?;
    let gap = vec![
        LogWrite::Truncate(LogIndex(2)),
        LogWrite::Append(entries(3, 4, 4)),
    ];
    match s.log.write_batch(gap).await {
        Err(StorageError::Invalid(_)) => Ok(Outcome::Passed),
        other => Err(format!(
            "a batch whose append leaves a gap after its truncation must fail with Invalid, got {other:?}"
        )),
    }
}

/// An empty batch is a no-op.
async fn write_batch_of_nothing_changes_nothing(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 2)).await)?;
    ok("empty write_batch", s.log.write_batch(Vec::new()).await)?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 1, 2)),
    )?;
    Ok(Outcome::Passed)
}

// ----- snapshot cases ------------------------------------------------------------------

async fn no_snapshot_at_first(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    expect_eq("latest", ok("latest", s.snapshots.latest().await)?, None)?;
    expect_eq(
        "read",
        ok("read_latest", s.snapshots.read_latest().await)?,
        None,
    )?;
    Ok(Outcome::Passed)
}

async fn snapshot_written_in_chunks_reads_back_whole(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 256) as u8).collect();
    let m = meta(3, 42);
    write_snapshot(&*s.snapshots, &m, &data).await?;
    expect_eq(
        "latest",
        ok("latest", s.snapshots.latest().await)?,
        Some(m.clone()),
    )?;
    expect_eq(
        "read",
        ok("read_latest", s.snapshots.read_latest().await)?,
        Some((m, Bytes::from(data))),
    )?;
    Ok(Outcome::Passed)
}

async fn newer_snapshot_becomes_the_latest(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    write_snapshot(&*s.snapshots, &meta(1, 10), b"first").await?;
    write_snapshot(&*s.snapshots, &meta(2, 20), b"second").await?;
    expect_eq(
        "read",
        ok("read_latest", s.snapshots.read_latest().await)?,
        Some((meta(2, 20), Bytes::from_static(b"second"))),
    )?;
    Ok(Outcome::Passed)
}

async fn abandoned_snapshot_writer_leaves_the_previous_one(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    write_snapshot(&*s.snapshots, &meta(1, 10), b"kept").await?;
    let mut w = ok("begin", s.snapshots.begin(&meta(2, 20)).await)?;
    ok("write", w.write(b"half of a snapsh").await)?;
    drop(w);
    expect_eq(
        "read",
        ok("read_latest", s.snapshots.read_latest().await)?,
        Some((meta(1, 10), Bytes::from_static(b"kept"))),
    )?;
    if let Some(s) = reopen(h, s).await? {
        expect_eq(
            "read after reopen",
            ok("read_latest", s.snapshots.read_latest().await)?,
            Some((meta(1, 10), Bytes::from_static(b"kept"))),
        )?;
    }
    Ok(Outcome::Passed)
}

async fn snapshot_checksum_mismatch_is_reported(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    write_snapshot(&*s.snapshots, &meta(1, 10), b"some snapshot bytes").await?;
    if !h.corrupt_latest_snapshot().await {
        return Ok(Outcome::Skipped("the harness cannot corrupt snapshots"));
    }
    match s.snapshots.read_latest().await {
        Err(StorageError::Corrupt { .. }) => Ok(Outcome::Passed),
        Err(other) => Err(format!("expected a Corrupt error, got {other}")),
        Ok(v) => Err(format!("a corrupted snapshot was read back as {v:?}")),
    }
}

async fn old_snapshots_are_pruned(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    let Some(keep) = h.snapshots_kept() else {
        return Ok(Outcome::Skipped("the harness sets no snapshot limit"));
    };
    for i in 1..=(keep as u64 + 3) {
        write_snapshot(
            &*s.snapshots,
            &meta(1, i * 10),
            format!("snapshot {i}").as_bytes(),
        )
        .await?;
    }
    match h.snapshot_count().await {
        Some(n) => expect_eq("snapshots kept", n, keep)?,
        None => return Ok(Outcome::Skipped("the harness cannot count snapshots")),
    }
    expect_eq(
        "latest",
        ok("latest", s.snapshots.latest().await)?,
        Some(meta(1, (keep as u64 + 3) * 10)),
    )?;
    Ok(Outcome::Passed)
}

async fn reopen_keeps_the_latest_snapshot(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    write_snapshot(&*s.snapshots, &meta(5, 99), b"durable snapshot").await?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    expect_eq(
        "read after reopen",
        ok("read_latest", s.snapshots.read_latest().await)?,
        Some((meta(5, 99), Bytes::from_static(b"durable snapshot"))),
    )?;
    Ok(Outcome::Passed)
}

async fn reopen_after_purge_keeps_first_index_and_last_purged_term(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    ok(
        "append",
        s.log
            .append(&[
                entry(1, 1),
                entry(2, 2),
                entry(2, 3),
                entry(3, 4),
                entry(3, 5),
            ])
            .await,
    )?;
    ok("purge", s.log.purge(LogId::new(2, 3)).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged after reopen", st.last_purged, LogId::new(2, 3))?;
    expect_eq("first index after reopen", st.first_index(), LogIndex(4))?;
    expect_eq(
        "term of the last purged index after reopen",
        ok("term", s.log.term(LogIndex(3)).await)?,
        Some(Term(2)),
    )?;
    expect_invalid("term at 2 after reopen", s.log.term(LogIndex(2)).await)?;
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        vec![LogId::new(3, 4), LogId::new(3, 5)],
    )?;
    // --- a purge past the end: the log is empty but still starts after the purge point
    ok("purge past the end", s.log.purge(LogId::new(4, 9)).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Err("the stores reopened once but not twice".into());
    };
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged after reopen", st.last_purged, LogId::new(4, 9))?;
    expect_eq("last after reopen", st.last, LogId::new(4, 9))?;
    expect_eq(
        "term of the last purged index after reopen",
        ok("term", s.log.term(LogIndex(9)).await)?,
        Some(Term(4)),
    )?;
    ok(
        "append after reopen",
        s.log.append(&entries(4, 10, 11)).await,
    )?;
    expect_eq(
        "entries",
        ids(&read_all(&*s.log).await?),
        ids(&entries(4, 10, 11)),
    )?;
    Ok(Outcome::Passed)
}

async fn snapshot_streamed_in_many_small_chunks_reads_back_byte_identical(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    // Every byte value, in an order that is not a simple ramp.
    let data: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let m = meta(4, 77);
    let mut w = ok("begin", s.snapshots.begin(&m).await)?;
    // Chunks of 0 to 12 bytes, empty ones included, cutting across any internal buffer.
    let (mut rest, mut n) = (&data[..], 0usize);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at((n % 13).min(rest.len()));
        ok("write", w.write(chunk).await)?;
        rest = tail;
        n += 1;
    }
    ok("finish", w.finish().await)?;
    expect_latest("after finishing", &*s.snapshots, &m, &data).await?;
    if let Some(s) = reopen(h, s).await? {
        expect_latest("after reopen", &*s.snapshots, &m, &data).await?;
    }
    Ok(Outcome::Passed)
}

async fn abandoned_snapshot_writer_leaves_the_previous_one_across_reopen(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    write_snapshot(&*s.snapshots, &meta(1, 10), b"kept").await?;
    // --- phase 1: a writer for a newer snapshot is dropped without finishing
    let mut w = ok("begin", s.snapshots.begin(&meta(2, 20)).await)?;
    ok("write", w.write(b"half of a snapsh").await)?;
    drop(w);
    expect_latest(
        "after the abandoned writer",
        &*s.snapshots,
        &meta(1, 10),
        b"kept",
    )
    .await?;
    // --- phase 2: another is still open when the process stops
    let mut w = ok("begin", s.snapshots.begin(&meta(3, 30)).await)?;
    ok("write", w.write(b"also half of one").await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Passed);
    };
    expect_latest("after reopen", &*s.snapshots, &meta(1, 10), b"kept").await?;
    // --- phase 3: the reopened store takes new snapshots; the old writer going away late
    // does not disturb them
    let mut next = ok("begin after reopen", s.snapshots.begin(&meta(4, 40)).await)?;
    ok("write", next.write(b"written after ").await)?;
    drop(w);
    ok("write", next.write(b"reopen").await)?;
    ok("finish", next.finish().await)?;
    let want = b"written after reopen";
    expect_latest("after a new snapshot", &*s.snapshots, &meta(4, 40), want).await?;
    let Some(s) = reopen(h, s).await? else {
        return Err("the stores reopened once but not twice".into());
    };
    expect_latest("after a second reopen", &*s.snapshots, &meta(4, 40), want).await?;
    Ok(Outcome::Passed)
}

async fn higher_snapshot_stays_the_latest_when_a_lower_one_finishes_after_it(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    write_snapshot(&*s.snapshots, &meta(1, 5), b"older than both").await?;
    // --- phase 1: one received from the leader is begun first, a local build second
    let mut received = ok("begin", s.snapshots.begin(&meta(3, 30)).await)?;
    let mut built = ok("begin", s.snapshots.begin(&meta(2, 20)).await)?;
    ok("write", received.write(b"from the ").await)?;
    ok("write", built.write(b"built ").await)?;
    ok("write", received.write(b"leader").await)?;
    ok("write", built.write(b"locally").await)?;
    // --- phase 2: the higher finishes first, the lower second
    ok("finish the higher", received.finish().await)?;
    ok("finish the lower", built.finish().await)?;
    let want = b"from the leader";
    expect_latest("after both finished", &*s.snapshots, &meta(3, 30), want).await?;
    if let Some(s) = reopen(h, s).await? {
        expect_latest("after reopen", &*s.snapshots, &meta(3, 30), want).await?;
    }
    Ok(Outcome::Passed)
}

async fn damaged_latest_snapshot_falls_back_to_the_previous_one(
    h: &mut dyn StoreHarness,
) -> CaseResult {
    let s = fresh(h).await?;
    if h.snapshots_kept().is_some_and(|k| k < 2) {
        return Ok(Outcome::Skipped(
            "the stores keep one snapshot: nothing to fall back to",
        ));
    }
    write_snapshot(&*s.snapshots, &meta(1, 10), b"the previous snapshot").await?;
    write_snapshot(&*s.snapshots, &meta(2, 20), b"the latest, to be damaged").await?;
    if !h.corrupt_latest_snapshot().await {
        return Ok(Outcome::Skipped("the harness cannot corrupt snapshots"));
    }
    // read_latest first: it verifies, so a store that remembers metadata learns here.
    let previous = b"the previous snapshot";
    let Some(got) = ok("read_latest", s.snapshots.read_latest().await)? else {
        return Err("no snapshot after the latest was damaged".into());
    };
    expect_eq("read_latest after damage", got.0, meta(1, 10))?;
    expect_same_bytes("snapshot data after damage", &got.1, previous)?;
    expect_latest("after damage", &*s.snapshots, &meta(1, 10), previous).await?;
    // --- a restart with the damaged file still there starts from the previous one
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Passed);
    };
    expect_latest("after reopen", &*s.snapshots, &meta(1, 10), previous).await?;
    // --- a new snapshot is the latest again
    write_snapshot(&*s.snapshots, &meta(3, 30), b"newer").await?;
    expect_latest("after a newer one", &*s.snapshots, &meta(3, 30), b"newer").await?;
    Ok(Outcome::Passed)
}

async fn snapshot_then_purge_then_reopen_is_consistent(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 10)).await)?;
    let base = meta(1, 6);
    let data = b"state machine at 6";
    // --- Figure 13 order: the snapshot is durable before the log forgets
    write_snapshot(&*s.snapshots, &base, data).await?;
    ok("purge", s.log.purge(base.last_log_id).await)?;
    let tail = entries(1, 7, 10);
    expect_compacted("after purging", &s, &base, data, &tail).await?;
    if let Some(s) = reopen(h, s).await? {
        expect_compacted("after reopen", &s, &base, data, &tail).await?;
    }
    Ok(Outcome::Passed)
}

async fn purge_then_reopen_then_snapshot_is_consistent(h: &mut dyn StoreHarness) -> CaseResult {
    let s = fresh(h).await?;
    ok("append", s.log.append(&entries(1, 1, 10)).await)?;
    write_snapshot(&*s.snapshots, &meta(1, 3), b"state machine at 3").await?;
    // --- the other order: the log forgets first, then the process stops
    ok("purge", s.log.purge(LogId::new(1, 6)).await)?;
    let Some(s) = reopen(h, s).await? else {
        return Ok(Outcome::Skipped("not durable"));
    };
    let st = ok("log_state", s.log.log_state().await)?;
    expect_eq("last purged after reopen", st.last_purged, LogId::new(1, 6))?;
    expect_eq(
        "entries after reopen",
        ids(&read_all(&*s.log).await?),
        ids(&entries(1, 7, 10)),
    )?;
    expect_latest(
        "before the new snapshot",
        &*s.snapshots,
        &meta(1, 3),
        b"state machine at 3",
    )
    .await?;
    // --- the snapshot covering the purged entries, then another reopen
    let base = meta(1, 6);
    let data = b"state machine at 6";
    write_snapshot(&*s.snapshots, &base, data).await?;
    let tail = entries(1, 7, 10);
    expect_compacted("after the snapshot", &s, &base, data, &tail).await?;
    let Some(s) = reopen(h, s).await? else {
        return Err("the stores reopened once but not twice".into());
    };
    expect_compacted("after a second reopen", &s, &base, data, &tail).await?;
    Ok(Outcome::Passed)
}
