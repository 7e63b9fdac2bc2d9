//! TLS end to end: h2 and http/1.1 by ALPN with certificates generated in the test, and an
//! https upstream trusted through `ca_file`.

mod support;

use std::path::Path;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::*;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn write_pki(dir: &Path, pki: &Pki) -> (String, String, String) {
    let ca = dir.join("ca.pem");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    )
}

fn tls_client(
    ca_pem: &str,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let conn = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    let mut builder = Client::builder(TokioExecutor::new());
    if h2 {
        builder.http2_only(true);
    }
    builder.build(conn)
}

async fn tls_gateway(upstream: &str, dir: &Path, pki: &Pki) -> Gw {
    let (_, cert, key) = write_pki(dir, pki);
    let mut cfg = config_for(upstream);
    cfg.server.tls = Some(om_secrets_proxy::config::TlsFiles {
        cert: cert.into(),
        key: key.into(),
    });
    start_gateway(cfg).await
}

#[tokio::test]
async fn h2_over_alpn_with_a_generated_certificate() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let gw = tls_gateway(&emu.url(), dir.path(), &pki).await;
    let url = format!("https://localhost:{}/__test/echo", gw.api.port());
    let req = http::Request::post(&url)
        .body(Full::new(Bytes::from("over tls")))
        .unwrap();
    let resp = tls_client(&pki.ca_pem, true).request(req).await.unwrap();
    let a = collect(resp).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!(a.body, "over tls");
    let seen: serde_json::Value =
        serde_json::from_str(a.headers["x-echo-headers"].to_str().unwrap()).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn http1_over_alpn_with_a_generated_certificate() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let gw = tls_gateway(&emu.url(), dir.path(), &pki).await;
    let url = format!("https://localhost:{}/api/v1/system/version", gw.api.port());
    let req = http::Request::get(&url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = collect(tls_client(&pki.ca_pem, false).request(req).await.unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, http::Version::HTTP_11);
    assert_eq!(a.json()["version"], "2.0.7");
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_ca_file() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    // A TLS gateway stands in for an https OpenMetadata server.
    let inner = tls_gateway(&emu.url(), dir.path(), &pki).await;
    let mut cfg = config_for(&format!("https://localhost:{}", inner.api.port()));
    cfg.upstream.ca_file = Some(dir.path().join("ca.pem"));
    let outer = start_gateway(cfg).await;
    let a = send(
        &client(),
        Method::PUT,
        &outer.url("/__test/echo"),
        &[],
        "through two hops",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "through two hops");
}

#[tokio::test]
async fn an_https_upstream_with_an_unknown_ca_is_a_502() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let inner = tls_gateway(&emu.url(), dir.path(), &pki).await;
    let outer = start_gateway(config_for(&format!(
        "https://localhost:{}",
        inner.api.port()
    )))
    .await;
    let a = get(&outer.url("/api/v1/system/version")).await;
    assert_eq!(a.status, 502);
}

/// A self-signed CA certificate that the upstream presents as its own is refused even when
/// `ca_file` holds it: accepting it would skip the checks of its names and uses.
#[tokio::test]
async fn a_ca_certificate_used_as_the_upstreams_own_is_refused() {
    let emu = Emulator::start().await;
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let served = Pki {
        ca_pem: cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let dir = tempfile::tempdir().unwrap();
    let inner = tls_gateway(&emu.url(), dir.path(), &served).await;
    let mut cfg = config_for(&format!("https://localhost:{}", inner.api.port()));
    cfg.upstream.ca_file = Some(dir.path().join("ca.pem"));
    let outer = start_gateway(cfg).await;
    assert_eq!(get(&outer.url("/api/v1/system/version")).await.status, 502);
}
