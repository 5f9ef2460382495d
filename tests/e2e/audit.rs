//! The audit log's checker, as an operator runs it: `sightline-core audit
//! verify|export` on a log written here by hand from the documented format
//! (core-server/src/audit/mod.rs, README "Audit log") — so the format is
//! checked too — then tampered with.

use std::{path::Path, process::Command};

use sha2::{Digest, Sha256};
use sightline_tests::bin_path;

const RECORDS: u64 = 30;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `<data>/audit/` with records 1..=RECORDS, a minute apart ending
/// now, and its head; returns the segment's path.
fn write_log(data: &Path) -> std::path::PathBuf {
    let dir = data.join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    let now = sightline_tests::data::now_ms();
    let mut prev = "0".repeat(64);
    let mut text = String::new();
    for seq in 1..=RECORDS {
        let time = now - (RECORDS - seq) as i64 * 60_000;
        let body = format!(
            r#"{{"seq":{seq},"time":{time},"actor":"user:alice","source":"10.0.0.7:51000","action":"clip_viewed","det_oid":{},"camera":3,"location":1,"object":"clip-{seq}","outcome":"ok","prev_hash":"{prev}"}}"#,
            1000 + seq
        );
        let hash = hex(&Sha256::digest(body.as_bytes()));
        text.push_str(&body[..body.len() - 1]);
        text.push_str(&format!(",\"hash\":\"{hash}\"}}\n"));
        prev = hash;
    }
    let seg = dir.join("seg-00000000000000000001.jsonl");
    std::fs::write(&seg, text).unwrap();
    std::fs::write(
        dir.join("head.json"),
        format!("{{\"seq\":{RECORDS},\"hash\":\"{prev}\"}}\n"),
    )
    .unwrap();
    seg
}

fn audit(args: &[&str], data: &Path) -> (bool, String) {
    let out = Command::new(bin_path("sightline-core"))
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn audit_verify_passes_then_names_the_altered_and_the_removed_record() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_log(dir.path());
    let (ok, out) = audit(&["verify"], dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("ok: 30 records"), "{out}");

    // The README's check by hand agrees with the stored hash of line 5.
    let by_hand = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"sed -n 5p {0} | sed -E 's/,"hash":"[0-9a-f]{{64}}"\}}$/}}/' | tr -d '\n' | sha256sum | cut -d' ' -f1"#,
            seg.display()
        ))
        .output()
        .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&seg)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let line5: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&by_hand.stdout).trim(),
        line5["hash"].as_str().unwrap()
    );

    // One byte of record 12: camera 3 → 4.
    let mut altered = lines.clone();
    altered[11] = altered[11].replacen("\"camera\":3", "\"camera\":4", 1);
    std::fs::write(&seg, altered.join("\n") + "\n").unwrap();
    let (ok, out) = audit(&["verify"], dir.path());
    assert!(!ok, "an altered record must fail: {out}");
    assert!(
        out.contains("line 12: record seq 12: hash mismatch"),
        "{out}"
    );

    // Record 20 removed (the rest intact).
    let mut removed = lines.clone();
    removed.remove(19);
    std::fs::write(&seg, removed.join("\n") + "\n").unwrap();
    let (ok, out) = audit(&["verify"], dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("line 20: record seq 21: missing seq: expected 20, found 21"),
        "{out}"
    );

    // The last three removed: only the head shows it.
    std::fs::write(&seg, lines[..27].join("\n") + "\n").unwrap();
    let (ok, out) = audit(&["verify"], dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("truncated: head.json names record 30 but the log ends at record 27"),
        "{out}"
    );
}

#[test]
fn audit_export_writes_the_stored_lines_of_a_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_log(dir.path());
    let lines: Vec<String> = std::fs::read_to_string(&seg)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let out = Command::new(bin_path("sightline-core"))
        .args([
            "audit",
            "export",
            "--since",
            "10m30s",
            "--format",
            "jsonl",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    // Records a minute apart ending now: the last 11 are within 10m30s.
    assert_eq!(got.lines().collect::<Vec<_>>(), lines[19..].to_vec());
    let bad = Command::new(bin_path("sightline-core"))
        .args(["audit", "export", "--action", "peeked", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"peeked\" is not an audit action"));
}
