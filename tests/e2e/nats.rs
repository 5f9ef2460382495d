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
