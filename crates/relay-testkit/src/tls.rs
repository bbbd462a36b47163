//! A throw-away certificate authority and server certificates for TLS tests.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A test CA whose certificate is written to `ca.pem` in the given directory.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub ca_file: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Relay test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa { cert, key, ca_file }
    }

    /// Issues a certificate for `localhost` and `127.0.0.1`, written to `cert_file` and
    /// `key_file`; returns the certificate's DER bytes.
    pub fn issue(&self, cert_file: &Path, key_file: &Path, label: &str) -> Vec<u8> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, label);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(cert_file, cert.pem()).unwrap();
        std::fs::write(key_file, key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }
}

/// A TLS-terminating front for a plain TCP service (as a load balancer would be), with a
/// certificate for `localhost` from `ca`. Returns the port it listens on (127.0.0.1).
pub async fn tls_front(upstream: &str, ca: &TestCa, dir: &Path) -> u16 {
    let (cert, key) = (dir.join("front.pem"), dir.join("front.key"));
    ca.issue(&cert, &key, "front");
    let acceptor = relay_core::tls::ReloadableAcceptor::load(&cert, &key)
        .expect("test certificate")
        .acceptor()
        .expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                if let Ok(mut service) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut service).await;
                }
            });
        }
    });
    port
}
