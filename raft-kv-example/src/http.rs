//! A node's HTTP endpoint (`raft-kv node --http-addr`): `/metrics` in the Prometheus text
//! format, `/status` as JSON, and the fault drill the cluster view uses
//! (`POST /admin/isolate`, `POST /admin/heal`). Every metric is named `raft_...`; the list
//! with their meaning is in the README.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use raft_core::metrics::{Histogram, Metrics, LATENCY_BUCKETS};
use raft_core::{RaftNode, ReplicationState, Role};
use raft_transport::TcpTransport;
use serde_json::json;

/// What the endpoint reports on and acts on.
#[derive(Clone)]
pub struct HttpNode {
    /// The node.
    pub node: RaftNode,
    /// Its transport (byte counters; isolation for the drill).
    pub transport: TcpTransport,
    /// Whether the fault drill (`/admin/...`) is served: only for local clusters
    /// (`raft-kv node --http-admin`, which `raft-kv cluster` passes).
    pub admin: bool,
}

/// The header every `/admin` request must carry. A web page on another origin cannot set
/// it without the browser asking first (a CORS preflight, never granted here), so no page
/// the user visits can drive the drill; the live view asks through its own server.
pub const ADMIN_HEADER: &str = "x-raft-admin";

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpNode) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status));
    if state.admin {
        app = app
            .route("/admin/isolate", post(isolate))
            .route("/admin/heal", post(heal));
    }
    axum::serve(listener, app.with_state(Arc::new(state))).await
}

/// Any page may read a node's status (the cluster view polls every node from one page).
const ANYONE: (header::HeaderName, &str) = (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");

async fn metrics(State(s): State<Arc<HttpNode>>) -> impl IntoResponse {
    let text = prometheus_text(&s.node.metrics(), &s.transport);
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            ANYONE,
        ],
        text,
    )
}

async fn status(State(s): State<Arc<HttpNode>>) -> impl IntoResponse {
    ([ANYONE], Json(status_json(&s.node.metrics(), &s.transport)))
}

async fn isolate(State(s): State<Arc<HttpNode>>, h: axum::http::HeaderMap) -> impl IntoResponse {
    drill(&s, &h, true)
}

async fn heal(State(s): State<Arc<HttpNode>>, h: axum::http::HeaderMap) -> impl IntoResponse {
    drill(&s, &h, false)
}

fn drill(
    s: &HttpNode,
    headers: &axum::http::HeaderMap,
    isolated: bool,
) -> (StatusCode, &'static str) {
    if !headers.contains_key(ADMIN_HEADER) {
        return (
            StatusCode::FORBIDDEN,
            "the x-raft-admin header is required\n",
        );
    }
    s.transport.set_isolated(isolated);
    match isolated {
        true => tracing::warn!(node = %s.node.id(), "isolated from every peer (fault drill)"),
        false => tracing::warn!(node = %s.node.id(), "reconnected to its peers (fault drill)"),
    }
    (
        StatusCode::OK,
        if isolated { "isolated\n" } else { "healed\n" },
    )
}

/// A role's name, as labels and JSON show it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "precandidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
        Role::Learner => "learner",
    }
}

fn state_name(state: ReplicationState) -> String {
    format!("{state:?}").to_ascii_lowercase()
}

/// The node's status as `/status` serves it.
pub fn status_json(m: &Metrics, transport: &TcpTransport) -> serde_json::Value {
    let peers: serde_json::Map<String, serde_json::Value> = m
        .peers
        .iter()
        .map(|(id, p)| {
            let peer = json!({ "match_index": p.match_index.0, "lag": p.lag, "state": state_name(p.state) });
            (id.0.to_string(), peer)
        })
        .collect();
    let sent_to: serde_json::Map<String, serde_json::Value> = m
        .counters
        .sent_to
        .iter()
        .map(|(id, n)| (id.0.to_string(), json!(n)))
        .collect();
    let c = &m.counters;
    json!({
        "id": m.id.0,
        "role": role_name(m.role),
        "term": m.term.0,
        "leader": m.leader.map(|l| l.0),
        "commit_index": m.commit_index.0,
        "applied_index": m.applied_index.0,
        "first_log_index": m.first_log_index.0,
        "last_log_index": m.last_log_index.0,
        "snapshot_index": m.snapshot_index.0,
        "snapshot_bytes": m.snapshot_bytes,
        "log_bytes": m.log_bytes,
        "voters": m.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
        "learners": m.learners.iter().map(|v| v.0).collect::<Vec<_>>(),
        "peers": peers,
        "isolated": transport.is_isolated(),
        "counters": {
            "proposals": c.proposals,
            "proposals_committed": c.proposals_committed,
            "entries_applied": c.entries_applied,
            "elections_started": c.elections_started,
            "elections_won": c.elections_won,
            "leader_changes": c.leader_changes,
            "snapshots_built": c.snapshots_built,
            "snapshots_sent": c.snapshots_sent,
            "snapshots_installed": c.snapshots_installed,
            "sent_to": sent_to,
        },
        // Above the last bucket (10 s) reads as that bound: JSON has no infinity.
        "commit_latency_p50_ms": m.commit_latency.quantile(0.5).map(|s| s.min(10.0) * 1000.0),
        "commit_latency_p99_ms": m.commit_latency.quantile(0.99).map(|s| s.min(10.0) * 1000.0),
    })
}

/// The node's metrics in the Prometheus text format.
pub fn prometheus_text(m: &Metrics, transport: &TcpTransport) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    let stats = transport.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    registry.register_collector(Box::new(NodeCollector {
        metrics: m.clone(),
        transport_bytes_sent: load(&stats.bytes_sent),
        transport_messages_dropped: load(&stats.dropped),
        transport_rejected_connections: load(&stats.rejected_connections),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

/// One scrape's worth of a node's metrics.
#[derive(Debug)]
struct NodeCollector {
    metrics: Metrics,
    transport_bytes_sent: u64,
    transport_messages_dropped: u64,
    transport_rejected_connections: u64,
}

type Enc<'a> = DescriptorEncoder<'a>;

fn gauge(e: &mut Enc, name: &str, help: &str, v: i64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn counter(e: &mut Enc, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// A gauge with a sample per peer (labelled `peer`), its value read from the peer's metrics.
fn peer_gauge(
    e: &mut Enc,
    (name, help): (&str, &str),
    m: &Metrics,
    value: impl Fn(&raft_core::metrics::PeerMetrics) -> i64,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (id, p) in &m.peers {
        let labels = [("peer", id.0.to_string())];
        family.encode_family(&labels)?.encode_gauge(&value(p))?;
    }
    Ok(())
}

/// A counter with one label, one sample per value.
fn labelled_counter<'v>(
    e: &mut Enc,
    (name, help, label): (&str, &str, &'static str),
    values: impl Iterator<Item = (String, u64)> + 'v,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value)];
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

fn histogram(e: &mut Enc, name: &str, help: &str, h: &Histogram) -> std::fmt::Result {
    // Per-bucket counts: the encoder accumulates them (and adds `+Inf` as the count).
    let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS.iter().copied().zip(h.counts).collect();
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_secs, h.count, &buckets, None)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.metrics;
        let i = |x: u64| x as i64;
        gauge(&mut e, "raft_term", "The node's current term.", i(m.term.0))?;
        let mut role = e.encode_descriptor(
            "raft_role",
            "1 for the role the node plays now (leader, follower, candidate, precandidate, learner).",
            None,
            MetricType::Gauge,
        )?;
        for r in [
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::PreCandidate,
            Role::Learner,
        ] {
            let labels = [("role", role_name(r))];
            role.encode_family(&labels)?
                .encode_gauge(&i64::from(m.role == r))?;
        }
        gauge(
            &mut e,
            "raft_leader_id",
            "The leader this node knows of (0: none).",
            i(m.leader.map_or(0, |l| l.0)),
        )?;
        gauge(
            &mut e,
            "raft_commit_index",
            "Highest log index known committed.",
            i(m.commit_index.0),
        )?;
        gauge(
            &mut e,
            "raft_applied_index",
            "Highest log index applied to the state machine.",
            i(m.applied_index.0),
        )?;
        gauge(
            &mut e,
            "raft_first_log_index",
            "First index still in the log (the rest is in the snapshot).",
            i(m.first_log_index.0),
        )?;
        gauge(
            &mut e,
            "raft_last_log_index",
            "Last index in the log.",
            i(m.last_log_index.0),
        )?;
        gauge(
            &mut e,
            "raft_snapshot_index",
            "Last index the latest snapshot covers.",
            i(m.snapshot_index.0),
        )?;
        gauge(
            &mut e,
            "raft_snapshot_bytes",
            "Size of the latest snapshot.",
            i(m.snapshot_bytes),
        )?;
        gauge(
            &mut e,
            "raft_log_bytes",
            "Encoded size of the log's entries.",
            i(m.log_bytes),
        )?;
        gauge(
            &mut e,
            "raft_voters",
            "Voters in the effective configuration.",
            m.voters.len() as i64,
        )?;
        peer_gauge(
            &mut e,
            (
                "raft_peer_match_index",
                "On the leader: the highest index known replicated on each follower.",
            ),
            m,
            |p| i(p.match_index.0),
        )?;
        peer_gauge(
            &mut e,
            (
                "raft_peer_lag_entries",
                "On the leader: how many entries each follower is behind.",
            ),
            m,
            |p| i(p.lag),
        )?;
        peer_gauge(
            &mut e,
            (
                "raft_peer_replicating",
                "On the leader: 1 for each follower in the pipelined state, 0 while probing or sending a snapshot.",
            ),
            m,
            |p| i64::from(p.state == ReplicationState::Replicate),
        )?;
        let c = &m.counters;
        counter(
            &mut e,
            "raft_proposals",
            "Commands proposed to this node.",
            c.proposals,
        )?;
        counter(
            &mut e,
            "raft_proposals_committed",
            "Proposals committed, applied and answered.",
            c.proposals_committed,
        )?;
        counter(
            &mut e,
            "raft_entries_applied",
            "Log entries applied to the state machine.",
            c.entries_applied,
        )?;
        let reads = [
            ("leader_read_index".to_string(), c.reads.leader_read_index),
            (
                "follower_read_index".to_string(),
                c.reads.follower_read_index,
            ),
            ("lease".to_string(), c.reads.lease),
        ];
        labelled_counter(
            &mut e,
            ("raft_reads", "Linearizable reads served, by path.", "path"),
            reads.into_iter(),
        )?;
        counter(
            &mut e,
            "raft_elections_started",
            "Elections this node started (PreVote rounds not counted).",
            c.elections_started,
        )?;
        counter(
            &mut e,
            "raft_elections_won",
            "Elections this node won.",
            c.elections_won,
        )?;
        counter(
            &mut e,
            "raft_leader_changes",
            "Times this node learned of a new leader.",
            c.leader_changes,
        )?;
        counter(
            &mut e,
            "raft_snapshots_built",
            "Snapshots built from the state machine.",
            c.snapshots_built,
        )?;
        counter(
            &mut e,
            "raft_snapshots_sent",
            "Snapshots sent to followers in full.",
            c.snapshots_sent,
        )?;
        counter(
            &mut e,
            "raft_snapshots_installed",
            "Snapshots installed from a leader.",
            c.snapshots_installed,
        )?;
        let kinds = |t: &raft_core::metrics::TrafficByKind, bytes: bool| {
            t.iter()
                .map(move |(k, v)| {
                    (
                        k.name().to_string(),
                        if bytes { v.payload_bytes } else { v.messages },
                    )
                })
                .collect::<Vec<_>>()
        };
        labelled_counter(
            &mut e,
            ("raft_messages_sent", "Raft messages sent, by kind.", "kind"),
            kinds(&c.sent, false).into_iter(),
        )?;
        labelled_counter(
            &mut e,
            (
                "raft_messages_received",
                "Raft messages received, by kind.",
                "kind",
            ),
            kinds(&c.received, false).into_iter(),
        )?;
        labelled_counter(
            &mut e,
            (
                "raft_payload_sent_bytes",
                "Payload bytes sent (entries' commands, snapshot data), by kind.",
                "kind",
            ),
            kinds(&c.sent, true).into_iter(),
        )?;
        labelled_counter(
            &mut e,
            (
                "raft_payload_received_bytes",
                "Payload bytes received, by kind.",
                "kind",
            ),
            kinds(&c.received, true).into_iter(),
        )?;
        labelled_counter(
            &mut e,
            (
                "raft_messages_sent_to",
                "Raft messages sent, by destination.",
                "peer",
            ),
            c.sent_to.iter().map(|(id, n)| (id.0.to_string(), *n)),
        )?;
        counter(
            &mut e,
            "raft_transport_sent_bytes",
            "Bytes the TCP transport wrote (frames included).",
            self.transport_bytes_sent,
        )?;
        counter(
            &mut e,
            "raft_transport_messages_dropped",
            "Messages the transport dropped (queue full, peer unknown or unreachable, isolated).",
            self.transport_messages_dropped,
        )?;
        counter(
            &mut e,
            "raft_transport_rejected_connections",
            "Connections closed for bad input or a refused handshake.",
            self.transport_rejected_connections,
        )?;
        histogram(&mut e, "raft_commit_latency_seconds", "From a proposal reaching the leader to its entry committed and handed to the state machine.", &m.commit_latency)?;
        histogram(
            &mut e,
            "raft_fsync_latency_seconds",
            "Durable log writes (one per group commit).",
            &m.fsync_latency,
        )?;
        histogram(
            &mut e,
            "raft_apply_latency_seconds",
            "State machine apply calls (one per batch of committed entries).",
            &m.apply_latency,
        )?;
        Ok(())
    }
}
