//! The core's certificate authority for the edge link (mutual TLS): one CA
//! per site, kept in a folder beside the core, that issues a certificate to
//! each agent (its agent id in the subject's common name) and one to the core
//! (its addresses as subject alternative names). `sightline-core certs ...`.
//!
//! Files (PEM): `ca.pem`, `ca.key` (the CA; the key never leaves the core's
//! machine), and per issued certificate `<name>.pem` + `<name>.key`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The CA's subject; issued certificates name it as their issuer.
const CA_NAME: &str = "Sightline edge CA";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> CertError {
    CertError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| file_err(path, e))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// How far back a certificate's notBefore is set (for hosts whose clocks
/// run behind): when it was issued is notBefore plus this.
pub const BACKDATE: time::Duration = time::Duration::minutes(5);

fn validity(p: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + time::Duration::days(i64::from(days));
}

/// Creates the CA in `dir` (refuses to overwrite one).
pub fn init_ca(dir: &Path, days: u32) -> Result<PathBuf, CertError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    let pem = dir.join("ca.pem");
    write_new(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write_new(&pem, &cert.pem(), false)?;
    Ok(pem)
}

/// Who a certificate is for.
pub enum Subject<'a> {
    /// An agent: its id is the common name; client authentication only.
    Agent(&'a str),
    /// The core: server authentication for these DNS names / IP addresses.
    Core(&'a [String]),
}

/// Issues a certificate signed by the CA in `dir`, written as
/// `<name>.pem` / `<name>.key` there; returns the certificate's path.
pub fn issue(dir: &Path, subject: Subject<'_>, days: u32) -> Result<PathBuf, CertError> {
    let ca_key_path = dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(|e| file_err(&ca_key_path, e))?;
    let issuer = Issuer::new(
        ca_params(),
        KeyPair::from_pem(&ca_key).map_err(|e| file_err(&ca_key_path, e))?,
    );
    let mut params = CertificateParams::default();
    let name = match subject {
        Subject::Agent(id) => {
            if id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(CertError::Invalid {
                    field: "agent_id",
                    reason: format!("{id:?} is not 1-128 of A-Z a-z 0-9 - _ ."),
                });
            }
            params.distinguished_name.push(DnType::CommonName, id);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            format!("agent-{id}")
        }
        Subject::Core(names) => {
            if names.is_empty() {
                return Err(CertError::Invalid {
                    field: "san",
                    reason: "the core needs at least one DNS name or IP address".into(),
                });
            }
            params
                .distinguished_name
                .push(DnType::CommonName, "sightline-core");
            for n in names {
                params.subject_alt_names.push(match n.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        SanType::DnsName(n.clone().try_into().map_err(|e| CertError::Invalid {
                            field: "san",
                            reason: format!("{n:?}: {e}"),
                        })?)
                    }
                });
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            "core".to_string()
        }
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let pem = dir.join(format!("{name}.pem"));
    write_new(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write_new(&pem, &cert.pem(), false)?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// `openssl verify` and `openssl x509`, an implementation independent of
    /// the one that made the certificates.
    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_and_name_their_subject() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), 3650).unwrap();
        let agent = issue(dir.path(), Subject::Agent("gate-3_host.1"), 365).unwrap();
        let core = issue(
            dir.path(),
            Subject::Core(&["127.0.0.1".into(), "core.example".into()]),
            365,
        )
        .unwrap();
        let ca = ca.to_str().unwrap();
        for cert in [&agent, &core] {
            let v = openssl(&["verify", "-CAfile", ca, cert.to_str().unwrap()]);
            assert!(v.trim_end().ends_with(": OK"), "{v}");
        }
        let subject = openssl(&["x509", "-noout", "-subject", "-in", agent.to_str().unwrap()]);
        assert!(subject.contains("CN = gate-3_host.1"), "{subject}");
        let text = openssl(&["x509", "-noout", "-text", "-in", core.to_str().unwrap()]);
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("DNS:core.example"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        // Keys are readable by their owner only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_ca_is_never_overwritten_and_bad_subjects_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), 30).unwrap();
        let again = init_ca(dir.path(), 30).unwrap_err().to_string();
        assert!(again.contains("ca.key"), "{again}");
        let bad = issue(dir.path(), Subject::Agent("a b"), 30)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("field `agent_id`"), "{bad}");
        let none = issue(dir.path(), Subject::Core(&[]), 30)
            .unwrap_err()
            .to_string();
        assert!(none.contains("field `san`"), "{none}");
        // Another CA's certificate does not verify against this one.
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path(), 30).unwrap();
        let foreign = issue(other.path(), Subject::Agent("intruder"), 30).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.path().join("ca.pem"))
            .arg(&foreign)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}
