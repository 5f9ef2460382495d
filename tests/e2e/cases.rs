//! Evidence export end to end: events and footage go into the real
//! `sightline-core` over gRPC; the real `sightline-core case export` writes a
//! case from its (stopped) data directory; the real `sightline-core case
//! verify` accepts it, then names what was tampered with. Test JPEGs are
//! encoded with the `image` crate, the clip by the `ffmpeg` CLI.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use sightline_proto::v1::{
    agent_message, core_message, ingest_client::IngestClient, media_client::MediaClient,
    AgentMessage, AttachMediaRequest, Batch, Detection, EdgeEvent, Hello, MediaChunk, MediaRef,
};
use sightline_tests::{
    bin_path,
    data::{now_ms, write_locations},
    Core,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn jpeg(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, seed.wrapping_mul(37)])
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

/// A 1 s fast-start H.264 test pattern.
fn mp4(dir: &Path) -> Vec<u8> {
    let out = dir.join("clip.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ])
        .arg(&out)
        .status()
        .expect("ffmpeg is needed (deploy/install-deps.sh installs it)");
    assert!(status.success());
    std::fs::read(&out).unwrap()
}

/// Stores events at location 1 through a raw ingest session.
async fn store_events(url: &str, oids: &[i64]) {
    use prost::Message;
    let mut client = IngestClient::connect(url.to_string()).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: "cam-host-1".into(),
            epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(core_message::Msg::Welcome(w)) = inbound.next().await.unwrap().unwrap().msg else {
        panic!("expected Welcome")
    };
    let now = now_ms();
    let events = oids
        .iter()
        .enumerate()
        .map(|(i, &oid)| {
            EdgeEvent {
                seq: w.resume_from + i as u64,
                accepted_ms: now,
                detection: Some(Detection {
                    geographical_location_oid: 1,
                    video_camera_oid: 100,
                    detection_oid: Some(oid),
                    item_name: "person".into(),
                    timestamp_detected: now - 1000 + i as i64,
                    ..Default::default()
                }),
            }
            .encode_to_vec()
            .into()
        })
        .collect();
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq: w.resume_from,
            events,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let Some(core_message::Msg::Ack(_)) = inbound.next().await.unwrap().unwrap().msg else {
        panic!("expected Ack")
    };
}

/// Uploads `bytes` in one chunk and attaches it to `oids`.
async fn footage(url: &str, oids: &[i64], kind: &str, content_type: &str, bytes: &[u8]) {
    let mut c = MediaClient::connect(url.to_string()).await.unwrap();
    let sha = sha_hex(bytes);
    c.upload(tokio_stream::iter([MediaChunk {
        sha256: sha.clone(),
        offset: 0,
        data: bytes.to_vec().into(),
        total_size: bytes.len() as u64,
        kind: kind.into(),
        content_type: content_type.into(),
        last: true,
        agent_id: "cam-host-1".into(),
    }]))
    .await
    .unwrap();
    c.attach(AttachMediaRequest {
        detection_oids: oids.to_vec(),
        media: Some(MediaRef {
            kind: kind.into(),
            sha256: sha,
            content_type: content_type.into(),
            size: bytes.len() as u64,
        }),
    })
    .await
    .unwrap();
}

fn case(args: &[&str]) -> Output {
    std::process::Command::new(bin_path("sightline-core"))
        .arg("case")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_exported_from_the_real_core_verifies_and_names_what_was_tampered_with() {
    let dir = tempfile::tempdir().unwrap();
    let locations = dir.path().join("locations.csv");
    write_locations(&locations, &[1]);
    let mut core = Core::start(dir.path(), Some(&locations));
    let url = core.url();
    store_events(&url, &[501, 502]).await;
    footage(&url, &[501], "snapshot", "image/jpeg", &jpeg(1)).await;
    footage(&url, &[502], "snapshot", "image/jpeg", &jpeg(2)).await;
    footage(&url, &[501, 502], "clip", "video/mp4", &mp4(dir.path())).await;

    let data: PathBuf = core.args.data_dir.clone();
    let config = dir.path().join("core.toml");
    std::fs::write(
        &config,
        format!("[locations]\npath = {:?}\n", s(&locations)),
    )
    .unwrap();
    let export = |out: &Path| {
        case(&[
            "export",
            "--config",
            &s(&config),
            "--data-dir",
            &s(&data),
            "--det-oid",
            "501,502",
            "--reason",
            "incident 2026-114: bag left at gate",
            "--by",
            "inspector.morse",
            "--out",
            &s(out),
        ])
    };
    // The store is the running core's: an offline export is refused, named.
    let busy = export(&dir.path().join("early.zip"));
    assert!(!busy.status.success());
    assert!(
        text(&busy).contains("is the core running?"),
        "{}",
        text(&busy)
    );
    core.terminate();

    let zip = dir.path().join("case.zip");
    let out = export(&zip);
    assert!(out.status.success(), "{}", text(&out));
    let key = case(&["key", "--data-dir", &s(&data)]);
    assert!(key.status.success(), "{}", text(&key));
    let pinned = dir.path().join("site.pub.pem");
    std::fs::write(&pinned, &key.stdout).unwrap();
    assert!(String::from_utf8_lossy(&key.stdout).starts_with("-----BEGIN PUBLIC KEY-----"));

    let v = case(&["verify", &s(&zip), "--key", &s(&pinned)]);
    assert!(v.status.success(), "{}", text(&v));
    let last = text(&v).lines().last().unwrap().to_string();
    assert!(
        last.ends_with("VERIFIED, signature and 4 files intact"),
        "{last}"
    );

    // The folder form, checked with the key it carries, then tampered with.
    let folder = dir.path().join("case");
    let out = export(&folder);
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["events"][0]["location"]["geographical_location"],
        "Location 1"
    );
    assert_eq!(manifest["exported_by"], "inspector.morse");
    let v = case(&["verify", &s(&folder)]);
    assert!(v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("(key not pinned)"), "{}", text(&v));

    let clip = folder.join("events/502/clip.mp4");
    let mut bytes = std::fs::read(&clip).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&clip, bytes).unwrap();
    let v = case(&["verify", &s(&folder), "--key", &s(&pinned)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    let problems: Vec<String> = text(&v)
        .lines()
        .filter(|l| {
            !l.starts_with("ok ") && !l.starts_with("note ") && !l.contains(": NOT VERIFIED")
        })
        .map(String::from)
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("ALTERED events/502/clip.mp4: "),
        "{problems:?}"
    );

    std::fs::write(folder.join("manifest.json.sig"), [7u8; 64]).unwrap();
    let v = case(&["verify", &s(&folder), "--key", &s(&pinned)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v).contains("BAD SIGNATURE manifest.json.sig: "),
        "{}",
        text(&v)
    );
}
