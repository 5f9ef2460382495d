//! Time travel, end to end (PROTOCOL.md, "Time travel"): an agent's buffer or a
//! core's data directory restored from an older copy, with the real core and
//! agent processes. The agent starts a new epoch, delivers all it still holds,
//! and says so; what is stored is checked against the det_oids published.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use sightline_proto::v1::{
    intake_client::IntakeClient, publish_result, Detection, FleetRequest, PublishRequest,
};
use sightline_tests::{
    data::now_ms,
    query::{all_events, stats},
    wait_for, Agent, AgentArgs, Core, CoreArgs, Edge,
};

sightline_tests::over_both_transports!(
    a_restored_agent_buffer_delivers_its_new_events_under_a_new_epoch,
    a_restored_agent_buffer_meeting_a_core_ahead_of_it_starts_a_new_epoch,
    a_core_restored_from_an_older_copy_gets_every_event_the_agent_still_holds,
);

/// Publishes det_oids `oids` through the agent's intake (retrying until the
/// agent answers), all accepted.
async fn publish(agent: &Agent, oids: std::ops::RangeInclusive<i64>) {
    let now = now_ms();
    let dets: Vec<Detection> = oids
        .map(|oid| Detection {
            geographical_location_oid: 1 + oid % 3,
            video_camera_oid: 10 + oid % 3,
            detection_oid: Some(oid),
            item_name: "person".into(),
            timestamp_detected: now - 60_000 + oid,
            ..Default::default()
        })
        .collect();
    for chunk in dets.chunks(250) {
        let req = PublishRequest {
            detections: chunk.to_vec(),
        };
        let resp = wait_for(
            "the intake to take a publish",
            Duration::from_secs(60),
            || {
                let (url, req) = (agent.intake_url(), req.clone());
                async move {
                    let mut c = IntakeClient::connect(url).await.ok()?;
                    c.publish(req).await.ok()
                }
            },
        )
        .await;
        assert!(resp
            .into_inner()
            .results
            .iter()
            .all(|r| matches!(r.result, Some(publish_result::Result::Accepted(_)))));
    }
}

/// How many times each det_oid is stored.
async fn stored(core: &Core) -> BTreeMap<i64, u32> {
    let mut out = BTreeMap::new();
    for e in all_events(&core.url()).await {
        *out.entry(e.detection.unwrap().detection_oid.unwrap())
            .or_default() += 1;
    }
    out
}

async fn wait_stored(core: &Core, n: u64) {
    let url = core.url();
    wait_for(
        &format!("{n} events stored"),
        Duration::from_secs(120),
        || {
            let url = url.clone();
            async move { (stats(&url).await.stored >= n).then_some(()) }
        },
    )
    .await;
}

/// Stops the agent with SIGTERM (it waits for the acks in flight).
fn stop_drained(agent: &mut Agent) {
    assert!(agent.terminate().success());
}

/// Stops the core with SIGTERM. (Its exit status is not what these tests
/// check.)
fn stop_core(core: &mut Core) {
    core.terminate();
}

/// `cp -a from to`, replacing `to`.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// The core on the same store and ports as `core` was.
fn start_again(args: &CoreArgs, core_was: (std::net::SocketAddr, std::net::SocketAddr)) -> Core {
    let mut args = args.clone();
    (args.grpc, args.edge) = core_was;
    Core::start_with(args)
}

fn assert_exactly(stored: &BTreeMap<i64, u32>, want: impl Iterator<Item = i64>) {
    let want: Vec<i64> = want.collect();
    let missing: Vec<i64> = want
        .iter()
        .copied()
        .filter(|o| !stored.contains_key(o))
        .collect();
    assert!(
        missing.is_empty(),
        "{} det_oids missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let doubled: Vec<(&i64, &u32)> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    assert_eq!(stored.len(), want.len(), "nothing else stored");
}

/// The agent's buffer: 1,000 events, a copy, 500 more delivered, the copy
/// restored. Returns the agent (stopped) and its buffer directory.
async fn restore_an_agent_buffer(dir: &Path, core: &Core, edge: Edge) -> (Agent, PathBuf) {
    let args = AgentArgs::intake(dir, "restored", String::new())
        .over(core, edge)
        .reconnect_within(Duration::from_millis(300));
    let buffer = args.data_dir.clone();
    let copy = dir.join("restored-copy");
    let mut agent = Agent::start(args);
    publish(&agent, 1..=1000).await;
    wait_stored(core, 1000).await;
    stop_drained(&mut agent);
    copy_dir(&buffer, &copy);
    let mut agent = Agent::start(agent.args.clone());
    publish(&agent, 1001..=1500).await;
    wait_stored(core, 1500).await;
    stop_drained(&mut agent);
    copy_dir(&copy, &buffer);
    (agent, buffer)
}

/// The restored agent publishes its 500 new events while the core is away,
/// so they take the seqs the core already committed (1,001..=1,500): only
/// the digest of the core's last event tells them apart.
async fn a_restored_agent_buffer_delivers_its_new_events_under_a_new_epoch(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::start(dir.path(), None);
    let (agent, _) = restore_an_agent_buffer(dir.path(), &core, edge).await;
    let core_was = (core.grpc, core.edge);
    stop_core(&mut core);
    let agent = Agent::start(agent.args.clone());
    publish(&agent, 1501..=2000).await;
    let core = start_again(&core.args, core_was);
    let url = core.url();
    wait_for(
        "2000 events stored (the restored buffer's new events took seqs the core \
         holds: only the core's Welcome.committed_digest tells them apart)",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move { (stats(&url).await.stored >= 2000).then_some(()) }
        },
    )
    .await;
    assert_exactly(&stored(&core).await, 1..=2000);
    let log = agent.log();
    assert!(
        log.contains("new epoch") && log.contains("is not this buffer's"),
        "the agent says what happened; log:\n{log}"
    );
}

/// The restored agent meets the core before it publishes: the core's
/// watermark (1,500) is beyond every seq the buffer assigned (1,000).
async fn a_restored_agent_buffer_meeting_a_core_ahead_of_it_starts_a_new_epoch(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let (agent, _) = restore_an_agent_buffer(dir.path(), &core, edge).await;
    let agent = Agent::start(agent.args.clone());
    wait_for("a new epoch", Duration::from_secs(30), || {
        let log = agent.log();
        async move { log.contains("new epoch").then_some(()) }
    })
    .await;
    publish(&agent, 1501..=2000).await;
    wait_stored(&core, 2000).await;
    assert_exactly(&stored(&core).await, 1..=2000);
    assert!(
        agent.log().contains("is beyond seq 1000"),
        "the agent names the figures"
    );
}

async fn a_core_restored_from_an_older_copy_gets_every_event_the_agent_still_holds(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::start(dir.path(), None);
    let core_was = (core.grpc, core.edge);
    let args = AgentArgs::intake(dir.path(), "steady", String::new())
        .over(&core, edge)
        .reconnect_within(Duration::from_millis(300));
    let agent = Agent::start(args);
    publish(&agent, 1..=1000).await;
    wait_stored(&core, 1000).await;
    // A copy of the core's store, taken while it is stopped.
    stop_core(&mut core);
    let data = core.args.data_dir.clone();
    let copy = dir.path().join("core-copy");
    copy_dir(&data, &copy);
    let core = start_again(&core.args, core_was);
    publish(&agent, 1001..=1500).await;
    wait_stored(&core, 1500).await;
    // The agent has deleted 1..=1500 (acknowledged). The core goes back to
    // its copy (1..=1000) while the agent takes 500 more.
    wait_for(
        "the agent to hear every ack",
        Duration::from_secs(30),
        || {
            let url = core.url();
            async move {
                let mut q = sightline_tests::query::client(&url).await;
                let fleet = q.fleet(FleetRequest {}).await.ok()?.into_inner();
                fleet
                    .agents
                    .iter()
                    .any(|a| a.agent_id == "steady" && a.next_seq == 1501 && a.buffer_depth == 0)
                    .then_some(())
            }
        },
    )
    .await;
    let mut core = core;
    stop_core(&mut core);
    copy_dir(&copy, &data);
    publish(&agent, 1501..=2000).await;
    let core = start_again(&core.args, core_was);
    // No wedge: the held events arrive, and new ones after them.
    wait_stored(&core, 1500).await;
    publish(&agent, 2001..=2100).await;
    wait_stored(&core, 1600).await;
    // 1,001..=1,500 were lost with the core's restore: the agent had deleted
    // them once they were acknowledged (PROTOCOL.md, rule 18).
    assert_exactly(&stored(&core).await, (1..=1000).chain(1501..=2100));
    let log = agent.log();
    assert!(
        log.contains("new epoch") && log.contains("is below seq 1500"),
        "the agent says what happened; log:\n{log}"
    );
}
