//! The admin token. `sightline.v1.Admin` and `POST /admin/…` change what the
//! core does — who may publish for which cameras, which Dataset B is joined —
//! so they take `authorization: Bearer <token>`, whatever address they are
//! served on; the query API stays open to integrators. The token lives in a
//! file readable by the core's user only (`server.admin_token_file`, by
//! default `admin.token` in the data folder), made on the first start.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;

/// The secret and where it is kept (named in refusals, never the secret).
pub struct AdminToken {
    secret: String,
    pub path: PathBuf,
}

impl AdminToken {
    /// Reads the token from `path`, or makes one there (32 random bytes, hex,
    /// mode 0600) when there is no file.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let secret = text.trim().to_string();
                anyhow::ensure!(
                    secret.len() >= 16,
                    "admin token file {}: the token must be at least 16 characters",
                    path.display()
                );
                Ok(Self {
                    secret,
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let bytes: [u8; 32] = rand::random();
                let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let mut f = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .with_context(|| format!("creating admin token file {}", path.display()))?
                };
                writeln!(f, "{secret}")
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing admin token file {}", path.display()))?;
                tracing::info!(file = %path.display(), "admin token created");
                Ok(Self {
                    secret,
                    path: path.to_path_buf(),
                })
            }
            Err(e) => {
                Err(e).with_context(|| format!("reading admin token file {}", path.display()))
            }
        }
    }

    /// Checks an `authorization` header's value; `Err` says what is wrong.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        let Some(value) = authorization else {
            return Err(format!(
                "admin calls need `authorization: Bearer <token>`; the token is in {} on the core's host",
                self.path.display()
            ));
        };
        let given = value.strip_prefix("Bearer ").unwrap_or("").trim();
        if !same(given.as_bytes(), self.secret.as_bytes()) {
            return Err(format!(
                "the admin token does not match the one in {}",
                self.path.display()
            ));
        }
        Ok(())
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let made = AdminToken::load_or_create(&path).unwrap();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o600);
        let read = AdminToken::load_or_create(&path).unwrap();
        assert_eq!(made.secret, read.secret);
        assert_eq!(made.secret.len(), 64);
        let good = format!("Bearer {}", made.secret);
        assert!(read.check(Some(&good)).is_ok());
        let missing = read.check(None).unwrap_err();
        assert!(missing.contains("authorization: Bearer"), "{missing}");
        assert!(missing.contains("admin.token"), "{missing}");
        let wrong = read
            .check(Some(&format!("Bearer {}", "0".repeat(64))))
            .unwrap_err();
        assert!(wrong.contains("does not match"), "{wrong}");
        assert!(read.check(Some(&made.secret)).is_err(), "no Bearer prefix");
    }

    #[test]
    fn a_short_token_in_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "abc\n").unwrap();
        let e = AdminToken::load_or_create(&path).err().unwrap().to_string();
        assert!(e.contains("at least 16 characters"), "{e}");
    }
}
