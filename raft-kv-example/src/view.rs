//! The live view of a local cluster (`raft-kv cluster` serves it): one page, embedded in the
//! binary, that polls every node's `/status` every 400 ms and draws the cluster, and acts
//! on it: kill and restart a node (this process owns them), isolate and heal one (through
//! the node's own `/admin` endpoint), start and stop a write load.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::client::KvClient;
use crate::runner::{self, LocalNode, LocalSecurity, Tuning};

/// The page: HTML, style and script in one file, no build step.
const PAGE: &str = include_str!("../assets/view.html");

/// The processes of a local cluster and how to start them again.
pub struct LocalCluster {
    /// The `raft-kv` executable.
    pub exe: PathBuf,
    /// Every node, in id order.
    pub layout: Vec<LocalNode>,
    /// Each node's process, `None` while it is down.
    pub children: Vec<Option<Child>>,
    /// What every node is started with.
    pub tuning: Tuning,
    /// TLS and password.
    pub security: LocalSecurity,
}

/// The cluster as the view and the terminal share it.
pub type SharedCluster = Arc<Mutex<LocalCluster>>;

#[derive(Default)]
struct Load {
    running: AtomicBool,
    ops: AtomicU64,
    errors: AtomicU64,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Clone)]
struct ViewState {
    cluster: SharedCluster,
    load: Arc<Load>,
}

/// Serves the view on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cluster: SharedCluster,
) -> std::io::Result<()> {
    let state = ViewState {
        cluster,
        load: Arc::default(),
    };
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/cluster", get(cluster_json))
        .route("/api/nodes/{id}/kill", post(kill))
        .route("/api/nodes/{id}/restart", post(restart))
        .route("/api/nodes/{id}/isolate", post(isolate))
        .route("/api/nodes/{id}/heal", post(heal))
        .route("/api/load/start", post(load_start))
        .route("/api/load/stop", post(load_stop))
        .layer(axum::middleware::from_fn(from_the_page))
        .with_state(state);
    axum::serve(listener, app).await
}

/// The header the page sends with every action. Another site's page cannot send it
/// without a CORS preflight (never granted), so only this page can act on the cluster.
const VIEW_HEADER: &str = "x-raft-view";

/// Refuses actions (`POST`) that do not come from the view's own page.
async fn from_the_page(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() == axum::http::Method::POST && !request.headers().contains_key(VIEW_HEADER)
    {
        return (StatusCode::FORBIDDEN, "actions come from the view's page\n").into_response();
    }
    next.run(request).await
}

async fn isolate(State(s): State<ViewState>, Path(id): Path<u64>) -> impl IntoResponse {
    drill(&s, id, "isolate").await
}

async fn heal(State(s): State<ViewState>, Path(id): Path<u64>) -> impl IntoResponse {
    drill(&s, id, "heal").await
}

/// Asks node `id`'s own endpoint to isolate or heal it (its `/admin` drill).
async fn drill(s: &ViewState, id: u64, what: &str) -> (StatusCode, String) {
    let addr = {
        let c = s.cluster.lock().await;
        match index_of(&c, id) {
            Some(i) => c.layout[i].http,
            None => return (StatusCode::NOT_FOUND, format!("no node {id}\n")),
        }
    };
    match post_admin(addr, what).await {
        Ok(()) => {
            println!("  view: node {id}: {what}");
            (StatusCode::OK, format!("node {id}: {what}\n"))
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("node {id} did not answer: {e}\n"),
        ),
    }
}

/// `POST /admin/<what>` to a node's HTTP endpoint on loopback, with the admin header.
async fn post_admin(addr: std::net::SocketAddr, what: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "POST /admin/{what} HTTP/1.1\r\nHost: {addr}\r\n{}: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            crate::http::ADMIN_HEADER
        );
        s.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        match answer.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            other => Err(std::io::Error::other(format!("answered {other:?}"))),
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), talk)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 2 s"))?
}

async fn cluster_json(State(s): State<ViewState>) -> impl IntoResponse {
    let mut c = s.cluster.lock().await;
    // A process that exited on its own (a removed member, a fatal error) is down.
    for child in c.children.iter_mut() {
        if child
            .as_mut()
            .is_some_and(|p| !matches!(p.try_wait(), Ok(None)))
        {
            *child = None;
        }
    }
    let nodes: Vec<serde_json::Value> = c
        .layout
        .iter()
        .zip(&c.children)
        .map(|(n, child)| {
            json!({
                "id": n.id.0,
                "client": n.client.to_string(),
                "raft": n.raft.to_string(),
                "http": n.http.to_string(),
                "running": child.is_some(),
            })
        })
        .collect();
    Json(json!({
        "nodes": nodes,
        "load": {
            "running": s.load.running.load(Ordering::Relaxed),
            "ops": s.load.ops.load(Ordering::Relaxed),
            "errors": s.load.errors.load(Ordering::Relaxed),
        },
    }))
}

fn index_of(c: &LocalCluster, id: u64) -> Option<usize> {
    c.layout.iter().position(|n| n.id.0 == id)
}

async fn kill(State(s): State<ViewState>, Path(id): Path<u64>) -> impl IntoResponse {
    let mut c = s.cluster.lock().await;
    let Some(i) = index_of(&c, id) else {
        return (StatusCode::NOT_FOUND, format!("no node {id}\n"));
    };
    match c.children[i].take() {
        Some(mut child) => {
            // SIGKILL: a crash, not a clean stop; the node restarts from what was durable.
            let _ = child.kill().await;
            println!("  view: node {id} killed");
            (StatusCode::OK, format!("node {id} killed\n"))
        }
        None => (StatusCode::CONFLICT, format!("node {id} is not running\n")),
    }
}

async fn restart(State(s): State<ViewState>, Path(id): Path<u64>) -> impl IntoResponse {
    let mut c = s.cluster.lock().await;
    let Some(i) = index_of(&c, id) else {
        return (StatusCode::NOT_FOUND, format!("no node {id}\n"));
    };
    if c.children[i].is_some() {
        return (StatusCode::CONFLICT, format!("node {id} is running\n"));
    }
    let spawned = runner::spawn_node(
        &c.exe,
        &c.layout[i],
        &c.layout,
        (c.tuning, &c.security),
        None,
    );
    match spawned {
        Ok(child) => {
            c.children[i] = Some(child);
            println!("  view: node {id} restarted");
            (StatusCode::OK, format!("node {id} restarted\n"))
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn load_start(State(s): State<ViewState>) -> impl IntoResponse {
    if s.load.running.swap(true, Ordering::Relaxed) {
        return "already running\n";
    }
    let (addrs, auth) = {
        let c = s.cluster.lock().await;
        let addrs = c.layout.iter().map(|n| n.client).collect();
        (addrs, c.security.client_auth())
    };
    let Ok(auth) = auth else {
        s.load.running.store(false, Ordering::Relaxed);
        return "cannot connect\n";
    };
    let load = s.load.clone();
    let task = tokio::spawn(async move {
        let mut client = KvClient::with_auth(addrs, auth);
        let mut n = 0u64;
        while load.running.load(Ordering::Relaxed) {
            n += 1;
            let key = format!("load:{}", n % 1000);
            match client.set(&key, &n.to_string()).await {
                Ok(()) => load.ops.fetch_add(1, Ordering::Relaxed),
                Err(_) => load.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    *s.load.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    "started\n"
}

async fn load_stop(State(s): State<ViewState>) -> impl IntoResponse {
    s.load.running.store(false, Ordering::Relaxed);
    if let Some(task) = s.load.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
        task.abort();
    }
    "stopped\n"
}
