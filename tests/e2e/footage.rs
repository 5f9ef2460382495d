//! Footage end to end: an agent with real cameras (a synthetic H.264 camera,
//! and an RTSP camera served by a real RTSP server) cuts snapshots and clips
//! for detections, uploads them, and the core serves them over HTTP.

use std::{io::Write, path::Path, process::Command, time::Duration};

use sha2::{Digest, Sha256};
use sightline_proto::v1::{
    intake_client::IntakeClient, Detection, GetEventRequest, JoinedEvent, PublishRequest,
};
use sightline_tests::{
    data::now_ms,
    query::{client, event_with_media},
    Agent, AgentArgs, Core,
};

/// Reads the 48-bit time code strip the synthetic camera draws (an
/// independent reading of the agent's drawing: 52 cells across, 2 cells of
/// margin, a cell high, 2 px above the bottom).
fn time_code(luma: &[u8], w: usize, h: usize) -> i64 {
    let cell = w / 52;
    let top = h - cell - 2;
    (0..48).fold(0i64, |v, bit| {
        let (x, y) = ((bit + 2) * cell + cell / 2, top + cell / 2);
        (v << 1) | (luma[y * w + x] > 128) as i64
    })
}

async fn http(addr: std::net::SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
    sightline_tests::http::get(addr, path, headers).await
}

fn agent_config(dir: &Path, core_url: &str, cameras: &str) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    let mut f = std::fs::File::create(&p).unwrap();
    write!(
        f,
        "agent_id = \"footage\"\ncore_url = \"{core_url}\"\n[buffer]\npath = \"{}\"\n[capture]\nspool_path = \"{}\"\n{cameras}",
        dir.join("buffer").display(),
        dir.join("spool").display()
    )
    .unwrap();
    p
}

fn det(camera: i64, ts: i64) -> Detection {
    Detection {
        geographical_location_oid: 1,
        video_camera_oid: camera,
        item_name: "backpack".into(),
        timestamp_detected: ts,
        ..Default::default()
    }
}

fn media<'a>(ev: &'a JoinedEvent, kind: &str) -> &'a sightline_proto::v1::MediaRef {
    ev.media
        .iter()
        .find(|m| m.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} on {ev:?}"))
}

/// Checks a clip with the ffmpeg command line: it decodes to the end without
/// error; returns its duration in seconds.
fn ffmpeg_check(path: &Path) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detection_gets_a_snapshot_and_a_shared_clip_served_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let cfg = agent_config(
        dir.path(),
        &core.url(),
        "[[capture.cameras]]\ncamera_oid = 301\ninput = \"synthetic://gate-3?width=320&height=240&fps=25&gop=25\"\nmode = \"clip\"\npre = \"2s\"\npost = \"2s\"\n",
    );
    let agent = Agent::start(AgentArgs {
        id: "footage".into(),
        core_url: core.url(),
        data_dir: dir.path().join("buffer"),
        command: vec![],
        intake: true,
        exit_when_drained: false,
        extra: vec!["--config".into(), cfg.display().to_string()],
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // the ring fills its pre-roll
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let t1 = now_ms();
    let t2 = t1 + 500;
    let r = intake
        .publish(PublishRequest {
            detections: vec![det(301, t1), det(301, t2), det(999, t1)],
        })
        .await
        .unwrap()
        .into_inner();
    let oid = |i: usize| match r.results[i].result.clone().unwrap() {
        sightline_proto::v1::publish_result::Result::Accepted(a) => a.detection_oid,
        other => panic!("{other:?}"),
    };
    let (d1, d2, d3) = (oid(0), oid(1), oid(2));
    let e1 = event_with_media(&core.url(), d1, 3).await;
    let e2 = event_with_media(&core.url(), d2, 3).await;
    assert_eq!(
        e1.detection.as_ref().unwrap().media_expected,
        vec!["snapshot", "thumbnail", "clip"]
    );
    assert_eq!(
        media(&e1, "clip").sha256,
        media(&e2, "clip").sha256,
        "close detections share one clip"
    );
    assert_ne!(media(&e1, "snapshot").sha256, media(&e2, "snapshot").sha256);
    let plain = client(&core.url())
        .await
        .get_event(GetEventRequest { detection_oid: d3 })
        .await
        .unwrap()
        .into_inner();
    assert!(
        plain.detection.unwrap().media_expected.is_empty(),
        "a camera without capture expects no footage"
    );

    // The snapshot shows the frame taken nearest the detection.
    let snap = media(&e1, "snapshot");
    let (head, body) = http(core.http, &format!("/media/{}", snap.sha256), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: image/jpeg"),
        "{head}"
    );
    let hex: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, snap.sha256);
    let img = image::load_from_memory(&body).unwrap().to_luma8();
    let (w, h) = img.dimensions();
    let shown = time_code(img.as_raw(), w as usize, h as usize);
    assert!(
        (shown - t1).abs() <= 40,
        "snapshot shows {shown}, detection at {t1}"
    );

    // The clip: pre + post (+ the second detection's 0.5 s) within one GOP, decodable, seekable.
    let clip = media(&e1, "clip");
    let (head, body) = http(core.http, &format!("/media/{}", clip.sha256), "").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: video/mp4"),
        "{head}"
    );
    let path = dir.path().join("clip.mp4");
    std::fs::write(&path, &body).unwrap();
    let secs = ffmpeg_check(&path);
    assert!(
        (4.5..=5.6).contains(&secs),
        "clip of {secs} s for pre 2 s + post 2 s + 0.5 s"
    );
    let (head, part) = http(
        core.http,
        &format!("/media/{}", clip.sha256),
        "Range: bytes=100-199\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(part, body[100..200].to_vec());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rtsp_camera_is_read_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    // A source made by FFmpeg, served by a real RTSP server on 127.0.0.1.
    let src = dir.path().join("src.mp4");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-t",
            "60",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&src)
        .status()
        .unwrap();
    assert!(made.success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rtsp_server.py");
    let mut server = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&src)
        .arg("0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let _server = KillOnDrop(server);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("rtsp port=")
        .unwrap()
        .parse()
        .unwrap();
    let core = Core::start(dir.path(), None);
    let cfg = agent_config(
        dir.path(),
        &core.url(),
        &format!("[[capture.cameras]]\ncamera_oid = 7\ninput = \"rtsp://127.0.0.1:{port}/cam\"\nmode = \"clip\"\npre = \"2s\"\npost = \"2s\"\n"),
    );
    let agent = Agent::start(AgentArgs {
        id: "rtsp".into(),
        core_url: core.url(),
        data_dir: dir.path().join("buffer"),
        command: vec![],
        intake: true,
        exit_when_drained: false,
        extra: vec!["--config".into(), cfg.display().to_string()],
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let r = intake
        .publish(PublishRequest {
            detections: vec![det(7, now_ms())],
        })
        .await
        .unwrap()
        .into_inner();
    let sightline_proto::v1::publish_result::Result::Accepted(a) =
        r.results[0].result.clone().unwrap()
    else {
        panic!()
    };
    let ev = event_with_media(&core.url(), a.detection_oid, 3).await;
    let (_, body) = http(
        core.http,
        &format!("/media/{}", media(&ev, "clip").sha256),
        "",
    )
    .await;
    let path = dir.path().join("rtsp-clip.mp4");
    std::fs::write(&path, &body).unwrap();
    let secs = ffmpeg_check(&path);
    assert!(
        (4.0..=5.1).contains(&secs),
        "clip of {secs} s for pre 2 s + post 2 s"
    );
    let (_, snap) = http(
        core.http,
        &format!("/media/{}", media(&ev, "snapshot").sha256),
        "",
    )
    .await;
    assert_eq!(image::load_from_memory(&snap).unwrap().width(), 320);
}

/// Stops the RTSP server however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
