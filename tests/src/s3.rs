//! moto's S3-compatible server (from PyPI, installed into the venv by
//! deploy/install-deps.sh), started on a free port on 127.0.0.1 and stopped
//! when dropped.

use std::{path::PathBuf, process::Command, time::Duration};

/// A running moto server.
pub struct Moto {
    child: std::process::Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SIGHTLINE_MOTO_SERVER`, else the venv's, else `moto_server` on PATH.
fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("SIGHTLINE_MOTO_SERVER") {
        return p.into();
    }
    let venv =
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sightline/venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    "moto_server".into()
}

impl Moto {
    /// Starts moto and waits (at most 30 s) until it takes connections.
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (deploy/install-deps.sh installs it)");
        let moto = Moto {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&moto.addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "S3 server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }
}
