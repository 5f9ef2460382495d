//! Backup and restore, end to end: `sightline-core backup` against a running
//! core taking a replay with duplicates, a second (incremental) backup, the
//! core stopped and restored from the backup into a new folder, a core
//! started on it, and the agent (`buffer.keep_acked`) reconnecting: the final
//! store equals the ground truth (PROTOCOL.md rule 18a). Also the refusals
//! (a non-empty target, a corrupt file) and a backup in S3 (moto's server).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use sightline_tests::{
    bin_path,
    data::write_locations,
    query::{assert_exactly_once, stats},
    wait_for, Agent, AgentArgs, Core, CoreArgs, Dataset, Edge,
};

const LOCATIONS: &[i64] = &[1, 2, 3, 4];

/// `sightline-core ARGS` (the core's admin token from `core`'s data folder),
/// its output.
fn core_cli(core: Option<&Core>, args: &[&str]) -> Output {
    let mut c = Command::new(bin_path("sightline-core"));
    c.args(args);
    if let Some(core) = core {
        c.env("SIGHTLINE_CORE", core.url()).env(
            "SIGHTLINE_ADMIN_TOKEN_FILE",
            core.args.data_dir.join("admin.token"),
        );
    }
    c.output().unwrap()
}

/// A backup of `core` to `to`: (uploaded bytes, total bytes).
fn backup(core: &Core, to: &str) -> (u64, u64) {
    let out = core_cli(Some(core), &["backup", "--to", to]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "backup: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "backup ID to DEST: N files, B bytes; uploaded n files, b bytes; T ms"
    let bytes = |part: &str| -> u64 {
        let words: Vec<&str> = part.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.starts_with("bytes"))
            .expect(&text);
        words[at - 1].parse().expect(&text)
    };
    let parts: Vec<&str> = text.split("; ").collect();
    let (total, uploaded) = (bytes(parts[0]), bytes(parts[1]));
    (uploaded, total)
}

fn restore(from: &str, data_dir: &Path) -> Output {
    core_cli(
        None,
        &[
            "restore",
            "--from",
            from,
            "--data-dir",
            &data_dir.display().to_string(),
        ],
    )
}

/// `cp -a from to`.
fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// A core on `data_dir` on the ports (and with the CA) `was` used.
fn start_restored(was: &Core, data_dir: PathBuf) -> Core {
    copy_dir(&was.pki(), &data_dir.with_extension("pki"));
    Core::start_with(CoreArgs {
        data_dir,
        grpc: was.grpc,
        edge: was.edge,
        ..was.args.clone()
    })
}

async fn wait_stored(core: &Core, n: u64, what: &str) {
    let url = core.url();
    wait_for(what, Duration::from_secs(120), || {
        let url = url.clone();
        async move { (stats(&url).await.stored >= n).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_core_restored_from_a_backup_gets_every_event_back_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let mut core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(14, 15_000, 0.2, 0.3, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    // The agent keeps what the core acknowledged (rule 18a) and reconnects
    // quickly; it runs on after its replay, to meet the restored core.
    let mut args = AgentArgs::replay(dir.path(), "backup-agent", String::new(), &csv, Some(2500))
        .over(&core, Edge::Grpc);
    args.exit_when_drained = false;
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "agent_id = \"backup-agent\"\n[buffer]\nkeep_acked = 1000000\n[sender]\nbackoff_max = \"300ms\"\n",
    )
    .unwrap();
    args.extra
        .extend(["--config".to_string(), cfg.display().to_string()]);
    let mut agent = Agent::start(args);

    // Two backups while the replay runs; the second uploads what changed.
    wait_stored(&core, 4_000, "4,000 events stored").await;
    let to = dir.path().join("backups");
    let to_s = to.display().to_string();
    let (first, first_total) = backup(&core, &to_s);
    let at_backup = stats(&core.url()).await.stored;
    assert!(
        at_backup < truth.unique,
        "the backup is taken during ingest"
    );
    let (second, second_total) = backup(&core, &to_s);
    assert!(
        second < first && second < second_total,
        "the second backup uploads only what changed: {second} of {second_total} bytes, after {first} of {first_total}"
    );
    assert!(stats(&core.url()).await.stored < truth.unique);

    // The replay ends; the core has it all.
    wait_stored(&core, truth.unique, "the whole replay stored").await;
    assert_exactly_once(&core.url(), &truth).await;

    // Restore the backup (taken mid-replay) into a new folder; start there.
    core.terminate();
    let restored = dir.path().join("restored");
    let out = restore(&to_s, &restored);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("backup-agent") && said.contains("rebuilt"),
        "{said}"
    );
    let core = start_restored(&core, restored);
    let back = stats(&core.url()).await.stored;
    assert!(
        back < truth.unique,
        "the restored core is behind ({back} of {})",
        truth.unique
    );
    // The agent reconnects, starts a new epoch and re-sends the kept events.
    wait_stored(&core, truth.unique, "every event back on the restored core").await;
    assert_exactly_once(&core.url(), &truth).await;
    let log = agent.log();
    assert!(
        log.contains("new epoch") && log.contains("kept by `buffer.keep_acked`"),
        "the agent says what it did; log:\n{log}"
    );
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_refuses_a_non_empty_folder_and_a_corrupt_file_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let mut core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(15, 2_000, 0.1, 0.0, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "a", String::new(), &csv, None).over(&core, Edge::Grpc),
    );
    assert!(agent.wait(Duration::from_secs(60)).success());
    let to = dir.path().join("backups");
    backup(&core, &to.display().to_string());

    // A folder that holds something is refused, named; it is left as it was.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep-me"), "x").unwrap();
    let out = restore(&to.display().to_string(), &busy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not empty") && err.contains(&busy.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // A corrupt copy of a file is refused, named; nothing is restored.
    let bad = dir.path().join("bad-backups");
    copy_dir(&to, &bad);
    let blobs: Vec<PathBuf> = std::fs::read_dir(bad.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let victim = blobs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(victim, bytes).unwrap();
    let target = dir.path().join("from-bad");
    let out = restore(&bad.display().to_string(), &target);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is corrupt") && err.contains("backup file `"),
        "{err}"
    );
    assert!(!target.exists(), "nothing restored");

    // The good backup restores, and a core starts on it with every event.
    core.terminate();
    let good = dir.path().join("good");
    let out = restore(&to.display().to_string(), &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = start_restored(&core, good);
    assert_exactly_once(&restored.url(), &data.truth()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_goes_to_s3_incrementally_and_restores_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let moto = sightline_tests::s3::Moto::start().await;
    let s3 = moto.addr.clone();
    let (head, _) = sightline_tests::http::request(
        &s3,
        &format!(
            "PUT /backups HTTP/1.1\r\nHost: {s3}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The core (which uploads) and the restore read the AWS_* environment;
    // the processes this test starts inherit it.
    for (k, v) in [
        ("AWS_ENDPOINT", format!("http://{s3}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
    ] {
        std::env::set_var(k, v);
    }

    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let mut core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(16, 3_000, 0.1, 0.2, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "s3-agent", String::new(), &csv, None)
            .over(&core, Edge::Grpc),
    );
    assert!(agent.wait(Duration::from_secs(60)).success());
    let to = "s3://backups/site-1/core";
    let (first, _) = backup(&core, to);
    let (second, _) = backup(&core, to);
    assert!(
        second < first,
        "the second backup uploads only what changed: {second} after {first}"
    );
    core.terminate();
    let restored = dir.path().join("restored");
    let out = restore(to, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = start_restored(&core, restored);
    assert_exactly_once(&core.url(), &data.truth()).await;
}
