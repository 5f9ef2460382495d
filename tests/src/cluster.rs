//! A Sightline cluster on loopback for the cluster tests and benchmark: 3
//! clustered `nats-server -js` (R3), moto as the object store (footage and
//! partition checkpoints) and real core nodes with `[cluster]` configs.

use std::{path::PathBuf, time::Duration};

use crate::{
    data::write_locations,
    nats::{NatsCluster, NatsSecurity},
    query::{assert_exactly_once, wait_stored},
    s3::Moto,
    Agent, AgentArgs, Core, CoreArgs, Dataset, Truth,
};

/// How the rig's nodes are configured.
#[derive(Debug, Clone)]
pub struct RigConfig {
    /// `cluster.partitions`.
    pub partitions: u32,
    /// `cluster.lease_ms`.
    pub lease_ms: u64,
    /// `cluster.checkpoint_interval`, humantime.
    pub checkpoint_interval: String,
    /// Dataset B's locations.
    pub locations: Vec<i64>,
    /// More arguments for every core (e.g. `--no-sync`).
    pub core_args: Vec<String>,
    /// As on a real network: the NATS servers take clients over TLS with a
    /// token, and the cores serve their query and HTTP ports over TLS
    /// (one site CA, [`Rig::pki`]) and dial each other so.
    pub secure: bool,
}

/// The NATS token of a [`RigConfig::secure`] rig.
pub const NATS_TOKEN: &str = "rig-nats-token-0123456789";

/// 3 nats-servers, moto with the footage and checkpoint buckets, and the
/// core nodes.
pub struct Rig {
    // Dropped in this order: the cores, then what they use.
    pub nodes: Vec<Core>,
    pub nats: NatsCluster,
    pub moto: Moto,
    pub cfg: RigConfig,
    locations: PathBuf,
    pub dir: tempfile::TempDir,
    /// One cluster test at a time: each starts 3 nats-servers, moto and 3
    /// cores, and the cores take moto's address from this process's
    /// environment. Last, so it is let go after everything above stopped.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Rig {
    /// Starts the rig with `nodes` core nodes (`core-0`, …). One rig at a
    /// time in a process: the cores take moto's address from this
    /// process's environment.
    pub async fn start(nodes: usize, cfg: RigConfig) -> Rig {
        static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let security = cfg.secure.then(|| {
            let pki = crate::proc::pki(&dir.path().join("pki"));
            NatsSecurity {
                cert: pki.join("core.pem"),
                key: pki.join("core.key"),
                token: NATS_TOKEN.into(),
            }
        });
        let nats = NatsCluster::start_secure_in(dir.path(), 3, security).await;
        let moto = Moto::start().await;
        // The cores upload checkpoints with the AWS_* environment (as
        // backups), which they inherit from this process.
        for (k, v) in [
            ("AWS_ENDPOINT", format!("http://{}", moto.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ] {
            std::env::set_var(k, v);
        }
        for bucket in ["footage", "checkpoints"] {
            let (head, _) = crate::http::request(
                &moto.addr,
                &format!(
                    "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    moto.addr
                ),
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        let locations = dir.path().join("locations.csv");
        write_locations(&locations, &cfg.locations);
        let mut rig = Rig {
            _serial: serial,
            cfg,
            dir,
            nats,
            moto,
            locations,
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            rig.add_node(i);
        }
        rig
    }

    /// The site CA folder of a [`RigConfig::secure`] rig (`ca.pem`, and
    /// `core.pem` for 127.0.0.1 that every node and NATS server serves).
    pub fn pki(&self) -> std::path::PathBuf {
        self.dir.path().join("pki")
    }

    /// Starts node `i` (`core-<i>`) and adds it to the rig.
    pub fn add_node(&mut self, i: usize) {
        let id = format!("core-{i}");
        let cfg = self.dir.path().join(format!("{id}.toml"));
        let nats = self
            .nats
            .urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let s3 = &self.moto.addr;
        let RigConfig {
            partitions,
            lease_ms,
            checkpoint_interval,
            ..
        } = &self.cfg;
        let pki = self.pki();
        let secure = if self.cfg.secure {
            format!(
                "peer_ca = \"{ca}\"\nnats_ca = \"{ca}\"\nnats_token = \"{NATS_TOKEN}\"\n",
                ca = pki.join("ca.pem").display()
            )
        } else {
            String::new()
        };
        let tls_args = if self.cfg.secure {
            vec![
                "--tls-cert".to_string(),
                pki.join("core.pem").display().to_string(),
                "--tls-key".into(),
                pki.join("core.key").display().to_string(),
            ]
        } else {
            Vec::new()
        };
        std::fs::write(
            &cfg,
            format!(
                "[media]\nurl = \"s3://footage\"\n[media.options]\nendpoint = \"http://{s3}\"\nallow_http = \"true\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n\
                 [cluster]\nnats = [{nats}]\nnode_id = \"{id}\"\npartitions = {partitions}\nreplicas = 3\nlease_ms = {lease_ms}\ncheckpoint_interval = \"{checkpoint_interval}\"\ncheckpoints = \"s3://checkpoints/test\"\npeer_token = \"cluster-test-token\"\n{secure}"
            ),
        )
        .unwrap();
        if self.cfg.secure {
            // The node's edge link serves a certificate of the rig's one site
            // CA too, so that an agent trusts every node.
            let own = self.dir.path().join(format!("{id}.pki"));
            if !own.exists() {
                std::os::unix::fs::symlink(&pki, &own).unwrap();
            }
        }
        let core = Core::start_with(CoreArgs {
            data_dir: self.dir.path().join(&id),
            locations: Some(self.locations.clone()),
            grpc: "127.0.0.1:0".parse().unwrap(),
            edge: "127.0.0.1:0".parse().unwrap(),
            extra: ["--config".to_string(), cfg.display().to_string()]
                .into_iter()
                .chain(tls_args)
                .chain(self.cfg.core_args.iter().cloned())
                .collect(),
        });
        self.nodes.push(core);
    }

    /// Every node's edge URL, comma-separated (an agent's `--core`): the
    /// plaintext edge on the query port, or, in a secure rig, the edge link
    /// over TLS (gRPC) with the agent's certificate.
    pub fn core_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                if self.cfg.secure {
                    n.edge_url(crate::Edge::Grpc)
                } else {
                    n.url()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An agent replaying `data` into every node at `rate` events/s,
    /// reconnecting within 300 ms.
    pub fn replay(&self, id: &str, data: &Dataset, rate: u32) -> Agent {
        let csv = data.csv_in(self.dir.path());
        let csv = {
            let own = self.dir.path().join(format!("{id}.csv"));
            std::fs::rename(&csv, &own).unwrap();
            own
        };
        let mut args = AgentArgs::replay(self.dir.path(), id, self.core_list(), &csv, Some(rate))
            .reconnect_within(Duration::from_millis(300));
        if self.cfg.secure {
            crate::proc::issue_agent(&self.pki(), id);
            args.extra
                .extend(["--tls-dir".to_string(), self.pki().display().to_string()]);
        }
        Agent::start(args)
    }

    /// Ground truth from every running node (queries from any node), once
    /// the owners have applied what the agents' acks made durable in the
    /// stream (PROTOCOL.md, "Cluster mode": the ack comes before the apply).
    pub async fn assert_truth(&mut self, truth: &Truth) {
        for n in self.nodes.iter_mut() {
            if n.alive() {
                wait_stored(&n.url(), truth.unique).await;
                break;
            }
        }
        for n in self.nodes.iter_mut() {
            if n.alive() {
                assert_exactly_once(&n.url(), truth).await;
            }
        }
        // No owner found (or took for) acknowledged shares the stream lost
        // (PROTOCOL.md rule 32).
        for n in &self.nodes {
            let log = n.log();
            assert!(
                !log.contains("ACKNOWLEDGED EVENTS LOST"),
                "a node logged acknowledged events lost:\n{}",
                log.lines()
                    .filter(|l| l.contains("ACKNOWLEDGED EVENTS LOST"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

impl Drop for Rig {
    /// A failed test shows the end of every node's log.
    fn drop(&mut self) {
        // SIGHTLINE_KEEP_LOGS: kept after a passing run too (loops that
        // look for what a rare fault left in the logs).
        if std::thread::panicking() || std::env::var_os("SIGHTLINE_KEEP_LOGS").is_some() {
            // The whole logs, kept past the temporary folder.
            let what = if std::thread::panicking() {
                "failure"
            } else {
                "run"
            };
            let keep = std::env::temp_dir().join(format!(
                "sightline-cluster-{what}-{}-{}",
                std::process::id(),
                sightline_proto::now_ms()
            ));
            if std::fs::create_dir_all(&keep).is_ok() {
                for e in std::fs::read_dir(self.dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "log") {
                        let _ = std::fs::copy(&p, keep.join(e.file_name()));
                    }
                }
                eprintln!("---- every log of this rig: {} ----", keep.display());
            }
            for (i, n) in self.nodes.iter().enumerate() {
                if !std::thread::panicking() {
                    break;
                }
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("---- core-{i}, last lines of its log ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}
