//! Throwaway certificates for tests of TLS clients and servers.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA whose certificate names it `name`.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert_pem = params.self_signed(&key).context("signing the CA certificate")?.pem();
        Ok(TestCa { issuer: Issuer::new(params, key), cert_pem })
    }

    /// The CA certificate, for trust stores.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `names` (DNS names or IP addresses), valid for both servers and
    /// clients.
    pub fn issue(&self, names: &[&str]) -> anyhow::Result<TestCert> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params.signed_by(&key, &self.issuer).context("signing a certificate")?;
        Ok(TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

impl TestCa {
    /// Writes the CA certificate to `dir/<name>.pem` and returns the path, for configuration
    /// files.
    pub fn write_pem(&self, dir: &std::path::Path, name: &str) -> String {
        write(dir, &format!("{name}.pem"), &self.cert_pem)
    }
}

impl TestCert {
    /// Writes the certificate and key to `dir/<name>.pem` and `dir/<name>.key` and returns
    /// their paths, for configuration files.
    pub fn write_pem(&self, dir: &std::path::Path, name: &str) -> (String, String) {
        (write(dir, &format!("{name}.pem"), &self.cert_pem), write(dir, &format!("{name}.key"), &self.key_pem))
    }
}

fn write(dir: &std::path::Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.display().to_string()
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}
