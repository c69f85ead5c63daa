//! TLS for Waymark's servers and for its clients of them: certificates and keys read from
//! PEM files into rustls configurations (on the ring provider, as everywhere in Waymark), and
//! a listener that completes handshakes away from the accept loop.
//!
//! Configuration sections use these types directly, so the router's listeners, the namer's
//! interfaces and the router's connection to the namer all take the same keys.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A server's certificate, and optionally the CAs its clients' certificates must come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain, PEM, leaf first.
    pub cert_path: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// When set, every client must present a certificate issued by one of these CAs (PEM):
    /// mutual TLS, which is how a server limits who may call it.
    #[serde(default)]
    pub client_ca_path: Option<PathBuf>,
}

/// What a client trusts, and who it is, when it connects to a Waymark server over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The CAs the server's certificate must come from (PEM).
    pub ca_path: PathBuf,
    /// The name the server's certificate must carry; by default, the host dialled.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM, leaf first), for servers that require one.
    #[serde(default)]
    pub cert_path: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
}

/// A client's TLS files, read and checked.
#[derive(Debug, Clone)]
pub struct ClientPem {
    /// The trusted CAs, PEM.
    pub ca: Vec<u8>,
    /// The client certificate chain and key, PEM, when the client has one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificates or key.
    #[error("the certificates and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA file holds nothing a verifier can use.
    #[error("{path}: not usable as client CAs: {message}")]
    ClientCa {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most handshakes in progress at once; past it, accepting waits for one to finish, so
/// that a flood of connections costs bounded memory.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Every certificate in a PEM file; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate found"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// A TLS acceptor offering `alpn` (such as `h2` and `http/1.1`), requiring client
    /// certificates when `client_ca_path` is set.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let certs = read_certs(&self.cert_path)?;
        let key = read_key(&self.key_path)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let mut config = match &self.client_ca_path {
            None => builder.with_no_client_auth().with_single_cert(certs, key)?,
            Some(ca_path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(ca_path)? {
                    roots.add(ca)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| TlsError::ClientCa { path: ca_path.display().to_string(), message: e.to_string() })?;
                builder.with_client_cert_verifier(verifier).with_single_cert(certs, key)?
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ClientTls {
    /// Problems found without reading the files.
    pub fn problems(&self, at: &str) -> Vec<String> {
        match (&self.cert_path, &self.key_path) {
            (Some(_), None) => vec![format!("{at}.key_path: needed with cert_path")],
            (None, Some(_)) => vec![format!("{at}.cert_path: needed with key_path")],
            _ => Vec::new(),
        }
    }

    /// Reads the files, checking that each holds what it should.
    pub fn read(&self) -> Result<ClientPem, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| file_error(path, e));
        read_certs(&self.ca_path)?;
        let ca = read(&self.ca_path)?;
        let identity = match (&self.cert_path, &self.key_path) {
            (Some(cert_path), Some(key_path)) => {
                read_certs(cert_path)?;
                read_key(key_path)?;
                Some((read(cert_path)?, read(key_path)?))
            }
            _ => None,
        };
        Ok(ClientPem { ca, identity })
    }

    /// A rustls client configuration offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs(&self.ca_path)? {
            roots.add(ca)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.cert_path, &self.key_path) {
            (Some(cert_path), Some(key_path)) => {
                builder.with_client_auth_cert(read_certs(cert_path)?, read_key(key_path)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// TLS connections accepted on a listener. Handshakes run concurrently, each in its own task
/// and bounded by [`HANDSHAKE_TIMEOUT`] (and at most [`MAX_PENDING_HANDSHAKES`] at once), so
/// a slow or silent client never holds up the next; one that fails is logged and dropped.
/// Dropping this stops accepting.
#[derive(Debug)]
pub struct TlsIncoming {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsIncoming> {
        let local_addr = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(64);
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else { return };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsIncoming { connections, local_addr, accepting })
    }

    /// The next connection whose handshake completed.
    pub async fn accept(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.connections.recv().await
    }

    /// The address accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use waymark_test_support::TestCa;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    #[tokio::test]
    async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
        let files = Files { dir: tempfile::tempdir().unwrap() };
        let (server_ca, client_ca, stranger_ca) =
            (TestCa::new("servers").unwrap(), TestCa::new("clients").unwrap(), TestCa::new("stranger").unwrap());
        let server = server_ca.issue(&["localhost", "127.0.0.1"]).unwrap();
        let tls = ServerTls {
            cert_path: files.write("server.pem", &server.cert_pem),
            key_path: files.write("server.key", &server.key_pem),
            client_ca_path: Some(files.write("client-ca.pem", client_ca.cert_pem())),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut incoming = TlsIncoming::new(listener, tls.acceptor(&[b"h2"]).unwrap()).unwrap();
        let addr = incoming.local_addr();
        tokio::spawn(async move {
            while let Some((mut tls, _)) = incoming.accept().await {
                tokio::spawn(async move {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        // A client that says nothing does not stop the others.
        let _silent = TcpStream::connect(addr).await.unwrap();

        let client = |identity: Option<&waymark_test_support::TestCert>, name: &str| ClientTls {
            ca_path: files.write(&format!("{name}-ca.pem"), server_ca.cert_pem()),
            server_name: Some("localhost".into()),
            cert_path: identity.map(|c| files.write(&format!("{name}.pem"), &c.cert_pem)),
            key_path: identity.map(|c| files.write(&format!("{name}.key"), &c.key_pem)),
        };
        let talk = |config: ClientTls| async move {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config.client_config(&[b"h2"]).unwrap()));
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let mut greeting = String::new();
            tls.read_to_string(&mut greeting).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((greeting, tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)))
        };

        let member = client_ca.issue(&["router"]).unwrap();
        let (greeting, alpn) = talk(client(Some(&member), "member")).await.unwrap();
        assert_eq!((greeting.as_str(), alpn.as_deref()), ("hello", Some(&b"h2"[..])));
        // TLS 1.3 clients learn of a refused certificate when they first read.
        let outsider = stranger_ca.issue(&["router"]).unwrap();
        assert!(talk(client(Some(&outsider), "outsider")).await.is_err());
        assert!(talk(client(None, "anonymous")).await.is_err());
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let files = Files { dir: tempfile::tempdir().unwrap() };
        let tls = ServerTls {
            cert_path: files.write("empty.pem", ""),
            key_path: files.write("key.pem", "not a key"),
            client_ca_path: None,
        };
        let Err(error) = tls.acceptor(&[]) else { panic!("an empty certificate file was accepted") };
        let error = error.to_string();
        assert!(error.contains("empty.pem: no certificate found"), "{error}");
        let missing = ClientTls {
            ca_path: files.dir.path().join("missing.pem"),
            server_name: None,
            cert_path: Some(files.dir.path().join("c.pem")),
            key_path: None,
        };
        assert_eq!(missing.problems("tls"), ["tls.key_path: needed with cert_path"]);
        assert!(missing.read().unwrap_err().to_string().contains("missing.pem"));
    }
}
