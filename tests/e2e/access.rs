//! Access control against the real core: every `sightline.v1.Query` call
//! needs a credential (none, malformed, wrong, expired and revoked ones are
//! refused, an open Subscribe ends when its token is revoked), a scoped token
//! sees exactly its locations (TopItems equals the ground truth for them),
//! roles gate the fleet, quarantine and footage, accounts and tokens are
//! managed through the real CLI, and the dashboard's login, session cookie,
//! lockout, CSRF check and idle expiry hold over raw HTTP.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use sightline_proto::v1::{
    media_client::MediaClient, EventFilter, FleetRequest, GetEventRequest, ListEventsRequest,
    ListQuarantineRequest, MediaChunk, RevokeTokenRequest, Role, SearchRequest, StatsRequest,
    SubscribeRequest, TimelineBy, TimelineRequest, TopItemsRequest,
};
use sightline_tests::{
    bin_path,
    http::{self, header, login, post_login, status},
    query::{client, client_as, Client},
    wait_for, Agent, AgentArgs, Core, CoreArgs, Dataset, Truth,
};
use tonic::Code;

/// Every Query method once with `q`: (method, the call's status or Ok).
async fn every_query_call(q: &mut Client) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    fn ok<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
        r.map(|_| ())
    }
    let mut out = vec![
        (
            "ListEvents",
            ok(q.list_events(ListEventsRequest::default()).await),
        ),
        (
            "GetEvent",
            ok(q.get_event(GetEventRequest { detection_oid: 1 }).await),
        ),
        ("TopItems", ok(q.top_items(last_hour()).await)),
        ("Timeline", ok(q.timeline(timeline_last_hour()).await)),
        ("Search", ok(q.search(SearchRequest::default()).await)),
        ("Fleet", ok(q.fleet(FleetRequest {}).await)),
        (
            "ListQuarantine",
            ok(q.list_quarantine(ListQuarantineRequest::default()).await),
        ),
        ("Stats", ok(q.stats(StatsRequest {}).await)),
    ];
    // Subscribe: refused either at the call or as the stream's first item.
    let sub = match q.subscribe(SubscribeRequest::default()).await {
        Err(e) => Err(e),
        Ok(s) => {
            let mut s = s.into_inner();
            match tokio::time::timeout(Duration::from_secs(2), s.message()).await {
                Ok(Err(e)) => Err(e),
                _ => Ok(()),
            }
        }
    };
    out.push(("Subscribe", sub));
    out
}

/// TopItems over the last hour.
fn last_hour() -> TopItemsRequest {
    let now = sightline_tests::data::now_ms();
    TopItemsRequest {
        from_ms: now - 3_600_000,
        to_ms: now,
        x: 3,
        geographical_location_oid: None,
    }
}

/// Timeline by item over the last hour.
fn timeline_last_hour() -> TimelineRequest {
    let now = sightline_tests::data::now_ms();
    TimelineRequest {
        from_ms: now - 3_600_000,
        to_ms: now,
        by: TimelineBy::Item as i32,
        max_series: 0,
    }
}

/// A query client with no credential at all.
async fn anonymous(
    core: &Core,
) -> sightline_proto::v1::query_client::QueryClient<tonic::transport::Channel> {
    sightline_proto::v1::query_client::QueryClient::connect(core.url())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn query_calls_without_a_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);

    // No credential: each method, by hand (no interceptor).
    let mut q = anonymous(&core).await;
    let mut none = vec![
        (
            "ListEvents",
            q.list_events(ListEventsRequest::default()).await.err(),
        ),
        (
            "GetEvent",
            q.get_event(GetEventRequest { detection_oid: 1 })
                .await
                .err(),
        ),
        (
            "TopItems",
            q.top_items(TopItemsRequest::default()).await.err(),
        ),
        (
            "Timeline",
            q.timeline(TimelineRequest::default()).await.err(),
        ),
        ("Search", q.search(SearchRequest::default()).await.err()),
        ("Fleet", q.fleet(FleetRequest {}).await.err()),
        (
            "ListQuarantine",
            q.list_quarantine(ListQuarantineRequest::default())
                .await
                .err(),
        ),
        ("Stats", q.stats(StatsRequest {}).await.err()),
    ];
    let sub = match q.subscribe(SubscribeRequest::default()).await {
        Err(e) => Some(e),
        Ok(s) => s.into_inner().message().await.err(),
    };
    none.push(("Subscribe", sub));
    for (method, err) in none {
        let err = err.unwrap_or_else(|| panic!("{method} answered without a credential"));
        assert_eq!(err.code(), Code::Unauthenticated, "{method}: {err:?}");
        assert!(
            err.message().contains("no credential")
                && err.message().contains("authorization: Bearer"),
            "{method}: {}",
            err.message()
        );
    }

    // Malformed: not `Bearer <token>`, and a bearer that is no token at all.
    let real = core.create_token("probe", Role::Viewer, &[], 0).await;
    let wrong_secret = {
        let (head, _) = real.rsplit_once('_').unwrap();
        format!("{head}_{}", "A".repeat(43))
    };
    let cases: [(&str, String, &str); 3] = [
        (
            "malformed",
            "Basic YWRtaW46YWRtaW4=".into(),
            "is not `Bearer <token>`",
        ),
        (
            "not a token",
            "Bearer hunter2".into(),
            "neither the admin token nor an API token",
        ),
        (
            "wrong secret",
            format!("Bearer {wrong_secret}"),
            "does not match",
        ),
    ];
    for (what, value, says) in cases {
        let channel = tonic::transport::Endpoint::from_shared(core.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let value: tonic::metadata::MetadataValue<_> = value.parse().unwrap();
        let mut q = sightline_proto::v1::query_client::QueryClient::with_interceptor(
            channel,
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", value.clone());
                Ok(r)
            },
        );
        let calls: Vec<(&str, Option<tonic::Status>)> = vec![
            (
                "ListEvents",
                q.list_events(ListEventsRequest::default()).await.err(),
            ),
            (
                "GetEvent",
                q.get_event(GetEventRequest { detection_oid: 1 })
                    .await
                    .err(),
            ),
            (
                "TopItems",
                q.top_items(TopItemsRequest::default()).await.err(),
            ),
            (
                "Timeline",
                q.timeline(TimelineRequest::default()).await.err(),
            ),
            ("Search", q.search(SearchRequest::default()).await.err()),
            ("Fleet", q.fleet(FleetRequest {}).await.err()),
            (
                "ListQuarantine",
                q.list_quarantine(ListQuarantineRequest::default())
                    .await
                    .err(),
            ),
            ("Stats", q.stats(StatsRequest {}).await.err()),
            (
                "Subscribe",
                match q.subscribe(SubscribeRequest::default()).await {
                    Err(e) => Some(e),
                    Ok(s) => s.into_inner().message().await.err(),
                },
            ),
        ];
        for (method, err) in calls {
            let err = err.unwrap_or_else(|| panic!("{method} answered with a {what} credential"));
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{what} {method}: {err:?}"
            );
            assert!(
                err.message().contains(says),
                "{what} {method}: {}",
                err.message()
            );
            assert!(
                !err.message()
                    .contains(&wrong_secret[wrong_secret.len() - 20..]),
                "the refusal repeats the secret: {}",
                err.message()
            );
        }
    }

    // And the real token works (a viewer: everything but the admin calls and
    // the missing event).
    let mut q = client_as(&core.url(), &real).await;
    for (method, r) in every_query_call(&mut q).await {
        match method {
            "Fleet" | "ListQuarantine" => {
                assert_eq!(r.unwrap_err().code(), Code::PermissionDenied, "{method}")
            }
            "GetEvent" => assert_eq!(r.unwrap_err().code(), Code::NotFound, "{method}"),
            _ => assert!(r.is_ok(), "{method}: {r:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let expires = sightline_tests::data::now_ms() + 1_500;
    let token = core.create_token("short", Role::Viewer, &[], expires).await;
    let mut q = client_as(&core.url(), &token).await;
    q.stats(StatsRequest {}).await.expect("works before expiry");
    let left = expires + 300 - sightline_tests::data::now_ms();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
    for (method, r) in every_query_call(&mut q).await {
        let err = r.expect_err(method);
        assert_eq!(err.code(), Code::Unauthenticated, "{method}: {err:?}");
        assert!(
            err.message().contains("expired"),
            "{method}: {}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_ends_its_open_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let token = core.create_token("live-wall", Role::Viewer, &[], 0).await;
    let mut stream = client_as(&core.url(), &token)
        .await
        .subscribe(SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The stream is open: nothing arrives, nothing ends.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .is_err(),
        "the stream ended before the revocation"
    );
    let revoked_at = Instant::now();
    core.admin()
        .await
        .revoke_token(RevokeTokenRequest {
            token: "live-wall".into(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("the stream is still open 2 s after its token was revoked");
    let took = revoked_at.elapsed();
    let err = end.expect_err("the stream ends with an error");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{}", err.message());
    println!("the open Subscribe ended {took:?} after RevokeToken");
    // And a new call with it is refused.
    let err = client_as(&core.url(), &token)
        .await
        .stats(StatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// Publishes `data` through a real agent (replay) and waits until stored.
async fn publish(dir: &Path, core: &Core, data: &Dataset) -> Truth {
    let truth = data.truth();
    let file = dir.join("a.csv");
    data.write_csv(&file);
    let mut agent = Agent::start(AgentArgs::replay(dir, "replay", core.url(), &file, None));
    assert!(agent.wait(Duration::from_secs(120)).success());
    sightline_tests::query::wait_stored(&core.url(), truth.unique).await;
    truth
}

fn location_of(e: &sightline_proto::v1::JoinedEvent) -> i64 {
    e.detection.as_ref().unwrap().geographical_location_oid
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_sees_only_its_locations() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let data = Dataset::generate(12, 2_000, 0.1, 0.0, &[1, 2, 3, 4]);
    let truth = publish(dir.path(), &core, &data).await;
    let scope = [1i64, 2];
    let in_scope: u64 = scope
        .iter()
        .filter_map(|l| truth.counts.get(l))
        .map(|m| m.values().sum::<u64>())
        .sum();
    assert!(in_scope > 0 && in_scope < truth.unique);
    let token = core.create_token("north", Role::Viewer, &scope, 0).await;
    let mut q = client_as(&core.url(), &token).await;

    // TopItems equals the ground truth for those locations only.
    let (from, to) = (truth.min_ts - 60_000, truth.max_ts + 120_000);
    let top: BTreeMap<i64, Vec<(String, u64)>> = q
        .top_items(TopItemsRequest {
            from_ms: from,
            to_ms: to,
            x: 3,
            geographical_location_oid: None,
        })
        .await
        .unwrap()
        .into_inner()
        .locations
        .into_iter()
        .map(|l| {
            (
                l.geographical_location_oid,
                l.items
                    .into_iter()
                    .map(|i| (i.item_name, i.count))
                    .collect(),
            )
        })
        .collect();
    let mut expected = truth.top(3);
    expected.retain(|l, _| scope.contains(l));
    assert_eq!(
        top, expected,
        "scoped TopItems vs ground truth for {scope:?}"
    );

    // ListEvents: exactly the events of those locations.
    let mut listed = Vec::new();
    let mut page = String::new();
    loop {
        let r = q
            .list_events(ListEventsRequest {
                page_size: 10_000,
                page_token: page.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(r.events);
        if r.next_page_token.is_empty() {
            break;
        }
        page = r.next_page_token;
    }
    assert!(listed.iter().all(|e| scope.contains(&location_of(e))));
    assert_eq!(listed.len() as u64, in_scope, "scoped ListEvents");

    // Search: the total and every hit within the scope, also when the query
    // text names another location.
    let admin_hits = || async {
        client(&core.url())
            .await
            .search(SearchRequest::default())
            .await
            .ok()
            .map(|r| r.into_inner().total_hits)
    };
    wait_for("every event indexed", Duration::from_secs(60), || async {
        (admin_hits().await? == truth.unique).then_some(())
    })
    .await;
    let r = q
        .search(SearchRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.total_hits, in_scope, "scoped Search total");
    assert!(r.events.iter().all(|e| scope.contains(&location_of(e))));
    let r = q
        .search(SearchRequest {
            query: "location_oid:3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.total_hits, 0, "a query naming location 3 finds nothing");

    // GetEvent: in scope answers, out of scope reads as absent.
    let oid_at = |loc: i64| {
        data.rows
            .iter()
            .find(|r| r.geographical_location_oid == loc)
            .and_then(|r| r.detection_oid)
            .unwrap()
    };
    let ev = q
        .get_event(GetEventRequest {
            detection_oid: oid_at(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(location_of(&ev), 1);
    for loc in [3, 4] {
        let err = q
            .get_event(GetEventRequest {
                detection_oid: oid_at(loc),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "det_oid at location {loc}");
    }

    // Subscribe (replaying the stored events): only those locations.
    let mut sub = q
        .subscribe(SubscribeRequest {
            from_ms: truth.min_ts - 1,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashSet::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(3), sub.message())
        .await
        .map(|m| m.unwrap())
    {
        assert!(
            scope.contains(&location_of(&e)),
            "Subscribe sent location {}",
            location_of(&e)
        );
        seen.insert(e.detection.unwrap().detection_oid.unwrap());
    }
    assert_eq!(seen.len() as u64, in_scope, "scoped Subscribe replay");

    // A filter naming a location outside the scope is refused, and so is
    // Stats (it counts every location).
    let outside = || EventFilter {
        geographical_location_oid: Some(3),
        ..Default::default()
    };
    let denied = [
        (
            "ListEvents",
            q.list_events(ListEventsRequest {
                filter: Some(outside()),
                ..Default::default()
            })
            .await
            .err(),
        ),
        (
            "TopItems",
            q.top_items(TopItemsRequest {
                geographical_location_oid: Some(3),
                ..Default::default()
            })
            .await
            .err(),
        ),
        (
            "Search",
            q.search(SearchRequest {
                geographical_location_oid: Some(3),
                ..Default::default()
            })
            .await
            .err(),
        ),
        (
            "Subscribe",
            match q
                .subscribe(SubscribeRequest {
                    from_ms: 0,
                    filter: Some(outside()),
                })
                .await
            {
                Err(e) => Some(e),
                Ok(s) => s.into_inner().message().await.err(),
            },
        ),
    ];
    for (method, err) in denied {
        let err = err.unwrap_or_else(|| panic!("{method} with location 3 answered"));
        assert_eq!(err.code(), Code::PermissionDenied, "{method}: {err:?}");
        assert!(
            err.message().contains("location 3") && err.message().contains("scope"),
            "{method}: {}",
            err.message()
        );
    }
    let err = q.stats(StatsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_token_cannot_read_the_fleet_or_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    for role in [Role::Viewer, Role::Investigator] {
        let token = core.create_token(&format!("{role:?}"), role, &[], 0).await;
        let mut q = client_as(&core.url(), &token).await;
        let fleet = q.fleet(FleetRequest {}).await.unwrap_err();
        let quarantine = q
            .list_quarantine(ListQuarantineRequest::default())
            .await
            .unwrap_err();
        for (method, err) in [("Fleet", fleet), ("ListQuarantine", quarantine)] {
            assert_eq!(err.code(), Code::PermissionDenied, "{role:?} {method}");
            assert!(
                err.message().contains("needs the admin role"),
                "{}",
                err.message()
            );
        }
        // Over HTTP as well: the pages and their data need the admin role.
        for path in [
            "/fleet",
            "/quarantine",
            "/api/get_fleet",
            "/media-quarantine",
        ] {
            let (head, _) = http::get(
                core.http,
                path,
                &format!("Authorization: Bearer {token}\r\n"),
            )
            .await;
            assert_eq!(status(&head), 403, "{role:?} GET {path}: {head}");
        }
    }
    let admin = core.create_token("ops", Role::Admin, &[], 0).await;
    let mut q = client_as(&core.url(), &admin).await;
    q.fleet(FleetRequest {}).await.unwrap();
    q.list_quarantine(ListQuarantineRequest::default())
        .await
        .unwrap();
}

/// Runs `sightline-core <args>` against `core` with its admin token file,
/// `stdin` on standard input: (success, stdout, stderr).
fn cli(core: &Core, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(bin_path("sightline-core"))
        .args(args)
        .env("SIGHTLINE_CORE", core.url())
        .env(
            "SIGHTLINE_ADMIN_TOKEN_FILE",
            core.args.data_dir.join("admin.token"),
        )
        .env_remove("SIGHTLINE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn users_and_tokens_are_managed_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let password = "a long enough password";

    let (ok, out, err) = cli(
        &core,
        &[
            "users",
            "add",
            "alice",
            "--role",
            "investigator",
            "--locations",
            "1,2",
        ],
        &format!("{password}\n"),
    );
    assert!(ok, "users add: {out}{err}");
    assert!(
        out.contains("alice") && out.contains("investigator"),
        "{out}"
    );
    let (ok, out, err) = cli(&core, &["users", "list"], "");
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("alice"))
        .unwrap_or_else(|| panic!("alice not listed: {out}"));
    assert!(
        row.contains("investigator") && row.contains("active") && row.ends_with("1,2"),
        "{row}"
    );
    // The password from stdin is the one that logs in.
    http::login(core.http, "alice", password).await;
    let (head, _) = post_login(core.http, "alice", "not the password").await;
    assert_eq!(status(&head), 401, "{head}");

    let (ok, secret, err) = cli(
        &core,
        &[
            "tokens",
            "create",
            "--name",
            "exporter",
            "--role",
            "viewer",
            "--expires",
            "90d",
        ],
        "",
    );
    assert!(ok, "tokens create: {err}");
    let secret = secret.trim().to_string();
    assert!(secret.starts_with("slt_"), "printed token: {secret:?}");
    assert!(err.contains("shown once"), "{err}");
    let mut q = client_as(&core.url(), &secret).await;
    q.top_items(last_hour()).await.unwrap();

    let (ok, out, err) = cli(&core, &["tokens", "list"], "");
    assert!(ok, "{err}");
    assert!(out.contains("exporter") && out.contains("viewer"), "{out}");
    assert!(!out.contains(&secret), "the list shows the secret: {out}");

    let (ok, out, err) = cli(&core, &["tokens", "revoke", "exporter"], "");
    assert!(ok, "tokens revoke: {out}{err}");
    let err = q.top_items(last_hour()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());

    // Without the admin credential the CLI is refused, saying why.
    let mut child = Command::new(bin_path("sightline-core"))
        .args(["users", "list"])
        .env("SIGHTLINE_CORE", core.url())
        .env(
            "SIGHTLINE_ADMIN_TOKEN_FILE",
            dir.path().join("missing.token"),
        )
        .env_remove("SIGHTLINE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("SIGHTLINE_TOKEN"), "{stderr}");
}

// ---- HTTP ----

/// A core whose config file is `config`.
fn core_with(dir: &Path, config: &str) -> Core {
    let cfg = dir.join("core.toml");
    std::fs::write(&cfg, config).unwrap();
    Core::start_with(CoreArgs {
        data_dir: dir.join("core"),
        locations: None,
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec!["--config".into(), cfg.display().to_string()],
    })
}

async fn whoami(core: &Core, cookie: &str) -> (u16, String) {
    let (head, body) = http::get(core.http, "/api/whoami", cookie).await;
    (status(&head), String::from_utf8_lossy(&body).into_owned())
}

/// A raw request with no credential but what `headers` carry.
async fn raw(core: &Core, method: &str, path: &str, headers: &str) -> (String, Vec<u8>) {
    let addr = core.http.to_string();
    http::request(
        &addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread")]
async fn login_sets_a_strict_httponly_session_cookie_and_logout_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    core.add_user("alice", Role::Viewer, &[], PASSWORD).await;

    // Without a credential: a browser is sent to the login form, anything
    // else is told what is missing.
    let (head, _) = raw(&core, "GET", "/top?range=1h", "Accept: text/html\r\n").await;
    assert_eq!(status(&head), 303, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some("/login?next=/top%3Frange%3D1h")
    );
    let (head, body) = raw(&core, "GET", "/api/whoami", "").await;
    assert_eq!(status(&head), 401, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("log in"));
    let (head, body) = raw(&core, "GET", "/login", "").await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains(r#"name="password""#));
    // A login post without its fields gets the form back, saying so.
    let (head, body) = raw(
        &core,
        "POST",
        "/login",
        &format!("Origin: http://{}\r\n", core.http),
    )
    .await;
    assert_eq!(status(&head), 400, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("field `name`"));

    let (head, _) = post_login(core.http, "alice", PASSWORD).await;
    assert_eq!(status(&head), 303, "{head}");
    let set = header(&head, "set-cookie").expect("Set-Cookie");
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(
        attrs[0].starts_with("sightline_session=") && attrs[0].len() > 40,
        "{set}"
    );
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&a), "{a} missing: {set}");
    }
    // 12 h, the default `access.session_absolute`.
    assert!(attrs.contains(&"Max-Age=43200"), "{set}");
    // Plain HTTP here: Secure would keep the browser from sending it back.
    assert!(!attrs.contains(&"Secure"), "{set}");
    let cookie = format!("Cookie: {}\r\n", attrs[0]);
    let (code, body) = whoami(&core, &cookie).await;
    assert_eq!(code, 200, "{body}");
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["actor"], "user:alice", "{me}");
    assert_eq!(me["role"], "viewer", "{me}");
    assert!(me["csrf"].as_str().is_some_and(|c| c.len() >= 16), "{me}");

    // Logout (same origin) ends it server side: the old cookie no longer works.
    let (head, _) = raw(
        &core,
        "POST",
        "/logout",
        &format!("{cookie}Origin: http://{}\r\n", core.http),
    )
    .await;
    assert_eq!(status(&head), 303, "{head}");
    assert!(header(&head, "set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    let (code, _) = whoami(&core, &cookie).await;
    assert_eq!(code, 401, "the session outlived its logout");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_lock_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    core.add_user("bob", Role::Viewer, &[], PASSWORD).await;
    // `access.lockout_account_failures` is 5 by default.
    for i in 1..=5 {
        let (head, body) = post_login(core.http, "bob", &format!("guess {i}")).await;
        assert_eq!(status(&head), 401, "attempt {i}: {head}");
        assert!(header(&head, "set-cookie").is_none());
        assert!(String::from_utf8_lossy(&body).contains(r#"role="alert""#));
    }
    let t = Instant::now();
    let (head, body) = post_login(core.http, "bob", PASSWORD).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        status(&head),
        429,
        "the right password after 5 failures: {head}"
    );
    assert!(header(&head, "set-cookie").is_none(), "{head}");
    assert!(
        body.contains("too many failed logins for this account: locked for 15 more minute(s)"),
        "{body}"
    );
    println!("locked-out answer in {:?}", t.elapsed());
    // Another account from the same address still logs in.
    core.add_user("carol", Role::Viewer, &[], PASSWORD).await;
    login(core.http, "carol", PASSWORD).await;
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores a real JPEG in the core (as an agent uploads it); its SHA-256.
async fn stored_snapshot(core: &Core) -> (String, Vec<u8>) {
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    }))
    .write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let sha = sha_hex(&jpeg);
    let mut m = MediaClient::connect(core.url()).await.unwrap();
    let r = m
        .upload(tokio_stream::iter([MediaChunk {
            sha256: sha.clone(),
            offset: 0,
            data: jpeg.clone().into(),
            total_size: jpeg.len() as u64,
            kind: "snapshot".into(),
            content_type: "image/jpeg".into(),
            last: true,
            agent_id: "cam-host".into(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.sha256, sha, "{r:?}");
    (sha, jpeg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_gets_no_footage() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let (sha, jpeg) = stored_snapshot(&core).await;
    let path = format!("/media/{sha}");
    core.add_user("viewer", Role::Viewer, &[], PASSWORD).await;
    core.add_user("detective", Role::Investigator, &[], PASSWORD)
        .await;
    let viewer_token = core.create_token("wall", Role::Viewer, &[], 0).await;

    let viewer = login(core.http, "viewer", PASSWORD).await;
    let (head, body) = http::get(core.http, &path, &viewer).await;
    assert_eq!(status(&head), 403, "a viewer's session: {head}");
    assert!(
        String::from_utf8_lossy(&body).contains("needs the investigator role"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_ne!(body, jpeg);
    let (head, _) = http::get(
        core.http,
        &path,
        &format!("Authorization: Bearer {viewer_token}\r\n"),
    )
    .await;
    assert_eq!(status(&head), 403, "a viewer's token: {head}");
    let (head, _) = raw(&core, "GET", &path, "").await;
    assert_eq!(status(&head), 401, "no credential: {head}");

    // An investigator gets the same bytes.
    let detective = login(core.http, "detective", PASSWORD).await;
    let (head, body) = http::get(core.http, &path, &detective).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, jpeg);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_post_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    core.add_user("dave", Role::Admin, &[], PASSWORD).await;
    let cookie = login(core.http, "dave", PASSWORD).await;

    let (head, body) = raw(
        &core,
        "POST",
        "/logout",
        &format!("{cookie}Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(status(&head), 403, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("cross-site request refused"));
    let (head, _) = raw(
        &core,
        "POST",
        "/logout",
        &format!("{cookie}Sec-Fetch-Site: cross-site\r\n"),
    )
    .await;
    assert_eq!(status(&head), 403, "{head}");
    // Neither an Origin nor the session's CSRF token: refused too.
    let (head, _) = raw(&core, "POST", "/logout", &cookie).await;
    assert_eq!(status(&head), 403, "{head}");
    let (code, body) = whoami(&core, &cookie).await;
    assert_eq!(code, 200, "the forged logouts ended the session: {body}");

    // With the session's CSRF token (no Origin), the same request goes through.
    let csrf = serde_json::from_str::<serde_json::Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let (head, _) = raw(
        &core,
        "POST",
        "/logout",
        &format!("{cookie}x-csrf-token: {csrf}\r\n"),
    )
    .await;
    assert_eq!(status(&head), 303, "{head}");
    assert_eq!(whoami(&core, &cookie).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_expires_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(
        dir.path(),
        "[access]\nsession_idle = \"2s\"\nsession_absolute = \"1h\"\n",
    );
    core.add_user("erin", Role::Viewer, &[], PASSWORD).await;
    let cookie = login(core.http, "erin", PASSWORD).await;
    // Used every second, it stays: 4 s in all, twice the idle limit.
    for _ in 0..4 {
        assert_eq!(whoami(&core, &cookie).await.0, 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(whoami(&core, &cookie).await.0, 200);
    // Left alone past the idle limit, it ends.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (code, body) = whoami(&core, &cookie).await;
    assert_eq!(code, 401, "{body}");
    let (head, _) = http::get(core.http, "/", &format!("{cookie}Accept: text/html\r\n")).await;
    assert_eq!(status(&head), 303, "{head}");
    assert!(header(&head, "location").is_some_and(|l| l.starts_with("/login")));
}
