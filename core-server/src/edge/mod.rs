//! The edge link: how agents reach the core, and who they are.
//!
//! Two transports on one port, both adapters around the same session logic
//! ([`crate::ingest::IngestCore::run_session`]) and media store:
//! - gRPC over HTTP/2 over TLS on TCP ([`tcp`]);
//! - QUIC on UDP ([`quic`]): every call on its own stream, so a clip upload
//!   never holds up the event stream; survives the agent's address changing.
//!
//! Both require TLS 1.3 with a client certificate issued by the site's CA
//! (`sightline-core certs`). An agent's identity is the common name of its
//! certificate; a session whose Hello claims another id is refused. With
//! `edge.plaintext` the gRPC services are also served without TLS on
//! `server.grpc_listen` — every such session is flagged in the log and the
//! fleet view. What an agent may publish is the [`registry`]'s business.

pub mod quic;
pub mod registry;
pub mod tcp;

use std::{path::Path, sync::Arc};

use anyhow::Context;
use rustls::{
    client::danger::HandshakeSignatureValid,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

/// How an agent's link is labelled in the fleet view.
pub const LINK_QUIC: &str = "quic mtls";
pub const LINK_GRPC_TLS: &str = "grpc mtls";
pub const LINK_PLAINTEXT: &str = "grpc PLAINTEXT";

/// Who is on the other end of a session or call, as the transport
/// established it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: String,
    /// Who the verified client certificate is for; `None` on a plaintext
    /// link, where the agent is whoever it claims to be.
    pub identity: Option<Identity>,
    pub link: &'static str,
    /// On a TLS link whose client certificate was refused: why. Every call
    /// on it is answered with this (UNAUTHENTICATED) and nothing else.
    pub refusal: Option<String>,
}

impl Peer {
    pub fn plaintext(addr: String) -> Self {
        Self {
            addr,
            identity: None,
            link: LINK_PLAINTEXT,
            refusal: None,
        }
    }

    /// The agent id its certificate names.
    pub fn agent_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.agent_id.as_str())
    }

    /// The refusal of an unauthenticated TLS peer, as a status.
    pub fn refused(&self) -> Result<(), tonic::Status> {
        match &self.refusal {
            Some(why) => Err(sightline_proto::ApiError::unauthenticated(why.clone()).into()),
            None => Ok(()),
        }
    }
}

/// The core's TLS side of the edge link, from the folder `certs` wrote.
pub struct EdgeTls {
    /// For gRPC (ALPN h2).
    pub grpc: Arc<ServerConfig>,
    /// For QUIC (ALPN sightline/1).
    pub quic: Arc<ServerConfig>,
    /// Checks client certificates against the site's CA.
    verifier: Arc<dyn ClientCertVerifier>,
    /// When the CA ("edge_ca") and the core's certificate ("edge_core")
    /// expire (Unix seconds), for the metrics.
    pub expiry: Vec<(&'static str, i64)>,
}

/// When the first certificate of `chain` expires (Unix seconds).
fn not_after(chain: &[CertificateDer<'_>]) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    Some(c.validity().not_after.timestamp())
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl EdgeTls {
    /// Loads `ca.pem`, `core.pem` and `core.key` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let ca_path = dir.join("ca.pem");
        let mut roots = RootCertStore::empty();
        let mut expiry = Vec::new();
        for c in CertificateDer::pem_file_iter(&ca_path)
            .with_context(|| format!("edge.tls_dir: reading {}", ca_path.display()))?
        {
            let c = c.with_context(|| format!("edge.tls_dir: {}", ca_path.display()))?;
            if expiry.is_empty() {
                expiry.extend(not_after(std::slice::from_ref(&c)).map(|t| ("edge_ca", t)));
            }
            roots
                .add(c)
                .with_context(|| format!("edge.tls_dir: {}", ca_path.display()))?;
        }
        let cert_path = dir.join("core.pem");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| {
                format!(
                    "edge.tls_dir: reading {} (issue it with `sightline-core certs core --san HOST`)",
                    cert_path.display()
                )
            })?
            .collect::<Result<_, _>>()
            .with_context(|| format!("edge.tls_dir: {}", cert_path.display()))?;
        expiry.extend(not_after(&chain).map(|t| ("edge_core", t)));
        let key_path = dir.join("core.key");
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("edge.tls_dir: reading {}", key_path.display()))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        let build = |alpn: &[u8]| -> anyhow::Result<Arc<ServerConfig>> {
            let mut cfg = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(Arc::new(Deferred(verifier.clone())))
                .with_single_cert(chain.clone(), key.clone_key())
                .context("edge.tls_dir: core.pem and core.key do not make a key pair")?;
            cfg.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(cfg))
        };
        Ok(Self {
            grpc: build(b"h2")?,
            quic: build(sightline_proto::edge::ALPN)?,
            verifier,
            expiry,
        })
    }

    /// The agent a finished handshake authenticated, or why none: no
    /// certificate, one that does not chain to the CA or has expired, or one
    /// without a valid agent id.
    pub fn identify(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, String> {
        let Some((end, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Err(explain_reason("peer sent no certificates"));
        };
        self.verifier
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map_err(|e| explain_rustls(&e))?;
        identity_of(end)
    }
}

/// Lets every handshake finish (still checking that the client holds the
/// key of the certificate it presents), so that a refused agent can be told
/// why in words — over a failed handshake it would only get an alert, or, as
/// TLS 1.3 goes, a connection closed under it. The certificate itself is
/// checked right after by [`EdgeTls::identify`], and a connection it refuses
/// carries nothing but the refusal.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Who a verified client certificate is for, and when it was issued.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The subject's common name.
    pub agent_id: String,
    /// notBefore plus [`crate::certs::BACKDATE`] (Unix seconds): a revocation
    /// retires the certificates issued before it (see `registry`).
    pub issued: i64,
}

/// The [`Identity`] a verified client certificate names.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let cn = c
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the client certificate has no common name (the agent id)")?;
    let id = cn
        .as_str()
        .map_err(|e| format!("the client certificate's common name: {e}"))?;
    sightline_proto::validate_agent_id(id)
        .map_err(|e| format!("the client certificate's common name: {}", e.reason))?;
    Ok(Identity {
        agent_id: id.to_string(),
        issued: c.validity().not_before.timestamp() + crate::certs::BACKDATE.whole_seconds(),
    })
}

/// Puts a refused TLS handshake in words an operator can act on.
pub fn explain_tls(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // An io::Error does not show the error it wraps through source().
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(r) = wrapped.or_else(|| err.downcast_ref::<rustls::Error>()) {
            return explain_rustls(r);
        }
        cur = err.source();
    }
    e.to_string()
}

fn explain_rustls(r: &rustls::Error) -> String {
    explain_reason(&r.to_string())
}

/// A TLS refusal (rustls' words, as QUIC also carries them) in an
/// operator's words.
pub fn explain_reason(reason: &str) -> String {
    let known = [
        (
            "peer sent no certificates",
            "the agent presented no client certificate (issue one with `sightline-core certs agent`)",
        ),
        ("Expired", "the agent's certificate has expired"),
        ("certificate expired", "the agent's certificate has expired"),
        ("UnknownIssuer", "the agent's certificate is not signed by this core's CA"),
        // A CA of the same name, but not this one.
        ("BadSignature", "the agent's certificate is not signed by this core's CA"),
    ];
    known
        .iter()
        .find(|(k, _)| reason.contains(k))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| format!("TLS: {reason}"))
}

/// Whether `peer` may use the media calls: a verified agent that is admitted
/// by the registry, or anyone on a plaintext link (`edge.plaintext`).
pub fn admit_media(registry: &registry::Registry, peer: &Peer) -> Result<(), tonic::Status> {
    peer.refused()?;
    match &peer.identity {
        Some(id) => registry.admit(&id.agent_id, Some(id.issued)).map_err(|r| {
            sightline_proto::ApiError::permission_denied(r.explain(&id.agent_id)).into()
        }),
        None => Ok(()),
    }
}
