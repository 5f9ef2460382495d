//! Real `nats-server -js` processes (Debian's `nats-server`, installed by
//! deploy/install-deps.sh) clustered on 127.0.0.1 with free ports, for the
//! cluster tests: start N, wait until JetStream has a meta leader, `kill -9`
//! one and restart it on the same ports and store, stop all when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// How long [`NatsCluster::start`] waits for a server to take connections
/// and for JetStream to elect a meta leader (a bound against hanging; it
/// takes about 2 s on loopback).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The same after [`NatsCluster::restart`]: servers back from `kill -9`
/// replay their stores and elect again first (more than 30 s once under the
/// full suite's load).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// The cluster's name (`--cluster_name`).
pub const CLUSTER_NAME: &str = "sightline-test";

/// `SIGHTLINE_NATS_SERVER`, else Debian's `/usr/sbin/nats-server`, else
/// `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SIGHTLINE_NATS_SERVER") {
        return p.into();
    }
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.exists() {
        return debian.into();
    }
    "nats-server".into()
}

/// One server of a [`NatsCluster`]: its ports and store stay the same
/// across restarts.
pub struct NatsServer {
    /// `--server_name` (n0, n1, ...).
    pub name: String,
    /// Client port (`nats://127.0.0.1:<port>`).
    pub port: u16,
    /// Route port (`--cluster`); 0 for a single server.
    pub cluster_port: u16,
    /// Monitoring port (`-m`: `/jsz`, `/varz`).
    pub monitor_port: u16,
    /// JetStream store (`-sd`).
    pub store: PathBuf,
    /// stdout and stderr of every run.
    pub log: PathBuf,
    /// Clients connect over TLS (`tls://`).
    pub tls: bool,
    child: Option<Child>,
    args: Vec<String>,
}

impl NatsServer {
    /// `nats://127.0.0.1:<port>` (`tls://` when it serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (deploy/install-deps.sh installs it): {e}",
                    nats_server_bin().display()
                )
            });
        self.child = Some(child);
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // The route redials of a killed peer fill the log once a
            // second; what explains a failure is elections and JetStream.
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("Error trying to connect to route"))
                .collect();
            eprintln!(
                "--- {} (last lines but route redials) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// How the servers take clients, as on a real network: TLS with this
/// certificate and a token.
#[derive(Debug, Clone)]
pub struct NatsSecurity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub token: String,
}

/// N clustered `nats-server -js` on 127.0.0.1, in a temporary folder (or
/// one given), all stopped when dropped.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: Option<tempfile::TempDir>,
}

/// `n` distinct TCP ports on 127.0.0.1, free now and chosen below the
/// kernel's ephemeral range (`ip_local_port_range`), so that nothing else
/// binding port 0 or connecting out is given one of them while a server
/// that owns it is down: a server restarted on its ports finds them free.
/// A port is handed out once per test process: the tests of one file run
/// side by side, and a port free when one test checked it is not free once
/// another test's server has bound it (CI saw a server exit with "address
/// already in use" so, at its first start).
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(11_000));
    let mut held = Vec::new();
    let mut tries = 0;
    while held.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no {n} free ports in {from}..{to}");
        let port = rand::random_range(from..to);
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    handed_out.extend(&ports);
    ports
}

impl NatsCluster {
    /// Starts `n` servers (1: a single server without routes) in a
    /// temporary folder and waits until JetStream has a meta leader.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Self::start_in(dir.path(), n).await;
        c._dir = Some(dir);
        c
    }

    /// Starts `n` servers with their stores and logs under `dir`.
    pub async fn start_in(dir: &Path, n: usize) -> Self {
        Self::start_secure_in(dir, n, None).await
    }

    /// Starts `n` servers under `dir`, taking clients over TLS with a token
    /// when `security` says so (routes between them stay plain: loopback).
    pub async fn start_secure_in(dir: &Path, n: usize, security: Option<NatsSecurity>) -> Self {
        assert!(n >= 1);
        let ports = free_ports(3 * n);
        let routes = (0..n)
            .map(|i| format!("nats://127.0.0.1:{}", ports[n + i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            let store = dir.join(format!("nats-{name}"));
            std::fs::create_dir_all(&store).unwrap();
            let (port, cluster_port, monitor_port) = (ports[i], ports[n + i], ports[2 * n + i]);
            let mut args: Vec<String> = [
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor_port.to_string(),
                "-sd",
                &store.display().to_string(),
                "--server_name",
                &name,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(sec) = &security {
                args.extend([
                    "--tls".to_string(),
                    "--tlscert".into(),
                    sec.cert.display().to_string(),
                    "--tlskey".into(),
                    sec.key.display().to_string(),
                    "--auth".into(),
                    sec.token.clone(),
                ]);
            }
            if n > 1 {
                args.extend(
                    [
                        "--cluster",
                        &format!("nats://127.0.0.1:{cluster_port}"),
                        "--cluster_name",
                        CLUSTER_NAME,
                        "--routes",
                        &routes,
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
            }
            servers.push(NatsServer {
                log: dir.join(format!("nats-{name}.log")),
                name,
                port,
                cluster_port: if n > 1 { cluster_port } else { 0 },
                monitor_port,
                store,
                tls: security.is_some(),
                child: None,
                args,
            });
        }
        for s in &mut servers {
            s.spawn();
        }
        let c = Self {
            servers,
            _dir: None,
        };
        c.wait_meta_leader().await;
        c
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// `kill -9` server `i`.
    pub fn kill9(&mut self, i: usize) {
        self.servers[i].kill9();
    }

    /// Starts server `i` again on its ports and store (killing it first if
    /// it runs) and waits until it sees a meta leader again.
    pub async fn restart(&mut self, i: usize) {
        self.restart_together(&[i]).await;
    }

    /// Starts servers `which` again at once (killing them first if they
    /// run) and waits (at most [`RESTART_TIMEOUT`]) until every running
    /// server names the same meta leader: servers back from `kill -9` replay
    /// their stores and catch up first, which takes longer under load than a
    /// fresh start.
    pub async fn restart_together(&mut self, which: &[usize]) {
        for &i in which {
            self.servers[i].kill9();
            self.servers[i].spawn();
        }
        self.wait_meta_leader_within(RESTART_TIMEOUT).await;
    }

    /// `GET <path>` on server `i`'s monitoring port, as JSON (`None`: not
    /// answering, e.g. killed).
    pub async fn monitor(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let addr = format!("127.0.0.1:{}", self.servers[i].monitor_port);
        let get = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // HTTP/1.0: the body as is (a larger answer to 1.1 is chunked).
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.ok()?;
            let at = out.windows(4).position(|w| w == b"\r\n\r\n")?;
            serde_json::from_slice(&out[at + 4..]).ok()
        };
        tokio::time::timeout(Duration::from_secs(5), get)
            .await
            .ok()
            .flatten()
    }

    /// The JetStream meta leader as server `i` sees it (`None`: no leader,
    /// or the server does not answer).
    pub async fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor(i, "/jsz").await?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_string())
    }

    /// Waits (at most [`READY_TIMEOUT`]) until every running server takes
    /// connections and all name the same JetStream meta leader; that leader.
    pub async fn wait_meta_leader(&self) -> String {
        self.wait_meta_leader_within(READY_TIMEOUT).await
    }

    async fn wait_meta_leader_within(&self, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for (i, s) in self.servers.iter().enumerate() {
                if s.child.is_none() {
                    continue;
                }
                let up = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
                    .await
                    .is_ok();
                leaders.push(if up { self.meta_leader(i).await } else { None });
            }
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| l.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .servers
                    .iter()
                    .map(|s| format!("{}:\n{}", s.name, crate::proc::tail(&s.log, 10)))
                    .collect();
                panic!(
                    "no JetStream meta leader within {timeout:?} (seen: {leaders:?})\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many messages server `i` stores in JetStream, over every stream
    /// it holds a replica of (`/jsz` `messages`; `None`: it does not answer).
    /// With one stream, that stream's replica on this server.
    pub async fn stored_messages(&self, i: usize) -> Option<u64> {
        self.monitor(i, "/jsz").await?["messages"].as_u64()
    }

    /// How many messages server `i`'s replica of `stream` holds (`None`:
    /// the server does not answer or holds no such replica).
    pub async fn stream_messages(&self, i: usize, stream: &str) -> Option<u64> {
        let jsz = self.monitor(i, "/jsz?accounts=true&streams=true").await?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|a| a["stream_detail"].as_array())
            .flatten()
            .find(|s| s["name"] == stream)?["state"]["messages"]
            .as_u64()
    }
}
