//! The cluster write path end to end (issue 15): one real `nats-server -js`,
//! two real cores in cluster mode, a real agent replaying a generated
//! Dataset A with duplicates into one of them; the other core is killed with
//! `kill -9` mid-stream (its partitions move to the survivor). Checked
//! against ground truth: every det_oid once in SIGHTLINE_OUT, and every one
//! stored exactly once in the survivor's partition stores.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::StreamExt;
use prost::Message;
use sightline_core::cluster::feed::OutBatch;
use sightline_core::store::Store;
use sightline_tests::{
    data::write_locations, wait_for, Agent, AgentArgs, Core, CoreArgs, Dataset, Edge,
};

const LOCATIONS: &[i64] = &[1, 2, 3];
const PARTITIONS: u16 = 4;

/// A single `nats-server -js` on a free loopback port (the 3-server
/// harness is `sightline_tests::nats`).
struct Nats(Child, String);

impl Nats {
    fn start(dir: &Path) -> Nats {
        let port = sightline_tests::nats::free_ports(1)[0];
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Nats(child, format!("nats://127.0.0.1:{port}"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(dir: &Path, id: &str, nats: &str, locations: &Path) -> Core {
    let cfg = dir.join(format!("{id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[cluster]\nnats = [\"{nats}\"]\nnode_id = \"{id}\"\npartitions = {PARTITIONS}\n\
             replicas = 1\nlease_ms = 1500\npeer_token = \"e2e-peer-token-0123456789\"\n"
        ),
    )
    .unwrap();
    Core::start_with(CoreArgs {
        data_dir: dir.join(id),
        locations: Some(locations.to_path_buf()),
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec![
            "--config".into(),
            cfg.display().to_string(),
            "--no-sync".into(),
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_killed_mid_stream_loses_and_duplicates_nothing_in_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let b_csv = dir.path().join("locations.csv");
    write_locations(&b_csv, LOCATIONS);
    let nats = Nats::start(dir.path());
    let a = node(dir.path(), "core-a", &nats.1, &b_csv);
    let mut b = node(dir.path(), "core-b", &nats.1, &b_csv);
    let data = Dataset::generate(3, 6000, 0.25, 0.0, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "agent-1", String::new(), &csv, Some(2000))
            .over(&a, Edge::Grpc),
    );
    // Mid-stream: b, owner of about half the partitions, dies.
    wait_for("b to own partitions", Duration::from_secs(20), || {
        let opened = b.log().contains("partition opened");
        async move { opened.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.kill9();
    assert!(
        agent.wait(Duration::from_secs(120)).success(),
        "{}",
        agent.log()
    );

    // Every det_oid once in SIGHTLINE_OUT.
    let client = async_nats::connect(&nats.1).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let seen: HashMap<i64, u32> = wait_for(
        "every det_oid in SIGHTLINE_OUT",
        Duration::from_secs(60),
        || {
            let js = js.clone();
            let want = truth.unique as usize;
            async move {
                let stream = js.get_stream("SIGHTLINE_OUT").await.ok()?;
                let consumer = stream
                    .create_consumer(
                        async_nats::jetstream::consumer::pull::OrderedConfig::default(),
                    )
                    .await
                    .ok()?;
                let mut msgs = consumer.messages().await.ok()?;
                let mut seen = HashMap::new();
                while let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(500), msgs.next()).await
                {
                    let batch = OutBatch::decode(m.payload.clone()).unwrap();
                    for e in batch.events {
                        *seen
                            .entry(e.detection.unwrap().detection_oid.unwrap())
                            .or_insert(0) += 1;
                    }
                }
                (seen.len() >= want).then_some(seen)
            }
        },
    )
    .await;
    assert_eq!(seen.len() as u64, truth.unique);
    assert!(
        seen.values().all(|n| *n == 1),
        "a det_oid twice in SIGHTLINE_OUT"
    );
    assert!(seen.keys().all(|o| truth.det_oids.contains(o)));

    // Every det_oid stored once in the survivor's partitions.
    let mut a = a;
    a.terminate();
    let mut stored = 0;
    for p in 0..PARTITIONS {
        let path = dir
            .path()
            .join("core-a/partitions")
            .join(format!("p{p:03}"))
            .join("store");
        let store = Store::open(&path, false, 8 << 20).unwrap();
        stored += store.counters().unwrap().stored;
    }
    assert_eq!(stored, truth.unique);
}
