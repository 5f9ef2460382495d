//! Roles and location scopes in the dashboard, in a real headless Chromium
//! (driven by `tests/browser/access.mjs`) against one real core: each account
//! logs in through the /login form and sees exactly what it may. A viewer gets
//! no footage (no player, no snapshot, no thumbnail, not even footage's
//! address in the page, and 403 on `/media/…`); a location-scoped account sees
//! only its locations on Live (rows, counter and live arrivals), in
//! `/api/live`, on Top items, Timeline, Search and the event page, where an
//! event outside the scope reads exactly like one that does not exist; and
//! every count equals the ground truth computed here for that scope from the
//! published data alone. Screenshots land in `tests/artifacts/dashboard_access/`.
//! And a scoped live feed opened while events pour in settles on the exact
//! count once they stop.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use sightline_proto::v1::{
    intake_client::IntakeClient, publish_result, Detection, JoinedEvent, PublishRequest, Role,
    SearchRequest,
};
use sightline_tests::{
    data::{now_ms, write_locations, ITEMS},
    http,
    query::{all_events, client, event_with_media, stats, wait_stored},
    wait_for, Agent, AgentArgs, Core, Dataset,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Locations in Dataset B; the dataset also uses 4, which is not.
const IN_DATASET_B: [i64; 3] = [1, 2, 3];
/// Rows the Live page keeps (web-ui's `pages::live::ROWS`).
const LIVE_ROWS: usize = 50;
/// Rows a search page shows (the dashboard backend's page size).
const SEARCH_ROWS: usize = 50;
/// Live traffic while the pages are open: batches of events, one location
/// after the other, a pause between batches. A tick carries the newest 25
/// events (`feed::TICK_EVENTS`): even six batches in one commit all show.
const LIVE_BATCHES: usize = 8;
const LIVE_BATCH: usize = 4;
const LIVE_PAUSE: Duration = Duration::from_millis(250);

/// An account the browser logs in as.
struct Account {
    key: &'static str,
    role: Role,
    /// Empty: every location.
    scope: &'static [i64],
}

impl Account {
    fn allows(&self, location: i64) -> bool {
        self.scope.is_empty() || self.scope.contains(&location)
    }
    fn footage(&self) -> bool {
        self.role == Role::Investigator || self.role == Role::Admin
    }
}

const ACCOUNTS: [Account; 3] = [
    Account {
        key: "viewer",
        role: Role::Viewer,
        scope: &[],
    },
    Account {
        key: "viewer_12",
        role: Role::Viewer,
        scope: &[1, 2],
    },
    Account {
        key: "investigator_14",
        role: Role::Investigator,
        scope: &[1, 4],
    },
];

/// An agent with two synthetic cameras: 101 (location 1) and 102 (location 3).
fn footage_agent(dir: &Path, core_url: &str) -> Agent {
    let cfg = dir.join("footage.toml");
    let mut text = format!(
        "agent_id = \"camera-host\"\ncore_url = \"{core_url}\"\n[buffer]\npath = \"{}\"\n[capture]\nspool_path = \"{}\"\n",
        dir.join("footage-buffer").display(),
        dir.join("footage-spool").display()
    );
    for cam in [101, 102] {
        text += &format!(
            "[[capture.cameras]]\ncamera_oid = {cam}\ninput = \"synthetic://gate-{cam}?width=320&height=240&fps=25&gop=25\"\nmode = \"clip\"\npre = \"2s\"\npost = \"2s\"\n"
        );
    }
    std::fs::write(&cfg, text).unwrap();
    Agent::start(AgentArgs {
        id: "camera-host".into(),
        core_url: core_url.into(),
        data_dir: dir.join("footage-buffer"),
        command: vec![],
        intake: true,
        exit_when_drained: false,
        extra: vec!["--config".into(), cfg.display().to_string()],
    })
}

/// Publishes `detections` through an agent's intake; their det_oids.
async fn publish(agent: &Agent, detections: Vec<Detection>) -> Vec<i64> {
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let r = intake
        .publish(PublishRequest { detections })
        .await
        .unwrap()
        .into_inner();
    r.results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            publish_result::Result::Accepted(a) => a.detection_oid,
            other => panic!("detection refused: {other:?}"),
        })
        .collect()
}

/// A footage event: its det_oid and its media by kind.
struct Footage {
    det: i64,
    media: BTreeMap<String, String>,
}

impl Footage {
    fn of(e: &JoinedEvent) -> Self {
        Footage {
            det: e.detection.as_ref().unwrap().detection_oid.unwrap(),
            media: e
                .media
                .iter()
                .map(|m| (m.kind.clone(), m.sha256.clone()))
                .collect(),
        }
    }
    fn json(&self) -> Value {
        json!({
            "det": self.det.to_string(),
            "media": self.media,
            "shas": self.media.values().collect::<Vec<_>>(),
        })
    }
}

/// The name the dashboard gives a location.
fn location_name(l: i64) -> String {
    if IN_DATASET_B.contains(&l) {
        format!("Location {l}")
    } else {
        format!("#{l} (not in Dataset B)")
    }
}

/// The det_oids a page listed, as numbers.
fn dets(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of rows: {v}"))
        .iter()
        .map(|d| d.as_str().and_then(|s| s.parse().ok()).unwrap_or(-1))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_and_scope_sees_exactly_its_events_counts_and_footage_in_the_dashboard() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let locations = dir.path().join("locations.csv");
    write_locations(&locations, &IN_DATASET_B);
    let core = Core::start(dir.path(), Some(&locations));

    // The dataset: every detection with its det_oid, over four locations.
    let data = Dataset::generate(23, 2_000, 0.1, 0.0, &[1, 2, 3, 4]);
    let truth = data.truth();
    let file = dir.path().join("a.csv");
    data.write_csv(&file);
    let camera = footage_agent(dir.path(), &core.url());
    let live_agent = Agent::start(AgentArgs::intake(dir.path(), "live", core.url()));
    let mut replay = Agent::start(AgentArgs::replay(
        dir.path(),
        "replay",
        core.url(),
        &file,
        None,
    ));
    assert!(replay.wait(Duration::from_secs(120)).success());
    wait_stored(&core.url(), truth.unique).await;
    // Where every published det_oid is, and what it is: the ground truth.
    let mut located: HashMap<i64, (i64, String)> = data
        .rows
        .iter()
        .map(|r| {
            (
                r.detection_oid.unwrap(),
                (r.geographical_location_oid, r.item_name.clone()),
            )
        })
        .collect();

    // Footage after the dataset's range: one event on camera 101 at
    // location 1, one on camera 102 at location 3.
    let (from, to, x) = (
        truth.min_ts - truth.min_ts.rem_euclid(60_000),
        truth.max_ts - truth.max_ts.rem_euclid(60_000) + 60_000,
        5u32,
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the rings fill their pre-roll
    let now = now_ms();
    assert!(to <= now, "the range must close before the footage");
    let footage_dets = publish(
        &camera,
        [(1, 101), (3, 102)]
            .map(|(loc, cam)| Detection {
                geographical_location_oid: loc,
                video_camera_oid: cam,
                item_name: "backpack".into(),
                timestamp_detected: now,
                ..Default::default()
            })
            .to_vec(),
    )
    .await;
    let footage_in = Footage::of(&event_with_media(&core.url(), footage_dets[0], 3).await);
    let footage_out = Footage::of(&event_with_media(&core.url(), footage_dets[1], 3).await);
    located.insert(footage_in.det, (1, "backpack".into()));
    located.insert(footage_out.det, (3, "backpack".into()));
    // An event at location 3 on camera 101 a second after the one with
    // footage (from another agent, so it shares no clip): it is "around that
    // moment on camera 101" only for those who may see location 3.
    let neighbour = publish(
        &live_agent,
        vec![Detection {
            geographical_location_oid: 3,
            video_camera_oid: 101,
            item_name: "dog".into(),
            timestamp_detected: now + 1_000,
            ..Default::default()
        }],
    )
    .await[0];
    located.insert(neighbour, (3, "dog".into()));
    wait_stored(&core.url(), located.len() as u64).await;

    // What each account may see, counted from the published data.
    let stored_in = |a: &Account, located: &HashMap<i64, (i64, String)>| -> u64 {
        located.values().filter(|(l, _)| a.allows(*l)).count() as u64
    };
    let det_at = |loc: i64| {
        data.rows
            .iter()
            .find(|r| r.geographical_location_oid == loc)
            .and_then(|r| r.detection_oid)
            .unwrap()
    };
    let missing = (1..).find(|d| !located.contains_key(d)).unwrap();

    let password = "correct horse battery staple";
    let mut roles = Vec::new();
    for a in &ACCOUNTS {
        core.add_user(a.key, a.role, a.scope, password).await;
        // An event outside the scope (location 3 is outside every scoped one).
        let out_det = (!a.scope.is_empty()).then(|| det_at(3).to_string());
        roles
            .push(json!({ "key": a.key, "name": a.key, "password": password, "out_det": out_det }));
    }

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/dashboard_access");
    let cfg = json!({
        "base": format!("http://{}", core.http),
        "artifacts": artifacts,
        "roles": roles,
        "top": { "from": from, "to": to, "x": x },
        "events": { "in": det_at(1).to_string(), "missing": missing.to_string() },
        "out_location": 3,
        "footage": { "in": footage_in.json(), "out": footage_out.json() },
    });
    let stderr_path = dir.path().join("access-mjs.stderr");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/access.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .arg(cfg.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("node runs (deploy/install-deps.sh installs Node's playwright-core and Chromium)");
    let mut stdin = node.stdin.take().unwrap();
    let mut stdout = BufReader::new(node.stdout.take().unwrap());
    let (ready, mut stdout) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    })
    .await
    .unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap_or_else(|e| {
        panic!(
            "the browser script did not get ready ({e}): {ready:?}\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        )
    });
    let browser_up = started.elapsed();

    // Live traffic while every Live page is open: each batch one location,
    // in and out of every scope.
    let mut rng = StdRng::seed_from_u64(5);
    let mut live: Vec<(i64, i64)> = Vec::new();
    for b in 0..LIVE_BATCHES {
        let loc = 1 + b as i64 % 4;
        let batch: Vec<Detection> = (0..LIVE_BATCH)
            .map(|i| {
                let mut det = rng.random_range(1..i64::MAX);
                while located.contains_key(&det) {
                    det = rng.random_range(1..i64::MAX);
                }
                let item = ITEMS[(b + i) % ITEMS.len()];
                located.insert(det, (loc, item.into()));
                live.push((det, loc));
                Detection {
                    geographical_location_oid: loc,
                    video_camera_oid: loc * 100 + 50,
                    detection_oid: Some(det),
                    item_name: item.into(),
                    timestamp_detected: now_ms(),
                    ..Default::default()
                }
            })
            .collect();
        publish(&live_agent, batch).await;
        tokio::time::sleep(LIVE_PAUSE).await;
    }
    let all = located.len() as u64;
    wait_stored(&core.url(), all).await;
    wait_for("every event indexed", Duration::from_secs(30), || async {
        let hits = client(&core.url())
            .await
            .search(SearchRequest::default())
            .await
            .ok()?
            .into_inner()
            .total_hits;
        (hits == all).then_some(())
    })
    .await;
    let go = json!({
        "stored": ACCOUNTS.iter().map(|a| (a.key, stored_in(a, &located))).collect::<BTreeMap<_, _>>()
    });
    writeln!(stdin, "{go}").unwrap();
    drop(stdin);
    let (rest, status) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        (rest, node.wait().unwrap())
    })
    .await
    .unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "browser script failed: {stderr}\ncore log:\n{}",
        core.log()
    );
    let out: Value = serde_json::from_str(rest.trim())
        .unwrap_or_else(|e| panic!("browser script printed no JSON ({e}): {rest}\n{stderr}"));
    println!("ready: {ready}");

    // Every way a page may disagree with the ground truth, all reported at once.
    let mut wrong: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    for a in &ACCOUNTS {
        let k = a.key;
        let o = &out["roles"][k];
        let base = located
            .iter()
            .filter(|(d, (l, _))| a.allows(*l) && !live.iter().any(|(x, _)| x == *d))
            .count() as u64;
        let live_in = live.iter().filter(|(_, l)| a.allows(*l)).count() as u64;
        let final_count = base + live_in;
        assert_eq!(final_count, stored_in(a, &located));
        let outside = |rows: &[i64]| -> Vec<i64> {
            rows.iter()
                .copied()
                .filter(|d| !located.get(d).is_some_and(|(l, _)| a.allows(*l)))
                .collect()
        };

        println!(
            "{k}: Live {} → {} (truth {base} → {final_count}), /api/live ticks {}, search hits {}, top locations {}",
            o["live_before"],
            o["live_after_settled"],
            o["feed_ticks"].as_array().map_or(0, |t| t.len()),
            o["search_all"]["hits"],
            o["top"].as_array().map_or(0, |t| t.len()),
        );

        // Live: the rows, the counter before and after live traffic.
        check(o["hydrated"] == true, format!("{k}: Live did not hydrate"));
        check(
            o["live_before"].as_u64() == Some(base),
            format!(
                "{k}: Live counter {} before, truth {base}",
                o["live_before"]
            ),
        );
        check(
            ready["ready"][k].as_u64() == Some(base),
            format!("{k}: ready {}", ready["ready"][k]),
        );
        let after = o["live_after_settled"].as_u64().unwrap_or(0);
        check(
            after == final_count,
            format!("{k}: Live counter {after} after live traffic, truth {final_count} (+{live_in} in scope)"),
        );
        let rows_before = dets(&o["live_rows_before"]);
        check(
            outside(&rows_before).is_empty(),
            format!(
                "{k}: Live rows outside the scope: {:?}",
                outside(&rows_before)
            ),
        );
        check(
            rows_before.len() as u64 == base.min(LIVE_ROWS as u64),
            format!(
                "{k}: {} Live rows, want {}",
                rows_before.len(),
                base.min(LIVE_ROWS as u64)
            ),
        );
        let rows_after = dets(&o["live_rows_after"]);
        check(
            outside(&rows_after).is_empty(),
            format!(
                "{k}: Live rows outside the scope after live traffic: {:?}",
                outside(&rows_after)
            ),
        );
        // Live rows on top of the first load's: the page stays full.
        check(
            rows_after.len() as u64 == final_count.min(LIVE_ROWS as u64)
                && rows_before
                    .iter()
                    .take(LIVE_ROWS - live_in as usize)
                    .all(|d| rows_after.contains(d)),
            format!(
                "{k}: {} Live rows after live traffic, want {} (the first load's beneath the {live_in} live ones)",
                rows_after.len(),
                final_count.min(LIVE_ROWS as u64)
            ),
        );
        let absent: Vec<i64> = live
            .iter()
            .filter(|(d, l)| a.allows(*l) && !rows_after.contains(d))
            .map(|(d, _)| *d)
            .collect();
        check(
            absent.is_empty(),
            format!("{k}: live events in scope never shown: {absent:?}"),
        );
        check(
            o["live_no_reload"] == true,
            format!("{k}: the Live page reloaded"),
        );
        if a.footage() {
            // The event with footage in scope is among the newest: its thumbnail.
            check(
                o["live_thumbs_before"].as_u64() >= Some(1),
                format!("{k}: no thumbnail on Live"),
            );
        } else {
            for when in ["live_thumbs_before", "live_thumbs_after"] {
                check(
                    o[when] == 0,
                    format!("{k}: a viewer sees {} thumbnails on Live ({when})", o[when]),
                );
            }
        }

        // /api/live with the page's session cookie: only the scope's rows
        // and counts.
        check(
            o["feed_status"] == 200 && o["feed_error"].is_null(),
            format!("{k}: /api/live {} {}", o["feed_status"], o["feed_error"]),
        );
        let ticks: Vec<Value> = o["feed_ticks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| serde_json::from_str(t.as_str().unwrap()).unwrap())
            .collect();
        let committed: u64 = ticks.iter().map(|t| t["committed"].as_u64().unwrap()).sum();
        check(
            committed == live_in,
            format!("{k}: /api/live committed {committed}, truth {live_in}"),
        );
        let last = ticks.last().map(|t| t["totals"]["stored"].clone());
        check(
            last == Some(json!(final_count)),
            format!("{k}: /api/live's last stored {last:?}, truth {final_count}"),
        );
        let mut fed = Vec::new();
        for t in &ticks {
            for e in t["events"].as_array().unwrap() {
                fed.push(e["det_oid"].as_i64().unwrap());
                check(
                    a.allows(e["location_oid"].as_i64().unwrap()),
                    format!("{k}: /api/live sent an event outside the scope: {e}"),
                );
                check(
                    a.footage() || e["thumbnail"].is_null(),
                    format!("{k}: /api/live sent a viewer a thumbnail: {e}"),
                );
            }
            if !a.scope.is_empty() {
                let tot = &t["totals"];
                check(
                    tot["unmatched"] == 0 && tot["rejected"] == 0 && tot["dup_transport"] == 0,
                    format!("{k}: /api/live sent counters of every location: {tot}"),
                );
            }
        }
        let unfed: Vec<i64> = live
            .iter()
            .filter(|(d, l)| a.allows(*l) && !fed.contains(d))
            .map(|(d, _)| *d)
            .collect();
        check(
            unfed.is_empty(),
            format!("{k}: /api/live never sent {unfed:?}"),
        );

        // Top items: the truth restricted to the scope.
        let shown: BTreeMap<i64, (u64, Vec<(String, u64)>)> = o["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let items = l["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| (i[0].as_str().unwrap().to_string(), i[1].as_u64().unwrap()))
                    .collect();
                (
                    l["location"].as_i64().unwrap(),
                    (l["total"].as_u64().unwrap(), items),
                )
            })
            .collect();
        let want: BTreeMap<i64, (u64, Vec<(String, u64)>)> = truth
            .top(x as usize)
            .into_iter()
            .filter(|(l, _)| a.allows(*l))
            .map(|(l, items)| (l, (truth.counts[&l].values().sum(), items)))
            .collect();
        check(
            shown == want,
            format!("{k}: Top items {shown:?}\n  truth {want:?}"),
        );

        // Timeline over the same range: per location, and per item.
        let legend = |by: &str| -> BTreeMap<String, u64> {
            o["timeline"][by]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_u64().unwrap()))
                .collect()
        };
        let want: BTreeMap<String, u64> = truth
            .counts
            .iter()
            .filter(|(l, _)| a.allows(**l))
            .map(|(l, items)| (location_name(*l), items.values().sum()))
            .collect();
        let by_location = legend("location");
        check(
            by_location == want,
            format!("{k}: Timeline by location {by_location:?}, truth {want:?}"),
        );
        let mut items: BTreeMap<String, u64> = BTreeMap::new();
        for (l, m) in &truth.counts {
            if a.allows(*l) {
                for (i, n) in m {
                    *items.entry(i.clone()).or_default() += n;
                }
            }
        }
        let by_item = legend("item");
        check(
            by_item.values().sum::<u64>() == items.values().sum::<u64>()
                && by_item
                    .iter()
                    .all(|(i, n)| i == "other" || items.get(i) == Some(n)),
            format!("{k}: Timeline by item {by_item:?}, truth {items:?}"),
        );

        // Search: everything in scope, nothing outside.
        let s = &o["search_all"];
        let rows = dets(&s["rows"]);
        check(
            s["hits"].as_u64() == Some(final_count),
            format!(
                "{k}: search hits {}, truth {final_count} ({})",
                s["hits"], s["error"]
            ),
        );
        check(
            outside(&rows).is_empty() && rows.len() as u64 == final_count.min(SEARCH_ROWS as u64),
            format!(
                "{k}: search rows {} (outside the scope: {:?})",
                rows.len(),
                outside(&rows)
            ),
        );
        check(
            a.footage() || s["thumbs"] == 0,
            format!("{k}: a viewer sees thumbnails in search"),
        );
        check(
            dets(&o["search_in"]["rows"]) == vec![det_at(1)] && o["search_in"]["hits"] == 1,
            format!("{k}: search for an event in scope: {}", o["search_in"]),
        );
        if !a.scope.is_empty() {
            for what in ["search_out", "search_location_out", "search_named_out"] {
                check(
                    o[what]["hits"] == 0 && dets(&o[what]["rows"]).is_empty(),
                    format!("{k}: {what}: {}", o[what]),
                );
            }
        }
        // Neither role may open the admin pages.
        for (page, st) in o["admin_pages"].as_object().unwrap() {
            check(st == 403, format!("{k}: /{page} answered {st}"));
        }

        // Event pages: outside the scope reads like nonexistent.
        check(
            o["event_in"]["found"] == true,
            format!("{k}: event in scope: {}", o["event_in"]),
        );
        check(
            o["event_missing"]["found"] == false,
            format!("{k}: nonexistent event: {}", o["event_missing"]),
        );
        let unnumbered = |v: &Value| {
            v.as_str()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect::<String>()
        };
        if !a.scope.is_empty() {
            let (e_out, e_missing) = (&o["event_out"], &o["event_missing"]);
            check(
                e_out["found"] == false
                    && e_out["status"] == e_missing["status"]
                    && unnumbered(&e_out["error"]) == unnumbered(&e_missing["error"])
                    && e_out["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains(&det_at(3).to_string()),
                format!(
                    "{k}: an event outside the scope {e_out} is not like a missing one {e_missing}"
                ),
            );
        }

        // Footage in scope: a player for an investigator, nothing for a viewer.
        let f = &o["footage_in"];
        check(f["found"] == true, format!("{k}: footage event {f}"));
        if a.footage() {
            check(
                f["video"] == 1
                    && f["video_ready"].as_u64() >= Some(2)
                    && f["snapshot"] == 1
                    && f["snapshot_width"] == 320,
                format!("{k}: investigator's player and snapshot: {f}"),
            );
            for (kind, st) in f["media"].as_object().unwrap() {
                check(
                    st == 200,
                    format!("{k}: /media {kind} in scope answered {st}"),
                );
            }
        } else {
            check(
                f["video"] == 0 && f["snapshot"] == 0,
                format!("{k}: a viewer has a player or a snapshot: {f}"),
            );
            for (path, names) in o["html_names"].as_object().unwrap() {
                check(
                    names == &json!([]),
                    format!("{k}: the viewer's page {path} names footage: {names}"),
                );
            }
            for (kind, st) in f["media"].as_object().unwrap() {
                check(
                    st == 403,
                    format!("{k}: a viewer's /media {kind} answered {st}"),
                );
            }
        }
        // Around that moment on camera 101: the scope's events only.
        let nearby = dets(&f["nearby"]);
        check(
            outside(&nearby).is_empty() && nearby.contains(&neighbour) == a.allows(3),
            format!("{k}: around the footage event {nearby:?} (location 3's {neighbour})"),
        );
        // Footage outside the scope (or any footage, for a viewer): refused
        // whichever event is named.
        let fo = &o["footage_out"];
        for how in ["by_its_event", "by_an_event_in_scope", "without_event"] {
            check(
                fo[how] == 403 || fo[how] == 404,
                format!("{k}: footage outside answered {} ({how})", fo[how]),
            );
        }
        // No page names footage of an event outside the scope.
        let out_shas: Vec<&String> = footage_out.media.values().collect();
        for (path, names) in o["html_names"].as_object().unwrap() {
            let leaked: Vec<&Value> = names
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| out_shas.iter().any(|s| n.as_str() == Some(s.as_str())))
                .collect();
            check(
                leaked.is_empty() || a.scope.is_empty(),
                format!("{k}: {path} names footage outside the scope: {leaked:?}"),
            );
        }
        if !a.scope.is_empty() {
            check(
                fo["page"]["found"] == false,
                format!(
                    "{k}: the footage event outside the scope shows: {}",
                    fo["page"]
                ),
            );
        }
        for page in [
            "live",
            "top",
            "timeline-location",
            "timeline-item",
            "search",
            "event",
        ] {
            check(
                artifacts.join(format!("{k}-{page}.png")).exists(),
                format!("{k}: no screenshot of {page}"),
            );
        }
    }
    check(
        out["errors"] == json!([]),
        format!("console errors: {}", out["errors"]),
    );
    println!(
        "browser up after {browser_up:?}; whole test {:?}",
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} problems:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The body of a chunked HTTP/1.1 response read so far (whole chunks only).
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    sightline_tests::http::dechunk_body(&raw[start..])
}

/// Reads `/api/live` with `cookie` until `stop`: every tick's JSON.
async fn live_ticks(
    addr: String,
    cookie: String,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Value> {
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /api/live HTTP/1.1\r\nHost: {addr}\r\n{cookie}\r\n").as_bytes())
        .await
        .unwrap();
    let (mut raw, mut buf) = (Vec::new(), [0u8; 65536]);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            n = s.read(&mut buf) => match n.unwrap() {
                0 => break,
                n => raw.extend_from_slice(&buf[..n]),
            },
        }
    }
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    String::from_utf8_lossy(&dechunk(&raw))
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_live_feed_opened_while_events_pour_in_settles_on_the_exact_count() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let scope = [1i64, 2];
    let password = "correct horse battery staple";
    core.add_user("north", Role::Viewer, &scope, password).await;
    let cookie = http::login(core.http, "north", password).await;
    let mut sim = Agent::start(AgentArgs {
        id: "sim".into(),
        core_url: core.url(),
        data_dir: dir.path().join("sim"),
        command: [
            "simulate",
            "--cameras",
            "4",
            "--camera-base",
            "101",
            "--locations",
            "1,2,3,4",
            "--rate",
            "500",
        ]
        .map(String::from)
        .to_vec(),
        intake: false,
        exit_when_drained: false,
        extra: vec![],
    });
    wait_for("traffic", Duration::from_secs(30), || async {
        (stats(&core.url()).await.stored > 200).then_some(())
    })
    .await;
    // Feeds opened while commits are in flight (each counts its scope then
    // adds the scope's commits tick by tick).
    let stop = tokio_util::sync::CancellationToken::new();
    let mut feeds = Vec::new();
    for _ in 0..8 {
        feeds.push(tokio::spawn(live_ticks(
            core.http.to_string(),
            cookie.clone(),
            stop.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sim.terminate();
    // Quiet: nothing more is stored, and idle ticks (one a second) go out.
    let (mut last, deadline) = (0, Instant::now() + Duration::from_secs(30));
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = stats(&core.url()).await.stored;
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "the traffic did not stop");
        last = now;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop.cancel();
    let truth = all_events(&core.url())
        .await
        .iter()
        .filter(|e| scope.contains(&e.detection.as_ref().unwrap().geographical_location_oid))
        .count() as u64;
    assert!(truth > 0 && truth < last, "{truth} of {last}");
    for (i, f) in feeds.into_iter().enumerate() {
        let ticks = f.await.unwrap();
        let settled = ticks.last().map(|t| t["totals"]["stored"].clone());
        assert_eq!(
            settled,
            Some(json!(truth)),
            "feed {i} opened during traffic settled on {settled:?}, the scope holds {truth}"
        );
        for t in &ticks {
            for e in t["events"].as_array().unwrap() {
                assert!(scope.contains(&e["location_oid"].as_i64().unwrap()), "{e}");
            }
        }
    }
    println!("8 feeds opened during traffic settled on {truth} (of {last} stored)");
}
