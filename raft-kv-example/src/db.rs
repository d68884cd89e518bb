//! The keyspace the commands act on: typed values, expiry by the leader's stamped clock, the
//! version of each key (for WATCH), and a hash-ordered index that keeps SCAN cursors stable.
//!
//! Everything here is deterministic: time comes in as a stamp carried by the log entry (for
//! writes) or by the query (for reads), never from this machine's clock, so every replica
//! holds the same keys after the same entries.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as stamped by the leader.
pub type Millis = u64;

/// A value of one of the supported types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// A string (also what INCR and friends act on).
    Str(Bytes),
    /// A hash: field → value.
    Hash(BTreeMap<Bytes, Bytes>),
}

impl Data {
    /// The name TYPE answers with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::Str(_) => "string",
            Data::Hash(_) => "hash",
        }
    }
}

/// One key's value and metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The value.
    pub data: Data,
    /// When the key expires (leader time), if it does.
    pub expires_at: Option<Millis>,
    /// The log index of the last write that touched the key (WATCH compares against it).
    pub modified: u64,
}

/// When a write happens: its log index and the leader's stamped time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The entry's log index.
    pub index: u64,
    /// The time to apply at: never earlier than any time applied before.
    pub now: Millis,
}

/// What a write does to a key's time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ttl {
    /// The key no longer expires (SET, GETSET).
    Clear,
    /// The key keeps the expiry it had (KEEPTTL, APPEND, INCR, HSET).
    Keep,
    /// The key expires at this leader time.
    At(Millis),
}

/// The keyspace.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Db {
    items: BTreeMap<Bytes, Item>,
    /// The latest time applied; time never runs backwards here even if a new leader's
    /// clock is behind the old one's.
    clock: Millis,
    /// The log index of the last removal of any key (deletion, expiry, flush). A watched key
    /// that is absent at EXEC aborts the transaction if a removal happened after WATCH:
    /// conservative, and it needs no memory per deleted key.
    removed_at: u64,
    /// Keys by expiry time, for expiring them in order. Rebuilt after a restore.
    #[serde(skip)]
    expiries: BTreeSet<(Millis, Bytes)>,
    /// Keys by a hash of their name: the order SCAN walks in, so a cursor (the next hash
    /// to visit) stays valid however the keyspace changes. Rebuilt after a restore.
    #[serde(skip)]
    by_hash: BTreeSet<(u64, Bytes)>,
}

/// The position of a key in SCAN order: 64-bit FNV-1a, fixed forever, so a cursor from
/// one node (or build) is valid on every other.
pub fn scan_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Most expired keys one write removes; the rest go with later writes. Until then they
/// are invisible (every read and write checks expiry), so this only bounds the work of one
/// entry.
pub const MAX_EXPIRED_PER_WRITE: usize = 1_000;

impl Db {
    /// Rebuilds the derived indexes after the keyspace was decoded from a snapshot.
    pub fn rebuild_indexes(&mut self) {
        self.expiries.clear();
        self.by_hash.clear();
        for (k, item) in &self.items {
            if let Some(at) = item.expires_at {
                self.expiries.insert((at, k.clone()));
            }
            self.by_hash.insert((scan_hash(k), k.clone()));
        }
    }

    /// The time a read stamped `at` is answered at: never before the last write applied.
    pub fn read_time(&self, at: Millis) -> Millis {
        at.max(self.clock)
    }

    /// Starts a write at `index` stamped `at`: advances the clock and removes keys whose
    /// expiry has passed (up to [`MAX_EXPIRED_PER_WRITE`], oldest first).
    pub fn begin(&mut self, index: u64, at: Millis) -> Stamp {
        self.clock = self.clock.max(at);
        let now = self.clock;
        for _ in 0..MAX_EXPIRED_PER_WRITE {
            match self.expiries.first() {
                Some((when, key)) if *when <= now => {
                    let key = key.clone();
                    self.drop_key(&key, index);
                }
                _ => break,
            }
        }
        Stamp { index, now }
    }

    /// Removes `key` if its expiry has passed, so that a write treats it as absent.
    fn expire_if_due(&mut self, key: &[u8], stamp: Stamp) {
        if self.items.contains_key(key) && self.get(key, stamp.now).is_none() {
            self.drop_key(key, stamp.index);
        }
    }

    /// The live item at `key` (an expired key reads as absent).
    pub fn get(&self, key: &[u8], now: Millis) -> Option<&Item> {
        self.items
            .get(key)
            .filter(|i| i.expires_at.is_none_or(|at| at > now))
    }

    /// The live value at `key` for changing in place; the key counts as modified.
    pub fn data_mut(&mut self, key: &[u8], stamp: Stamp) -> Option<&mut Data> {
        self.expire_if_due(key, stamp);
        let item = self.items.get_mut(key)?;
        item.modified = stamp.index;
        Some(&mut item.data)
    }

    /// Stores `data` at `key`, with `ttl` deciding the expiry.
    pub fn put(&mut self, key: Bytes, data: Data, ttl: Ttl, stamp: Stamp) {
        // One lookup for what is there: a key whose expiry has passed counts as absent.
        let old = self.items.get(&key).map(|i| i.expires_at);
        let old = match old {
            Some(Some(at)) if at <= stamp.now => {
                self.drop_key(&key, stamp.index);
                None
            }
            other => other,
        };
        let old_expiry = old.flatten();
        let expires_at = match ttl {
            Ttl::Clear => None,
            Ttl::Keep => old_expiry,
            Ttl::At(at) => Some(at),
        };
        if expires_at.is_some_and(|at| at <= stamp.now) {
            // An expiry in the past deletes the key, as in Redis.
            self.drop_key(&key, stamp.index);
            return;
        }
        self.reindex_expiry(&key, old_expiry, expires_at);
        if old.is_none() {
            self.by_hash.insert((scan_hash(&key), key.clone()));
        }
        self.items.insert(
            key,
            Item {
                data,
                expires_at,
                modified: stamp.index,
            },
        );
    }

    /// Sets or clears the expiry of an existing key; an expiry not after now deletes it.
    /// Returns whether the key exists.
    pub fn set_expiry(&mut self, key: &[u8], at: Option<Millis>, stamp: Stamp) -> bool {
        self.expire_if_due(key, stamp);
        let Some(item) = self.items.get_mut(key) else {
            return false;
        };
        if at.is_some_and(|at| at <= stamp.now) {
            self.drop_key(key, stamp.index);
            return true;
        }
        let old = std::mem::replace(&mut item.expires_at, at);
        item.modified = stamp.index;
        let key = Bytes::copy_from_slice(key);
        self.reindex_expiry(&key, old, at);
        true
    }

    fn reindex_expiry(&mut self, key: &Bytes, old: Option<Millis>, new: Option<Millis>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.expiries.remove(&(at, key.clone()));
        }
        if let Some(at) = new {
            self.expiries.insert((at, key.clone()));
        }
    }

    /// Removes `key`; returns its item if it was live.
    pub fn remove(&mut self, key: &[u8], stamp: Stamp) -> Option<Item> {
        self.expire_if_due(key, stamp);
        self.drop_key(key, stamp.index)
    }

    fn drop_key(&mut self, key: &[u8], index: u64) -> Option<Item> {
        let (key, item) = self.items.remove_entry(key)?;
        if let Some(at) = item.expires_at {
            self.expiries.remove(&(at, key.clone()));
        }
        self.by_hash.remove(&(scan_hash(&key), key));
        self.removed_at = index;
        Some(item)
    }

    /// Removes every key.
    pub fn flush(&mut self, index: u64) {
        self.items.clear();
        self.expiries.clear();
        self.by_hash.clear();
        self.removed_at = index;
    }

    /// Whether `key` changed after log index `since` (WATCH). An absent key counts as
    /// changed if any key was removed since.
    pub fn changed_since(&self, key: &[u8], since: u64, now: Millis) -> bool {
        match self.get(key, now) {
            Some(item) => item.modified > since,
            None => self.removed_at > since || self.items.contains_key(key),
        }
    }

    /// The number of live keys.
    pub fn len(&self, now: Millis) -> usize {
        // Expired keys not yet removed: every expiry up to and including `now`.
        let expired = self
            .expiries
            .range(..(now.saturating_add(1), Bytes::new()))
            .count();
        self.items.len() - expired
    }

    /// Whether no key is live.
    pub fn is_empty(&self, now: Millis) -> bool {
        self.len(now) == 0
    }

    /// Every live key matching the glob `pattern`, in key order.
    pub fn keys(&self, pattern: &[u8], now: Millis) -> Vec<Bytes> {
        self.items
            .iter()
            .filter(|(k, i)| i.expires_at.is_none_or(|at| at > now) && glob_match(pattern, k))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// One SCAN step from `cursor`: visits about `count` keys in hash order and returns
    /// the live ones that pass `keep`, and the next cursor (0 when the walk is done).
    /// Keys sharing a hash are visited together, so no key is skipped at a boundary.
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        now: Millis,
        keep: impl Fn(&Bytes, &Item) -> bool,
    ) -> (u64, Vec<Bytes>) {
        let mut found = Vec::new();
        let mut last = None;
        for (visited, (h, key)) in self.by_hash.range((cursor, Bytes::new())..).enumerate() {
            if visited >= count.max(1) && last != Some(*h) {
                return (*h, found);
            }
            last = Some(*h);
            if let Some(item) = self.get(key, now) {
                if keep(key, item) {
                    found.push(key.clone());
                }
            }
        }
        (0, found)
    }
}

/// Redis-style glob matching: `*`, `?`, `[abc]`, `[^a-z]` and `\` escapes.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern position after it, string position).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p, s[i]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == s[i]).then_some(p + 2),
            Some(&c) => (c == s[i]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            (None, Some((sp, si))) => {
                // Let the last `*` swallow one more byte and retry.
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == b'['`; returns the position
/// after the class if it matches.
fn class_match(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            matched |= pattern[j + 1] == c;
            j += 2;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (lo, hi) = (
                pattern[j].min(pattern[j + 2]),
                pattern[j].max(pattern[j + 2]),
            );
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    // An unterminated class matches as far as it goes, as in Redis.
    (matched != negate).then_some((j + 1).min(pattern.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Data {
        Data::Str(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn glob_patterns_match_as_in_redis() {
        let yes = [
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("user:*:name", "user:42:name"),
            ("a\\*b", "a*b"),
            ("", ""),
        ];
        let no = [
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("user:*:name", "user:42:age"),
            ("a\\*b", "axb"),
            ("abc", "ab"),
            ("ab", "abc"),
        ];
        for (p, v) in yes {
            assert!(
                glob_match(p.as_bytes(), v.as_bytes()),
                "{p} should match {v}"
            );
        }
        for (p, v) in no {
            assert!(
                !glob_match(p.as_bytes(), v.as_bytes()),
                "{p} should not match {v}"
            );
        }
    }

    #[test]
    fn keys_expire_by_the_stamped_time_only() {
        let mut db = Db::default();
        let t = db.begin(1, 1_000);
        db.put("k".into(), s("v"), Ttl::At(1_500), t);
        assert!(db.get(b"k", 1_499).is_some());
        assert!(db.get(b"k", 1_500).is_none(), "expired at its deadline");
        assert_eq!(db.len(1_499), 1);
        assert_eq!(db.len(1_500), 0);
        // A later write stamped with an earlier clock does not bring time back.
        let t = db.begin(2, 2_000);
        assert_eq!(t.now, 2_000);
        assert!(db.items.is_empty(), "the write purged the expired key");
        assert_eq!(db.begin(3, 1_000).now, 2_000);
        assert_eq!(db.read_time(10), 2_000);
    }

    #[test]
    fn expired_keys_left_by_a_bounded_purge_are_absent_to_every_write() {
        let mut db = Db::default();
        let t = db.begin(1, 0);
        for i in 0..MAX_EXPIRED_PER_WRITE + 5 {
            db.put(format!("k{i}").into(), s("v"), Ttl::At(10), t);
        }
        let t = db.begin(2, 10);
        assert_eq!(db.items.len(), 5, "one write removes a bounded number");
        assert_eq!(db.len(10), 0);
        let left: Vec<Bytes> = db.items.keys().cloned().collect();
        // APPEND-like keep-TTL write, DEL, EXPIRE: each sees the expired key as absent.
        db.put(left[0].clone(), s("new"), Ttl::Keep, t);
        assert_eq!(db.get(&left[0], 10).map(|i| i.expires_at), Some(None));
        assert!(
            db.remove(&left[1], t).is_none(),
            "DEL of an expired key removes nothing"
        );
        assert!(!db.set_expiry(&left[2], Some(99), t));
        assert!(db.data_mut(&left[3], t).is_none());
        db.begin(3, 10);
        assert_eq!(db.items.len(), 1, "the next write removes the rest");
        assert_eq!(db.expiries.len(), 0);
        assert_eq!(db.by_hash.len(), 1);
    }

    #[test]
    fn the_scan_hash_is_fixed() {
        // FNV-1a 64 test vectors: cursors stay valid across builds.
        assert_eq!(scan_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(scan_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn an_expiry_in_the_past_deletes_the_key() {
        let mut db = Db::default();
        let t = db.begin(1, 1_000);
        db.put("k".into(), s("v"), Ttl::Clear, t);
        assert!(db.set_expiry(b"k", Some(900), t));
        assert!(db.get(b"k", 1_000).is_none());
        assert!(db.expiries.is_empty() && db.by_hash.is_empty());
    }

    #[test]
    fn watch_sees_changes_and_removals_after_its_index() {
        let mut db = Db::default();
        let t = db.begin(5, 0);
        db.put("a".into(), s("1"), Ttl::Clear, t);
        assert!(!db.changed_since(b"a", 5, 0));
        assert!(db.changed_since(b"a", 4, 0));
        assert!(!db.changed_since(b"missing", 5, 0));
        let t = db.begin(6, 0);
        db.remove(b"a", t);
        assert!(
            db.changed_since(b"missing", 5, 0),
            "conservative for absent keys"
        );
    }

    #[test]
    fn scan_returns_every_key_present_throughout_exactly_once() {
        let mut db = Db::default();
        let t = db.begin(1, 0);
        for i in 0..1_000 {
            db.put(format!("k{i}").into(), s("v"), Ttl::Clear, t);
        }
        let mut seen = BTreeSet::new();
        let mut cursor = 0;
        let mut step = 0;
        loop {
            let (next, keys) = db.scan(cursor, 7, 0, |_, _| true);
            for k in keys {
                assert!(seen.insert(k), "a key came back twice");
            }
            // Keys come and go between calls; the walk still covers the stable ones.
            let t = db.begin(2 + step, 0);
            db.put(format!("new{step}").into(), s("v"), Ttl::Clear, t);
            db.remove(format!("new{}", step / 2).as_bytes(), t);
            step += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for i in 0..1_000 {
            assert!(seen.contains(format!("k{i}").as_bytes()), "k{i} missed");
        }
    }

    #[test]
    fn indexes_are_rebuilt_after_decoding() {
        let mut db = Db::default();
        let t = db.begin(1, 0);
        db.put("a".into(), s("1"), Ttl::At(50), t);
        db.put("b".into(), s("2"), Ttl::Clear, t);
        let mut back: Db = postcard::from_bytes(&postcard::to_allocvec(&db).unwrap()).unwrap();
        back.rebuild_indexes();
        assert_eq!(back.expiries, db.expiries);
        assert_eq!(back.by_hash, db.by_hash);
        back.begin(2, 60);
        assert!(back.get(b"a", 60).is_none() && back.items.len() == 1);
    }
}
