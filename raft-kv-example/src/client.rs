//! A Rust client for the KV cluster: talks to any node, follows leader changes, and gets
//! exactly-once writes by tagging each with its session (client id, sequence number) and
//! retrying with the same tag until it is answered.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use raft_transport::link::Link;
use tokio::io::AsyncWriteExt;

use crate::resp::{self, Value};
use crate::security::ClientAuth;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error that retrying will not fix.
    #[error("server error: {0}")]
    Server(String),
    /// No node answered within the retry budget.
    #[error("no node answered after {attempts} attempts; last problem: {last}")]
    Unavailable {
        /// How many attempts were made.
        attempts: u32,
        /// The last error seen.
        last: String,
    },
}

/// A cluster client with an exactly-once session.
pub struct KvClient {
    addrs: Vec<SocketAddr>,
    current: usize,
    conn: Option<(Link, BytesMut)>,
    auth: ClientAuth,
    client_id: u64,
    seq: u64,
    /// How often a call is retried across nodes before giving up.
    pub max_attempts: u32,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
}

impl KvClient {
    /// A client for the nodes at `addrs` (any of them may be contacted), with a fresh
    /// random session id.
    pub fn new(addrs: Vec<SocketAddr>) -> KvClient {
        Self::with_auth(addrs, ClientAuth::default())
    }

    /// A client as [`new`](KvClient::new) makes, connecting to a protected cluster with
    /// `auth` (TLS, password).
    pub fn with_auth(addrs: Vec<SocketAddr>, auth: ClientAuth) -> KvClient {
        KvClient {
            addrs,
            current: 0,
            conn: None,
            auth,
            client_id: rand::random::<u64>() >> 1,
            seq: 0,
            max_attempts: 50,
            attempt_timeout: Duration::from_secs(2),
        }
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// SET key value
    pub async fn set(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        self.write(&["SET", key, value]).await.map(|_| ())
    }

    /// INCR key; returns the new value.
    pub async fn incr(&mut self, key: &str) -> Result<i64, ClientError> {
        match self.write(&["INCR", key]).await? {
            Value::Integer(n) => Ok(n),
            other => Err(ClientError::Server(format!("unexpected reply {other:?}"))),
        }
    }

    /// GET key (linearizable).
    pub async fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        match self
            .call(vec![
                Bytes::from("GET"),
                Bytes::copy_from_slice(key.as_bytes()),
            ])
            .await?
        {
            Value::Bulk(v) => Ok(v),
            other => Err(ClientError::Server(format!("unexpected reply {other:?}"))),
        }
    }

    /// Any write command, applied exactly once however often it is retried.
    pub async fn write(&mut self, args: &[&str]) -> Result<Value, ClientError> {
        self.seq += 1;
        let mut full = vec![
            Bytes::from("SESSION"),
            Bytes::from(self.client_id.to_string()),
            Bytes::from(self.seq.to_string()),
        ];
        full.extend(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())));
        self.call(full).await
    }

    /// Sends one command, retrying on other nodes until it gets a definitive answer.
    pub async fn call(&mut self, args: Vec<Bytes>) -> Result<Value, ClientError> {
        let mut last = String::new();
        for attempt in 0..self.max_attempts {
            match tokio::time::timeout(self.attempt_timeout, self.try_once(&args)).await {
                Ok(Ok(Value::Error(e))) if is_retryable(&e) => last = e,
                Ok(Ok(Value::Error(e))) => return Err(ClientError::Server(e)),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    last = e.to_string();
                    self.conn = None;
                    self.current = (self.current + 1) % self.addrs.len().max(1);
                }
                Err(_) => {
                    last = "timed out".into();
                    self.conn = None;
                    self.current = (self.current + 1) % self.addrs.len().max(1);
                }
            }
            let backoff = Duration::from_millis(20 * u64::from(attempt.min(10) + 1));
            tokio::time::sleep(backoff).await;
        }
        Err(ClientError::Unavailable {
            attempts: self.max_attempts,
            last,
        })
    }

    async fn try_once(&mut self, args: &[Bytes]) -> std::io::Result<Value> {
        if self.conn.is_none() {
            let addr = *self
                .addrs
                .get(self.current)
                .ok_or_else(|| std::io::Error::other("no addresses"))?;
            let mut link = self.auth.connect(addr).await?;
            let mut buf = BytesMut::new();
            if let Some(password) = &self.auth.password {
                let mut out = BytesMut::new();
                let auth = [Bytes::from_static(b"AUTH"), Bytes::from(password.clone())];
                resp::encode_request(&auth, &mut out);
                link.write_all(&out).await?;
                link.flush().await?;
                if let Value::Error(e) = resp::read_value(&mut link, &mut buf).await? {
                    return Ok(Value::Error(e));
                }
            }
            self.conn = Some((link, buf));
        }
        let (stream, buf) = self
            .conn
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not connected"))?;
        let mut out = BytesMut::new();
        resp::encode_request(args, &mut out);
        stream.write_all(&out).await?;
        stream.flush().await?;
        resp::read_value(stream, buf).await
    }
}

/// Errors that mean "not now, maybe elsewhere": leader changes and elections.
fn is_retryable(e: &str) -> bool {
    e.starts_with("TRYAGAIN")
        || e.starts_with("ERR the raft node is shutting down")
        || e.starts_with("ERR not the leader")
}
