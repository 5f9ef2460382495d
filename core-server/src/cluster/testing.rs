//! For the cluster's in-process tests: one real `nats-server -js` on a free
//! loopback port with its own store directory, killed when dropped.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{config::ClusterConfig, nats::Nats};

/// Where Debian's nats-server is (deploy/install-deps.sh installs it).
const NATS_SERVER: &str = "/usr/sbin/nats-server";
/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NatsServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        NatsServer {
            child: Self::spawn(port, dir.path()),
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (/usr/sbin/nats-server; apt-get install nats-server)");
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// store.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.child = Self::spawn(port, self._dir.path());
    }

    /// Stops the server's process (SIGSTOP) with its sockets open: what a
    /// client sends reaches it and waits, unanswered, until
    /// [`NatsServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} nats-server");
    }

    /// A cluster config for a node of this single server (R1).
    pub fn config(&self, node: &str, partitions: u16) -> ClusterConfig {
        ClusterConfig {
            nats: vec![self.url.clone()],
            node_id: Some(node.into()),
            partitions,
            replicas: 1,
            lease_ms: 900,
            peer_token: Some("0123456789abcdef".into()),
            ..Default::default()
        }
    }

    pub async fn connect(&self, node: &str, partitions: u16) -> Nats {
        Nats::connect(&self.config(node, partitions), node)
            .await
            .expect("connect to the test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
