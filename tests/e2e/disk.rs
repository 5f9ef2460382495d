//! Faults of the disk: a full data directory stops acknowledgements, says so,
//! and recovers by itself when space returns — no abort, no lost event.
//!
//! The data directory sits on a small tmpfs the test mounts (the test runs as
//! root, as CI does); where mounting is not permitted it says so and skips.

use std::{path::Path, process::Command, time::Duration};

use sightline_tests::{
    query::{assert_exactly_once, stats},
    wait_for, Agent, AgentArgs, Core, CoreArgs, Dataset,
};

/// A tmpfs of `mb` MiB at `dir`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mb: u32) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Fills what is left with a file (`name`); its path.
    fn fill(&self, name: &str) -> std::path::PathBuf {
        let f = self.0.join(name);
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k", "status=none"])
            .arg(format!("of={}", f.display()))
            .status();
        f
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_core_disk_stops_acks_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), 48) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    // The smallest memtables (8 MiB): RocksDB preallocates each WAL file
    // for a memtable and a tenth (2.2 MiB here, 17.6 MiB with the default
    // 64 MiB), and writes into that space go on after the disk is full. With
    // the default, what is left of the replay once the disk is full fitted
    // in it or not by a few hundred kilobytes, so whether a commit failed
    // came down to the memtables' sizes (a det map of 0.6 MiB more made the
    // test fail, forty-sixth session).
    let cfg = dir.path().join("core.toml");
    std::fs::write(&cfg, "[storage]\nmemtable = \"8 MiB\"\n").unwrap();
    let mut core = Core::start_with(CoreArgs {
        data_dir: disk.0.join("core"),
        locations: None,
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec!["--config".into(), cfg.display().to_string()],
    });
    let data = Dataset::generate(31, 120_000, 0.05, 0.0, &[1, 2]);
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "a", core.url(), &csv, Some(4_000))
            .reconnect_within(Duration::from_millis(300)),
    );
    let url = core.url();
    wait_for("some events stored", Duration::from_secs(30), || {
        let url = url.clone();
        async move { (stats(&url).await.stored > 2_000).then_some(()) }
    })
    .await;

    // The disk fills up. RocksDB goes on into the WAL space it holds until
    // that runs out; then commits fail, nothing more is acknowledged, and
    // the core says why (and stays up).
    let filler = disk.fill("filler");
    let log = || core.log();
    wait_for(
        "a commit to fail on the full disk",
        Duration::from_secs(90),
        || {
            let failed = log().contains("commit failed");
            async move { failed.then_some(()) }
        },
    )
    .await;
    // RocksDB may free space of its own after the failure (a flush lets go
    // of its WAL file); that space is taken too, so the disk stays full. If
    // the core found that space first, it reopened its store, and the new
    // WAL file's preallocated space (fallocate) takes commits until it runs
    // out: those are written, so acknowledging them is right. Once the store
    // is in its fault after the refill (its metric says so), and without a
    // reopen since, nothing may be acknowledged.
    let reopens = || log().matches("takes writes again: reopened").count();
    let http = core.http;
    let fault_gauge = move || async move {
        let (_, body) = sightline_tests::http::get(http, "/metrics", "").await;
        String::from_utf8_lossy(&body).lines().find_map(|l| {
            l.strip_prefix("sightline_store_disk_fault ")?
                .parse::<u8>()
                .ok()
        })
    };
    let mut refills = Vec::new();
    for round in 0.. {
        let reopened = reopens();
        refills.push(disk.fill(&format!("refill{round}")));
        wait_for(
            "the store to refuse writes after the refill",
            Duration::from_secs(90),
            || async { (fault_gauge().await == Some(1)).then_some(()) },
        )
        .await;
        let before = stats(&url).await.stored;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = stats(&url).await.stored;
        if reopens() == reopened {
            assert_eq!(
                before, during,
                "nothing is acknowledged while the disk is full"
            );
            break;
        }
        assert!(
            round < 5,
            "the core reopened its store on a full disk again and again:\n{}",
            log()
        );
    }
    assert!(
        log().contains("No space left"),
        "the core says why it stopped acknowledging:\n{}",
        log()
    );
    assert!(core.alive(), "the core is still running with a full disk");

    // Space returns: the core was never down and takes everything.
    std::fs::remove_file(&filler).unwrap();
    for f in &refills {
        std::fs::remove_file(f).unwrap();
    }
    assert!(
        agent.wait(Duration::from_secs(180)).success(),
        "the agent delivered everything after space returned"
    );
    assert_exactly_once(&core.url(), &data.truth()).await;
    assert!(
        core.log().contains("takes writes again: reopened"),
        "the core says it recovered:\n{}",
        core.log()
    );
    // The search index recovered too and converges to the store.
    let stored = stats(&url).await.stored;
    wait_for(
        "the search index to hold every event",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let hits = sightline_tests::query::client(&url)
                    .await
                    .search(sightline_proto::v1::SearchRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .total_hits;
                (hits == stored).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        fault_gauge().await,
        Some(0),
        "the store's disk fault metric is back to 0"
    );
    let healthz = sightline_tests::http::get(core.http, "/healthz", "").await;
    assert!(healthz.0.contains("200"), "{}", healthz.0);
}
