//! `ferry pull https://…` over real TLS: a loopback HTTPS server (rustls) with a certificate
//! from a test CA serves the default GGUF. Trusted through `SSL_CERT_FILE`, the pull succeeds
//! and the model is registered; with Mozilla's roots only (the default), the same server is
//! refused for its unknown issuer and nothing is stored; a bundle without certificates is a
//! clear error.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const GGUF_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls")
}

fn der_items(path: &Path) -> Vec<ureq::tls::PemItem<'static>> {
    let pem = std::fs::read(path).unwrap();
    ureq::tls::parse_pem(&pem).map(|i| i.unwrap()).collect()
}

/// An HTTPS server on loopback answering every GET with `body`; counts requests served
/// (a TLS handshake refused by the client never gets that far).
struct Https {
    port: u16,
    served: Arc<AtomicUsize>,
}

impl Https {
    fn start(body: Vec<u8>) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let certs: Vec<CertificateDer<'static>> = der_items(&tls_dir().join("server.pem"))
            .into_iter()
            .filter_map(|i| match i {
                ureq::tls::PemItem::Certificate(c) => Some(CertificateDer::from(c.der().to_vec())),
                _ => None,
            })
            .collect();
        let key = der_items(&tls_dir().join("server.key"))
            .into_iter()
            .find_map(|i| match i {
                ureq::tls::PemItem::PrivateKey(k) => Some(PrivateKeyDer::Pkcs8(
                    PrivatePkcs8KeyDer::from(k.der().to_vec()),
                )),
                _ => None,
            })
            .expect("a PKCS#8 key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (cfg, body, count) = (cfg.clone(), body.clone(), count.clone());
                std::thread::spawn(move || {
                    let Ok(server) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(server, tcp);
                    // Read the request head (the handshake happens on first read).
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let hdr = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(hdr.as_bytes());
                    let _ = s.write_all(&body);
                    let _ = s.flush();
                    s.conn.send_close_notify();
                    let _ = s.flush();
                });
            }
        });
        Self { port, served }
    }
}

fn pull(home: &Path, url: &str, ca: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args([
        "pull",
        url,
        "--name",
        "tls",
        "--sha256",
        GGUF_SHA,
        "--retries",
        "0",
    ])
    .env("FERRY_HOME", home)
    .env_remove("SSL_CERT_FILE")
    .env_remove("REQUESTS_CA_BUNDLE");
    if let Some(ca) = ca {
        c.env("SSL_CERT_FILE", ca);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn https_pulls_trust_ssl_cert_file_and_refuse_unknown_issuers() {
    let gguf = std::fs::read(common::model_path()).unwrap();
    let srv = Https::start(gguf);
    let home = common::temp_home("https");
    let url = format!("https://localhost:{}/models/smol.gguf", srv.port);

    // Default roots (Mozilla's): the test CA is unknown, so the handshake fails and nothing
    // is stored.
    let o = pull(&home, &url, None);
    assert!(!o.status.success());
    let e = stderr(&o).to_lowercase();
    assert!(e.contains("certificate") || e.contains("issuer"), "{e}");
    assert_eq!(srv.served.load(Ordering::SeqCst), 0);
    assert!(common::ferry(&home, &["list"]).lines().count() <= 1);

    // A bundle that holds no certificate is named as such.
    let empty = home.join("empty.pem");
    std::fs::write(&empty, b"not a certificate\n").unwrap();
    let o = pull(&home, &url, Some(&empty));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("holds no PEM certificate"),
        "{}",
        stderr(&o)
    );

    // Trusted through SSL_CERT_FILE: downloaded over TLS, sha256-checked, registered.
    let o = pull(&home, &url, Some(&tls_dir().join("ca.pem")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(srv.served.load(Ordering::SeqCst), 1);
    let show = common::ferry(&home, &["show", "tls"]);
    assert!(show.contains("Q4_1") && show.contains(GGUF_SHA), "{show}");
    let _ = std::fs::remove_dir_all(&home);
}
