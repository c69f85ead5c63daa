//! The namer's APIs over TLS, with client certificates required: the HTTP API through a
//! real HTTPS client, the gRPC API through a tonic client, and clients without a certificate
//! from the client CA turned away.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use waymark_proto::mesh::delegator_client::DelegatorClient;
use waymark_proto::request::dtab_req;
use waymark_test_support::{TestCa, TestCert};
use waymark_tls::ClientTls;

/// A server CA, a client CA, the namer's certificate and a router's, as files.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: TestCa,
    client_ca: TestCa,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            server_ca: TestCa::new("namers").unwrap(),
            client_ca: TestCa::new("routers").unwrap(),
        }
    }

    /// `tls:` for a namer interface that requires client certificates.
    fn server_yaml(&self) -> String {
        let (cert, key) =
            self.server_ca.issue(&["namer.test", "127.0.0.1"]).unwrap().write_pem(self.dir.path(), "namer");
        let client_ca = self.client_ca.write_pem(self.dir.path(), "client-ca");
        format!("{{cert_path: {cert}, key_path: {key}, client_ca_path: {client_ca}}}")
    }

    fn client(&self, name: &str, identity: Option<&TestCert>) -> ClientTls {
        let identity = identity.map(|c| c.write_pem(self.dir.path(), name));
        ClientTls {
            ca_path: self.server_ca.write_pem(self.dir.path(), "server-ca").into(),
            server_name: Some("namer.test".into()),
            cert_path: identity.as_ref().map(|(cert, _)| cert.into()),
            key_path: identity.as_ref().map(|(_, key)| key.into()),
        }
    }
}

async fn start(pki: &Pki) -> common::Namer {
    let tls = pki.server_yaml();
    common::start(&format!(
        "interfaces:\n  - {{kind: io.l5d.httpController, tls: {tls}}}\n  - {{kind: io.l5d.mesh, tls: {tls}}}\n"
    ))
    .await
}

/// One HTTPS request; the status and body, or why the exchange failed.
async fn https(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
    request: http::Request<Full<Bytes>>,
) -> Result<(u16, String), String> {
    let config = tls.client_config(&[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("namer.test").unwrap();
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn request(method: &str, path: &str, body: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "namer.test")
        .header("content-type", "application/dtab")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The namespace's dtab through the gRPC API, or why that failed.
async fn grpc_dtab(addr: std::net::SocketAddr, tls: &ClientTls, ns: &str) -> Result<String, String> {
    let files = tls.read().unwrap();
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(files.ca)).domain_name("namer.test");
    if let Some((cert, key)) = files.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    // TLS 1.3 clients learn of a refused certificate on their first read, not at connect.
    let got = DelegatorClient::new(channel).get_dtab(dtab_req(ns)).await.map_err(|e| format!("{e:?}"))?;
    let got = waymark_proto::convert::VersionedDtab::try_from(&got.into_inner()).map_err(|e| format!("{e:?}"))?;
    Ok(got.dtab.to_string())
}

#[tokio::test]
async fn both_apis_serve_tls_and_admit_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let namer = start(&pki).await;
    let router_cert = pki.client_ca.issue(&["router"]).unwrap();
    let member = pki.client("router", Some(&router_cert));

    let (status, _) =
        https(namer.http, &member, request("PUT", "/api/1/dtabs/default", "/svc=>/$/inet/127.1/80")).await.unwrap();
    assert_eq!(status, 204);
    let (status, body) = https(namer.http, &member, request("GET", "/api/1/dtabs/default", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "[{\"prefix\":\"/svc\",\"dst\":\"/$/inet/127.1/80\"}]\n"));

    assert_eq!(grpc_dtab(namer.mesh, &member, "default").await.unwrap(), "/svc=>/$/inet/127.1/80");

    // Without a certificate, or with one from another CA, nothing gets through: not even a
    // read, and above all not a write.
    let stranger = TestCa::new("stranger").unwrap().issue(&["router"]).unwrap();
    for outsider in [pki.client("anonymous", None), pki.client("stranger", Some(&stranger))] {
        let write = https(namer.http, &outsider, request("PUT", "/api/1/dtabs/default", "/svc=>/$/nil")).await;
        assert!(write.is_err(), "{write:?}");
        let read = grpc_dtab(namer.mesh, &outsider, "default").await;
        assert!(read.is_err(), "{read:?}");
    }
    let (_, body) = https(namer.http, &member, request("GET", "/api/1/dtabs/default", "")).await.unwrap();
    assert!(body.contains("/$/inet/127.1/80"), "{body}");
    namer.stop().await;
}

#[tokio::test]
async fn a_missing_certificate_file_stops_the_namer_from_starting_and_says_which() {
    let yaml = "interfaces:\n  - kind: io.l5d.mesh\n    tls: {cert_path: /nonexistent/namer.pem, key_path: /nonexistent/namer.key}\n";
    let config = waymark_namer::NamerConfig::from_yaml(yaml, "test").unwrap();
    let Err(error) = waymark_namer::NamerApp::build(config, None).await else { panic!("no certificate, no namer") };
    assert!(error.to_string().starts_with("interfaces[0].tls: /nonexistent/namer.pem:"), "{error}");
}
