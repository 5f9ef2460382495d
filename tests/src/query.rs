//! Reading the core back through its gRPC query API, and checking it against
//! the ground truth.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use sightline_proto::v1::{
    query_client::QueryClient, GetEventRequest, JoinedEvent, ListEventsRequest, StatsRequest,
    StatsResponse, TopItemsRequest,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{proc::Bearer, wait_for, Truth};

/// A query client whose every call carries a bearer token.
pub type Client = QueryClient<InterceptedService<Channel, Bearer>>;

/// A query client of the core this process started at `url`, as its admin
/// (the admin token).
pub async fn client(url: &str) -> Client {
    client_as(url, &admin_token(url)).await
}

/// The admin token of the core this process started at `url`.
pub fn admin_token(url: &str) -> String {
    crate::proc::admin_token_for(url)
        .unwrap_or_else(|| panic!("no core was started at {url} by this process"))
}

/// A query client that sends `token` (an API token or the admin token).
/// An `https://` core this process started is trusted through its CA.
pub async fn client_as(url: &str, token: &str) -> Client {
    with_token(channel(url).await, token)
}

/// A channel to the core at `url`; an `https://` core this process started
/// is trusted through its CA.
pub async fn channel(url: &str) -> Channel {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap();
    if let Some(ca) = crate::proc::ca_for(url) {
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .unwrap();
    }
    endpoint.connect().await.unwrap()
}

/// A query client over `channel` that sends `token`.
pub fn with_token(channel: Channel, token: &str) -> Client {
    QueryClient::with_interceptor(channel, Bearer::new(token))
        .max_decoding_message_size(256 * 1024 * 1024)
}

/// Every stored event, through ListEvents paging.
pub async fn all_events(url: &str) -> Vec<JoinedEvent> {
    let mut q = client(url).await;
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = q
            .list_events(ListEventsRequest {
                from_ms: 0,
                to_ms: 0,
                filter: None,
                page_size: 10_000,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

pub async fn stats(url: &str) -> StatsResponse {
    client(url)
        .await
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The core's top X over the truth's whole range, as location → items.
pub async fn top(url: &str, truth: &Truth, x: u32) -> BTreeMap<i64, Vec<(String, u64)>> {
    top_in(url, truth.min_ts - 60_000, truth.max_ts + 120_000, x).await
}

/// The core's top X over `[from_ms, to_ms)`, as location → items.
pub async fn top_in(
    url: &str,
    from_ms: i64,
    to_ms: i64,
    x: u32,
) -> BTreeMap<i64, Vec<(String, u64)>> {
    let r = client(url)
        .await
        .top_items(TopItemsRequest {
            from_ms,
            to_ms,
            x,
            geographical_location_oid: None,
        })
        .await
        .unwrap()
        .into_inner();
    r.locations
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
        .collect()
}

/// Waits until the event has at least `kinds` media attached.
pub async fn event_with_media(url: &str, oid: i64, kinds: usize) -> JoinedEvent {
    let url = url.to_string();
    wait_for(
        "footage attached to the event",
        Duration::from_secs(90),
        || {
            let url = url.clone();
            async move {
                let ev = client(&url)
                    .await
                    .get_event(GetEventRequest { detection_oid: oid })
                    .await
                    .ok()?
                    .into_inner();
                (ev.media.len() >= kinds).then_some(ev)
            }
        },
    )
    .await
}

/// Asserts the store holds exactly the truth: every unique detection once,
/// the same counts per location and item, the same top X.
pub async fn assert_exactly_once(url: &str, truth: &Truth) {
    let events = all_events(url).await;
    let mut by_oid: HashMap<i64, u32> = HashMap::new();
    for e in &events {
        *by_oid
            .entry(e.detection.as_ref().unwrap().detection_oid.unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = by_oid.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "det_oids stored more than once: {twice:?}"
    );
    assert_eq!(
        events.len() as u64,
        truth.unique,
        "stored events vs unique detections"
    );
    let missing: Vec<_> = truth
        .det_oids
        .iter()
        .filter(|o| !by_oid.contains_key(o))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "det_oids never stored, e.g. {missing:?}"
    );
    let mut counts: BTreeMap<i64, HashMap<String, u64>> = BTreeMap::new();
    for e in &events {
        let d = e.detection.as_ref().unwrap();
        *counts
            .entry(d.geographical_location_oid)
            .or_default()
            .entry(d.item_name.clone())
            .or_default() += 1;
    }
    assert_eq!(counts, truth.counts, "counts per location and item");
    assert_eq!(
        top(url, truth, 3).await,
        truth.top(3),
        "top 3 items per location"
    );
    let s = stats(url).await;
    assert_eq!(s.stored, truth.unique, "Stats.stored");
}

/// Waits until the core has stored `more` events beyond what it holds now;
/// returns the count it saw then.
pub async fn wait_more_stored(url: &str, more: u64) -> u64 {
    let before = stored_once_answered(url).await;
    wait_stored_beyond(url, before + more).await
}

/// [`wait_more_stored`], unless fewer than `more` events are left before
/// `total` (the unique events the run publishes): then `None` at once, as the
/// count would never get there.
pub async fn wait_more_stored_before(url: &str, more: u64, total: u64) -> Option<u64> {
    let before = stored_once_answered(url).await;
    if before + more >= total {
        return None;
    }
    Some(wait_stored_beyond(url, before + more).await)
}

/// The stored count, waiting (up to 60 s) for the core to answer.
async fn stored_once_answered(url: &str) -> u64 {
    let url = url.to_string();
    crate::wait_for(
        "the stored count",
        std::time::Duration::from_secs(60),
        || stored_now(&url),
    )
    .await
}

/// Waits until the core has stored more than `n` events; returns the count
/// it saw then. After a fault, measure from a count taken before it (not
/// from the first answer after it: while partitions move a cluster answers
/// UNAVAILABLE, and the stream may be drained by the time it answers).
pub async fn wait_stored_beyond(url: &str, n: u64) -> u64 {
    wait_stored_beyond_within(url, n, std::time::Duration::from_secs(60)).await
}

/// [`wait_stored_beyond`], waiting up to `within`; a timeout says what the
/// core answered last.
pub async fn wait_stored_beyond_within(url: &str, n: u64, within: std::time::Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    let mut last;
    loop {
        match client(url).await.stats(StatsRequest {}).await {
            Ok(s) if s.get_ref().stored > n => return s.into_inner().stored,
            Ok(s) => last = format!("stored {}", s.into_inner().stored),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                last = format!("UNAVAILABLE: {}", e.message())
            }
            Err(e) => panic!("Stats: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for more than {n} events stored (last answer: {last})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The stored count; `None` while the core answers UNAVAILABLE (a cluster
/// whose partitions are moving says so, "try again"); any other error fails.
async fn stored_now(url: &str) -> Option<u64> {
    match client(url).await.stats(StatsRequest {}).await {
        Ok(s) => Some(s.into_inner().stored),
        Err(e) if e.code() == tonic::Code::Unavailable => None,
        Err(e) => panic!("Stats: {e}"),
    }
}

/// Waits until the core has stored exactly `n` events. It waits as long as
/// the count keeps moving (a cluster re-reading its stream after an outage
/// catches up at the speed of a loaded machine), and fails once the count
/// has stood still for a minute, or after five minutes in all, saying what it
/// last saw: a lost event shows as a count that stops short.
pub async fn wait_stored(url: &str, n: u64) {
    use std::time::Duration;
    const STILL: Duration = Duration::from_secs(60);
    const AT_MOST: Duration = Duration::from_secs(300);
    let start = tokio::time::Instant::now();
    let mut last = None;
    let mut moved = start;
    loop {
        let now = stored_now(url).await;
        if now == Some(n) {
            return;
        }
        if now.is_some() && now != last {
            last = now;
            moved = tokio::time::Instant::now();
        }
        let seen = last.map_or("no answer yet".to_string(), |c| format!("{c} stored"));
        assert!(
            moved.elapsed() < STILL,
            "waiting for {n} events stored, the count stood still for {STILL:?} (last seen: {seen})"
        );
        assert!(
            start.elapsed() < AT_MOST,
            "timed out after {AT_MOST:?} waiting for {n} events stored (last seen: {seen})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A top-X table as the dashboard answers it (JSON: `[{<location_key>,
/// items: [[item, count], ...]}, ...]`): location → items, most first.
pub fn top_table(
    locations: &serde_json::Value,
    location_key: &str,
) -> BTreeMap<i64, Vec<(String, u64)>> {
    locations
        .as_array()
        .expect("a list of locations")
        .iter()
        .map(|l| {
            let items = l["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| (i[0].as_str().unwrap().to_string(), i[1].as_u64().unwrap()))
                .collect();
            (l[location_key].as_i64().expect("a location"), items)
        })
        .collect()
}
