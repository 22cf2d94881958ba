//! The CA and the nats-server certificate, made with `rcgen` (ECDSA P-256). Pure apart from drawing keys.
//!
//! One self-signed CA; one nats-server certificate signed by it, used on client connections and on routes (where
//! nats-server verifies the peer both ways, so it carries both the server and client extended key usages). Clients
//! trust the CA (`MUSTER_NATS_CA`), never the system roots.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long the CA and the certificates it signs are valid.
pub const VALIDITY_DAYS: i64 = 3650;

/// The names every nats-server certificate carries, so local clients can verify it.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot make the {what}: {detail}")]
pub struct CertError {
    /// Which certificate.
    pub what: &'static str,
    /// rcgen's message.
    pub detail: String,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPem {
    /// The certificate.
    pub cert: String,
    /// Its private key (a secret).
    pub key: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPem").field("cert", &self.cert).field("key", &"<secret>").finish()
    }
}

/// The CA and the nats-server certificate.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA (self-signed).
    pub ca: CertPem,
    /// The nats-server certificate, signed by the CA.
    pub server: CertPem,
}

fn err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |e| CertError { what, detail: e.to_string() }
}

fn validity(params: &mut CertificateParams, now_unix: i64) -> Result<(), CertError> {
    let now = OffsetDateTime::from_unix_timestamp(now_unix)
        .map_err(|e| CertError { what: "validity period", detail: e.to_string() })?;
    // A day back, for clocks that lag the machine that ran `init`.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(VALIDITY_DAYS);
    Ok(())
}

/// Makes a CA and a nats-server certificate for the [`LOOPBACK_NAMES`] and `hosts` (DNS names or IP addresses
/// under which clients and the other cluster nodes reach the servers), valid from `now_unix` (Unix seconds).
pub fn generate(hosts: &[String], now_unix: i64) -> Result<Certs, CertError> {
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err("CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "muster CA");
    ca.distinguished_name.push(DnType::OrganizationName, "muster");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut ca, now_unix)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err("CA certificate"))?;

    let mut names: Vec<String> = LOOPBACK_NAMES.iter().map(|s| (*s).to_owned()).collect();
    for h in hosts {
        let dns = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*';
        if h.parse::<std::net::IpAddr>().is_err() && (h.is_empty() || !h.chars().all(dns)) {
            return Err(CertError {
                what: "nats-server certificate",
                detail: format!("{h:?} is not a DNS name or IP address"),
            });
        }
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let server_key = KeyPair::generate().map_err(err("nats-server key"))?;
    let mut server = CertificateParams::new(names).map_err(err("nats-server certificate (a --host name)"))?;
    server.distinguished_name = DistinguishedName::new();
    server.distinguished_name.push(DnType::CommonName, "muster nats-server");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut server, now_unix)?;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).map_err(err("nats-server certificate"))?;
    Ok(Certs {
        ca: CertPem { cert: ca_cert.pem(), key: ca_key.serialize_pem() },
        server: CertPem { cert: server_cert.pem(), key: server_key.serialize_pem() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_pem_certificates() {
        let c = generate(&["nats.example".into(), "10.0.0.5".into()], 1_700_000_000).unwrap();
        assert!(c.ca.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(c.server.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(c.server.key.contains("PRIVATE KEY"));
        assert_ne!(c.ca.cert, c.server.cert);
    }

    #[test]
    fn a_bad_name_is_an_error_not_a_panic() {
        assert!(generate(&["bad name\u{0}".into()], 1_700_000_000).is_err());
    }
}
