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

/// How often a server looks at its certificate files for a renewed certificate.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);

impl ServerTls {
    /// A TLS acceptor offering `alpn` (such as `h2` and `http/1.1`), requiring client
    /// certificates when `client_ca_path` is set. A certificate and key renewed in place (as
    /// cert-manager and the like do) are picked up without a restart: see [`ReloadingCert`].
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        self.acceptor_checking_every(alpn, RELOAD_CHECK_INTERVAL)
    }

    /// [`ServerTls::acceptor`], looking for renewed files every `interval`.
    pub fn acceptor_checking_every(&self, alpn: &[&[u8]], interval: Duration) -> Result<TlsAcceptor, TlsError> {
        let certificate = Arc::new(ReloadingCert::load(&self.cert_path, &self.key_path, interval)?);
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let mut config = match &self.client_ca_path {
            None => builder.with_no_client_auth().with_cert_resolver(certificate),
            Some(ca_path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(ca_path)? {
                    roots.add(ca)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| TlsError::ClientCa { path: ca_path.display().to_string(), message: e.to_string() })?;
                builder.with_client_cert_verifier(verifier).with_cert_resolver(certificate)
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A certificate (a server's, or a client's) that follows its files. Handshakes read the files at most once per
/// interval (they are small), and load them again when their bytes changed; a pair
/// that does not load (a certificate renewed before its key, say) is reported and the last
/// good one stays in service until the files change again.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    interval: Duration,
    state: std::sync::Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<rustls::sign::CertifiedKey>,
    stamp: FileStamps,
    checked: std::time::Instant,
}

/// The bytes of the certificate and key files: modification times are too coarse to tell
/// two quick writes apart.
type FileStamps = [Option<Vec<u8>>; 2];

impl ReloadingCert {
    /// Loads the certificate and key, which must load now.
    pub fn load(cert_path: &Path, key_path: &Path, interval: Duration) -> Result<ReloadingCert, TlsError> {
        let stamp = stamps(cert_path, key_path);
        let key = Arc::new(certified_key(cert_path, key_path)?);
        Ok(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            interval,
            state: std::sync::Mutex::new(Loaded { key, stamp, checked: std::time::Instant::now() }),
        })
    }

    /// The certificate in service, after loading renewed files if it is time to look.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut loaded = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.checked.elapsed() >= self.interval {
            loaded.checked = std::time::Instant::now();
            let stamp = stamps(&self.cert_path, &self.key_path);
            if stamp != loaded.stamp {
                loaded.stamp = stamp;
                match certified_key(&self.cert_path, &self.key_path) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_path.display(), "loaded a renewed TLS certificate");
                        loaded.key = Arc::new(key);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a changed TLS certificate does not load; keeping the one in service");
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn stamps(cert_path: &Path, key_path: &Path) -> FileStamps {
    [std::fs::read(cert_path).ok(), std::fs::read(key_path).ok()]
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(cert_path: &Path, key_path: &Path) -> Result<rustls::sign::CertifiedKey, TlsError> {
    Ok(rustls::sign::CertifiedKey::from_der(read_certs(cert_path)?, read_key(key_path)?, &provider())?)
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

    /// A rustls client configuration offering `alpn`. The client certificate, when there is
    /// one, follows its files as a server's does (see [`ReloadingCert`]).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_checking_every(alpn, RELOAD_CHECK_INTERVAL)
    }

    /// [`ClientTls::client_config`], looking for a renewed client certificate every `interval`.
    pub fn client_config_checking_every(
        &self,
        alpn: &[&[u8]],
        interval: Duration,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs(&self.ca_path)? {
            roots.add(ca)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.cert_path, &self.key_path) {
            (Some(cert_path), Some(key_path)) => {
                builder.with_client_cert_resolver(Arc::new(ReloadingCert::load(cert_path, key_path, interval)?))
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

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_renewal_is_not() {
        let files = Files { dir: tempfile::tempdir().unwrap() };
        let ca = TestCa::new("servers").unwrap();
        let (first, second, third) =
            (ca.issue(&["localhost"]).unwrap(), ca.issue(&["localhost"]).unwrap(), ca.issue(&["localhost"]).unwrap());
        let tls = ServerTls {
            cert_path: files.write("server.pem", &first.cert_pem),
            key_path: files.write("server.key", &first.key_pem),
            client_ca_path: None,
        };
        let acceptor = tls.acceptor_checking_every(&[], Duration::ZERO).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut incoming = TlsIncoming::new(listener, acceptor).unwrap();
        let addr = incoming.local_addr();
        tokio::spawn(async move {
            while let Some((mut tls, _)) = incoming.accept().await {
                let _ = tls.shutdown().await;
            }
        });
        let client = ClientTls {
            ca_path: files.write("ca.pem", ca.cert_pem()),
            server_name: None,
            cert_path: None,
            key_path: None,
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client.client_config(&[]).unwrap()));
        let served = || async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].clone()
        };
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();

        assert_eq!(served().await, der(&first.cert_pem));
        files.write("server.pem", &second.cert_pem);
        files.write("server.key", &second.key_pem);
        assert_eq!(served().await, der(&second.cert_pem), "renewed in place");
        // Half a renewal (a new certificate, the old key) does not load: the last good pair
        // stays in service, and the renewal is picked up once the key arrives.
        files.write("server.pem", &third.cert_pem);
        assert_eq!(served().await, der(&second.cert_pem));
        files.write("server.key", &third.key_pem);
        assert_eq!(served().await, der(&third.cert_pem));

        // At start, a pair that does not belong together is refused.
        let mismatched = ServerTls {
            cert_path: tls.cert_path.clone(),
            key_path: files.write("other.key", &first.key_pem),
            client_ca_path: None,
        };
        let Err(error) = mismatched.acceptor(&[]) else { panic!("a certificate with another's key was accepted") };
        assert!(error.to_string().contains("do not work together"), "{error}");
    }

    #[tokio::test]
    async fn a_renewed_client_certificate_is_presented_on_the_next_connection() {
        let files = Files { dir: tempfile::tempdir().unwrap() };
        let (server_ca, client_ca) = (TestCa::new("servers").unwrap(), TestCa::new("clients").unwrap());
        let server = server_ca.issue(&["localhost"]).unwrap();
        let tls = ServerTls {
            cert_path: files.write("server.pem", &server.cert_pem),
            key_path: files.write("server.key", &server.key_pem),
            client_ca_path: Some(files.write("client-ca.pem", client_ca.cert_pem())),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut incoming = TlsIncoming::new(listener, tls.acceptor(&[]).unwrap()).unwrap();
        let addr = incoming.local_addr();
        // The server answers with the certificate its client presented.
        tokio::spawn(async move {
            while let Some((mut tls, _)) = incoming.accept().await {
                let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                let _ = tls.write_all(&presented).await;
                let _ = tls.shutdown().await;
            }
        });
        let (first, second) = (client_ca.issue(&["router"]).unwrap(), client_ca.issue(&["router"]).unwrap());
        let client = ClientTls {
            ca_path: files.write("server-ca.pem", server_ca.cert_pem()),
            server_name: Some("localhost".into()),
            cert_path: Some(files.write("client.pem", &first.cert_pem)),
            key_path: Some(files.write("client.key", &first.key_pem)),
        };
        let mut config = client.client_config_checking_every(&[], Duration::ZERO).unwrap();
        // A resumed session keeps the identity it was made with: fresh handshakes here.
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        let presented = || async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.unwrap();
            let mut der = Vec::new();
            tls.read_to_end(&mut der).await.unwrap();
            der
        };
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec();
        assert_eq!(presented().await, der(&first.cert_pem));
        files.write("client.pem", &second.cert_pem);
        files.write("client.key", &second.key_pem);
        assert_eq!(presented().await, der(&second.cert_pem));
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
