//! Footage at the core, end to end: the real `sightline-core`, uploads over
//! `sightline.v1.Media`, bytes read back over HTTP. Test JPEGs are encoded
//! with the `image` crate, test MP4s by the `ffmpeg` CLI.

use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use sightline_proto::v1::{
    agent_message, core_message, ingest_client::IngestClient, media_client::MediaClient,
    AgentMessage, AttachMediaRequest, Batch, CoreMessage, Detection, EdgeEvent, GetEventRequest,
    Hello, JoinedEvent, MediaChunk, MediaOffsetRequest, MediaRef, MediaUploadResponse,
    SubscribeRequest,
};
use sightline_tests::{data::now_ms, wait_for, Core};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code};

// ---- footage ----

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `w`×`h` JPEG with a gradient (so it is not trivially small).
fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    encode_jpeg(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, seed.wrapping_mul(37)])
    }))
}

fn encode_jpeg(img: image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    out
}

/// A 2 s H.264 test pattern; `faststart` puts `moov` before `mdat`.
fn mp4(dir: &Path, name: &str, faststart: bool) -> Vec<u8> {
    let out = dir.join(name);
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-t",
        "2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
    ]);
    if faststart {
        cmd.args(["-movflags", "+faststart"]);
    }
    let status = cmd
        .arg(&out)
        .status()
        .expect("ffmpeg is needed for the MP4 tests (deploy/install-deps.sh installs it)");
    assert!(status.success(), "ffmpeg failed: {status}");
    std::fs::read(&out).unwrap()
}

// ---- gRPC ----

async fn media_client(url: &str) -> MediaClient<Channel> {
    MediaClient::connect(url.to_string()).await.unwrap()
}

fn chunks(
    bytes: &[u8],
    sha: &str,
    kind: &str,
    content_type: &str,
    from: usize,
    size: usize,
) -> Vec<MediaChunk> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos < bytes.len() {
        let end = (pos + size).min(bytes.len());
        out.push(MediaChunk {
            sha256: sha.into(),
            offset: pos as u64,
            data: bytes[pos..end].to_vec().into(),
            total_size: bytes.len() as u64,
            kind: kind.into(),
            content_type: content_type.into(),
            last: end == bytes.len(),
            agent_id: "cam-host-1".into(),
        });
        pos = end;
    }
    out
}

async fn upload(
    c: &mut MediaClient<Channel>,
    chunks: Vec<MediaChunk>,
) -> Result<MediaUploadResponse, tonic::Status> {
    c.upload(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

/// Uploads from wherever the core says it stands, as an agent would.
async fn upload_whole(
    url: &str,
    bytes: &[u8],
    kind: &str,
    content_type: &str,
) -> Result<MediaUploadResponse, tonic::Status> {
    let mut c = media_client(url).await;
    let sha = sha_hex(bytes);
    let from = offset(&mut c, &sha).await.0 as usize;
    upload(
        &mut c,
        chunks(bytes, &sha, kind, content_type, from, 64 * 1024),
    )
    .await
}

async fn offset(c: &mut MediaClient<Channel>, sha: &str) -> (u64, bool) {
    let r = c
        .offset(MediaOffsetRequest { sha256: sha.into() })
        .await
        .unwrap()
        .into_inner();
    (r.received, r.complete)
}

async fn attach(url: &str, oids: &[i64], media: MediaRef) {
    media_client(url)
        .await
        .attach(AttachMediaRequest {
            detection_oids: oids.to_vec(),
            media: Some(media),
        })
        .await
        .unwrap();
}

fn media_ref(kind: &str, bytes: &[u8], content_type: &str) -> MediaRef {
    MediaRef {
        kind: kind.into(),
        sha256: sha_hex(bytes),
        content_type: content_type.into(),
        size: bytes.len() as u64,
    }
}

/// Stores events with the given det_oids through a raw ingest session.
async fn store_events(url: &str, agent: &str, oids: &[i64]) {
    use prost::Message;
    let mut client = IngestClient::connect(url.to_string()).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: agent.into(),
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
    let first_seq = w.resume_from;
    let now = now_ms();
    let events = oids
        .iter()
        .enumerate()
        .map(|(i, &oid)| {
            EdgeEvent {
                seq: first_seq + i as u64,
                accepted_ms: now,
                detection: Some(Detection {
                    geographical_location_oid: 1,
                    video_camera_oid: 100,
                    detection_oid: Some(oid),
                    item_name: "person".into(),
                    timestamp_detected: now - 1000,
                    media_expected: vec!["snapshot".into(), "clip".into()],
                    ..Default::default()
                }),
            }
            .encode_to_vec()
            .into()
        })
        .collect();
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq,
            events,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let msg: CoreMessage = inbound.next().await.unwrap().unwrap();
    let Some(core_message::Msg::Ack(a)) = msg.msg else {
        panic!("expected Ack, got {msg:?}")
    };
    assert_eq!(a.committed_through, first_seq + oids.len() as u64 - 1);
}

async fn get_event(url: &str, oid: i64) -> Result<JoinedEvent, tonic::Status> {
    sightline_tests::query::client(url)
        .await
        .get_event(GetEventRequest { detection_oid: oid })
        .await
        .map(|r| r.into_inner())
}

// ---- HTTP ----

struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    let mut own = String::new();
    for (k, v) in headers {
        own.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&sightline_tests::http::admin_auth(&addr.to_string(), &own));
    req.push_str(&own);
    req.push_str("\r\n");
    let (head, body) = sightline_tests::http::request(&addr.to_string(), &req).await;
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked")),
        "bodies are sent with a Content-Length"
    );
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Files under a directory, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---- the promises ----

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_halfway_resumes_and_the_stored_bytes_hash_right() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::start(dir.path(), None);
    let clip = mp4(dir.path(), "clip.mp4", true);
    let sha = sha_hex(&clip);
    let size = 1024;
    let all = chunks(&clip, &sha, "clip", "video/mp4", 0, size);
    assert!(all.len() >= 6, "a clip of {} bytes", clip.len());
    let half = all.len() / 2;
    let half_bytes = (half * size) as u64;

    // Send half the chunks, then drop the stream with the core still waiting.
    let (tx, rx) = mpsc::channel(all.len());
    for c in &all[..half] {
        tx.send(c.clone()).await.unwrap();
    }
    let url = core.url();
    let cut = tokio::spawn(async move {
        let mut c = media_client(&url).await;
        c.upload(ReceiverStream::new(rx)).await
    });
    let url = core.url();
    wait_for(
        "the first half to be staged",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            let sha = sha.clone();
            async move {
                let mut c = media_client(&url).await;
                (offset(&mut c, &sha).await == (half_bytes, false)).then_some(())
            }
        },
    )
    .await;
    cut.abort();
    drop(tx);

    // Starting anywhere else than where the core stands is refused, naming
    // where to resume.
    let mut c = media_client(&url).await;
    let err = upload(&mut c, all.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&format!("resume from {half_bytes}")),
        "{}",
        err.message()
    );

    // The partial upload survives a restart of the core.
    core.restart();
    let url = core.url();
    let mut c = media_client(&url).await;
    assert_eq!(offset(&mut c, &sha).await, (half_bytes, false));
    let r = upload(&mut c, all[half..].to_vec()).await.unwrap();
    assert_eq!(
        (r.sha256.as_str(), r.size, r.newly_stored),
        (sha.as_str(), clip.len() as u64, true)
    );
    assert_eq!(offset(&mut c, &sha).await, (clip.len() as u64, true));

    let got = http(core.http, "GET", &format!("/media/{sha}"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-type"], "video/mp4");
    assert_eq!(sha_hex(&got.body), sha, "the stored bytes hash right");
    assert!(
        files_under(&dir.path().join("core-media-staging")).is_empty(),
        "the staging file is gone once stored"
    );
    let metrics = http(core.http, "GET", "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("sightline_media_stored_total{kind=\"clip\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_media_sent_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let url = core.url();
    let snap = jpeg(640, 480, 1);
    let sha = sha_hex(&snap);
    let first = upload_whole(&url, &snap, "snapshot", "image/jpeg")
        .await
        .unwrap();
    assert!(first.newly_stored);
    // Sent again from 0 (an agent that lost its progress): drained, not stored.
    let mut c = media_client(&url).await;
    let again = upload(
        &mut c,
        chunks(&snap, &sha, "snapshot", "image/jpeg", 0, 16 * 1024),
    )
    .await
    .unwrap();
    assert_eq!(
        (again.sha256.as_str(), again.size, again.newly_stored),
        (sha.as_str(), snap.len() as u64, false)
    );
    let files = files_under(&dir.path().join("core-media"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].ends_with(format!("media/snapshot/{}/{sha}.jpg", &sha[..2])),
        "key layout: {}",
        files[0].display()
    );
    assert_eq!(std::fs::read(&files[0]).unwrap(), snap);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_jpeg_or_mp4_is_quarantined_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let url = core.url();
    store_events(&url, "cam-host-1", &[42]).await;

    let good = jpeg(320, 240, 2);
    let cut_jpeg = good[..good.len() / 2].to_vec();
    let slow = mp4(dir.path(), "slow.mp4", false);
    let fast = mp4(dir.path(), "fast.mp4", true);
    let cut_mp4 = fast[..fast.len() - 100].to_vec();
    let cases = [
        (&cut_jpeg, "snapshot", "image/jpeg", "JPEG"),
        (&slow, "clip", "video/mp4", "fast-start"),
        (&cut_mp4, "clip", "video/mp4", "truncated"),
    ];
    for (bytes, kind, ct, why) in cases {
        attach(&url, &[42], media_ref(kind, bytes, ct)).await;
        let err = upload_whole(&url, bytes, kind, ct).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(why), "{why}: {}", err.message());
        assert!(err.message().contains("quarantined"), "{}", err.message());
        let sha = sha_hex(bytes);
        let mut c = media_client(&url).await;
        assert_eq!(offset(&mut c, &sha).await, (0, false), "nothing kept of it");
        assert_eq!(
            http(core.http, "GET", &format!("/media/{sha}"), &[])
                .await
                .status,
            404
        );
    }

    // Bytes that do not hash to the claimed sha256: refused, not quarantined.
    let mut c = media_client(&url).await;
    let other = sha_hex(b"something else");
    let err = upload(
        &mut c,
        chunks(&good, &other, "snapshot", "image/jpeg", 0, 4096),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sha256"), "{}", err.message());
    let err = upload(
        &mut c,
        chunks(&good, "ABC", "snapshot", "image/jpeg", 0, 4096),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("field `sha256`"),
        "{}",
        err.message()
    );

    let listing = http(core.http, "GET", "/media-quarantine", &[]).await;
    assert_eq!(listing.status, 200);
    assert_eq!(listing.headers["content-type"], "application/json");
    let q: serde_json::Value = serde_json::from_slice(&listing.body).unwrap();
    assert_eq!(q["count"], 3, "{q}");
    for (bytes, kind, _, why) in cases {
        let sha = sha_hex(bytes);
        let e = q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["sha256"] == sha.as_str())
            .unwrap_or_else(|| panic!("{sha} not listed: {q}"));
        assert_eq!(e["kind"], kind);
        assert_eq!(e["agent_id"], "cam-host-1");
        assert_eq!(e["size"], bytes.len());
        assert!(e["reason"].as_str().unwrap().contains(why), "{e}");
    }
    let metrics = http(core.http, "GET", "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(metrics.contains("sightline_media_rejected_total{kind=\"snapshot\"} 1"));
    assert!(metrics.contains("sightline_media_rejected_total{kind=\"clip\"} 2"));

    // The event that refers to the refused footage stays stored.
    let ev = get_event(&url, 42).await.unwrap();
    assert_eq!(ev.detection.unwrap().detection_oid, Some(42));
}

#[tokio::test(flavor = "multi_thread")]
async fn range_requests_return_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let url = core.url();
    let clip = mp4(dir.path(), "clip.mp4", true);
    let snap = jpeg(200, 100, 3);
    upload_whole(&url, &clip, "clip", "video/mp4")
        .await
        .unwrap();
    upload_whole(&url, &snap, "snapshot", "image/jpeg")
        .await
        .unwrap();
    let (sha, total) = (sha_hex(&clip), clip.len());
    let path = format!("/media/{sha}");

    let whole = http(core.http, "GET", &path, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, clip);
    assert_eq!(whole.headers["content-type"], "video/mp4");
    assert_eq!(whole.headers["content-length"], total.to_string());
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    assert_eq!(whole.headers["etag"], format!("\"{sha}\""));
    assert_eq!(
        whole.headers["cache-control"],
        "private, max-age=31536000, immutable"
    );

    let ranged = |spec: String| {
        let path = path.clone();
        async move { http(core.http, "GET", &path, &[("Range", &spec)]).await }
    };
    for (spec, a, b) in [
        ("bytes=0-99".to_string(), 0, 99),
        ("bytes=100-1099".to_string(), 100, 1099),
        (
            format!("bytes={}-{}", total - 10, total + 500),
            total - 10,
            total - 1,
        ),
        ("bytes=1000-".to_string(), 1000, total - 1),
        ("bytes=-300".to_string(), total - 300, total - 1),
    ] {
        let r = ranged(spec.clone()).await;
        assert_eq!(r.status, 206, "{spec}");
        assert_eq!(
            r.headers["content-range"],
            format!("bytes {a}-{b}/{total}"),
            "{spec}"
        );
        assert_eq!(r.body, &clip[a..=b], "{spec}");
        assert_eq!(r.headers["content-length"], (b - a + 1).to_string());
    }
    for spec in [
        format!("bytes={total}-"),
        format!("bytes={}-{}", total + 5, total + 9),
    ] {
        let r = ranged(spec.clone()).await;
        assert_eq!(r.status, 416, "{spec}");
        assert_eq!(r.headers["content-range"], format!("bytes */{total}"));
    }

    let head = http(core.http, "HEAD", &path, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], total.to_string());
    assert!(head.body.is_empty());
    let head = http(core.http, "HEAD", &path, &[("Range", "bytes=0-9")]).await;
    assert_eq!(head.status, 206);
    assert_eq!(head.headers["content-range"], format!("bytes 0-9/{total}"));

    let cached = http(
        core.http,
        "GET",
        &path,
        &[("If-None-Match", &format!("\"{sha}\""))],
    )
    .await;
    assert_eq!(cached.status, 304);

    let jpg = http(core.http, "GET", &format!("/media/{}", sha_hex(&snap)), &[]).await;
    assert_eq!(jpg.status, 200);
    assert_eq!(jpg.headers["content-type"], "image/jpeg");
    assert_eq!(jpg.body, snap);

    for bad in [
        "/media/xyz",
        "/media/../../etc/passwd",
        &path.to_uppercase().replace("/MEDIA/", "/media/"),
    ] {
        let r = http(core.http, "GET", bad, &[]).await;
        assert!(r.status == 400 || r.status == 404, "{bad}: {}", r.status);
    }
    assert_eq!(http(core.http, "GET", "/media/xyz", &[]).await.status, 400);
    assert_eq!(
        http(core.http, "GET", &format!("/media/{}", "A".repeat(64)), &[])
            .await
            .status,
        400
    );
    let unknown = sha_hex(b"never uploaded");
    assert_eq!(
        http(core.http, "GET", &format!("/media/{unknown}"), &[])
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn attached_media_shows_on_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let url = core.url();
    let snap = jpeg(320, 240, 4);
    let clip = mp4(dir.path(), "clip.mp4", true);
    let snap_ref = media_ref("snapshot", &snap, "image/jpeg");
    let clip_ref = media_ref("clip", &clip, "video/mp4");

    // Media attached before its event exists (the event arrives later).
    attach(&url, &[7], clip_ref.clone()).await;
    store_events(&url, "cam-host-1", &[5, 6, 7]).await;
    // Attached before the upload ends: the ref is there, the bytes not yet.
    attach(&url, &[5, 7], snap_ref.clone()).await;
    let ev = get_event(&url, 5).await.unwrap();
    assert_eq!(ev.media, vec![snap_ref.clone()]);
    assert_eq!(
        http(
            core.http,
            "GET",
            &format!("/media/{}", snap_ref.sha256),
            &[]
        )
        .await
        .status,
        404,
        "still uploading"
    );
    upload_whole(&url, &snap, "snapshot", "image/jpeg")
        .await
        .unwrap();
    upload_whole(&url, &clip, "clip", "video/mp4")
        .await
        .unwrap();

    let ev = get_event(&url, 7).await.unwrap();
    let mut kinds: Vec<_> = ev.media.iter().map(|m| m.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["clip", "snapshot"]);
    assert!(ev.media.contains(&clip_ref) && ev.media.contains(&snap_ref));
    assert_eq!(
        ev.detection.unwrap().media_expected,
        ["snapshot", "clip"],
        "the event still says what was expected"
    );
    assert!(get_event(&url, 6).await.unwrap().media.is_empty());
    for m in &ev.media {
        let r = http(core.http, "GET", &format!("/media/{}", m.sha256), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(sha_hex(&r.body), m.sha256);
    }

    // ListEvents and a Subscribe replay carry the refs too.
    let events = sightline_tests::query::all_events(&url).await;
    let media: HashMap<i64, usize> = events
        .iter()
        .map(|e| {
            (
                e.detection.as_ref().unwrap().detection_oid.unwrap(),
                e.media.len(),
            )
        })
        .collect();
    assert_eq!(media, HashMap::from([(5, 1), (6, 0), (7, 2)]));
    let mut sub = sightline_tests::query::client(&url)
        .await
        .subscribe(SubscribeRequest {
            from_ms: 1,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = HashMap::new();
    while replayed.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        replayed.insert(e.detection.unwrap().detection_oid.unwrap(), e.media.len());
    }
    assert_eq!(replayed, media);

    // Attach checks what it is given.
    let mut c = media_client(&url).await;
    let err = c
        .attach(AttachMediaRequest {
            detection_oids: vec![5],
            media: Some(MediaRef {
                kind: "clip".into(),
                sha256: "../x".into(),
                content_type: "video/mp4".into(),
                size: 1,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("media.sha256"), "{}", err.message());
}

/// A JPEG of noise (does not compress), about `w * h` bytes.
fn noisy_jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    encode_jpeg(image::RgbImage::from_fn(w, h, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    }))
}

/// The agent's uploader with `bytes_per_s` set takes at least (size - one
/// 256 KiB chunk) / cap to send (a lower bound: a busy machine only makes it
/// slower; the first chunk goes at once), and what
/// arrives hashes right and is attached to its event.
#[tokio::test(flavor = "multi_thread")]
async fn the_upload_bandwidth_cap_holds_an_agent_to_its_rate() {
    use sightline_agent::{
        capture::spool::{MediaItem, Spool},
        transport::media::Uploader,
    };
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    store_events(&core.url(), "capped", &[77]).await;
    let bytes = noisy_jpeg(1000, 800);
    let size = bytes.len() as u64;
    assert!(size > 1_000_000, "{size} bytes");
    let cap = 1_000_000u64;
    let spool = std::sync::Arc::new(Spool::open(dir.path().join("spool"), u64::MAX).unwrap());
    spool
        .put(MediaItem {
            kind: "snapshot",
            content_type: "image/jpeg",
            bytes: bytes.clone(),
            det_oids: vec![77],
        })
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let started = std::time::Instant::now();
    let task = tokio::spawn(
        Uploader {
            spool: spool.clone(),
            transport: std::sync::Arc::new(
                sightline_agent::transport::grpc::GrpcTransport::new(
                    &core.url(),
                    None,
                    Duration::from_secs(5),
                )
                .unwrap(),
            ),
            agent_id: "capped".into(),
            bytes_per_s: cap,
        }
        .run(stop.clone()),
    );
    let url = core.url();
    let ev = wait_for("the capped upload lands", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let ev = get_event(&url, 77).await.ok()?;
            (!ev.media.is_empty()).then_some(ev)
        }
    })
    .await;
    let took = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    let floor = (size - 256 * 1024) as f64 / cap as f64;
    println!("{size} bytes at a cap of {cap} B/s took {took:.2} s (floor {floor:.2} s)");
    assert!(took >= floor, "{size} bytes in {took:.2} s is over the cap");
    assert_eq!(ev.media[0].sha256, sha_hex(&bytes));
    assert_eq!(ev.media[0].size, size);
}
