//! Cases in process, on a real store (events committed by the real writer),
//! real footage (uploaded through the media store) and real files; the
//! signature and hashes are also checked with `openssl` and `sha256sum`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use sightline_proto::{
    v1::{Detection, EdgeEvent, MediaChunk, MediaRef},
    Code,
};
use tokio::sync::oneshot;

use super::*;
use crate::{
    api::live::LiveHub,
    dedup::{CommitRequest, Incoming, Pipeline, WriterContext},
    metrics::Metrics,
};

const AGENT: &str = "agent-1";

struct Rig {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    media: Arc<MediaStore>,
    /// The real writer (joined when the rig drops, before its store closes).
    pipeline: Option<Pipeline>,
    cases: Arc<Cases>,
    /// The last seq committed for [`AGENT`].
    seq: u64,
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("core")
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("locations.csv");
    std::fs::write(
        &csv,
        "geographical_location_oid,geographical_location,region\n1,Gate A,north\n2,Dock 4,south\n",
    )
    .unwrap();
    let store = Arc::new(Store::open(&data_dir(dir.path()), false, 8 << 20).unwrap());
    let metrics = Arc::new(Metrics::new());
    let locations = Arc::new(Locations::new(Some(csv)).unwrap());
    let media = Arc::new(
        MediaStore::open(
            &crate::config::MediaConfig::default(),
            &data_dir(dir.path()),
            false,
            store.clone(),
            metrics.clone(),
        )
        .unwrap(),
    );
    let ctx = Arc::new(WriterContext {
        store: store.clone(),
        locations: locations.clone(),
        hub: LiveHub::new(16),
        metrics,
        max_group_events: 10_000,
    });
    let cases = Arc::new(
        Cases::open(
            &data_dir(dir.path()),
            store.clone(),
            media.clone(),
            locations,
        )
        .unwrap(),
    );
    Rig {
        dir,
        store,
        media,
        pipeline: Some(Pipeline::start(ctx, 2, 8).unwrap()),
        cases,
        seq: 0,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            p.shutdown();
        }
    }
}

impl Rig {
    /// Commits events `(det_oid, location)` through the writer.
    async fn publish(&mut self, events: &[(i64, i64)]) {
        let ts = sightline_proto::now_ms() - 60_000;
        let first_seq = self.seq + 1;
        let incoming = events
            .iter()
            .map(|&(oid, loc)| {
                self.seq += 1;
                Incoming::Valid(EdgeEvent {
                    seq: self.seq,
                    detection: Some(Detection {
                        geographical_location_oid: loc,
                        video_camera_oid: 7,
                        detection_oid: Some(oid),
                        item_name: "backpack".into(),
                        timestamp_detected: ts + oid,
                        confidence: 0.9,
                        ..Default::default()
                    }),
                    accepted_ms: ts + oid,
                })
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        self.pipeline
            .as_ref()
            .unwrap()
            .submit(CommitRequest {
                agent: AGENT.into(),
                epoch: 1,
                first_seq,
                events: incoming,
                last_digest: 0,
                reply,
            })
            .await
            .unwrap();
        let out = rx.await.unwrap().unwrap();
        assert_eq!(out.stored, events.len() as u64);
    }

    /// Uploads `bytes` as `kind` and attaches it to `det_oid`.
    async fn footage(&self, det_oid: i64, kind: &str, bytes: &[u8]) -> String {
        let sha = hex(bytes);
        let content_type = crate::media::Kind::parse(kind).unwrap().content_type();
        let chunk = MediaChunk {
            sha256: sha.clone(),
            offset: 0,
            data: Bytes::copy_from_slice(bytes),
            total_size: bytes.len() as u64,
            kind: kind.into(),
            content_type: content_type.into(),
            last: true,
            agent_id: AGENT.into(),
        };
        self.media
            .upload(futures::stream::iter([Ok::<_, String>(chunk)]))
            .await
            .unwrap();
        self.media
            .attach(
                Some(AGENT),
                vec![det_oid],
                Some(MediaRef {
                    kind: kind.into(),
                    sha256: sha.clone(),
                    content_type: content_type.into(),
                    size: bytes.len() as u64,
                }),
            )
            .await
            .unwrap();
        sha
    }

    /// Events 1 and 2 (Gate A) and 3 (Dock 4), each with a snapshot and a clip.
    async fn with_footage(&mut self) {
        self.publish(&[(1, 1), (2, 1), (3, 2)]).await;
        for oid in 1..=3 {
            self.footage(oid, "snapshot", &jpeg(oid as u8)).await;
            self.footage(oid, "clip", &mp4(oid as usize * 1000)).await;
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn public_key(&self) -> PathBuf {
        data_dir(self.dir.path()).join(key::PUBLIC_KEY_FILE)
    }
}

fn request(det_oids: &[i64], reason: &str) -> CaseRequest {
    CaseRequest {
        det_oids: det_oids.to_vec(),
        reason: reason.into(),
        exported_by: "inspector.morse".into(),
        now_ms: 1_764_480_000_123,
        locations: None,
    }
}

fn hex(bytes: &[u8]) -> String {
    key::hex(&Sha256::digest(bytes))
}

/// A 64×48 JPEG, different per seed.
fn jpeg(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([x as u8 * 4, y as u8 * 5, seed.wrapping_mul(40)])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    out
}

fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(payload);
    v
}

/// A fast-start MP4 (ftyp, moov, mdat) with `mdat` bytes of payload, as the
/// core's content check takes it.
fn mp4(mdat: usize) -> Vec<u8> {
    let mut moov = mp4_box(b"mvhd", &[0; 100]);
    moov.extend(mp4_box(b"trak", &[0; 20]));
    let mut f = mp4_box(b"ftyp", b"isom\0\0\x02\0");
    f.extend(mp4_box(b"moov", &moov));
    f.extend(mp4_box(
        b"mdat",
        &(0..mdat).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    ));
    f
}

fn manifest_of(dir: &Path) -> manifest::Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

fn kinds(report: &Report) -> Vec<(FindingKind, String)> {
    report
        .problems()
        .map(|f| (f.kind, f.path.clone()))
        .collect()
}

#[tokio::test]
async fn a_case_export_verifies() {
    let mut rig = rig();
    rig.with_footage().await;
    let dir = rig.out("case");
    let req = request(&[2, 1, 3, 2], "  theft at gate A, ref 2026-114\n");
    let summary = rig.cases.export_dir(&req, &dir).await.unwrap();
    assert_eq!(
        summary.det_oids,
        vec![2, 1, 3],
        "each det_oid once, in order"
    );
    assert_eq!(summary.files, 6);

    let m = manifest_of(&dir);
    assert_eq!(m.format, manifest::FORMAT);
    assert_eq!(m.case_id, summary.case_id);
    assert_eq!(m.exported_by, "inspector.morse");
    assert_eq!(m.exported_at, "2025-11-30T05:20:00.123Z");
    assert_eq!(m.reason, "theft at gate A, ref 2026-114");
    assert_eq!(
        m.site_key.fingerprint_sha256,
        rig.cases.key().public().fingerprint()
    );
    let e = &m.events[0];
    assert_eq!((e.det_oid, e.camera, e.item.as_str()), (2, 7, "backpack"));
    assert!(e.location.matched);
    assert_eq!(e.location.geographical_location, "Gate A");
    assert_eq!(
        e.location.extra.get("region").map(String::as_str),
        Some("north")
    );
    assert_eq!(m.events[2].location.geographical_location, "Dock 4");
    assert_eq!(
        (m.time_range.from_ms, m.time_range.to_ms),
        (m.events[1].timestamp_ms, m.events[2].timestamp_ms)
    );
    let clip = e.files.iter().find(|f| f.kind == "clip").unwrap();
    assert_eq!(clip.path, "events/2/clip.mp4");
    assert_eq!(clip.content_type, "video/mp4");
    let bytes = std::fs::read(dir.join(&clip.path)).unwrap();
    assert_eq!(bytes, mp4(2000), "the clip is the stored bytes");
    assert_eq!(
        (clip.sha256.clone(), clip.bytes),
        (hex(&bytes), bytes.len() as u64)
    );

    // The folder verifies, with the key inside it (noted) and pinned.
    let report = verify(&dir, None);
    assert!(report.ok(), "{:?}", report.findings);
    assert!(!report.key_pinned);
    assert_eq!(report.of(FindingKind::KeyNotPinned).len(), 1);
    assert_eq!(report.files_checked, 6);
    let pinned = verify(&dir, Some(&rig.public_key()));
    assert!(pinned.ok() && pinned.key_pinned, "{:?}", pinned.findings);

    // The zip: one top folder named after the case, and it verifies too.
    let (zsum, zpath) = rig.cases.export_zip(&req).await.unwrap();
    let report = verify(&zpath, Some(&rig.public_key()));
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.case_id.as_deref(), Some(zsum.case_id.as_str()));
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zpath).unwrap()).unwrap();
    assert_eq!(zip.len(), 9);
    for i in 0..zip.len() {
        let name = zip.by_index(i).unwrap().name().to_string();
        assert!(name.starts_with(&format!("{}/", zsum.case_id)), "{name}");
    }
    drop(zip);
    let staged = zpath.to_path_buf();
    drop(zpath);
    assert!(!staged.exists(), "the staged zip goes with its handle");
}

#[tokio::test]
async fn openssl_and_sha256sum_check_a_case_without_sightline() {
    let mut rig = rig();
    rig.with_footage().await;
    let dir = rig.out("case");
    rig.cases
        .export_dir(&request(&[1, 3], "independent check"), &dir)
        .await
        .unwrap();
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} is needed (deploy/install-deps.sh): {e}"))
    };
    let openssl = |dir_sig: &str| {
        run(
            "openssl",
            &[
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                "site-signing.pub.pem",
                "-rawin",
                "-in",
                "manifest.json",
                "-sigfile",
                dir_sig,
            ],
        )
    };
    let ok = openssl("manifest.json.sig");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Signature Verified Successfully"));
    // The manifest's hashes in sha256sum's own format, checked by sha256sum.
    let m = manifest_of(&dir);
    let sums: String = m
        .events
        .iter()
        .flat_map(|e| &e.files)
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect();
    std::fs::write(dir.join("../SHA256SUMS"), &sums).unwrap();
    let check = run("sha256sum", &["--check", "--strict", "../SHA256SUMS"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // The key fingerprint the manifest names is the SPKI DER's SHA-256.
    let der = run(
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-in",
            "site-signing.pub.pem",
            "-outform",
            "DER",
        ],
    );
    assert_eq!(hex(&der.stdout), m.site_key.fingerprint_sha256);

    // openssl agrees when one byte of the manifest changes; sha256sum when
    // one byte of a clip does.
    let mut bytes = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(dir.join("manifest.json"), &bytes).unwrap();
    assert!(!openssl("manifest.json.sig").status.success());
    let clip = dir.join("events/3/clip.mp4");
    let mut c = std::fs::read(&clip).unwrap();
    c[100] ^= 0x80;
    std::fs::write(&clip, c).unwrap();
    let check = run("sha256sum", &["--check", "--quiet", "../SHA256SUMS"]);
    assert!(!check.status.success());
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "events/3/clip.mp4: FAILED"
    );
}

#[tokio::test]
async fn changing_one_byte_of_a_clip_is_named_by_verify() {
    let mut rig = rig();
    rig.with_footage().await;
    let dir = rig.out("case");
    rig.cases
        .export_dir(&request(&[1, 2, 3], "r"), &dir)
        .await
        .unwrap();
    let clip = dir.join("events/2/clip.mp4");
    let mut bytes = std::fs::read(&clip).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&clip, &bytes).unwrap();
    let report = verify(&dir, Some(&rig.public_key()));
    assert!(!report.ok());
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::Altered, "events/2/clip.mp4".to_string())],
        "only the clip is named, the signature still holds"
    );
    assert_eq!(report.of(FindingKind::SignatureValid).len(), 1);
    let line = report.problems().next().unwrap().to_string();
    assert!(
        line.starts_with("ALTERED events/2/clip.mp4: SHA-256 "),
        "{line}"
    );

    // A shortened snapshot, a missing snapshot and an added file are each named.
    let snap = dir.join("events/1/snapshot.jpg");
    let s = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, &s[..s.len() - 1]).unwrap();
    std::fs::remove_file(dir.join("events/3/snapshot.jpg")).unwrap();
    std::fs::write(dir.join("events/3/extra.jpg"), b"not listed").unwrap();
    let report = verify(&dir, None);
    let mut got = kinds(&report);
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (
                FindingKind::WrongLength,
                "events/1/snapshot.jpg".to_string()
            ),
            (FindingKind::Altered, "events/2/clip.mp4".to_string()),
            (FindingKind::Unexpected, "events/3/extra.jpg".to_string()),
            (FindingKind::Missing, "events/3/snapshot.jpg".to_string()),
        ]
    );
}

#[tokio::test]
async fn changing_the_manifest_is_named_by_verify() {
    let mut rig = rig();
    rig.with_footage().await;
    let dir = rig.out("case");
    rig.cases
        .export_dir(&request(&[1, 2], "routine review"), &dir)
        .await
        .unwrap();
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    // The reason rewritten: the files still match, the signature does not.
    std::fs::write(&path, text.replace("routine review", "routine reviex")).unwrap();
    let report = verify(&dir, Some(&rig.public_key()));
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::SignatureInvalid, SIGNATURE_FILE.to_string())]
    );
    let line = report.problems().next().unwrap().to_string();
    assert!(
        line.contains("manifest.json or manifest.json.sig was altered"),
        "{line}"
    );

    // A clip swapped along with its hash in the manifest: the swap is named
    // by the signature, the new bytes match the (forged) hash.
    std::fs::write(&path, &text).unwrap();
    assert!(verify(&dir, None).ok());
    let m = manifest_of(&dir);
    let old = &m.events[0].files.iter().find(|f| f.kind == "clip").unwrap();
    let forged = mp4(77);
    std::fs::write(dir.join(&old.path), &forged).unwrap();
    let text = text.replace(&old.sha256, &hex(&forged)).replace(
        &format!("\"bytes\": {}", old.bytes),
        &format!("\"bytes\": {}", forged.len()),
    );
    std::fs::write(&path, text).unwrap();
    let report = verify(&dir, Some(&rig.public_key()));
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::SignatureInvalid, SIGNATURE_FILE.to_string())]
    );
}

#[tokio::test]
async fn a_swapped_signature_is_named_by_verify() {
    let mut rig = rig();
    rig.with_footage().await;
    let (a, b) = (rig.out("a"), rig.out("b"));
    rig.cases
        .export_dir(&request(&[1], "one"), &a)
        .await
        .unwrap();
    rig.cases
        .export_dir(&request(&[2], "two"), &b)
        .await
        .unwrap();
    // B's signature is a valid signature by the same key, of another manifest.
    std::fs::copy(b.join(SIGNATURE_FILE), a.join(SIGNATURE_FILE)).unwrap();
    let report = verify(&a, Some(&rig.public_key()));
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::SignatureInvalid, SIGNATURE_FILE.to_string())]
    );
    // A truncated signature is named as such.
    std::fs::write(a.join(SIGNATURE_FILE), [0u8; 10]).unwrap();
    let report = verify(&a, None);
    let bad = report.of(FindingKind::SignatureInvalid);
    assert!(bad[0].detail.contains("10 bytes"), "{bad:?}");
}

#[tokio::test]
async fn a_case_resigned_with_another_key_fails_against_the_pinned_key() {
    let mut rig = rig();
    rig.with_footage().await;
    let dir = rig.out("case");
    rig.cases
        .export_dir(&request(&[1], "r"), &dir)
        .await
        .unwrap();
    // A forger edits the manifest and signs it with their own key, bundled.
    let other = tempfile::tempdir().unwrap();
    let forger = SiteKey::load_or_create(other.path()).unwrap();
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("inspector.morse", "someone.else")
        .replace(
            &rig.cases.key().public().fingerprint(),
            &forger.public().fingerprint(),
        );
    std::fs::write(&path, &text).unwrap();
    std::fs::write(dir.join(SIGNATURE_FILE), forger.sign(text.as_bytes())).unwrap();
    std::fs::write(dir.join(key::PUBLIC_KEY_FILE), forger.public_pem()).unwrap();
    // Unpinned, the case is consistent (and the report says it was not pinned) ...
    let loose = verify(&dir, None);
    assert!(loose.ok() && !loose.key_pinned);
    // ... pinned to the site's key, both the key and the signature fail.
    let report = verify(&dir, Some(&rig.public_key()));
    let got: BTreeSet<_> = kinds(&report).into_iter().collect();
    assert!(
        got.contains(&(FindingKind::KeyMismatch, key::PUBLIC_KEY_FILE.to_string()))
            && got.contains(&(FindingKind::SignatureInvalid, SIGNATURE_FILE.to_string())),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_case_without_a_reason_is_refused() {
    let mut rig = rig();
    rig.with_footage().await;
    for reason in ["", "   \n\t"] {
        let dir = rig.out("case");
        let e = rig
            .cases
            .export_dir(&request(&[1], reason), &dir)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.starts_with("field `reason`: is required"), "{e}");
        assert!(!dir.exists(), "nothing is written");
        let e = rig
            .cases
            .export_zip(&request(&[1], reason))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }
    // The other bounds, each named.
    let long = "x".repeat(MAX_REASON_BYTES + 1);
    let e = rig
        .cases
        .export_zip(&request(&[1], &long))
        .await
        .unwrap_err();
    assert!(e.message.starts_with("field `reason`:"), "{e}");
    let many: Vec<i64> = (1..=MAX_EVENTS_PER_CASE as i64 + 1).collect();
    let e = rig
        .cases
        .export_zip(&request(&many, "r"))
        .await
        .unwrap_err();
    assert!(e.message.starts_with("field `det_oids`:"), "{e}");
    let e = rig.cases.export_zip(&request(&[], "r")).await.unwrap_err();
    assert!(e.message.starts_with("field `det_oids`: is empty"), "{e}");
    let e = rig
        .cases
        .export_zip(&request(&[1, -4], "r"))
        .await
        .unwrap_err();
    assert!(e.message.contains("-4"), "{e}");
    let mut nobody = request(&[1], "r");
    nobody.exported_by = " ".into();
    let e = rig.cases.export_zip(&nobody).await.unwrap_err();
    assert!(e.message.starts_with("field `exported_by`:"), "{e}");
    let staging = rig.cases.staging.clone();
    assert_eq!(
        std::fs::read_dir(staging).unwrap().count(),
        0,
        "no staging left"
    );
}

#[tokio::test]
async fn a_case_with_a_missing_event_names_it() {
    let mut rig = rig();
    rig.with_footage().await;
    rig.publish(&[(40, 1)]).await;
    assert!(
        rig.store.get_event(40).unwrap().is_some(),
        "stored, no footage"
    );
    let dir = rig.out("case");
    let e = rig
        .cases
        .export_dir(&request(&[1, 999, 40, 2, 998], "r"), &dir)
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert_eq!(
        e.message,
        "field `det_oids`: no event with det_oid 999, 998; no footage stored for det_oid 40; \
         nothing was exported"
    );
    assert!(!dir.exists(), "all or nothing");
    // Outside the exporter's scope reads as not stored.
    let mut scoped = request(&[1, 3], "r");
    scoped.locations = Some(BTreeSet::from([1]));
    let e = rig.cases.export_zip(&scoped).await.unwrap_err();
    assert_eq!(
        e.message,
        "field `det_oids`: no event with det_oid 3; nothing was exported"
    );
    scoped.det_oids = vec![1, 2];
    assert!(rig.cases.export_zip(&scoped).await.is_ok());
}

#[tokio::test]
async fn the_http_route_downloads_a_verifiable_zip_and_needs_an_exporter() {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;
    let mut rig = rig();
    rig.with_footage().await;
    let cases = rig.cases.clone();
    let post = |body: &str| {
        Request::post("/api/cases")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let body = r#"{"det_oids": [1, 3], "reason": "incident 7"}"#;
    let anonymous = http::router(cases.clone())
        .oneshot(post(body))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let app = http::router(cases.clone()).layer(axum::Extension(http::Exporter {
        name: "inspector.morse".into(),
        locations: None,
    }));
    let r = app.clone().oneshot(post(body)).await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-sightline-case-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        r.headers()["content-disposition"],
        format!("attachment; filename=\"{id}.zip\"").as_str()
    );
    assert_eq!(r.headers()["content-type"], "application/zip");
    let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap();
    let zip = rig.out("download.zip");
    std::fs::write(&zip, &bytes).unwrap();
    let report = verify(&zip, Some(&rig.public_key()));
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.case_id.as_deref(), Some(id.as_str()));

    let r = app
        .clone()
        .oneshot(post(r#"{"det_oids": [1], "reason": ""}"#))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app.oneshot(post(r#"{"det_oids": [5]}"#)).await.unwrap();
    assert_eq!(r.status(), 400, "no reason given at all");
}
