//! Mutual TLS for the TCP transport (rustls, no OpenSSL).
//!
//! Every member holds a certificate and key signed by the cluster's CA. The certificate names
//! the member by a DNS subject alternative name, [`member_name`] (`raft-node-<id>`), and that
//! name is its identity:
//! - the dialer asks for `raft-node-<to>`, so only the member it meant to reach can answer;
//! - the acceptor requires a client certificate from the same CA, and checks that it names
//!   the node the dialer's `Hello` claims to be, so a peer holding node 2's certificate cannot
//!   speak as node 3.
//!
//! The cluster-id handshake runs inside the encrypted link as on plain TCP. Files are given
//! by path ([`TlsFiles`]); [`TlsIdentity::reload`] reads them again, and connections made
//! from then on use the new certificate (those already up keep theirs).
//!
//! [`pki`] makes a private CA and member certificates, for local clusters and tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use raft_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The DNS name a member's certificate must carry: `raft-node-<id>`.
pub fn member_name(id: NodeId) -> String {
    format!("raft-node-{}", id.0)
}

/// Where a party's certificate, private key and trusted CA bundle are, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates that sign the members' (and clients') certificates.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The files [`pki::Pki::write_member`] writes for `name` in `dir`, with the CA's
    /// `ca.pem` beside them.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: dir.join("ca.pem"),
        }
    }
}

/// Why TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no valid PEM.
    #[error("cannot read {what} from {path}: {reason}")]
    Read {
        /// Certificate, key or CA.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate does not name the node it is used for.
    #[error("the certificate {path} does not name node {id} (it needs the DNS name {name})")]
    NotForNode {
        /// The certificate file.
        path: PathBuf,
        /// The node.
        id: NodeId,
        /// The name it lacks.
        name: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS setup: {0}")]
    Setup(String),
    /// Generating certificates failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn setup(e: impl std::fmt::Display) -> TlsError {
    TlsError::Setup(e.to_string())
}

/// rustls configurations built from one set of [`TlsFiles`].
struct Configs {
    /// Accepts only peers with a certificate from the CA (members, authenticated clients).
    mutual: Arc<ServerConfig>,
    /// Verifies a certificate if one is offered, but also serves clients without one.
    optional: Arc<ServerConfig>,
    /// Dials out, presenting this party's certificate.
    client: Arc<ClientConfig>,
}

/// One party's TLS identity: its certificate and key, and the CA it trusts. Cheap to share;
/// [`reload`](TlsIdentity::reload) swaps in new files without a restart.
pub struct TlsIdentity {
    files: TlsFiles,
    /// The member the certificate must name, checked on every (re)load.
    member: Option<NodeId>,
    configs: RwLock<Arc<Configs>>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("files", &self.files)
            .finish()
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn read_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA certificate", ca)? {
        roots.add(cert).map_err(|e| TlsError::Read {
            what: "CA certificate",
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Configs {
    fn load(files: &TlsFiles, member: Option<NodeId>) -> Result<Configs, TlsError> {
        let certs = read_certs("certificate", &files.cert)?;
        if let Some(id) = member.filter(|&id| !names(&certs[0], id)) {
            return Err(TlsError::NotForNode {
                path: files.cert.clone(),
                id,
                name: member_name(id),
            });
        }
        let key = read_key(&files.key)?;
        let roots = Arc::new(read_roots(&files.ca)?);
        let server = |verifier| {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(setup)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs.clone(), key.clone_key())
                .map(Arc::new)
                .map_err(setup)
        };
        let verifier = || WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let mutual = server(verifier().build().map_err(setup)?)?;
        let optional = server(verifier().allow_unauthenticated().build().map_err(setup)?)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(certs, key)
            .map_err(setup)?;
        Ok(Configs {
            mutual,
            optional,
            client: Arc::new(client),
        })
    }
}

impl TlsIdentity {
    /// Reads `files` (a client's, or any party's whose certificate names no member).
    pub fn load(files: TlsFiles) -> Result<Arc<TlsIdentity>, TlsError> {
        Self::load_as(None, files)
    }

    /// Reads `files` for member `id`, refusing a certificate that does not name it.
    pub fn load_member(id: NodeId, files: TlsFiles) -> Result<Arc<TlsIdentity>, TlsError> {
        Self::load_as(Some(id), files)
    }

    fn load_as(member: Option<NodeId>, files: TlsFiles) -> Result<Arc<TlsIdentity>, TlsError> {
        let configs = Configs::load(&files, member)?;
        Ok(Arc::new(TlsIdentity {
            files,
            member,
            configs: RwLock::new(Arc::new(configs)),
        }))
    }

    /// Reads the files again; new connections use them. On error (unreadable files, a
    /// certificate that no longer names this member) the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Configs::load(&self.files, self.member)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The files this identity reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Configs> {
        self.configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Accepts connections that present a certificate from the CA (members' links).
    pub fn mutual_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current().mutual.clone())
    }

    /// Accepts connections with or without a client certificate (one offered must be from
    /// the CA): for client ports where passwords authenticate people and certificates
    /// members.
    pub fn optional_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current().optional.clone())
    }

    /// Dials out with this identity's certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current().client.clone())
    }
}

/// A connector for clients that check servers against the CA in `ca` (PEM) and present no
/// certificate of their own (they authenticate otherwise, with a password say).
pub fn anonymous_connector(ca: &Path) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let roots = read_roots(ca)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The name a dialer asks for when it means to reach member `id`.
pub fn server_name(id: NodeId) -> ServerName<'static> {
    ServerName::try_from(member_name(id)).expect("invariant: raft-node-<digits> is a DNS name")
}

/// Whether `cert` (already verified against the CA) names member `id`.
pub fn names(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(leaf) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    leaf.verify_is_valid_for_subject_name(&server_name(id))
        .is_ok()
}

/// Whether the peer of a server-side TLS connection proved to be member `id`.
pub fn peer_is(conn: &rustls::ServerConnection, id: NodeId) -> bool {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .is_some_and(|leaf| names(leaf, id))
}

pub mod pki {
    //! A private CA and certificates for members and clients, made with rcgen: what
    //! `raft-kv cluster --tls` and the tests use. Production clusters bring their own.

    use std::net::IpAddr;
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    use super::{member_name, TlsError, TlsFiles};
    use raft_core::NodeId;

    fn gen(e: rcgen::Error) -> TlsError {
        TlsError::Generate(e.to_string())
    }

    fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
        std::fs::write(path, contents)
            .map_err(|e| TlsError::Generate(format!("cannot write {}: {e}", path.display())))
    }

    /// Writes a private key readable by its owner only (mode 0600): whoever reads the CA's
    /// key can make member certificates.
    fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail =
            |e: std::io::Error| TlsError::Generate(format!("cannot write {}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        file.write_all(contents.as_bytes()).map_err(fail)
    }

    /// What a certificate is for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Party {
        /// A member: serves (its peers, clients) and dials (its peers).
        Member,
        /// A client: dials only, so it can never pass for a server.
        Client,
    }

    fn ca_params(name: &str) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// A certificate authority that can issue certificates.
    pub struct Pki {
        issuer: Issuer<'static, KeyPair>,
        ca_pem: String,
    }

    impl std::fmt::Debug for Pki {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Pki").finish_non_exhaustive()
        }
    }

    impl Pki {
        /// A new CA named `name` (its key lives only in this value unless
        /// [`write_ca`](Pki::write_ca) saves it).
        pub fn generate(name: &str) -> Result<Pki, TlsError> {
            let params = ca_params(name)?;
            let key = KeyPair::generate().map_err(gen)?;
            let ca_pem = params.self_signed(&key).map_err(gen)?.pem();
            Ok(Pki {
                issuer: Issuer::new(params, key),
                ca_pem,
            })
        }

        /// Loads the CA named `name` that [`write_ca`](Pki::write_ca) saved in `dir`.
        pub fn load(dir: &Path, name: &str) -> Result<Pki, TlsError> {
            let read = |file: &str| {
                std::fs::read_to_string(dir.join(file)).map_err(|e| TlsError::Read {
                    what: "CA",
                    path: dir.join(file),
                    reason: e.to_string(),
                })
            };
            let (ca_pem, key_pem) = (read("ca.pem")?, read("ca-key.pem")?);
            let key = KeyPair::from_pem(&key_pem).map_err(gen)?;
            // The issuer is the CA's name and key usages (as generated) and its key: what
            // rcgen needs to sign, without parsing the certificate back.
            Ok(Pki {
                issuer: Issuer::new(ca_params(name)?, key),
                ca_pem,
            })
        }

        /// The CA certificate, PEM.
        pub fn ca_pem(&self) -> &str {
            &self.ca_pem
        }

        /// Saves the CA certificate (`ca.pem`) and its key (`ca-key.pem`) in `dir`.
        pub fn write_ca(&self, dir: &Path) -> Result<(), TlsError> {
            write(&dir.join("ca.pem"), &self.ca_pem)?;
            write_private(&dir.join("ca-key.pem"), &self.issuer.key().serialize_pem())
        }

        /// Issues a certificate for `dns` names and `ips`, for `party`; returns the
        /// certificate and key, PEM.
        pub fn issue(
            &self,
            dns: &[String],
            ips: &[IpAddr],
            party: Party,
        ) -> Result<(String, String), TlsError> {
            let mut params = CertificateParams::new(dns.to_vec()).map_err(gen)?;
            if let Some(first) = dns.first() {
                params.distinguished_name.push(DnType::CommonName, first);
            }
            params
                .subject_alt_names
                .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
            params.extended_key_usages = match party {
                Party::Member => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
                Party::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            };
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().map_err(gen)?;
            let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
            Ok((cert.pem(), key.serialize_pem()))
        }

        /// Issues member `id`'s certificate (named [`member_name`], plus `localhost` and
        /// `ips` so clients can check the server they dial) and writes it with the CA
        /// certificate into `dir`, as `raft-node-<id>.pem`, `raft-node-<id>-key.pem` and
        /// `ca.pem`.
        pub fn write_member(
            &self,
            dir: &Path,
            id: NodeId,
            ips: &[IpAddr],
        ) -> Result<TlsFiles, TlsError> {
            let name = member_name(id);
            let dns = [name.clone(), "localhost".into()];
            self.write_issued(dir, &name, self.issue(&dns, ips, Party::Member)?)
        }

        /// Issues a client certificate naming `name` (for dialing only: it authenticates a
        /// client of the Raft port, and cannot pass for a member or a server) and writes it
        /// as `<name>.pem` and `<name>-key.pem`, with `ca.pem`, into `dir`.
        pub fn write_client(&self, dir: &Path, name: &str) -> Result<TlsFiles, TlsError> {
            self.write_issued(dir, name, self.issue(&[name.into()], &[], Party::Client)?)
        }

        fn write_issued(
            &self,
            dir: &Path,
            name: &str,
            (cert, key): (String, String),
        ) -> Result<TlsFiles, TlsError> {
            std::fs::create_dir_all(dir)
                .map_err(|e| TlsError::Generate(format!("cannot create {}: {e}", dir.display())))?;
            let files = TlsFiles::in_dir(dir, name);
            write(&files.cert, &cert)?;
            write_private(&files.key, &key)?;
            write(&files.ca, &self.ca_pem)?;
            Ok(files)
        }
    }
}
