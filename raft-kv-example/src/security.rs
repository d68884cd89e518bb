//! Who may use a node's client port: TLS for the connection (a member's certificate marks a
//! forwarding link from another member), and a password (`requirepass`) for people, with
//! Redis 6's answers (`-NOAUTH` until authenticated, `-WRONGPASS` for a wrong password).

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::NodeId;
use raft_transport::link::Link;
use raft_transport::tls::{self, TlsError, TlsIdentity};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;

/// How a node protects its client port and authenticates its own forwarding links.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// This member's TLS identity: its client port speaks TLS (client certificates are
    /// optional; a member's marks a forwarding link), and it forwards to other members over
    /// TLS with it. The same identity secures the Raft port.
    pub tls: Option<Arc<TlsIdentity>>,
    /// Clients must `AUTH` with this password before anything else (Redis's `requirepass`).
    pub password: Option<Arc<str>>,
}

impl Security {
    /// Whether `given` is the password, compared in constant time (no password configured
    /// accepts nothing: there is nothing to authenticate against).
    pub fn password_matches(&self, given: &[u8]) -> bool {
        self.password
            .as_deref()
            .is_some_and(|p| bool::from(p.as_bytes().ct_eq(given)))
    }
}

/// How a client (a person's tool, not a member) reaches a protected cluster.
#[derive(Clone, Default)]
pub struct ClientAuth {
    /// Dial with TLS, checking the server's certificate against this CA.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// `AUTH` with this password on every new connection.
    pub password: Option<String>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("tls", &self.tls.is_some())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ClientAuth {
    /// TLS that trusts the CA in `ca` (PEM), presenting no certificate; with `password`.
    pub fn new(
        ca: Option<&std::path::Path>,
        password: Option<String>,
    ) -> Result<ClientAuth, TlsError> {
        let tls = ca.map(tls::anonymous_connector).transpose()?;
        Ok(ClientAuth { tls, password })
    }

    /// Connects to `addr`, over TLS when configured (the server's certificate must name
    /// the address's IP, as `raft-kv cluster --tls` certificates do).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<Link> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Link::Plain(tcp)),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                Ok(Link::Dialed(Box::new(connector.connect(name, tcp).await?)))
            }
        }
    }
}

/// Opens a member's forwarding link to member `to` at `addr`: TLS proving this member's
/// identity and checking `to`'s, when the cluster uses TLS.
pub async fn dial_member(
    security: &Security,
    to: NodeId,
    addr: SocketAddr,
) -> std::io::Result<Link> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match &security.tls {
        None => Ok(Link::Plain(tcp)),
        Some(identity) => Ok(Link::Dialed(Box::new(
            identity
                .connector()
                .connect(tls::server_name(to), tcp)
                .await?,
        ))),
    }
}
