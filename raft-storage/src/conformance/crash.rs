//! A crash harness for any `LogStore`: the store runs in a child process (the caller's own
//! test binary, run again) that appends entries, saves hard states and writes both in one
//! `write_batch`, printing each one its store acknowledged; the parent kills it with
//! SIGKILL at seeded random moments, reopens the store and checks that everything
//! acknowledged is there, intact, the log contiguous, and the hard state at least the last
//! one acknowledged. With [`Plan::atomic_batches`], half the kills are aimed at a
//! `write_batch` as it begins, and the check adds that a batch cut by a kill left all of
//! itself or nothing.
//!
//! Two tests in the author's crate, one for each side:
//!
//! ```no_run
//! use std::path::PathBuf;
//! use std::sync::Arc;
//! use raft_core::LogStore;
//! use raft_storage::conformance::crash::{self, Opener};
//!
//! // Opens the store under test in `dir` (the same directory after every kill).
//! const OPEN: Opener = |dir: PathBuf| {
//!     Box::pin(async move {
//!         let log = raft_storage::RedbLogStore::open(dir.join("log.redb")).await?;
//!         Ok(Arc::new(log) as Arc<dyn LogStore>)
//!     })
//! };
//!
//! #[tokio::test]
//! async fn crash_child() {
//!     crash::child(OPEN).await; // returns at once unless run as the child
//! }
//!
//! #[test]
//! fn acknowledged_writes_survive_sigkill() {
//!     let report = crash::run("crash_child", OPEN, crash::Plan::from_env()).unwrap();
//!     println!("{report}");
//! }
//! ```
//!
//! What the kills cannot check: a SIGKILL leaves the operating system's page cache intact,
//! so a store that never calls `fsync`/`fdatasync` passes them. Losing power (or a kernel
//! crash) is what drops unsynced writes. [`audit_syncs`] catches the usual form of that
//! bug: it runs the child under `strace` and fails when fewer syncs reached the kernel than
//! the store acknowledged durable calls (one sync per call at least). It cannot tell a sync
//! of the right file from one of another, and a store that writes through `O_DSYNC` files
//! instead of syncing shows as failing; for those, run the store under a filesystem that
//! simulates power loss (LazyFS, or `dm-flakey` with `drop_writes`).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, LogId, LogIndex, LogStore, LogWrite, NodeId, StorageError, Term,
};

/// Opens the store under test in a directory; called in the child before each run and in
/// the parent after each kill.
pub type Opener =
    fn(PathBuf) -> Pin<Box<dyn Future<Output = Result<Arc<dyn LogStore>, StorageError>> + Send>>;

const CHILD_ENV: &str = "RAFT_CRASH_CHILD_DIR";
/// Set by [`audit_syncs`]: the child returns after this many durable calls.
const LIMIT_ENV: &str = "RAFT_CRASH_CHILD_CALLS";

/// A batch's hard state votes for this node: how the check tells a hard state written by a
/// `write_batch` (whose entries must then be there too) from one saved alone.
const BATCH_VOTE: NodeId = NodeId(1);

/// How many kills, from which seed.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// SIGKILLs to deliver.
    pub rounds: u64,
    /// Seed of the kill moments (printed in the report to replay a failure).
    pub seed: u64,
    /// Also check that `write_batch` is all or nothing across a crash, and aim every
    /// other kill at one. Stores that override `write_batch` with one transaction
    /// promise this; the trait's default (one durable call per op) does not.
    pub atomic_batches: bool,
}

impl Plan {
    /// `RAFT_CRASH_ROUNDS` (default 12) and `RAFT_CRASH_SEED` (default 7).
    pub fn from_env() -> Plan {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Plan {
            rounds: var("RAFT_CRASH_ROUNDS", 12),
            seed: var("RAFT_CRASH_SEED", 7),
            atomic_batches: false,
        }
    }

    /// The same plan, also checking that batches are all or nothing.
    pub fn atomic_batches(self) -> Plan {
        Plan {
            atomic_batches: true,
            ..self
        }
    }
}

/// What a crash run did.
#[derive(Debug)]
pub struct Report {
    /// The plan it ran.
    pub plan: Plan,
    /// Entries the child's store acknowledged, in all.
    pub acknowledged: u64,
    /// The highest term the store acknowledged in a hard state (saved alone or in a batch).
    pub hard_state_term: u64,
    /// Kills aimed at a `write_batch` (with [`Plan::atomic_batches`]).
    pub kills_aimed_at_batches: u64,
    /// Of those, the kills that landed before the batch was durable (the reopened store
    /// holds an older hard state): the ones that tested all or nothing.
    pub kills_before_batch_durable: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crash test: {} SIGKILLs (seed {}), {} acknowledged entries and hard state up to term {}, none lost",
            self.plan.rounds, self.plan.seed, self.acknowledged, self.hard_state_term
        )?;
        if self.plan.atomic_batches {
            write!(
                f,
                "; {} kills aimed at a write_batch ({} before it was durable), none left part of one",
                self.kills_aimed_at_batches, self.kills_before_batch_durable
            )?;
        }
        Ok(())
    }
}

/// The payload of entry `index`, written by the `write_batch` of term `batch` (0 when
/// appended alone): varied sizes, checkable after reopening.
fn payload(index: u64, batch: u64) -> Bytes {
    Bytes::from(format!("entry {index} b{batch} ").repeat(1 + (index % 7) as usize))
}

/// The batch term a stored payload names, if it is one [`payload`] wrote for `index`.
fn batch_of(index: u64, stored: &[u8]) -> Option<u64> {
    let rest = std::str::from_utf8(stored)
        .ok()?
        .strip_prefix(&format!("entry {index} b"))?;
    let batch = rest.split(' ').next()?.parse().ok()?;
    (Bytes::copy_from_slice(stored) == payload(index, batch)).then_some(batch)
}

/// How many entries the child puts in the batch (or append) that starts at `first`.
fn batch_len(first: u64) -> u64 {
    1 + first % 5
}

/// Child side: when this process is the crash harness's child, opens the store and
/// appends (and saves hard states) forever, printing each acknowledgement; otherwise
/// returns at once. Call it from the test named in [`run`].
pub async fn child(open: Opener) {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let log = open(PathBuf::from(dir))
        .await
        .expect("the child opens the store");
    let mut next = log.log_state().await.expect("log_state").last.index.0 + 1;
    let mut term = log.hard_state().await.expect("hard_state").term.0;
    let limit: Option<u64> = std::env::var(LIMIT_ENV).ok().and_then(|v| v.parse().ok());
    let mut calls = 0u64;
    while limit.is_none_or(|l| calls < l) {
        let first = next;
        next += batch_len(first);
        let in_batch = next % 4 == 1;
        let tag = if in_batch { term + 1 } else { 0 };
        let batch: Vec<Entry> = (first..next)
            .map(|i| Entry {
                log_id: LogId::new(1, i),
                payload: EntryPayload::Command(payload(i, tag)),
            })
            .collect();
        if in_batch {
            // A group commit as the node writes one: a term change and entries together.
            term += 1;
            let hs = HardState {
                term: Term(term),
                voted_for: Some(BATCH_VOTE),
            };
            let ops = vec![LogWrite::HardState(hs), LogWrite::Append(batch)];
            // Where the parent may aim a kill.
            println!("BEGIN {term}");
            log.write_batch(ops).await.expect("write_batch");
            // One durable call: one line (the sync audit counts lines against syncs).
            println!("BATCH {} {term}", next - 1);
            calls += 1;
            continue;
        }
        log.append(&batch).await.expect("append");
        println!("ACK {}", next - 1);
        calls += 1;
        if next % 3 == 0 {
            calls += 1;
            term += 1;
            let hs = HardState {
                term: Term(term),
                voted_for: None,
            };
            log.save_hard_state(&hs).await.expect("save_hard_state");
            println!("TERM {term}");
        }
    }
}

/// Parent side: runs `child_test` (a test of the calling binary that calls [`child`]) as
/// a child process `plan.rounds` times, SIGKILLs it at random moments, and checks the
/// store after each kill. `Err` says what was lost, with the seed to replay it.
pub fn run(child_test: &str, open: Opener, plan: Plan) -> Result<Report, String> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Err("crash::run called inside the child".into());
    }
    // Named after the child test too: two tests of one binary may run the same seed.
    let dir = std::env::temp_dir().join(format!(
        "raft-crash-{}-{}-{}",
        std::process::id(),
        child_test,
        plan.seed
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let outcome = run_rounds(child_test, open, plan, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn run_rounds(
    child_test: &str,
    open: Opener,
    plan: Plan,
    dir: &std::path::Path,
) -> Result<Report, String> {
    let mut rng = plan.seed.max(1);
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let (mut acked, mut term) = (0u64, 0u64);
    let (mut aimed, mut before_durable) = (0u64, 0u64);
    let replay = format!("(replay: RAFT_CRASH_SEED={})", plan.seed);
    for round in 0..plan.rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning the child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let kill_after = 1 + next_rand() % 40;
        // Every other round, with atomic batches checked, the kill goes at the first batch
        // after that many acknowledgements: at once when the child says it begins, or (half
        // of those rounds) up to 400 µs later (a sleep is never shorter than the timer's
        // slack, so the immediate kills are what reach a batch early in its write).
        let into_batch = plan.atomic_batches && round % 2 == 1;
        // Drawn only then, so seeds replay as before in plans without atomic batches.
        let delay = match into_batch.then(|| next_rand() % 800) {
            Some(us) if us >= 400 => Some(std::time::Duration::from_micros(us - 400)),
            _ => None,
        };
        let mut seen = 0;
        // Set when the kill was aimed at the batch of this term.
        let mut aimed_at = None;
        // Whether the child ended before the kill (it must not: it runs until killed).
        let mut ended_alone = true;
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| e.to_string())?;
            if let Some(t) = line.strip_prefix("BEGIN ") {
                if into_batch && seen >= kill_after {
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    aimed_at = Some(t.trim().parse::<u64>().map_err(|_| "bad BEGIN line")?);
                    ended_alone = false;
                    break;
                }
            } else if let Some(n) = line.strip_prefix("ACK ") {
                acked = acked.max(n.trim().parse().map_err(|_| "bad ACK line")?);
                seen += 1;
                if seen >= kill_after && !into_batch {
                    ended_alone = false;
                    break;
                }
            } else if let Some(t) = line.strip_prefix("TERM ") {
                term = term.max(t.trim().parse().map_err(|_| "bad TERM line")?);
            } else if let Some(b) = line.strip_prefix("BATCH ") {
                let bad = || "bad BATCH line";
                let (n, t) = b.trim().split_once(' ').ok_or_else(bad)?;
                acked = acked.max(n.parse().map_err(|_| bad())?);
                term = term.max(t.parse().map_err(|_| bad())?);
                seen += 1;
                if seen >= kill_after && !into_batch {
                    ended_alone = false;
                    break;
                }
            }
        }
        // An ended child is reaped but not yet waited for, so the kill still succeeds.
        child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
        let status = child.wait();
        let stored_term = rt
            .block_on(check(open, dir, acked, term, plan.atomic_batches))
            .map_err(|why| format!("round {round}: {why} {replay}"))?;
        if ended_alone {
            return Err(format!(
                "round {round}: the child ended by itself ({status:?}) instead of running until killed {replay}"
            ));
        }
        if let Some(batch_term) = aimed_at {
            aimed += 1;
            if stored_term < batch_term {
                before_durable += 1;
            }
        }
    }
    if acked == 0 {
        return Err(format!(
            "the child acknowledged nothing: does the test {child_test:?} call crash::child?"
        ));
    }
    Ok(Report {
        plan,
        acknowledged: acked,
        hard_state_term: term,
        kills_aimed_at_batches: aimed,
        kills_before_batch_durable: before_durable,
    })
}

/// Whether this process is the crash harness's child (a parent-side test returns at once
/// when it is).
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Whether [`audit_syncs`] can run here: `strace` is installed and may trace (a container
/// can forbid ptrace); a test may skip, saying so, where it cannot.
pub fn strace_available() -> bool {
    Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What [`audit_syncs`] saw.
#[derive(Debug)]
pub struct SyncAudit {
    /// Durable calls the child's store acknowledged (appends and hard-state saves).
    pub acknowledged: u64,
    /// `fsync`, `fdatasync`, `sync_file_range`, `syncfs` and `msync` calls that succeeded.
    pub syncs: u64,
}

impl std::fmt::Display for SyncAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sync audit: {} syncs for {} acknowledged durable calls",
            self.syncs, self.acknowledged
        )
    }
}

/// Runs `child_test` (see [`child`]) once under `strace`, its store in `dir`, for `calls`
/// durable calls, and checks that at least as many syncs succeeded. `Err` names the
/// shortfall, or says that `strace` could not run (Debian: `apt-get install strace`).
pub fn audit_syncs(
    child_test: &str,
    dir: &std::path::Path,
    calls: u64,
) -> Result<SyncAudit, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let trace = dir.join("syncs.strace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args(["-e", "trace=fsync,fdatasync,sync_file_range,syncfs,msync"])
        .arg(&exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(LIMIT_ENV, calls.to_string())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run strace ({e}); install it to audit syncs"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acknowledged = stdout
        .lines()
        .filter(|l| l.starts_with("ACK ") || l.starts_with("TERM ") || l.starts_with("BATCH "))
        .count() as u64;
    let log = std::fs::read_to_string(&trace).map_err(|e| format!("{}: {e}", trace.display()))?;
    // A call split by another thread's shows as "<unfinished ...>" then "resumed ... = 0".
    let syncs = log
        .lines()
        .filter(|l| !l.contains("unfinished") && l.trim_end().ends_with("= 0"))
        .count() as u64;
    let audit = SyncAudit {
        acknowledged,
        syncs,
    };
    if acknowledged == 0 {
        return Err(format!(
            "the child acknowledged nothing: does the test {child_test:?} call crash::child?"
        ));
    }
    if syncs < acknowledged {
        return Err(format!(
            "{audit}: some call returned as durable without a sync reaching the disk"
        ));
    }
    Ok(audit)
}

/// Every acknowledged entry is present, intact and contiguous; the hard state is at least
/// the last one acknowledged; with `atomic`, no batch was left in part. Returns the term of
/// the stored hard state.
async fn check(
    open: Opener,
    dir: &std::path::Path,
    acked: u64,
    term: u64,
    atomic: bool,
) -> Result<u64, String> {
    let log = open(dir.to_path_buf())
        .await
        .map_err(|e| format!("reopening after SIGKILL failed: {e}"))?;
    let hs = log.hard_state().await.map_err(|e| e.to_string())?;
    if hs.term.0 < term {
        return Err(format!(
            "the hard state of term {term} was acknowledged but the store holds term {}",
            hs.term.0
        ));
    }
    let st = log.log_state().await.map_err(|e| e.to_string())?;
    if st.last.index.0 < acked {
        return Err(format!(
            "entries up to {acked} were acknowledged but the log ends at {}",
            st.last.index.0
        ));
    }
    let all = log
        .entries(LogIndex(1)..st.last.index.next(), usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    let mut batches = Vec::with_capacity(all.len());
    for (i, e) in all.iter().enumerate() {
        let index = i as u64 + 1;
        if e.index() != LogIndex(index) {
            return Err(format!("the log is not contiguous at {index}"));
        }
        let batch = match &e.payload {
            EntryPayload::Command(stored) => batch_of(index, stored),
            _ => None,
        };
        batches.push(batch.ok_or_else(|| format!("entry {index} is damaged"))?);
    }
    if atomic {
        check_batches_whole(&batches, &hs)?;
    }
    Ok(hs.term.0)
}

/// `batches[i]` is the batch term entry `i + 1` was written with (0: appended alone). Each
/// batch's entries are all there, with its hard state or a later one; a batch's hard state
/// is there only with its entries.
fn check_batches_whole(batches: &[u64], hs: &HardState) -> Result<(), String> {
    // A batch is a run of entries of one term (consecutive batches differ in term); the
    // log is contiguous, so a run starts where its batch did.
    let mut at = 0;
    while at < batches.len() {
        let tag = batches[at];
        let run = batches[at..].iter().take_while(|&&t| t == tag).count();
        let (first, len) = (at as u64 + 1, batch_len(at as u64 + 1));
        if tag > 0 && run as u64 != len {
            return Err(format!(
                "the write_batch of term {tag} was left in part: {run} of its {len} entries from {first}"
            ));
        }
        if tag > hs.term.0 {
            return Err(format!(
                "the entries of the write_batch of term {tag} (from {first}) are there without its hard state (the store holds term {})",
                hs.term.0
            ));
        }
        at += run;
    }
    if hs.voted_for == Some(BATCH_VOTE) && !batches.contains(&hs.term.0) {
        return Err(format!(
            "the hard state of the write_batch of term {} is there without its entries",
            hs.term.0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, batch: bool) -> HardState {
        HardState {
            term: Term(term),
            voted_for: batch.then_some(BATCH_VOTE),
        }
    }

    /// Batch terms of entries 1.. as the child writes them: `(len, tag)` runs, each run's
    /// length `batch_len` of its first index.
    fn log(runs: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &tag in runs {
            let first = out.len() as u64 + 1;
            out.extend(std::iter::repeat_n(tag, batch_len(first) as usize));
        }
        out
    }

    #[test]
    fn whole_batches_pass_next_to_appends_and_each_other() {
        // 1..=2 appended, 3..=6 a batch of term 4, 7..=9 a batch of term 5 right after it.
        let batches = log(&[0, 4, 5, 0]);
        assert_eq!(check_batches_whole(&batches, &hs(5, true)), Ok(()));
        assert_eq!(check_batches_whole(&batches, &hs(6, false)), Ok(()));
    }

    #[test]
    fn part_of_a_batch_fails() {
        let mut batches = log(&[0, 4]);
        batches.pop();
        let why = check_batches_whole(&batches, &hs(4, true)).unwrap_err();
        assert!(why.contains("left in part"), "{why}");
    }

    #[test]
    fn a_batchs_entries_without_its_hard_state_fail() {
        let why = check_batches_whole(&log(&[0, 4]), &hs(3, false)).unwrap_err();
        assert!(why.contains("without its hard state"), "{why}");
    }

    #[test]
    fn a_batchs_hard_state_without_its_entries_fails() {
        let why = check_batches_whole(&log(&[0, 4]), &hs(5, true)).unwrap_err();
        assert!(why.contains("without its entries"), "{why}");
        // Saved alone, a newer hard state needs no entries.
        assert_eq!(check_batches_whole(&log(&[0, 4]), &hs(5, false)), Ok(()));
    }

    #[test]
    fn payloads_name_their_batch_and_damage_is_caught() {
        assert_eq!(batch_of(7, &payload(7, 3)), Some(3));
        assert_eq!(batch_of(7, &payload(7, 0)), Some(0));
        assert_eq!(batch_of(8, &payload(7, 3)), None);
        // Entry 9's text comes three times; a flipped bit in the last is still damage.
        let mut damaged = payload(9, 3).to_vec();
        let last = damaged.len() - 2;
        damaged[last] ^= 1;
        assert_eq!(batch_of(9, &damaged), None);
    }
}
