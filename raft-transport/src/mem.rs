//! An in-memory network connecting many nodes in one process, with seeded fault injection:
//! partitions (symmetric and one-way), loss, delay, reordering and duplication, and
//! per-node message and byte counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Inbox, Message, NodeId, Transport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Fault settings of a link (or of every link, as the default).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkFaults {
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Delivery delay, drawn uniformly from this range; messages overtake each other when
    /// the range is wide.
    pub delay: (Duration, Duration),
    /// Probability that a message is held back by an extra delay (long reordering).
    pub reorder_rate: f64,
    /// The longest extra delay of a reordered message (drawn uniformly up to it).
    pub reorder_delay: Duration,
    /// Probability that a message is delivered twice.
    pub duplicate_rate: f64,
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults {
            drop_rate: 0.0,
            delay: (Duration::ZERO, Duration::ZERO),
            reorder_rate: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate_rate: 0.0,
        }
    }
}

/// Messages and bytes a node sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages the node sent (including those the network then dropped).
    pub sent_messages: u64,
    /// Encoded bytes of those messages (postcard, as on a real wire).
    pub sent_bytes: u64,
    /// Messages delivered to the node.
    pub received_messages: u64,
}

#[derive(Debug)]
struct NetState {
    inboxes: BTreeMap<NodeId, Inbox>,
    default_faults: LinkFaults,
    link_faults: BTreeMap<(NodeId, NodeId), LinkFaults>,
    /// Links that drop everything, as (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    rng: ChaCha8Rng,
    counters: BTreeMap<NodeId, Counters>,
    by_kind: BTreeMap<&'static str, u64>,
}

/// The network. Cheap to clone; clones share the same links.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    state: Arc<Mutex<NetState>>,
}

impl MemNetwork {
    /// A reliable network whose random choices come from `seed`.
    pub fn new(seed: u64) -> MemNetwork {
        MemNetwork {
            state: Arc::new(Mutex::new(NetState {
                inboxes: BTreeMap::new(),
                default_faults: LinkFaults::default(),
                link_faults: BTreeMap::new(),
                blocked: BTreeSet::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                counters: BTreeMap::new(),
                by_kind: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects (or reconnects, after a restart) node `id`'s inbox.
    pub fn register(&self, id: NodeId, inbox: Inbox) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// Disconnects node `id` (a crashed node): messages to it are lost.
    pub fn unregister(&self, id: NodeId) {
        self.lock().inboxes.remove(&id);
    }

    /// The transport node `id` sends through.
    pub fn transport(&self, id: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            id,
            net: self.clone(),
        })
    }

    /// Sets the faults of every link without its own settings.
    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().default_faults = faults;
    }

    /// Sets the faults of the link `from -> to` only.
    pub fn set_link_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.lock().link_faults.insert((from, to), faults);
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        let mut s = self.lock();
        let others: Vec<NodeId> = s.inboxes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            s.blocked.insert((id, o));
            s.blocked.insert((o, id));
        }
    }

    /// Reconnects `id` with every other node, both ways.
    pub fn reconnect(&self, id: NodeId) {
        self.lock().blocked.retain(|&(a, b)| a != id && b != id);
    }

    /// Splits the network: nodes in `group` reach each other, the rest reach each other,
    /// and nothing crosses between the two sides.
    pub fn partition(&self, group: &[NodeId]) {
        let mut s = self.lock();
        let all: Vec<NodeId> = s.inboxes.keys().copied().collect();
        for &a in &all {
            for &b in &all {
                if group.contains(&a) != group.contains(&b) {
                    s.blocked.insert((a, b));
                }
            }
        }
    }

    /// Drops every message from `from` to `to` (a one-way partition).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// Node `id`'s counters.
    pub fn counters(&self, id: NodeId) -> Counters {
        self.lock().counters.get(&id).copied().unwrap_or_default()
    }

    /// Messages sent so far, by kind ("AppendEntries", "RequestVote", ...).
    pub fn sent_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.lock().by_kind.clone()
    }

    /// Total messages and bytes sent by every node.
    pub fn totals(&self) -> Counters {
        self.lock()
            .counters
            .values()
            .fold(Counters::default(), |mut t, c| {
                t.sent_messages += c.sent_messages;
                t.sent_bytes += c.sent_bytes;
                t.received_messages += c.received_messages;
                t
            })
    }

    /// Decides the fate of one message: the delays of each copy to deliver (none if lost).
    fn route(&self, msg: &Message) -> (Vec<Duration>, Option<Inbox>) {
        // Counted as on a real wire, without building the bytes.
        let size = postcard::ser_flavors::Size::default();
        let bytes =
            postcard::serialize_with_flavor::<_, _, usize>(msg, size).map_or(0, |n| n as u64);
        let mut s = self.lock();
        let c = s.counters.entry(msg.from).or_default();
        c.sent_messages += 1;
        c.sent_bytes += bytes;
        *s.by_kind.entry(msg.body.kind()).or_default() += 1;
        if s.blocked.contains(&(msg.from, msg.to)) {
            return (Vec::new(), None);
        }
        let Some(inbox) = s.inboxes.get(&msg.to).cloned() else {
            return (Vec::new(), None);
        };
        let faults = s
            .link_faults
            .get(&(msg.from, msg.to))
            .cloned()
            .unwrap_or_else(|| s.default_faults.clone());
        if faults.drop_rate > 0.0 && s.rng.gen_bool(faults.drop_rate.min(1.0)) {
            return (Vec::new(), None);
        }
        let copies =
            if faults.duplicate_rate > 0.0 && s.rng.gen_bool(faults.duplicate_rate.min(1.0)) {
                2
            } else {
                1
            };
        let (lo, hi) = faults.delay;
        let delays = (0..copies)
            .map(|_| {
                if hi > lo {
                    s.rng.gen_range(lo..=hi)
                } else {
                    lo
                }
            })
            .collect();
        (delays, Some(inbox))
    }

    fn delivered(&self, to: NodeId) {
        self.lock()
            .counters
            .entry(to)
            .or_default()
            .received_messages += 1;
    }
}

/// One node's view of a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    id: NodeId,
    net: MemNetwork,
}

#[async_trait]
impl Transport for MemTransport {
    async fn send(&self, msg: Message) {
        debug_assert_eq!(msg.from, self.id, "a node sends only its own messages");
        let (delays, inbox) = self.net.route(&msg);
        let Some(inbox) = inbox else { return };
        for delay in delays {
            let (inbox, msg, net) = (inbox.clone(), msg.clone(), self.net.clone());
            let to = msg.to;
            if delay.is_zero() {
                if inbox.deliver(msg) {
                    net.delivered(to);
                }
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if inbox.deliver(msg) {
                        net.delivered(to);
                    }
                });
            }
        }
    }
}
