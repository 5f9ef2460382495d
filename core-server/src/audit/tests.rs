//! The audit log's promises, on real files.

use std::path::{Path, PathBuf};

use sightline_proto::error::{ApiError, Code};

use super::{
    files, record::ACTIONS, verify, writer::Writer, Action, Actor, AuditLog, Entry, Filter, Page,
    ProblemKind, Recorded, PLAYBACK_WINDOW,
};

const SEGMENT: u64 = 16 * 1024 * 1024;

fn entry(i: u64) -> Entry {
    Entry::new(Actor::User(format!("u{}", i % 3)), Action::SnapshotViewed)
        .from("10.0.0.1:4000".parse::<std::net::SocketAddr>().unwrap())
        .event(1000 + i as i64, (i % 4) as i64, (i % 2) as i64 + 1)
        .object(format!("sha256-{i:064x}"))
}

async fn filled(dir: &Path, n: u64, segment_bytes: u64) -> AuditLog {
    let log = AuditLog::open(dir, segment_bytes).unwrap();
    for i in 1..=n {
        assert_eq!(log.record(entry(i)).await.unwrap(), i);
    }
    log
}

/// The only segment (these tests keep to one unless they say otherwise).
fn segment(dir: &Path) -> PathBuf {
    let s = files::list_segments(dir).unwrap();
    assert_eq!(s.len(), 1);
    s[0].path.clone()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(p, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_append_extends_the_chain_and_verify_passes() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 10, SEGMENT).await;
    // Concurrent appends: grouped into fewer fsyncs, still one seq each.
    let tasks: Vec<_> = (11..=60)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(entry(i)).await.unwrap() })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (11..=60).collect::<Vec<_>>());

    let report = verify(dir.path()).unwrap();
    assert!(report.problem.is_none(), "{report}");
    assert_eq!((report.records, report.last_seq), (60, 60));
    assert_eq!(report.head.as_ref().unwrap().seq, 60);
    // The documented encoding, checked independently: hash = SHA-256 of the
    // line without its hash field; prev_hash = the line before's hash.
    let mut prev = super::record::GENESIS_HASH.to_string();
    for (i, line) in lines(&segment(dir.path())).iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let hash = v["hash"].as_str().unwrap();
        let body = line.replace(&format!(",\"hash\":\"{hash}\"}}"), "}");
        assert_eq!(super::record::sha256_hex(body.as_bytes()), hash);
        assert_eq!(v["prev_hash"], prev.as_str());
        assert_eq!(v["seq"], i as u64 + 1);
        prev = hash.to_string();
    }
    // Reopened, it goes on from where it was.
    drop(log);
    let log = AuditLog::open(dir.path(), SEGMENT).unwrap();
    assert_eq!(log.record(entry(61)).await.unwrap(), 61);
    assert!(verify(dir.path()).unwrap().problem.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_one_byte_of_a_stored_record_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), 20, SEGMENT).await);
    let seg = segment(dir.path());
    let mut l = lines(&seg);
    // user:u1 → user:u2 in record 7: one byte.
    assert!(l[6].contains("\"actor\":\"user:u1\""));
    l[6] = l[6].replacen("user:u1", "user:u2", 1);
    write_lines(&seg, &l);
    let report = verify(dir.path()).unwrap();
    let p = report.problem.expect("the change is found");
    assert_eq!((p.seq, p.line), (Some(7), Some(7)));
    assert!(matches!(p.kind, ProblemKind::HashMismatch { .. }), "{p}");
    assert!(p.file.unwrap().ends_with(seg.file_name().unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_record_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), 20, SEGMENT).await);
    let seg = segment(dir.path());
    let mut l = lines(&seg);
    l.remove(6);
    write_lines(&seg, &l);
    let p = verify(dir.path())
        .unwrap()
        .problem
        .expect("the gap is found");
    assert_eq!(p.line, Some(7));
    assert_eq!(
        p.kind,
        ProblemKind::MissingSeq {
            expected: 7,
            found: 8
        }
    );
    assert!(p.to_string().contains("records 7..=7 removed"), "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncating_the_last_records_is_detected_by_the_head() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), 20, SEGMENT).await);
    let seg = segment(dir.path());
    let l = lines(&seg);
    write_lines(&seg, &l[..17]);
    let p = verify(dir.path())
        .unwrap()
        .problem
        .expect("the cut is found");
    assert_eq!(
        p.kind,
        ProblemKind::Truncated {
            head_seq: 20,
            last_seq: 17
        }
    );
    // The store refuses to open over it (it would overwrite the evidence).
    let e = AuditLog::open(dir.path(), SEGMENT).unwrap_err();
    assert!(e.to_string().contains("records were removed"), "{e}");
    // Removing the head as well is no way out.
    std::fs::remove_file(dir.path().join(files::HEAD_FILE)).unwrap();
    let p = verify(dir.path()).unwrap().problem.expect("no head");
    assert!(matches!(p.kind, ProblemKind::HeadMissing(_)), "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_keeps_the_remaining_chain_checkable() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 4096).unwrap();
    let t0 = 1_700_000_000_000i64;
    for i in 1..=200u64 {
        log.record(entry(i).at(t0 + i as i64 * 1000)).await.unwrap();
    }
    let before_cut = files::list_segments(dir.path()).unwrap();
    assert!(before_cut.len() > 5, "{} segments", before_cut.len());
    let r = log.cut(t0 + 100 * 1000).await.unwrap();
    assert!(r.segments_removed > 0);
    let anchor = r.anchor_seq.unwrap();
    assert!(anchor < 100, "only records older than the cut go: {anchor}");
    let after = files::list_segments(dir.path()).unwrap();
    assert_eq!(after[0].first_seq, anchor + 1);
    assert_eq!(after.len(), before_cut.len() - r.segments_removed);

    let report = verify(dir.path()).unwrap();
    assert!(report.problem.is_none(), "{report}");
    assert_eq!(report.first_seq, Some(anchor + 1));
    assert_eq!(report.last_seq, 201, "200 records and the audit_cut record");
    let cut = super::query(
        dir.path(),
        &Filter {
            action: Some(Action::AuditCut),
            ..Filter::default()
        },
        &Page {
            before: None,
            limit: 10,
        },
    )
    .unwrap();
    assert_eq!(cut.records.len(), 1);
    assert_eq!(cut.records[0].detail["anchor_seq"], anchor);
    // The log goes on after the cut, and still verifies.
    log.record(entry(202)).await.unwrap();
    assert!(verify(dir.path()).unwrap().problem.is_none());
    drop(log);

    // Removing the oldest remaining segment by hand (no cut) is found.
    std::fs::remove_file(&after[0].path).unwrap();
    let p = verify(dir.path())
        .unwrap()
        .problem
        .expect("a gap after the anchor");
    assert_eq!(
        p.kind,
        ProblemKind::MissingSeq {
            expected: anchor + 1,
            found: after[1].first_seq
        }
    );
    // So is an anchor moved to hide it: no audit_cut record names it.
    let first = files::first_line(&after[1].path).unwrap().unwrap();
    let link: super::record::Link = serde_json::from_str(&first).unwrap();
    let forged = files::Anchor {
        seq: after[1].first_seq - 1,
        hash: link.prev_hash.into_owned(),
        time: t0,
    };
    files::write_json_atomic(dir.path(), files::ANCHOR_FILE, &forged, true).unwrap();
    let p = verify(dir.path())
        .unwrap()
        .problem
        .expect("a forged anchor");
    assert!(matches!(p.kind, ProblemKind::AnchorMismatch(_)), "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audit_store_that_cannot_write_refuses_the_append() {
    // A next segment that cannot be created: its path is taken by a folder.
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 1024).unwrap();
    let mut seq = 0;
    while files::list_segments(dir.path()).unwrap().len() == 1 && seq < 100 {
        seq = log.record(entry(seq + 1)).await.unwrap();
        if std::fs::metadata(segment(dir.path())).unwrap().len() >= 1024 {
            break;
        }
    }
    let blocker = files::segment_path(dir.path(), seq + 1);
    std::fs::create_dir(&blocker).unwrap();
    let e = log.record(entry(seq + 1)).await.unwrap_err();
    let api: ApiError = e.into();
    assert_eq!(api.code, Code::Unavailable);
    assert!(api.message.contains("audit store"), "{}", api.message);
    // Nothing half-written: once it can write again, the chain has no gap.
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(log.record(entry(seq + 1)).await.unwrap(), seq + 1);
    assert!(verify(dir.path()).unwrap().problem.is_none());
    drop(log);

    // A full disk (a 64 KiB tmpfs), where mounting one is allowed (root).
    let mnt = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping the full-disk half: cannot mount a tmpfs here");
        return;
    }
    let result = std::panic::AssertUnwindSafe(async {
        let log = AuditLog::open(mnt.path(), SEGMENT).unwrap();
        let mut refused = None;
        for i in 1..=10_000u64 {
            if let Err(e) = log
                .record(entry(i).detail(serde_json::json!({"pad": "x".repeat(900)})))
                .await
            {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("a 64 KiB disk fills up");
        assert!(e.to_string().contains("No space left"), "{e}");
        drop(log);
        let report = verify(mnt.path()).unwrap();
        assert!(report.problem.is_none(), "{report}");
        assert_eq!(
            report.last_seq,
            i - 1,
            "the refused record is not in the log"
        );
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    let _ = std::process::Command::new("umount")
        .arg(mnt.path())
        .status();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn range_requests_of_one_playback_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), SEGMENT).unwrap();
    let t0 = 1_700_000_000_000i64;
    let view = |who: &str, key: &str, t: i64| {
        Entry::new(Actor::User(who.into()), Action::ClipViewed)
            .object(key)
            .at(t)
    };
    // Ten Range requests of one playback, a second apart.
    for k in 0..10 {
        let r = log
            .footage_viewed("s1", view("alice", "clip-a", t0 + k * 1000))
            .await
            .unwrap();
        assert_eq!(r == Recorded::Repeat, k > 0, "request {k}: {r:?}");
    }
    // Another clip, another session, another person: each a playback.
    assert!(matches!(
        log.footage_viewed("s1", view("alice", "clip-b", t0)).await,
        Ok(Recorded::New(_))
    ));
    assert!(matches!(
        log.footage_viewed("s2", view("alice", "clip-a", t0)).await,
        Ok(Recorded::New(_))
    ));
    assert!(matches!(
        log.footage_viewed("s9", view("bob", "clip-a", t0)).await,
        Ok(Recorded::New(_))
    ));
    // Concurrent requests of one new playback: one record.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                log.footage_viewed("s3", view("carol", "clip-c", t0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for t in tasks {
        new += matches!(t.await.unwrap(), Recorded::New(_)) as usize;
    }
    assert_eq!(new, 1);
    // After the window, watching again is a new playback.
    let later = t0 + 9000 + PLAYBACK_WINDOW.as_millis() as i64 + 1;
    assert!(matches!(
        log.footage_viewed("s1", view("alice", "clip-a", later))
            .await,
        Ok(Recorded::New(_))
    ));
    let all = super::query(
        dir.path(),
        &Filter::default(),
        &Page {
            before: None,
            limit: 100,
        },
    )
    .unwrap();
    assert_eq!(all.records.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_query_pages_newest_first_and_export_keeps_the_stored_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 4096).unwrap();
    let t0 = 1_700_000_000_000i64;
    for i in 1..=100u64 {
        log.record(entry(i).at(t0 + i as i64)).await.unwrap();
    }
    let f = Filter {
        actor: Some(Actor::User("u1".into())),
        camera: Some(1),
        ..Filter::default()
    };
    // u1 and camera 1: i % 3 == 1 and i % 4 == 1, i.e. i % 12 == 1.
    let truth: Vec<u64> = (1..=100).rev().filter(|i| i % 12 == 1).collect();
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let p = super::query(dir.path(), &f, &Page { before, limit: 3 }).unwrap();
        got.extend(p.records.iter().map(|r| r.seq));
        match p.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(got, truth);
    let too_big = super::query(
        dir.path(),
        &f,
        &Page {
            before: None,
            limit: super::MAX_PAGE + 1,
        },
    )
    .unwrap_err();
    assert!(
        too_big.message.starts_with("field `limit`"),
        "{}",
        too_big.message
    );

    let mut out = Vec::new();
    let range = Filter {
        since: Some(t0 + 10),
        until: Some(t0 + 20),
        ..Filter::default()
    };
    assert_eq!(super::export(dir.path(), &range, &mut out).unwrap(), 10);
    let text = String::from_utf8(out).unwrap();
    let stored: Vec<String> = files::list_segments(dir.path())
        .unwrap()
        .iter()
        .flat_map(|s| lines(&s.path))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), stored[9..19].to_vec());
}

#[test]
fn the_fast_reading_of_a_line_agrees_with_json() {
    for i in [1u64, 7, 1234] {
        let mut r = super::Record {
            seq: i,
            time: -5 + i as i64,
            actor: Actor::Token("ci".into()),
            source: None,
            action: Action::Search,
            det_oid: None,
            camera: None,
            location: Some(2),
            object: None,
            detail: serde_json::Map::from_iter([("q".to_string(), "x,\"seq\":9".into())]),
            outcome: super::Outcome::Denied,
            prev_hash: super::record::sha256_hex(&i.to_le_bytes()),
            hash: String::new(),
        };
        let line = r.seal();
        let split = super::record::split_line(&line).unwrap();
        let fast = super::record::Link::from_layout(split.body_open).unwrap();
        let json: super::record::Link = serde_json::from_str(&line).unwrap();
        assert_eq!(fast, json);
        assert_eq!(serde_json::from_str::<super::Record>(&line).unwrap(), r);
    }
}

#[test]
fn every_action_has_one_stored_name() {
    for (a, name) in ACTIONS {
        assert_eq!(serde_json::to_value(a).unwrap(), *name);
        assert_eq!(name.parse::<Action>().unwrap(), *a);
        assert_eq!(a.name(), *name);
    }
    for s in [
        "user:alice",
        "token:ci-export",
        "agent:cam-7",
        "admin-token",
        "anonymous",
        "system",
    ] {
        assert_eq!(s.parse::<Actor>().unwrap().to_string(), s);
    }
    assert!("user:".parse::<Actor>().is_err());
}

/// `audit_verify_per_s` (BENCHMARKS.md, "Access (issue #12)") and what a
/// durable append costs. Release build:
/// `cargo test --release -p sightline-core --lib audit::tests::bench_audit -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: prints figures"]
async fn bench_audit() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let n = 1_000_000u64;
    {
        let mut w = Writer::open(dir.path(), SEGMENT).unwrap();
        let group: Vec<Entry> = (0..1000).map(entry).collect();
        for _ in 0..n / 1000 {
            w.append(&group).unwrap();
        }
    }
    let bytes: u64 = files::list_segments(dir.path())
        .unwrap()
        .iter()
        .map(|s| std::fs::metadata(&s.path).unwrap().len())
        .sum();
    let t = std::time::Instant::now();
    let report = verify(dir.path()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(report.problem.is_none(), "{report}");
    assert_eq!(report.records, n);
    println!(
        "verify: {n} records ({} MiB) in {secs:.2} s",
        bytes / (1024 * 1024)
    );

    // One caller at a time: the latency a snapshot fetch pays.
    let log = AuditLog::open(dir.path(), SEGMENT).unwrap();
    let mut lat = Vec::new();
    for i in 0..500 {
        let t = std::time::Instant::now();
        log.record(entry(i)).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "append (one caller, fsync each): p50 {:.3} ms, p99 {:.3} ms",
        pct(0.5),
        pct(0.99)
    );
    // 64 concurrent callers: grouped into shared fsyncs.
    let t = std::time::Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    log.record(entry(i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let secs_c = t.elapsed().as_secs_f64();
    println!("append (64 callers): {:.0} records/s", 6400.0 / secs_c);
    println!("audit audit_verify_per_s={:.0}", n as f64 / secs);
}

#[test]
fn the_audit_config_section_is_validated_by_its_dotted_key() {
    use crate::config::CoreConfig;
    let c =
        CoreConfig::from_toml("[audit]\nretention = \"30d\"\nsegment_bytes = \"1 MiB\"\n").unwrap();
    assert_eq!(
        c.audit.retention,
        std::time::Duration::from_secs(30 * 86400)
    );
    assert_eq!(
        c.audit.dir(Path::new("data/core")),
        Path::new("data/core/audit")
    );
    c.audit.validate().unwrap();
    let small = CoreConfig::from_toml("[audit]\nsegment_bytes = \"1 KiB\"\n").unwrap();
    assert_eq!(small.validate().unwrap_err().key, "audit.segment_bytes");
    let short = CoreConfig::from_toml("[audit]\nretention = \"10m\"\n").unwrap();
    assert_eq!(short.audit.validate().unwrap_err().key, "audit.retention");
    assert!(CoreConfig::from_toml("[audit]\nretain = \"1d\"\n").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_pages_walk_back_the_older_ones_and_stay_put_while_records_are_appended() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: pages cross segment files both ways.
    let log = AuditLog::open(dir.path(), 4096).unwrap();
    for i in 1..=100u64 {
        log.record(entry(i)).await.unwrap();
    }
    let f = Filter {
        actor: Some(Actor::User("u2".into())),
        ..Filter::default()
    };
    let page = |before| super::query(dir.path(), &f, &Page { before, limit: 4 }).unwrap();
    let seqs = |rs: &[super::Record]| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    // Older pages, newest first: u2 is i % 3 == 2.
    let mut older = vec![seqs(&page(None).records)];
    let mut before = page(None).next_before;
    while let Some(b) = before {
        let p = page(Some(b));
        if p.records.is_empty() {
            break;
        }
        older.push(seqs(&p.records));
        before = p.next_before;
    }
    let truth: Vec<u64> = (1..=100).rev().filter(|i| i % 3 == 2).collect();
    assert_eq!(older.concat(), truth);
    // New records appended meanwhile change neither walk.
    for i in 101..=130u64 {
        log.record(entry(i)).await.unwrap();
    }
    // Back up from the oldest page: each newer page is the older walk's,
    // in reverse, up to the first page; then the records appended since.
    let mut after = older.last().unwrap()[0];
    for expected in older.iter().rev().skip(1) {
        let p = super::query_after(dir.path(), &f, after, expected.len()).unwrap();
        assert_eq!(&seqs(&p.records), expected);
        after = p.newer_after.unwrap();
        assert_eq!(after, expected[0]);
    }
    let rest = super::query_after(dir.path(), &f, after, 100).unwrap();
    let appended: Vec<u64> = (101..=130).rev().filter(|i| i % 3 == 2).collect();
    assert_eq!(seqs(&rest.records), appended);
    assert_eq!(rest.newer_after, None, "the end of the log");
    assert!(super::query_after(dir.path(), &f, 0, super::MAX_PAGE + 1).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_of_a_principal_are_all_recorded_and_anonymous_ones_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), SEGMENT).unwrap();
    let from: std::net::SocketAddr = "10.9.9.9:1234".parse().unwrap();
    let refusal = |actor| Entry::new(actor, Action::AccessRefused).from(from).denied();
    for _ in 0..5 {
        assert!(log
            .refused(refusal(Actor::User("eve".into())))
            .await
            .unwrap()
            .is_some());
    }
    let first = log.refused(refusal(Actor::Anonymous)).await.unwrap();
    assert!(first.is_some());
    for _ in 0..50 {
        // Within the same minute (unless this run crosses one).
        let _ = log.refused(refusal(Actor::Anonymous)).await.unwrap();
    }
    let all = super::query(
        dir.path(),
        &Filter::default(),
        &Page {
            before: None,
            limit: 100,
        },
    )
    .unwrap();
    let anonymous = all
        .records
        .iter()
        .filter(|r| r.actor == Actor::Anonymous)
        .count();
    assert_eq!(all.records.len() - anonymous, 5);
    assert!((1..=2).contains(&anonymous), "{anonymous}");
}
