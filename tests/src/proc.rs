//! The real binaries as child processes.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

/// Path of a workspace binary (built by `cargo build --workspace --bins`,
/// next to the test executable's `deps/` folder), or from `SIGHTLINE_BIN_DIR`,
/// or `SIGHTLINE_CORE_BIN` / `SIGHTLINE_AGENT_BIN` for one of them.
pub fn bin_path(name: &str) -> PathBuf {
    // One binary from elsewhere, e.g. SIGHTLINE_AGENT_BIN for an agent built
    // without footage.
    let var = format!(
        "{}_BIN",
        name.replace("sightline-", "SIGHTLINE_")
            .to_ascii_uppercase()
    );
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    if let Ok(dir) = std::env::var("SIGHTLINE_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A child whose stdout lines are collected and whose stderr goes to a file.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(bin: &str, args: &[String], log: PathBuf) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(bin_path(bin))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            new_line: rx,
            log,
        }
    }

    fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.new_line.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {timeout:?}; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 30)
                ),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} (last lines) ---\n{}",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// In [`CoreArgs::extra`] (and not passed on): keep the core's default agent
/// registry (enforced, `<data dir>/agents.toml`) instead of the harness's
/// `--no-registry`.
pub const DEFAULT_REGISTRY: &str = "<default registry>";

/// How to start a core.
#[derive(Debug, Clone)]
pub struct CoreArgs {
    pub data_dir: PathBuf,
    pub locations: Option<PathBuf>,
    pub grpc: SocketAddr,
    /// The edge link (gRPC over TLS on TCP, QUIC on UDP, one port).
    pub edge: SocketAddr,
    pub extra: Vec<String>,
}

/// Which transport of the edge link an agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// gRPC over HTTP/2 over TLS (`https://`).
    Grpc,
    /// QUIC (`quic://`).
    Quic,
}

/// The site's CA, made by the real `sightline-core certs`, with the core's
/// certificate for 127.0.0.1; agents' certificates are issued on demand.
pub fn pki(dir: &Path) -> PathBuf {
    if !dir.join("core.pem").exists() {
        certs(&["init", "--dir", &dir.display().to_string()]);
        certs(&[
            "core",
            "--dir",
            &dir.display().to_string(),
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
        ]);
    }
    dir.to_path_buf()
}

/// Issues an agent certificate in `dir` (once).
pub fn issue_agent(dir: &Path, id: &str) {
    if !dir.join(format!("agent-{id}.pem")).exists() {
        certs(&[
            "agent",
            "--dir",
            &dir.display().to_string(),
            "--agent-id",
            id,
        ]);
    }
}

fn certs(args: &[&str]) {
    let out = Command::new(bin_path("sightline-core"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sightline-core certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts `authorization: Bearer <token>` on every request of a client.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

/// The admin client's interceptor (the admin token as a [`Bearer`]).
pub type AdminAuth = Bearer;

impl Bearer {
    /// `token` as a bearer credential (an API token or the admin token).
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().expect("a token is ASCII"))
    }
}

/// Every core this process started, by gRPC URL, gRPC address and HTTP
/// address → its admin token, so that the query and HTTP helpers
/// authenticate as the admin without each test passing the token along.
static ADMIN_TOKENS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// The CA (PEM) of every core this process started serving TLS
/// (`--tls-cert`), by its gRPC URL `https://…`: `ca.pem` beside the
/// certificate, as `sightline-core certs` lays a site CA out.
static TLS_CAS: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

/// The CA that issued the certificate of the core this process started at
/// `url` (`https://…`).
pub fn ca_for(url: &str) -> Option<Vec<u8>> {
    TLS_CAS.lock().unwrap().get(url).cloned()
}

/// The admin token of the core this process started at `addr` (its gRPC
/// URL `http://…`, or its gRPC or HTTP `host:port`).
pub fn admin_token_for(addr: &str) -> Option<String> {
    ADMIN_TOKENS.lock().unwrap().get(addr).cloned()
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A running `sightline-core`.
pub struct Core {
    proc: Proc,
    pub args: CoreArgs,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub edge: SocketAddr,
}

impl Core {
    /// Starts a core with its store in `dir/core` (gRPC on a free port).
    pub fn start(dir: &Path, locations: Option<&Path>) -> Self {
        Self::start_with(CoreArgs {
            data_dir: dir.join("core"),
            locations: locations.map(Path::to_path_buf),
            grpc: "127.0.0.1:0".parse().unwrap(),
            edge: "127.0.0.1:0".parse().unwrap(),
            extra: vec![],
        })
    }

    /// [`Self::start`] with `config` (TOML) as its config file
    /// (`<dir>/core.toml`).
    pub fn start_with_config(dir: &Path, locations: Option<&Path>, config: &str) -> Self {
        let cfg = dir.join("core.toml");
        std::fs::write(&cfg, config).unwrap();
        Self::start_with(CoreArgs {
            data_dir: dir.join("core"),
            locations: locations.map(Path::to_path_buf),
            grpc: "127.0.0.1:0".parse().unwrap(),
            edge: "127.0.0.1:0".parse().unwrap(),
            extra: vec!["--config".into(), cfg.display().to_string()],
        })
    }

    /// The CA folder this core trusts (`<data_dir>-pki`).
    pub fn pki(&self) -> PathBuf {
        self.args.data_dir.with_extension("pki")
    }

    /// The core URL for an agent on `edge`.
    pub fn edge_url(&self, edge: Edge) -> String {
        match edge {
            Edge::Grpc => format!("https://{}", self.edge),
            Edge::Quic => format!("quic://{}", self.edge),
        }
    }

    pub fn start_with(args: CoreArgs) -> Self {
        let mut a = vec![
            "serve".to_string(),
            "--grpc-listen".into(),
            args.grpc.to_string(),
            "--data-dir".into(),
            args.data_dir.display().to_string(),
            // Both: TLS on the edge link, and plaintext on the gRPC port for
            // the tests that drive the protocol by hand.
            "--edge-plaintext".into(),
            "--tls-dir".into(),
            pki(&args.data_dir.with_extension("pki"))
                .display()
                .to_string(),
            "--edge-listen".into(),
            args.edge.to_string(),
        ];
        if !args.extra.iter().any(|a| a == "--http-listen") {
            a.extend(["--http-listen".into(), "127.0.0.1:0".into()]);
        }
        // The agent registry: the core's own (enforced, in its data dir)
        // when asked for, an explicit one when given; otherwise off, for the
        // tests that are not about it and publish for arbitrary cameras.
        if !args
            .extra
            .iter()
            .any(|a| a == "--registry" || a == DEFAULT_REGISTRY)
        {
            a.push("--no-registry".into());
        }
        if let Some(l) = &args.locations {
            a.push("--locations".into());
            a.push(l.display().to_string());
        }
        a.extend(
            args.extra
                .iter()
                .filter(|a| *a != DEFAULT_REGISTRY)
                .cloned(),
        );
        let log = args.data_dir.with_extension("log");
        let proc = Proc::spawn("sightline-core", &a, log);
        let line = proc.wait_line("sightline-core listening", Duration::from_secs(30));
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        let (grpc, http, edge) = (addr("grpc="), addr("http="), addr("edge="));
        let core = Self {
            proc,
            args,
            grpc,
            http,
            edge,
        };
        if let Some(cert) = core.tls_cert() {
            let ca = cert.with_file_name("ca.pem");
            if let Ok(pem) = std::fs::read(&ca) {
                TLS_CAS.lock().unwrap().insert(core.url(), pem);
            }
        }
        let token = core.admin_token();
        let mut tokens = ADMIN_TOKENS.lock().unwrap();
        for key in [core.url(), grpc.to_string(), http.to_string()] {
            tokens.insert(key, token.clone());
        }
        drop(tokens);
        core
    }

    /// The query API's URL: `https://` when the core serves TLS
    /// (`--tls-cert`), else `http://`.
    pub fn url(&self) -> String {
        let scheme = if self.tls_cert().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc)
    }

    /// The certificate the query and HTTP ports serve (`--tls-cert`), if any.
    pub fn tls_cert(&self) -> Option<PathBuf> {
        let at = self.args.extra.iter().position(|a| a == "--tls-cert")?;
        self.args.extra.get(at + 1).map(PathBuf::from)
    }

    /// The core's admin token (made on its first start in its data folder).
    pub fn admin_token(&self) -> String {
        let path = self.args.data_dir.join("admin.token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// An admin client that sends the admin token with every call.
    pub async fn admin(
        &self,
    ) -> sightline_proto::v1::admin_client::AdminClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AdminAuth>,
    > {
        let channel = tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        sightline_proto::v1::admin_client::AdminClient::with_interceptor(
            channel,
            Bearer::new(&self.admin_token()),
        )
    }

    /// Adds an account through the Admin API (as the admin token).
    pub async fn add_user(
        &self,
        name: &str,
        role: sightline_proto::v1::Role,
        locations: &[i64],
        password: &str,
    ) {
        self.admin()
            .await
            .add_user(sightline_proto::v1::AddUserRequest {
                name: name.into(),
                role: role as i32,
                locations: locations.to_vec(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("AddUser {name}: {e}"));
    }

    /// Creates an API token through the Admin API; its secret.
    pub async fn create_token(
        &self,
        name: &str,
        role: sightline_proto::v1::Role,
        locations: &[i64],
        expires_ms: i64,
    ) -> String {
        self.admin()
            .await
            .create_token(sightline_proto::v1::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                locations: locations.to_vec(),
                expires_ms,
            })
            .await
            .unwrap_or_else(|e| panic!("CreateToken {name}: {e}"))
            .into_inner()
            .secret
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.terminate()
    }

    /// Starts again on the same store and the same gRPC port.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let mut args = self.args.clone();
        args.grpc = self.grpc;
        args.edge = self.edge;
        let fresh = Core::start_with(args);
        *self = fresh;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentArgs {
    pub id: String,
    pub core_url: String,
    pub data_dir: PathBuf,
    /// Arguments after the global ones (e.g. `replay FILE --rate 5000`).
    pub command: Vec<String>,
    pub intake: bool,
    pub exit_when_drained: bool,
    pub extra: Vec<String>,
}

/// A running `sightline-agent`.
pub struct Agent {
    proc: Proc,
    pub args: AgentArgs,
    /// The intake address, when started with one.
    pub intake: Option<SocketAddr>,
}

impl Agent {
    pub fn start(args: AgentArgs) -> Self {
        let mut a = vec![
            "--agent-id".to_string(),
            args.id.clone(),
            "--core".into(),
            args.core_url.clone(),
            "--data-dir".into(),
            args.data_dir.display().to_string(),
        ];
        if args.intake {
            a.push("--intake".into());
            a.push("127.0.0.1:0".into());
        }
        if args.exit_when_drained {
            a.push("--exit-when-drained".into());
        }
        // Its metrics endpoint on a free port (the default one would be
        // shared by every agent of a test); [`Agent::metrics_addr`] finds it.
        if !args.extra.iter().any(|a| a == "--metrics-listen") {
            a.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        a.extend(
            args.extra
                .iter()
                .filter(|a| *a != DEFAULT_REGISTRY)
                .cloned(),
        );
        a.extend(args.command.iter().cloned());
        let log = args.data_dir.with_extension("log");
        let proc = Proc::spawn("sightline-agent", &a, log);
        let intake = args.intake.then(|| {
            let line = proc.wait_line(
                "sightline-agent intake listening on",
                Duration::from_secs(30),
            );
            line.rsplit(' ').next().unwrap().parse().unwrap()
        });
        Self { proc, args, intake }
    }

    /// Where the agent serves `/metrics` and `/healthz` (from the line it
    /// prints at start-up; waits for it).
    pub fn metrics_addr(&self) -> SocketAddr {
        const LINE: &str = "sightline-agent metrics listening on ";
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .proc
                .lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(LINE).map(|a| a.trim().parse().unwrap()));
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent {} printed no {LINE:?}; log:\n{}",
                self.args.id,
                tail(&self.proc.log, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }

    pub fn intake_url(&self) -> String {
        format!("http://{}", self.intake.expect("started with an intake"))
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.terminate()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.proc.child.try_wait().unwrap() {
                return s;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "agent {} did not exit within {timeout:?}; log:\n{}",
                    self.args.id,
                    tail(&self.proc.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.proc.lines.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    pub fn restart(&mut self) {
        self.proc.kill9();
        *self = Agent::start(self.args.clone());
    }
}

/// `sightline-core serve` with `args` and `--data-dir data_dir`, which must
/// make it refuse to start (exit with a failure within `within`): its stderr.
pub fn refused_start(data_dir: &Path, args: &[&str], within: Duration) -> String {
    let mut child = Command::new(bin_path("sightline-core"))
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < within, "the core started with {args:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Resident set size of a process, in MiB (from /proc).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

impl AgentArgs {
    /// An agent fed only by its intake endpoint (port 0), run until stopped.
    pub fn intake(dir: &Path, id: &str, core_url: String) -> Self {
        Self {
            id: id.into(),
            core_url,
            data_dir: dir.join(id),
            command: vec![],
            intake: true,
            exit_when_drained: false,
            extra: vec![],
        }
    }

    /// This agent over `edge` to `core`, with a certificate issued for its
    /// id (QUIC without the gRPC fallback, so QUIC is what is tested).
    pub fn over(mut self, core: &Core, edge: Edge) -> Self {
        issue_agent(&core.pki(), &self.id);
        self.core_url = core.edge_url(edge);
        self.extra
            .extend(["--tls-dir".to_string(), core.pki().display().to_string()]);
        if edge == Edge::Quic {
            self.extra.push("--no-quic-fallback".into());
        }
        self
    }

    /// Reconnects after a break within `max` (the sender's `backoff_max`;
    /// 5 s by default), so that a test's disruptions all fall while its
    /// source is still producing, whatever the backoff's jitter draws.
    pub fn reconnect_within(mut self, max: std::time::Duration) -> Self {
        let cfg = self.data_dir.with_extension("toml");
        std::fs::write(
            &cfg,
            format!(
                "agent_id = \"{}\"\n[sender]\nbackoff_max = \"{}ms\"\n",
                self.id,
                max.as_millis()
            ),
        )
        .unwrap();
        self.extra
            .extend(["--config".to_string(), cfg.display().to_string()]);
        self
    }

    /// An agent that replays `file` into the core at `core_url` (at `rate`
    /// events/s, or as fast as it goes) and exits once the core has it all.
    pub fn replay(dir: &Path, id: &str, core_url: String, file: &Path, rate: Option<u32>) -> Self {
        let mut command = vec!["replay".to_string(), file.display().to_string()];
        if let Some(r) = rate {
            command.extend(["--rate".to_string(), r.to_string()]);
        }
        Self {
            id: id.into(),
            core_url,
            data_dir: dir.join(id),
            command,
            intake: false,
            exit_when_drained: true,
            extra: vec![],
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the name.
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
