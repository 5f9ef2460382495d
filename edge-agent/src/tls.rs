//! The agent's side of mutual TLS: the CA it trusts for the core, and its own
//! certificate (its agent id in the common name) and key.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::config::AgentConfig;

#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Overrides the URL's host as the name the core's certificate must carry.
    pub server_name: Option<String>,
}

impl ClientTls {
    pub fn load(config: &AgentConfig) -> anyhow::Result<Self> {
        let (ca, cert, key) = config.tls.paths(&config.agent_id)?;
        let read = |p: &std::path::Path, key: &str| {
            std::fs::read(p).with_context(|| format!("config `{key}`: reading {}", p.display()))
        };
        Ok(Self {
            ca_pem: read(&ca, "tls.ca")?,
            cert_pem: read(&cert, "tls.cert")?,
            key_pem: read(&key, "tls.key")?,
            server_name: config.tls.server_name.clone(),
        })
    }

    /// A rustls client config presenting this agent's certificate, trusting
    /// only the site's CA, TLS 1.3, with `alpn`.
    pub fn rustls(&self, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots
                .add(c.context("config `tls.ca`: not a PEM certificate")?)
                .context("config `tls.ca`")?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .context("config `tls.cert`: not a PEM certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .context("config `tls.key`: not a PEM private key")?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("config `tls.cert` / `tls.key`: not a key pair")?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }
}

/// Puts a TLS failure in words: the alert the core sent, or what was wrong
/// with the core's certificate.
pub fn explain(text: &str) -> Option<String> {
    let alerts = [
        (
            "CertificateRequired",
            "the core requires a client certificate",
        ),
        (
            "certificate_required",
            "the core requires a client certificate",
        ),
        (
            "CertificateExpired",
            "the core refused this agent's certificate: it has expired",
        ),
        (
            "UnknownCA",
            "the core refused this agent's certificate: it is not signed by the core's CA",
        ),
        (
            "BadCertificate",
            "the core refused this agent's certificate",
        ),
        (
            "UnknownIssuer",
            "the core's certificate is not signed by the CA in tls.ca",
        ),
        (
            "NotValidForName",
            "the core's certificate does not carry the name in core_url (see tls.server_name)",
        ),
    ];
    alerts
        .iter()
        .find(|(k, _)| text.contains(k))
        .map(|(_, v)| format!("{v} ({text})"))
}
