//! Checking a case, folder or zip: the manifest's signature, then every
//! file's length and SHA-256, then what is in the case but not listed. Each
//! check that fails is a [`Finding`] naming the file.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Read,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

use super::{
    key::{hex, PublicKey, PUBLIC_KEY_FILE, SIGNATURE_LEN},
    manifest::{safe_path, Manifest, FORMAT},
    MANIFEST_FILE, SIGNATURE_FILE,
};

/// Largest `manifest.json` read (500 events with their attributes fit many
/// times over).
pub const MAX_MANIFEST_BYTES: u64 = 32 << 20;
/// Most entries a case folder or zip may hold before it is refused unread.
pub const MAX_ENTRIES: usize = 100_000;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    /// The signature holds (the detail says under which key).
    SignatureValid,
    /// Signed with the key inside the case, not one given with `--key`.
    KeyNotPinned,
    /// The manifest and its signature do not match under the key.
    SignatureInvalid,
    /// The case's key (or the manifest's record of it) is not the one
    /// checked with.
    KeyMismatch,
    /// A file's bytes differ from the manifest's SHA-256 (same length).
    Altered,
    /// A file's length differs from the manifest's.
    WrongLength,
    /// A file the manifest lists is not in the case.
    Missing,
    /// A file in the case that the manifest does not list.
    Unexpected,
    /// The manifest is not a case manifest this verifier reads.
    BadManifest,
    /// A file, the case or the key could not be read.
    Unreadable,
}

impl FindingKind {
    /// Whether the case fails to verify because of it.
    pub fn is_problem(self) -> bool {
        !matches!(
            self,
            FindingKind::SignatureValid | FindingKind::KeyNotPinned
        )
    }

    fn label(self) -> &'static str {
        match self {
            FindingKind::SignatureValid => "ok",
            FindingKind::KeyNotPinned => "note",
            FindingKind::SignatureInvalid => "BAD SIGNATURE",
            FindingKind::KeyMismatch => "WRONG KEY",
            FindingKind::Altered => "ALTERED",
            FindingKind::WrongLength => "ALTERED",
            FindingKind::Missing => "MISSING",
            FindingKind::Unexpected => "NOT IN MANIFEST",
            FindingKind::BadManifest => "BAD MANIFEST",
            FindingKind::Unreadable => "UNREADABLE",
        }
    }
}

/// One line of a report: what, about which file (relative to the case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub path: String,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind.label(), self.path, self.detail)
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The manifest's case id, when it could be read.
    pub case_id: Option<String>,
    /// Files of the manifest whose length and hash were checked.
    pub files_checked: usize,
    /// Whether the signature was checked with a key given by the caller.
    pub key_pinned: bool,
    /// The fingerprint of the key the signature was checked with.
    pub key_fingerprint: Option<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when the signature holds and nothing was altered, missing or added.
    pub fn ok(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.kind == FindingKind::SignatureValid)
            && !self.findings.iter().any(|f| f.kind.is_problem())
    }

    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.kind.is_problem())
    }

    /// The findings whose kind is `kind`.
    pub fn of(&self, kind: FindingKind) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.kind == kind).collect()
    }

    fn add(&mut self, kind: FindingKind, path: &str, detail: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            path: path.into(),
            detail: detail.into(),
        });
    }

    /// The last line of `case verify`.
    pub fn summary(&self) -> String {
        let id = self.case_id.as_deref().unwrap_or("(unknown case)");
        let n = self.problems().count();
        if self.ok() {
            format!(
                "{id}: VERIFIED, signature and {} files intact{}",
                self.files_checked,
                if self.key_pinned {
                    ""
                } else {
                    " (key not pinned)"
                }
            )
        } else {
            format!("{id}: NOT VERIFIED, {n} problem(s)")
        }
    }
}

/// Checks the case at `path` (a folder, or a zip as exported). With
/// `trusted_key` (an SPKI PEM file, the site's published key) the signature
/// is checked with it; without, with the key inside the case, and the
/// report says the key was not pinned. Blocking.
pub fn verify(path: &Path, trusted_key: Option<&Path>) -> Report {
    let mut report = Report::default();
    let shown = path.display().to_string();
    let mut case = match Case::open(path) {
        Ok(c) => c,
        Err(e) => {
            report.add(FindingKind::Unreadable, &shown, e);
            return report;
        }
    };
    for (name, why) in std::mem::take(&mut case.refused) {
        report.add(FindingKind::Unexpected, &name, why);
    }
    let manifest_bytes = read_listed(&mut case, &mut report, MANIFEST_FILE, MAX_MANIFEST_BYTES);
    let sig = read_listed(&mut case, &mut report, SIGNATURE_FILE, 1024);
    let key = choose_key(&mut case, &mut report, trusted_key);
    if let (Some(m), Some(sig), Some(key)) = (&manifest_bytes, &sig, &key) {
        check_signature(&mut report, m, sig, key);
    }
    let Some(bytes) = manifest_bytes else {
        return report;
    };
    let manifest = match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(m) => m,
        Err(e) => {
            report.add(
                FindingKind::BadManifest,
                MANIFEST_FILE,
                format!("not a case manifest: {e}"),
            );
            return report;
        }
    };
    report.case_id = Some(manifest.case_id.clone());
    if manifest.format != FORMAT {
        report.add(
            FindingKind::BadManifest,
            MANIFEST_FILE,
            format!(
                "format {:?}; this verifier reads {FORMAT:?}",
                manifest.format
            ),
        );
    }
    if let Some(key) = &key {
        if manifest.site_key.fingerprint_sha256 != key.fingerprint() {
            report.add(
                FindingKind::KeyMismatch,
                MANIFEST_FILE,
                format!(
                    "names the signing key {}, but the key checked with is {}",
                    manifest.site_key.fingerprint_sha256,
                    key.fingerprint()
                ),
            );
        }
    }
    check_files(&mut case, &mut report, &manifest);
    report
}

/// Reads one of the fixed files of a case, or records why not.
fn read_listed(case: &mut Case, report: &mut Report, name: &str, max: u64) -> Option<Vec<u8>> {
    match case.read(name, max) {
        Ok(Some(b)) => Some(b),
        Ok(None) => {
            report.add(FindingKind::Missing, name, "is not in the case");
            None
        }
        Err(e) => {
            report.add(FindingKind::Unreadable, name, e);
            None
        }
    }
}

/// The key to check with: the trusted one (and the bundled one must be the
/// same), or the bundled one, noted as not pinned.
fn choose_key(case: &mut Case, report: &mut Report, trusted: Option<&Path>) -> Option<PublicKey> {
    let bundled = match case.read(PUBLIC_KEY_FILE, super::key::MAX_PUBLIC_KEY_FILE_BYTES) {
        Ok(Some(b)) => match PublicKey::from_pem(&b) {
            Ok(k) => Some(k),
            Err(e) => {
                report.add(FindingKind::Unreadable, PUBLIC_KEY_FILE, e);
                None
            }
        },
        Ok(None) => {
            if trusted.is_none() {
                report.add(FindingKind::Missing, PUBLIC_KEY_FILE, "is not in the case");
            }
            None
        }
        Err(e) => {
            report.add(FindingKind::Unreadable, PUBLIC_KEY_FILE, e);
            None
        }
    };
    let Some(path) = trusted else {
        let key = bundled?;
        report.add(
            FindingKind::KeyNotPinned,
            PUBLIC_KEY_FILE,
            format!(
                "the signature is checked with the key inside the case ({}): that proves the \
                 case is unchanged since it was signed, not who signed it; pass --key with the \
                 site's published key",
                key.fingerprint()
            ),
        );
        report.key_fingerprint = Some(key.fingerprint());
        return Some(key);
    };
    let key = match PublicKey::from_pem_file(path) {
        Ok(k) => k,
        Err(e) => {
            report.add(FindingKind::Unreadable, &path.display().to_string(), e);
            return None;
        }
    };
    if let Some(b) = bundled.filter(|b| *b != key) {
        report.add(
            FindingKind::KeyMismatch,
            PUBLIC_KEY_FILE,
            format!(
                "is the key {}, not the trusted key {}",
                b.fingerprint(),
                key.fingerprint()
            ),
        );
    }
    report.key_pinned = true;
    report.key_fingerprint = Some(key.fingerprint());
    Some(key)
}

fn check_signature(report: &mut Report, manifest: &[u8], sig: &[u8], key: &PublicKey) {
    let under = if report.key_pinned {
        "the trusted key"
    } else {
        "the case's own key"
    };
    if sig.len() != SIGNATURE_LEN {
        report.add(
            FindingKind::SignatureInvalid,
            SIGNATURE_FILE,
            format!(
                "{} bytes, not a {SIGNATURE_LEN}-byte Ed25519 signature",
                sig.len()
            ),
        );
    } else if key.verifies(manifest, sig) {
        report.add(
            FindingKind::SignatureValid,
            SIGNATURE_FILE,
            format!(
                "a valid signature of {MANIFEST_FILE} by {under} {}",
                key.fingerprint()
            ),
        );
    } else {
        report.add(
            FindingKind::SignatureInvalid,
            SIGNATURE_FILE,
            format!(
                "is not a signature of {MANIFEST_FILE} by {under} {}: {MANIFEST_FILE} or \
                 {SIGNATURE_FILE} was altered (or signed by another key)",
                key.fingerprint()
            ),
        );
    }
}

/// Each listed file's length and hash; then what is there but not listed.
fn check_files(case: &mut Case, report: &mut Report, m: &Manifest) {
    let mut expected: BTreeSet<String> = [MANIFEST_FILE, SIGNATURE_FILE, PUBLIC_KEY_FILE]
        .into_iter()
        .map(String::from)
        .collect();
    for f in m.events.iter().flat_map(|e| &e.files) {
        if !safe_path(&f.path) {
            report.add(
                FindingKind::BadManifest,
                MANIFEST_FILE,
                format!("lists the path {:?}, which is not under events/", f.path),
            );
            continue;
        }
        if !expected.insert(f.path.clone()) {
            report.add(
                FindingKind::BadManifest,
                MANIFEST_FILE,
                format!("lists {} twice", f.path),
            );
            continue;
        }
        match case.hash(&f.path) {
            Ok(None) => report.add(
                FindingKind::Missing,
                &f.path,
                "is listed but not in the case",
            ),
            Err(e) => report.add(FindingKind::Unreadable, &f.path, e),
            Ok(Some((sha, len))) => {
                report.files_checked += 1;
                if len != f.bytes {
                    report.add(
                        FindingKind::WrongLength,
                        &f.path,
                        format!("{len} bytes, the manifest says {}", f.bytes),
                    );
                } else if sha != f.sha256 {
                    report.add(
                        FindingKind::Altered,
                        &f.path,
                        format!("SHA-256 {sha}, the manifest says {}", f.sha256),
                    );
                }
            }
        }
    }
    for name in case.names.keys() {
        if !expected.contains(name) {
            report.add(
                FindingKind::Unexpected,
                name,
                "is in the case but not in the manifest",
            );
        }
    }
}

/// A case as a set of relative '/' paths that can be read.
struct Case {
    /// Relative path → where it is (a file, or an entry of the zip).
    names: BTreeMap<String, Entry>,
    zip: Option<zip::ZipArchive<std::fs::File>>,
    /// Entries that cannot be part of a case (links, unsafe names), with why.
    refused: Vec<(String, String)>,
}

enum Entry {
    File(PathBuf),
    Zip(usize),
}

impl Case {
    fn open(path: &Path) -> Result<Self, String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if meta.is_dir() {
            let mut case = Case {
                names: BTreeMap::new(),
                zip: None,
                refused: Vec::new(),
            };
            walk(path, "", &mut case)?;
            return Ok(case);
        }
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| format!("neither a case folder nor a zip: {e}"))?;
        Self::from_zip(zip)
    }

    /// The zip's entries, under its one top folder (or at its root).
    fn from_zip(mut zip: zip::ZipArchive<std::fs::File>) -> Result<Self, String> {
        if zip.len() > MAX_ENTRIES {
            return Err(format!("{} entries, more than {MAX_ENTRIES}", zip.len()));
        }
        let mut all = Vec::new();
        for i in 0..zip.len() {
            let e = zip.by_index_raw(i).map_err(|e| e.to_string())?;
            all.push((
                i,
                e.name().to_string(),
                e.is_dir(),
                e.enclosed_name().is_some(),
            ));
        }
        let prefix = all
            .iter()
            .find_map(|(_, n, _, _)| {
                let top = n.strip_suffix(MANIFEST_FILE)?;
                (top.is_empty() || (top.ends_with('/') && top.matches('/').count() == 1))
                    .then(|| top.to_string())
            })
            .unwrap_or_default();
        let mut case = Case {
            names: BTreeMap::new(),
            zip: None,
            refused: Vec::new(),
        };
        for (i, name, dir, safe) in all {
            if dir {
                continue;
            }
            match name.strip_prefix(&prefix) {
                Some(rel) if safe && !rel.is_empty() => {
                    case.names.insert(rel.to_string(), Entry::Zip(i));
                }
                _ => case
                    .refused
                    .push((name, "is outside the case's folder in the zip".into())),
            }
        }
        case.zip = Some(zip);
        Ok(case)
    }

    /// The whole of `name`, if it is in the case and at most `max` bytes.
    fn read(&mut self, name: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
        let mut out = Vec::new();
        let Some(mut r) = self.reader(name)? else {
            return Ok(None);
        };
        r.by_ref()
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        if out.len() as u64 > max {
            return Err(format!("more than {max} bytes"));
        }
        Ok(Some(out))
    }

    /// SHA-256 (hex) and length of `name`, if it is in the case.
    fn hash(&mut self, name: &str) -> Result<Option<(String, u64)>, String> {
        let Some(mut r) = self.reader(name)? else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Some((hex(&h.finalize()), len)))
    }

    fn reader(&mut self, name: &str) -> Result<Option<Box<dyn Read + '_>>, String> {
        match self.names.get(name) {
            None => Ok(None),
            Some(Entry::File(p)) => {
                let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
                Ok(Some(Box::new(f)))
            }
            Some(Entry::Zip(i)) => {
                let zip = self.zip.as_mut().expect("zip entries come from a zip");
                let e = zip.by_index(*i).map_err(|e| e.to_string())?;
                Ok(Some(Box::new(e)))
            }
        }
    }
}

/// Lists the files under `dir` (relative names joined with '/').
fn walk(dir: &Path, rel: &str, case: &mut Case) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        if case.names.len() + case.refused.len() >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        if kind.is_dir() {
            walk(&entry.path(), &rel, case)?;
        } else if kind.is_file() {
            case.names.insert(rel, Entry::File(entry.path()));
        } else {
            case.refused
                .push((rel, "is not a plain file (a link or a device)".into()));
        }
    }
    Ok(())
}
