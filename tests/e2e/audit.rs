//! The audit log's checker, as an operator runs it: `sightline-core audit
//! verify|export` on a log written here by hand from the documented format
//! (core-server/src/audit/mod.rs, README "Audit log") — so the format is
//! checked too — then tampered with. And against a running core: each read
//! of an event (gRPC GetEvent and ListEvents, the dashboard's event page),
//! the dashboard's search and top items, the audit page itself and each
//! refusal (a role too low over HTTP and gRPC, a cross-site request, no
//! credential) leaves exactly one record naming who, what and when; an
//! anonymous flood is coalesced.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sightline_proto::v1::{
    admin_client::AdminClient, query_client::QueryClient, EventFilter, FleetRequest,
    GetEventRequest, ListEventsRequest, ListUsersRequest, Role, StatsRequest,
};
use sightline_tests::{
    bin_path,
    data::now_ms,
    http::{self, login, status},
    proc::Bearer,
    query::client_as,
    wait_for, Core,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

// ---------------------------------------------------------------------------
// Against a running core: each read and each refusal leaves exactly one
// record naming who, what and when (read back with the real `audit export`).

/// Every record of `core`'s log, oldest first (read with `audit export`,
/// which reads the files while the core writes).
fn records(core: &Core) -> Vec<Value> {
    let (ok, out) = audit_stdout(&["export", "--format", "jsonl"], &core.args.data_dir);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn audit_stdout(args: &[&str], data: &Path) -> (bool, String) {
    let out = Command::new(bin_path("sightline-core"))
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    (out.status.success(), text)
}

/// The seq of the newest record (0: none).
fn last_seq(core: &Core) -> u64 {
    records(core)
        .last()
        .map_or(0, |r| r["seq"].as_u64().unwrap())
}

/// What `step` did must leave exactly one record of `action` by `actor`
/// after seq `since`, written between `t0` and now; it is returned.
fn one_record(core: &Core, step: &str, since: u64, t0: i64, action: &str, actor: &str) -> Value {
    let t1 = sightline_tests::data::now_ms();
    let new: Vec<Value> = records(core)
        .into_iter()
        .filter(|r| r["seq"].as_u64().unwrap() > since)
        .filter(|r| r["action"] == action && r["actor"] == actor)
        .collect();
    assert_eq!(
        new.len(),
        1,
        "{step}: expected one {action} record by {actor}, found {new:#?}"
    );
    let r = new.into_iter().next().unwrap();
    let time = r["time"].as_i64().unwrap();
    assert!(
        (t0..=t1).contains(&time),
        "{step}: time {time} not in {t0}..={t1}"
    );
    r
}

/// Stores one event (over a raw ingest session, as an agent would) and
/// waits until it is readable.
async fn store_event(core: &Core, det_oid: i64, camera: i64, location: i64) {
    use prost::Message;
    use sightline_proto::v1::{
        agent_message, core_message, ingest_client::IngestClient, AgentMessage, Batch, Detection,
        EdgeEvent, Hello,
    };
    let mut ingest = IngestClient::connect(core.url()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = agent_message::Msg::Hello(Hello {
        agent_id: "audited".into(),
        epoch: 1,
        ..Default::default()
    });
    tx.send(AgentMessage { msg: Some(hello) }).await.unwrap();
    let mut inbound = ingest
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap();
    let now = sightline_tests::data::now_ms();
    let event = EdgeEvent {
        seq: 1,
        accepted_ms: now,
        detection: Some(Detection {
            geographical_location_oid: location,
            video_camera_oid: camera,
            detection_oid: Some(det_oid),
            item_name: "backpack".into(),
            timestamp_detected: now - 1_000,
            ..Default::default()
        }),
    };
    let batch = agent_message::Msg::Batch(Batch {
        first_seq: 1,
        events: vec![event.encode_to_vec().into()],
        ..Default::default()
    });
    tx.send(AgentMessage { msg: Some(batch) }).await.unwrap();
    let Some(core_message::Msg::Ack(ack)) = inbound.message().await.unwrap().unwrap().msg else {
        panic!("expected an ack")
    };
    assert!(ack.rejected.is_empty(), "{ack:?}");
    sightline_tests::query::wait_stored(&core.url(), 1).await;
}

/// A raw HTTP request sent from the local address `from` (another address
/// of the loopback network, so its refusals are not coalesced with others').
async fn http_from(from: [u8; 4], core: &Core, request: &str) -> (String, Vec<u8>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let mut s = sock.connect(core.http).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    (head, out.get(split + 4..).unwrap_or_default().to_vec())
}

/// A `GET` with `headers` (which carry the credential, if any) from `from`.
async fn get_from(from: [u8; 4], core: &Core, path: &str, headers: &str) -> (String, Vec<u8>) {
    let host = core.http;
    http_from(
        from,
        core,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"),
    )
    .await
}

/// A `POST` of a form body with `headers`.
async fn post_from(
    from: [u8; 4],
    core: &Core,
    path: &str,
    headers: &str,
    body: &str,
) -> (String, Vec<u8>) {
    let host = core.http;
    http_from(
        from,
        core,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

const PASSWORD: &str = "correct horse battery staple";
const LOCAL: [u8; 4] = [127, 0, 0, 1];

#[tokio::test(flavor = "multi_thread")]
async fn reads_of_events_and_the_audit_page_leave_exactly_one_record_each() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let (det, camera, location) = (424_242, 31, 7);
    store_event(&core, det, camera, location).await;
    let token = core
        .create_token("analyst", Role::Investigator, &[], 0)
        .await;
    core.add_user("ann", Role::Admin, &[], PASSWORD).await;
    let ann = login(core.http, "ann", PASSWORD).await;
    let mut q = client_as(&core.url(), &token).await;

    // GetEvent over gRPC: who looked at which event.
    let (since, t0) = (last_seq(&core), now_ms());
    q.get_event(GetEventRequest { detection_oid: det })
        .await
        .unwrap();
    let r = one_record(&core, "GetEvent", since, t0, "get_event", "token:analyst");
    assert_eq!(
        (&r["det_oid"], &r["camera"], &r["location"], &r["outcome"]),
        (&json!(det), &json!(camera), &json!(location), &json!("ok")),
        "{r}"
    );
    assert!(
        r["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{r}"
    );

    // ListEvents over gRPC: once per call, with its filters.
    let (since, t0) = (last_seq(&core), now_ms());
    let page = q
        .list_events(ListEventsRequest {
            filter: Some(EventFilter {
                video_camera_oid: Some(camera),
                item_name: Some("backpack".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 1);
    let r = one_record(
        &core,
        "ListEvents",
        since,
        t0,
        "list_events",
        "token:analyst",
    );
    assert_eq!(r["camera"], camera, "{r}");
    assert_eq!(r["detail"]["item"], "backpack", "{r}");

    // The dashboard's event page (rendered on the server, as a browser
    // without JavaScript gets it), its search and its top items.
    for (step, path, action) in [
        ("event page", format!("/event/{det}"), "get_event"),
        (
            "search page",
            "/search?q=backpack&camera=31".to_string(),
            "search",
        ),
        (
            "top items page",
            "/top?range=1h&x=3".to_string(),
            "top_items",
        ),
    ] {
        let (since, t0) = (last_seq(&core), now_ms());
        let (head, body) = http::get(core.http, &path, &ann).await;
        assert_eq!(status(&head), 200, "{step}: {head}");
        assert!(
            !String::from_utf8_lossy(&body).contains("class=\"error\""),
            "{step}"
        );
        let r = one_record(&core, step, since, t0, action, "user:ann");
        assert_eq!(r["detail"]["via"], "dashboard", "{step}: {r}");
        assert!(
            r["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1:")),
            "{r}"
        );
        if action == "get_event" {
            assert_eq!(
                (&r["det_oid"], &r["camera"]),
                (&json!(det), &json!(camera)),
                "{r}"
            );
        }
        if action == "search" {
            assert_eq!(
                (&r["detail"]["query"], &r["detail"]["camera"]),
                (&json!("backpack"), &json!(camera)),
                "{r}"
            );
        }
    }

    // The audit page itself: whoever reads the log is in it, with the filters.
    let (since, t0) = (last_seq(&core), now_ms());
    let (head, body) = http::get(core.http, "/admin/audit?action=get_event&camera=31", &ann).await;
    assert_eq!(status(&head), 200, "{head}");
    let html = String::from_utf8_lossy(&body);
    // Its rows: the three event views above (gRPC and dashboard), newest first.
    assert_eq!(
        html.matches("data-action=\"get_event\"").count(),
        2,
        "{html}"
    );
    let r = one_record(&core, "audit page", since, t0, "audit_viewed", "user:ann");
    assert_eq!(
        (&r["detail"]["action"], &r["detail"]["camera"]),
        (&json!("get_event"), &json!(31)),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_leaves_one_record_and_an_anonymous_flood_is_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    core.add_user("ann", Role::Admin, &[], PASSWORD).await;
    core.add_user("vic", Role::Viewer, &[], PASSWORD).await;
    core.add_user("ivy", Role::Investigator, &[], PASSWORD)
        .await;
    let wall = core.create_token("wall", Role::Viewer, &[], 0).await;
    let ann = login(core.http, "ann", PASSWORD).await;

    // The audit page and its server functions: 403 for a viewer and an
    // investigator (sessions and a token), each refusal recorded once.
    let vic = login(core.http, "vic", PASSWORD).await;
    let ivy = login(core.http, "ivy", PASSWORD).await;
    let wall_auth = format!("Authorization: Bearer {wall}\r\n");
    for (who, cred) in [
        ("user:vic", &vic),
        ("user:ivy", &ivy),
        ("token:wall", &wall_auth),
    ] {
        for (method, path) in [
            ("GET", "/admin/audit"),
            ("POST", "/api/get_audit"),
            ("POST", "/api/get_audit_actions"),
        ] {
            let (since, t0) = (last_seq(&core), now_ms());
            let origin = format!("Origin: http://{}\r\n", core.http);
            let (head, body) = if method == "GET" {
                get_from(LOCAL, &core, path, cred).await
            } else {
                post_from(LOCAL, &core, path, &format!("{cred}{origin}"), "").await
            };
            assert_eq!(status(&head), 403, "{who} {method} {path}: {head}");
            assert!(
                String::from_utf8_lossy(&body).contains("needs the admin role"),
                "{who} {path}"
            );
            let r = one_record(&core, path, since, t0, "access_refused", who);
            assert_eq!(
                (&r["detail"]["path"], &r["outcome"]),
                (&json!(path), &json!("denied")),
                "{r}"
            );
        }
    }
    // The same server function answers an admin (the path is the real one).
    let origin = format!("Origin: http://{}\r\n", core.http);
    let (head, body) = post_from(
        LOCAL,
        &core,
        "/api/get_audit",
        &format!("{ann}{origin}"),
        "query[action]=login_succeeded",
    )
    .await;
    assert_eq!(status(&head), 200, "{head}");
    let page: Value = serde_json::from_slice(&body).unwrap();
    let actors: Vec<&str> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["user:ivy", "user:vic", "user:ann"], "{page}");
    // Bad filters: named, 400, never a 500.
    for (body, field) in [
        ("query[camera]=three", "field `camera`"),
        ("query[action]=peeked", "field `action`"),
        (
            "query[from]=2026-11-30%2010:00:00&query[to]=2026-11-30%2009:00:00",
            "field `to`",
        ),
    ] {
        let (head, text) = post_from(
            LOCAL,
            &core,
            "/api/get_audit",
            &format!("{ann}{origin}"),
            body,
        )
        .await;
        assert_eq!(status(&head), 400, "{body}: {head}");
        assert!(
            String::from_utf8_lossy(&text).contains(field),
            "{body}: {}",
            String::from_utf8_lossy(&text)
        );
    }
    let (head, html) = get_from(LOCAL, &core, "/admin/audit?camera=three", &ann).await;
    assert_ne!(status(&head), 500, "{head}");
    let html = String::from_utf8_lossy(&html);
    assert!(
        html.contains("field `camera`: ") && html.contains("is not a whole number"),
        "{html}"
    );

    // A cross-site request (with a session): refused and recorded with the
    // path and the reason; the session goes on.
    let (since, t0) = (last_seq(&core), now_ms());
    let (head, _) = post_from(
        LOCAL,
        &core,
        "/logout",
        &format!("{ann}Origin: https://evil.example\r\n"),
        "",
    )
    .await;
    assert_eq!(status(&head), 403, "{head}");
    let r = one_record(&core, "CSRF", since, t0, "access_refused", "user:ann");
    assert_eq!(r["detail"]["path"], "/logout", "{r}");
    assert!(
        r["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("cross-site request refused"),
        "{r}"
    );

    // gRPC: a viewer's token asking for the fleet (PERMISSION_DENIED).
    let (since, t0) = (last_seq(&core), now_ms());
    let mut q = client_as(&core.url(), &wall).await;
    let e = q.fleet(FleetRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let r = one_record(&core, "Fleet", since, t0, "access_refused", "token:wall");
    assert_eq!(r["detail"]["method"], "Fleet", "{r}");

    // The Admin service too (recorded in the background: waited for).
    let (since, t0) = (last_seq(&core), now_ms());
    let channel = tonic::transport::Endpoint::from_shared(core.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::with_interceptor(channel, Bearer::new(&wall));
    let e = admin.list_users(ListUsersRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    wait_for(
        "the ListUsers refusal's record",
        Duration::from_secs(10),
        || async { (last_seq(&core) > since).then_some(()) },
    )
    .await;
    let r = one_record(
        &core,
        "ListUsers",
        since,
        t0,
        "access_refused",
        "token:wall",
    );
    assert_eq!(r["detail"]["method"], "ListUsers", "{r}");

    // gRPC without a token, from its own address (UNAUTHENTICATED): one
    // record; then a flood from the same address adds at most one a minute.
    let (since, t0) = (last_seq(&core), now_ms());
    let channel = tonic::transport::Endpoint::from_shared(core.url())
        .unwrap()
        .local_address(Some(IpAddr::from([127, 0, 0, 2])))
        .connect()
        .await
        .unwrap();
    let mut anon = QueryClient::new(channel);
    let e = anon.stats(StatsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let r = one_record(
        &core,
        "Stats without a token",
        since,
        t0,
        "access_refused",
        "anonymous",
    );
    assert_eq!(r["detail"]["method"], "Stats", "{r}");
    assert!(
        r["source"].as_str().unwrap().starts_with("127.0.0.2:"),
        "{r}"
    );

    // HTTP without a credential, from a third address: one record.
    let (since, t0) = (last_seq(&core), now_ms());
    let (head, _) = get_from([127, 0, 0, 3], &core, "/api/whoami", "").await;
    assert_eq!(status(&head), 401, "{head}");
    let r = one_record(
        &core,
        "HTTP without a credential",
        since,
        t0,
        "access_refused",
        "anonymous",
    );
    assert_eq!(r["detail"]["path"], "/api/whoami", "{r}");
    assert!(
        r["source"].as_str().unwrap().starts_with("127.0.0.3:"),
        "{r}"
    );

    // A flood from both: 300 refusals add a record per address per minute
    // at most; the count of the rest comes with a later record.
    let (since, t0) = (last_seq(&core), now_ms());
    for i in 0..150 {
        let (head, _) = get_from(
            [127, 0, 0, 3],
            &core,
            "/api/whoami",
            "Authorization: Bearer slt_wrong\r\n",
        )
        .await;
        assert_eq!(status(&head), 401, "{i}: {head}");
        assert!(anon.stats(StatsRequest {}).await.is_err());
    }
    let t1 = now_ms();
    let minutes = (t1 / 60_000 - t0 / 60_000 + 1) as usize;
    let flood: Vec<Value> = records(&core)
        .into_iter()
        .filter(|r| r["seq"].as_u64().unwrap() > since && r["actor"] == "anonymous")
        .collect();
    assert!(
        flood.len() <= 2 * minutes,
        "{} records for a {minutes}-minute flood: {flood:#?}",
        flood.len()
    );
    println!(
        "anonymous flood: 300 refusals, {} records over {minutes} minute(s)",
        flood.len()
    );
    // Every refusal is still counted: once the minute is over, the next
    // anonymous refusal carries the count of those left out.
    let next_minute = (t1 / 60_000 + 1) * 60_000;
    let wait = (next_minute - now_ms() + 200).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let (head, _) = get_from([127, 0, 0, 4], &core, "/api/whoami", "").await;
    assert_eq!(status(&head), 401, "{head}");
    let after: Vec<Value> = records(&core)
        .into_iter()
        .filter(|r| r["seq"].as_u64().unwrap() > since && r["actor"] == "anonymous")
        .collect();
    let counted: u64 = after
        .iter()
        .map(|r| {
            r["detail"]["coalesced_before"]["refusals"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        after.len() as u64 + counted,
        301,
        "each refusal recorded or counted: {after:#?}"
    );
}
