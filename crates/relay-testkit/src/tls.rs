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
