//! The cluster's engine as the cluster tests use it: three real
//! `nats-server -js` on 127.0.0.1 (sightline_tests::nats), an R3 stream
//! written through a server being killed, and the restarted server catching
//! up. If this fails, no cluster test can mean anything. (The servers hold
//! this one stream only, so a server's JetStream message count is its replica's.)

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sightline_tests::nats::NatsCluster;

const STREAM: &str = "HARNESS";
/// Messages published before the kill, while one server is down, and after
/// it is back.
const PER_PHASE: u64 = 500;

/// Publishes `ids` to the stream, each with its `Nats-Msg-Id` so that a
/// publish retried after a lost ack (a leader moving) is stored once; retries
/// each until the stream acknowledges it.
async fn publish(js: &jetstream::Context, ids: std::ops::Range<u64>) {
    for id in ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
            let sent = js
                .publish_with_headers(
                    format!("harness.{}", id % 7),
                    headers,
                    id.to_string().into(),
                )
                .await;
            let acked = match sent {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing_like_note(id, &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("message {id} not acknowledged within 20 s: {e}"),
            }
        }
    }
}

fn tracing_like_note(id: u64, e: &str) {
    eprintln!("publish {id}: {e} (retrying)");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_r3_stream_keeps_every_message_through_a_killed_server_which_catches_up_on_restart() {
    let mut nats = NatsCluster::start(3).await;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.urls().as_slice())
        .await
        .unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["harness.>".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&js, 0..PER_PHASE).await;

    // The stream's leader is the one to kill: its followers must take over.
    let info = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a stream leader");
    let victim = nats
        .servers
        .iter()
        .position(|s| s.name == leader)
        .expect("the leader is one of ours");
    nats.kill9(victim);
    publish(&js, PER_PHASE..2 * PER_PHASE).await;
    // Both that remain hold every message (the quorum of 2 of 3 is them).
    for i in (0..3).filter(|i| *i != victim) {
        sightline_tests::wait_for(
            &format!("server {i} to hold all with one of three down"),
            Duration::from_secs(10),
            || {
                let nats = &nats;
                async move { (nats.stored_messages(i).await == Some(2 * PER_PHASE)).then_some(()) }
            },
        )
        .await;
    }

    nats.restart(victim).await;
    publish(&js, 2 * PER_PHASE..3 * PER_PHASE).await;
    let total = 3 * PER_PHASE;
    sightline_tests::wait_for(
        "the restarted server to catch up",
        Duration::from_secs(30),
        || {
            let nats = &nats;
            async move { (nats.stored_messages(victim).await == Some(total)).then_some(()) }
        },
    )
    .await;
    let info = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, total, "each message stored once");
    assert_eq!(info.state.first_sequence, 1);
    assert_eq!(info.state.last_sequence, total, "no sequence spent twice");
}

/// An owner deletes its partition's shares that a checkpoint covers from
/// the IN stream (`checkpoint::delete_applied`) while the other partitions'
/// shares keep coming: after two of the three servers are killed with -9
/// mid-stream and restarted, every server holds what the leader holds, and
/// that is every acknowledged share not deleted. (The owners used a purge
/// with a subject filter before: nats-server 2.9 replays one from its log on
/// restart as a purge of every subject up to the stream's last sequence
/// then, nats-server#4196. With it, this test's restarted servers held 2 of
/// the leader's 4,250 messages, and as the majority they could have led.)
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_partitions_checkpointed_shares_takes_no_other_share_through_two_servers_killed()
{
    use sightline_core::cluster::{
        checkpoint::{delete_applied, fingerprint, Handled},
        config::ClusterConfig,
        in_subject,
        nats::Nats,
        IN_STREAM,
    };
    const SHARES: u64 = 4_000;
    let mut nats = NatsCluster::start(3).await;
    let cfg: ClusterConfig =
        serde_json::from_value(serde_json::json!({ "nats": nats.urls(), "partitions": 4 }))
            .unwrap();
    let core = Nats::connect(&cfg, "t").await.unwrap();
    // Partitions 0 to 3 in turn; the acknowledged sequences of each, with
    // their payloads' fingerprints.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); 4]));
    let publisher = {
        let (js, acked) = (core.js.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..SHARES {
                let p = (i % 4) as u16;
                let payload = i.to_string();
                let fp = fingerprint(payload.as_bytes());
                let Ok(ack) = js.publish(in_subject(p), payload.into()).await else {
                    continue;
                };
                if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), ack).await {
                    acked.lock().unwrap()[p as usize].push((a.sequence, fp));
                }
            }
        })
    };
    // Partition 0's owner: it dealt with its shares from the 100th on (the
    // ones before are an earlier owner's, found by asking the stream's
    // leader), and deletes what each checkpoint covers, a few times.
    let handled = std::sync::Mutex::new(Handled::default());
    let mut recorded = 0;
    let mut deleted_below = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seqs = acked.lock().unwrap()[0].clone();
        for &(seq, fp) in seqs.iter().skip(100.max(recorded)) {
            handled.lock().unwrap().push(seq, fp);
        }
        recorded = seqs.len().max(100);
        // A checkpoint covering all but its newest 50 shares.
        if let Some(&(keep_from, _)) = seqs.len().checked_sub(50).and_then(|i| seqs.get(i)) {
            let d = delete_applied(&core, 0, keep_from, &handled).await.unwrap();
            assert!(d.diverged.is_empty(), "{:?}", d.diverged);
            deleted_below = keep_from;
        }
    }
    assert!(deleted_below > 0, "nothing was acknowledged to delete");
    nats.kill9(1);
    nats.kill9(2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart_together(&[1, 2]).await;
    publisher.await.unwrap();
    // Every acknowledged share not deleted is in the stream, once.
    let js = &core.js;
    let stream = sightline_tests::wait_for(
        "the stream to have a leader again",
        Duration::from_secs(60),
        || async move { js.get_stream(IN_STREAM).await.ok() },
    )
    .await;
    let acked = acked.lock().unwrap().clone();
    let mut kept = 0;
    for (p, seqs) in acked.iter().enumerate() {
        for &(seq, _) in seqs {
            if p == 0 && seq < deleted_below {
                continue;
            }
            let m = stream.get_raw_message(seq).await;
            assert!(
                m.is_ok(),
                "partition {p}'s acknowledged share at seq {seq} is gone: {m:?}"
            );
            kept += 1;
        }
    }
    let leader = stream.get_info().await.unwrap().state.messages;
    assert!(
        leader >= kept,
        "the leader holds {leader}, fewer than {kept}"
    );
    // And every server holds what the leader holds.
    for i in 0..3 {
        sightline_tests::wait_for(
            &format!("server {i} to hold the leader's {leader} shares"),
            Duration::from_secs(60),
            || {
                let nats = &nats;
                async move {
                    (nats.stream_messages(i, IN_STREAM).await == Some(leader)).then_some(())
                }
            },
        )
        .await;
    }
}

/// An owner looks at the IN stream's placement before each delete of what a
/// checkpoint covers (`checkpoint::Placement::watch`): a leader that moved
/// since its last look, or a replica offline or not heard from for 10 s, is a
/// sign of a NATS fault that need not have broken its consumer (its server
/// lived on), and from then on it checks every message against the leader's
/// copy before deleting it.
/// Nothing is suspected while the placement stays as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_leader_that_moved_or_a_replica_unheard_from_at_a_checkpoint_makes_the_owner_check_its_deletes(
) {
    use sightline_core::cluster::{
        checkpoint::{Handled, Placement},
        config::ClusterConfig,
        nats::Nats,
        IN_STREAM,
    };
    let mut nats = NatsCluster::start(3).await;
    let cfg: ClusterConfig =
        serde_json::from_value(serde_json::json!({ "nats": nats.urls(), "partitions": 2 }))
            .unwrap();
    let core = Nats::connect(&cfg, "t").await.unwrap();
    let leader = |core: Nats| async move {
        match Placement::read(&core).await {
            Ok((p, offline)) if offline.is_empty() => p.leader().map(str::to_string),
            _ => None,
        }
    };
    let first = sightline_tests::wait_for(
        "the IN stream to have a leader and no replica offline",
        Duration::from_secs(60),
        || leader(core.clone()),
    )
    .await;
    // The same placement, looked at again and again: nothing suspected.
    let handled = std::sync::Mutex::new(Handled::default());
    let mut last = None;
    for _ in 0..3 {
        let why = Placement::watch(&core, &mut last, &handled).await.unwrap();
        assert_eq!(why, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!handled.lock().unwrap().suspected());
    // The stream's leader steps down: the next look suspects.
    let r: serde_json::Value = {
        let m = core
            .client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{IN_STREAM}"),
                "".into(),
            )
            .await
            .unwrap();
        serde_json::from_slice(&m.payload).unwrap()
    };
    assert_eq!(r["success"], true, "{r}");
    let second = sightline_tests::wait_for(
        "another server to lead the IN stream",
        Duration::from_secs(60),
        || {
            let (core, first) = (core.clone(), first.clone());
            async move { leader(core).await.filter(|l| *l != first) }
        },
    )
    .await;
    let why = Placement::watch(&core, &mut last, &handled).await.unwrap();
    let why = why.expect("a moved leader is a sign of a fault");
    assert!(why.contains(&second) && why.contains(&first), "{why}");
    assert!(handled.lock().unwrap().suspected());
    // A server that is not the leader killed: once the leader has not heard
    // from it for 10 s, an owner that takes the partition over (no look
    // before) or looks next suspects.
    let follower = (0..3)
        .find(|&i| format!("n{i}") != second)
        .expect("a follower");
    nats.kill9(follower);
    let name = format!("n{follower}");
    let why = sightline_tests::wait_for(
        "the killed server's replica to be unheard from",
        Duration::from_secs(60),
        || {
            let core = core.clone();
            async move {
                let handled = std::sync::Mutex::new(Handled::default());
                let mut last = None;
                let why = Placement::watch(&core, &mut last, &handled).await.ok()??;
                assert!(handled.lock().unwrap().suspected());
                Some(why)
            }
        },
    )
    .await;
    assert!(
        why.contains(&name) && why.contains("not heard from"),
        "{why}"
    );
}
