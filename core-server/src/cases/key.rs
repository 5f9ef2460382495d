//! The site's signing key: one Ed25519 key per core, made on first use.
//!
//! - `<data_dir>/site-signing.key`: the private key, PKCS#8 PEM, mode 0600.
//!   Written once (a new file linked into place, never overwritten), so two
//!   first uses at once end with one key. A key made elsewhere
//!   (`openssl genpkey -algorithm ed25519 -out site-signing.key`) is taken as
//!   it is.
//! - `<data_dir>/site-signing.pub.pem`: its public key, SubjectPublicKeyInfo
//!   PEM, what `openssl pkey -pubin` and `openssl pkeyutl -verify -pubin` read.
//!   Rewritten from the private key on every load.
//! - The fingerprint is the SHA-256 of the public key's SPKI DER, lowercase
//!   hex: `openssl pkey -pubin -in site-signing.pub.pem -outform DER | sha256sum`.
//!
//! Why ring (through rcgen's `KeyPair`, which reads and writes the PEM) and
//! not `ed25519-dalek`: both are already in the core for its certificates,
//! so the signing key adds no crate, and ring's Ed25519 is the one rustls and
//! quinn already trust on this link.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{KeyPair, PublicKeyData as _, SigningKey as _, PKCS_ED25519};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::FromDer as _;

/// The private key's file name in the data directory.
pub const KEY_FILE: &str = "site-signing.key";
/// The public key's file name, in the data directory and in every case.
pub const PUBLIC_KEY_FILE: &str = "site-signing.pub.pem";
/// An Ed25519 signature's length in bytes (RFC 8032).
pub const SIGNATURE_LEN: usize = 64;
/// Largest public key file [`PublicKey::from_pem_file`] reads.
pub const MAX_PUBLIC_KEY_FILE_BYTES: u64 = 16 * 1024;
/// id-Ed25519 (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// The site's private key, loaded.
pub struct SiteKey {
    pair: KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKey")
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SiteKey {
    /// Loads `<data_dir>/site-signing.key`, making it (and the directory)
    /// when there is none, and writes `site-signing.pub.pem` beside it.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            create(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let key = Self::from_pem(&pem).with_context(|| format!("in {}", path.display()))?;
        let public = data_dir.join(PUBLIC_KEY_FILE);
        std::fs::write(&public, key.public_pem())
            .with_context(|| format!("writing {}", public.display()))?;
        Ok(key)
    }

    /// A PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let pair = KeyPair::from_pem(pem)
            .map_err(|e| anyhow::anyhow!("not a PKCS#8 PEM private key: {e}"))?;
        if !pair.is_compatible(&PKCS_ED25519) {
            anyhow::bail!("the key is not an Ed25519 key");
        }
        let public = PublicKey::from_spki_der(&pair.subject_public_key_info())?;
        Ok(Self { pair, public })
    }

    /// The detached signature of `msg` (64 raw bytes).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let sig = self.pair.sign(msg).expect("Ed25519 signing cannot fail");
        sig.try_into().expect("an Ed25519 signature is 64 bytes")
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_pem(&self) -> String {
        self.pair.public_key_pem()
    }
}

/// Makes a new key file: written to a scratch name with mode 0600, synced,
/// then hard-linked to `path`, which fails rather than replace a key another
/// process made meanwhile (that one is then used).
fn create(path: &Path) -> anyhow::Result<()> {
    let v2 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no randomness for a new key"))?;
    let pair = KeyPair::try_from(pkcs8_v1(v2.as_ref())?.as_slice())?;
    let scratch = PathBuf::from(format!("{}.{}.new", path.display(), std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&scratch)?;
    f.write_all(pair.serialize_pem().as_bytes())?;
    f.sync_all()?;
    drop(f);
    let linked = std::fs::hard_link(&scratch, path);
    std::fs::remove_file(&scratch)?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!(path = %path.display(), "made the site's signing key for case exports");
    Ok(())
}

/// ring's PKCS#8 v2 (RFC 5958, with the public key) as the v1 form of RFC
/// 8410 section 7 (the 32-byte seed only), which is what `openssl genpkey`
/// writes and what OpenSSL 3.0 reads back (it refuses v2).
fn pkcs8_v1(v2: &[u8]) -> anyhow::Result<Vec<u8>> {
    /// After the outer SEQUENCE's tag and length: INTEGER 1,
    /// AlgorithmIdentifier { id-Ed25519 }, OCTET STRING { OCTET STRING (32) } ...
    const V2_BODY: [u8; 14] = [
        0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    /// ... and the same with version 0 and nothing after the seed.
    const V1_HEAD: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    anyhow::ensure!(
        v2.len() >= 48 && v2[0] == 0x30 && v2[2..16] == V2_BODY,
        "unexpected PKCS#8 layout from the key generator"
    );
    let mut v1 = V1_HEAD.to_vec();
    v1.extend_from_slice(&v2[16..48]);
    Ok(v1)
}

/// An Ed25519 public key, as a case or an operator hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
    /// The raw 32-byte key inside it.
    raw: Vec<u8>,
}

impl PublicKey {
    /// Reads an SPKI PEM file (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len > MAX_PUBLIC_KEY_FILE_BYTES {
            return Err(format!(
                "{}: {len} bytes, more than a public key file ({MAX_PUBLIC_KEY_FILE_BYTES})",
                path.display()
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_pem(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// An SPKI PEM public key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM file: {e}"))?;
        if pem.label != "PUBLIC KEY" {
            return Err(format!(
                "a PEM \"{}\", not a \"PUBLIC KEY\" (SubjectPublicKeyInfo)",
                pem.label
            ));
        }
        Self::from_spki_der(&pem.contents).map_err(|e| e.to_string())
    }

    /// A DER SubjectPublicKeyInfo holding an Ed25519 key.
    pub fn from_spki_der(der: &[u8]) -> anyhow::Result<Self> {
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| anyhow::anyhow!("not a SubjectPublicKeyInfo: {e}"))?;
        anyhow::ensure!(rest.is_empty(), "bytes after the SubjectPublicKeyInfo");
        let oid = spki.algorithm.algorithm.to_id_string();
        anyhow::ensure!(
            oid == ED25519_OID,
            "the key's algorithm is {oid}, not Ed25519 ({ED25519_OID})"
        );
        let raw = spki.subject_public_key.data.to_vec();
        anyhow::ensure!(
            raw.len() == 32,
            "an Ed25519 key is 32 bytes, not {}",
            raw.len()
        );
        Ok(Self {
            spki: der.to_vec(),
            raw,
        })
    }

    /// SHA-256 of the SPKI DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(&self.spki))
    }

    /// Whether `sig` is this key's Ed25519 signature of `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.raw)
            .verify(msg, sig)
            .is_ok()
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_its_public_half_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = SiteKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SiteKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public(), "the second use loads the same key");
        let public = PublicKey::from_pem_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(&public, a.public());
        let sig = a.sign(b"manifest");
        assert!(public.verifies(b"manifest", &sig));
        assert!(!public.verifies(b"manifesT", &sig));
        assert!(
            PublicKey::from_pem(a.public_pem().replace("PUBLIC", "PRIVATE").as_bytes()).is_err()
        );
        // OpenSSL reads the private key and derives the same public key.
        assert_eq!(openssl_public(&dir.path().join(KEY_FILE)), a.public_pem());
    }

    #[test]
    fn a_key_made_by_openssl_is_taken_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(dir.path().join(KEY_FILE))
            .status()
            .expect("openssl is needed (deploy/install-deps.sh)");
        assert!(status.success());
        let key = SiteKey::load_or_create(dir.path()).unwrap();
        assert_eq!(openssl_public(&dir.path().join(KEY_FILE)), key.public_pem());
    }

    /// `openssl pkey -pubout` of a private key file.
    fn openssl_public(key: &Path) -> String {
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(key)
            .output()
            .expect("openssl is needed (deploy/install-deps.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
