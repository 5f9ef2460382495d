//! Batch export to Parquet: a generated Dataset A with duplicates goes
//! through the real agent and core; `sightline-core export parquet` writes
//! it while the core runs, and DuckDB (an independent reader, from PyPI:
//! deploy/install-deps.sh) reads the Hive-partitioned tree. Its counts, top
//! X per location and det_oid set must equal the core's and the ground
//! truth, and a second export of the same hours must leave the same rows.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sightline_tests::{
    bin_path,
    data::write_locations,
    query::{all_events, assert_exactly_once, top},
    Agent, AgentArgs, Core, Dataset, Truth,
};

const LOCATIONS: &[i64] = &[1, 2, 3];

/// The venv's python (with the `duckdb` wheel), or `SIGHTLINE_PYTHON`.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SIGHTLINE_PYTHON") {
        return p.into();
    }
    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sightline/venv/bin/python")
}

/// What DuckDB makes of the tree: rows, det_oids, top 3 per location and
/// the columns' types, as JSON.
const DUCKDB: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
src = f"read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning=1)"
rows = con.execute(f"select count(*) from {src}").fetchone()[0]
oids = [r[0] for r in con.execute(f"select detection_oid from {src}").fetchall()]
top = con.execute(f"""
  select geographical_location_oid, item_name, count(*) as c from {src}
  group by geographical_location_oid, item_name
  qualify row_number() over (partition by geographical_location_oid order by c desc, item_name) <= 3
  order by geographical_location_oid, c desc, item_name""").fetchall()
types = {r[0]: r[1] for r in con.execute(f"describe select * from {src}").fetchall()}
hours = con.execute(f"select distinct date::varchar || ' ' || hour::varchar from {src}").fetchall()
bad_hours = con.execute(f"""select count(*) from {src}
  where strftime(timestamp_detected at time zone 'UTC', '%Y-%m-%d') != date::varchar
     or hour(timestamp_detected at time zone 'UTC') != hour""").fetchone()[0]
print(json.dumps({"rows": rows, "oids": oids, "top": top, "types": types,
                  "hours": len(hours), "bad_hours": bad_hours}))
"#;

#[derive(Debug)]
struct DuckView {
    rows: u64,
    oids: Vec<i64>,
    top: BTreeMap<i64, Vec<(String, u64)>>,
    types: BTreeMap<String, String>,
    hours: u64,
    bad_hours: u64,
}

fn duckdb(tree: &Path) -> DuckView {
    let out = Command::new(python())
        .args(["-c", DUCKDB, &tree.display().to_string()])
        .output()
        .expect("the venv's python (deploy/install-deps.sh installs duckdb there)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut top: BTreeMap<i64, Vec<(String, u64)>> = BTreeMap::new();
    for r in v["top"].as_array().unwrap() {
        top.entry(r[0].as_i64().unwrap())
            .or_default()
            .push((r[1].as_str().unwrap().to_string(), r[2].as_u64().unwrap()));
    }
    DuckView {
        rows: v["rows"].as_u64().unwrap(),
        oids: v["oids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_i64().unwrap())
            .collect(),
        top,
        types: v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
            .collect(),
        hours: v["hours"].as_u64().unwrap(),
        bad_hours: v["bad_hours"].as_u64().unwrap(),
    }
}

/// Runs `sightline-core export parquet` over the truth's hours; its summary line.
fn export(core: &Core, b: &Path, truth: &Truth, to: &str, extra: &[String]) -> String {
    let out = Command::new(bin_path("sightline-core"))
        .args(["export", "parquet", "--data-dir"])
        .arg(&core.args.data_dir)
        .arg("--locations")
        .arg(b)
        .args([
            "--since",
            &truth.min_ts.to_string(),
            "--until",
            &(truth.max_ts + 1).to_string(),
            "--to",
            to,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ingests a generated Dataset A (duplicates, stamped det_oids) through an
/// agent; the core holds exactly the truth.
async fn ingested(dir: &Path, seed: u64, unique: usize) -> (Core, PathBuf, Truth) {
    let b = dir.join("b.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir, Some(&b));
    let data = Dataset::generate(seed, unique, 0.2, 0.3, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir);
    let mut agent = Agent::start(AgentArgs::replay(dir, "exp", core.url(), &csv, None));
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &truth).await;
    (core, b, truth)
}

async fn core_oids(url: &str) -> BTreeSet<i64> {
    all_events(url)
        .await
        .iter()
        .map(|e| e.detection.as_ref().unwrap().detection_oid.unwrap())
        .collect()
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_reads_the_export_of_a_running_core_as_the_core_and_the_truth_and_a_rerun_leaves_the_same_rows(
) {
    let dir = tempfile::tempdir().unwrap();
    let (core, b, truth) = ingested(dir.path(), 41, 6_000).await;
    let tree = dir.path().join("export");
    let to = format!("file://{}", tree.display());
    let line = export(&core, &b, &truth, &to, &[]);
    assert!(line.contains(&format!("rows={}", truth.unique)), "{line}");

    let view = duckdb(&tree);
    assert_eq!(view.rows, truth.unique, "rows vs unique detections");
    let oids: BTreeSet<i64> = view.oids.iter().copied().collect();
    assert_eq!(oids.len(), view.oids.len(), "no det_oid twice");
    assert_eq!(oids, core_oids(&core.url()).await, "det_oids vs the core's");
    assert!(
        truth.det_oids.iter().all(|o| oids.contains(o)),
        "every given det_oid exported"
    );
    assert_eq!(view.top, truth.top(3), "top 3 per location vs the truth");
    assert_eq!(
        view.top,
        top(&core.url(), &truth, 3).await,
        "vs the core's TopItems"
    );
    assert_eq!(view.bad_hours, 0, "every row in the partition of its hour");
    for (col, ty) in [
        ("timestamp_detected", "TIMESTAMP WITH TIME ZONE"),
        ("committed_at", "TIMESTAMP WITH TIME ZONE"),
        ("detection_oid", "BIGINT"),
        ("geographical_location_oid", "BIGINT"),
        ("item_name", "VARCHAR"),
        ("geographical_location", "VARCHAR"),
        ("region", "VARCHAR"),
        ("location_matched", "BOOLEAN"),
        ("attributes", "MAP(VARCHAR, VARCHAR)"),
        ("clip_key", "VARCHAR"),
    ] {
        assert_eq!(
            view.types.get(col).map(String::as_str),
            Some(ty),
            "type of {col}"
        );
    }
    let files = parquet_files(&tree);
    assert_eq!(files.len() as u64, view.hours, "one file an hour");

    // Again, over the same hours: the same rows, the same files.
    export(&core, &b, &truth, &to, &[]);
    let again = duckdb(&tree);
    assert_eq!(again.rows, truth.unique);
    assert_eq!(again.oids.iter().copied().collect::<BTreeSet<_>>(), oids);
    assert_eq!(parquet_files(&tree), files);
}

/// A request to moto (it checks who asks, not the signature).
async fn s3(addr: &str, method: &str, path: &str) -> (String, Vec<u8>) {
    let auth = "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
    sightline_tests::http::request(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Every key under `prefix` in `bucket`.
async fn list(addr: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let (head, body) = s3(
        addr,
        "GET",
        &format!("/{bucket}?list-type=2&prefix={prefix}"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = String::from_utf8(body).unwrap();
    let mut keys: Vec<String> = body
        .split("<Key>")
        .skip(1)
        .map(|s| s.split("</Key>").next().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_to_s3_puts_each_hour_once_with_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let moto = sightline_tests::s3::Moto::start().await;
    let addr = moto.addr.clone();
    let (head, _) = s3(&addr, "PUT", "/exports").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (core, b, truth) = ingested(dir.path(), 42, 2_000).await;
    let opts: Vec<String> = [
        format!("endpoint=http://{addr}"),
        "allow_http=true".into(),
        "region=us-east-1".into(),
        "access_key_id=test".into(),
        "secret_access_key=test".into(),
    ]
    .into_iter()
    .flat_map(|o| ["--option".to_string(), o])
    .collect();
    let line = export(&core, &b, &truth, "s3://exports/site-1", &opts);
    assert!(line.contains(&format!("rows={}", truth.unique)), "{line}");
    let keys = list(&addr, "exports", "site-1/").await;
    let parts: Vec<&String> = keys.iter().filter(|k| k.ends_with(".parquet")).collect();
    let manifests: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("site-1/_sightline/hours/"))
        .collect();
    assert!(!parts.is_empty());
    assert_eq!(parts.len(), manifests.len(), "a manifest an hour: {keys:?}");
    for p in &parts {
        assert!(
            p.starts_with("site-1/date=")
                && p.contains("/hour=")
                && p.ends_with("/part-00000.parquet"),
            "{p}"
        );
    }
    // Read back through DuckDB from a local copy of the bucket.
    let copy = dir.path().join("copy");
    let fetch = |keys: Vec<String>| {
        let (addr, copy) = (addr.clone(), copy.clone());
        async move {
            for k in keys.iter().filter(|k| k.ends_with(".parquet")) {
                let (head, body) = s3(&addr, "GET", &format!("/exports/{k}")).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let p = copy.join(k);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::File::create(&p).unwrap().write_all(&body).unwrap();
            }
        }
    };
    fetch(keys.clone()).await;
    let view = duckdb(&copy.join("site-1"));
    assert_eq!(view.rows, truth.unique);
    assert_eq!(
        view.oids.iter().copied().collect::<BTreeSet<_>>(),
        core_oids(&core.url()).await
    );
    assert_eq!(view.top, truth.top(3));
    // Again: the same keys, the same rows.
    export(&core, &b, &truth, "s3://exports/site-1", &opts);
    assert_eq!(list(&addr, "exports", "site-1/").await, keys);
    std::fs::remove_dir_all(&copy).unwrap();
    fetch(keys).await;
    assert_eq!(duckdb(&copy.join("site-1")).rows, truth.unique);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cores_continuous_export_writes_each_closed_hour_and_reports_its_lag() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("export");
    let config = format!(
        "[export]\nto = \"file://{}\"\ngrace = \"0s\"\ninterval = \"500ms\"\n",
        tree.display()
    );
    let b = dir.path().join("b.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start_with_config(dir.path(), Some(&b), &config);
    // Timestamps two to three hours back: every hour of them is closed.
    let mut data = Dataset::generate(43, 3_000, 0.2, 0.0, LOCATIONS);
    for r in &mut data.rows {
        r.timestamp_detected -= 2 * 3_600_000;
    }
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(AgentArgs::replay(dir.path(), "exp", core.url(), &csv, None));
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &truth).await;
    // Written once their commits are COMMIT_SETTLE (10 s) old.
    let view = sightline_tests::wait_for("the continuous export", Duration::from_secs(60), || {
        let tree = tree.clone();
        async move {
            if !tree.join("_sightline/position.json").exists() || parquet_files(&tree).is_empty() {
                return None;
            }
            let v = duckdb(&tree);
            (v.rows == truth.unique).then_some(v)
        }
    })
    .await;
    assert_eq!(view.top, truth.top(3));
    let metrics = String::from_utf8_lossy(
        &sightline_tests::http::get(core.http, "/metrics", "")
            .await
            .1,
    )
    .into_owned();
    let lag = metrics
        .lines()
        .find(|l| l.starts_with("sightline_export_lag_seconds "))
        .unwrap_or_else(|| panic!("no export lag in /metrics"));
    let lag: f64 = lag
        .trim_start_matches("sightline_export_lag_seconds ")
        .parse()
        .unwrap_or_else(|e| panic!("{lag}: {e}"));
    assert_eq!(lag, 0.0, "nothing left to write");
    assert!(
        metrics.contains(&format!("sightline_export_rows_total {}", truth.unique)),
        "{metrics}"
    );
}
