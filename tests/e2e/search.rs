//! The search index (tantivy) through the gRPC `Search` API, against ground
//! truth computed from the generated input: it converges to the store with
//! every event once, finds an event by det_oid, by item and by location
//! name, pages without repeats; a bad query names the field; after kill -9
//! it catches up without doubles; a deleted or corrupt index is rebuilt.

use std::{collections::HashSet, path::Path, time::Duration};

use sightline_proto::v1::SearchRequest;
use sightline_tests::{
    data::write_locations,
    query::{client, wait_stored},
    wait_for, Agent, AgentArgs, Core, Dataset, Truth,
};

async fn hits(url: &str, req: SearchRequest) -> (u64, Vec<i64>) {
    let r = client(url).await.search(req).await.unwrap().into_inner();
    let oids = r
        .events
        .iter()
        .filter_map(|e| e.detection.as_ref().and_then(|d| d.detection_oid))
        .collect();
    (r.total_hits, oids)
}

/// Waits until a search for everything counts `n` events.
async fn wait_indexed(url: &str, n: u64) {
    let url = url.to_string();
    wait_for(
        "the index holds every stored event",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let (total, _) = hits(&url, SearchRequest::default()).await;
                (total == n).then_some(())
            }
        },
    )
    .await;
}

/// Every det_oid the index holds, paging 100 at a time; panics on a repeat.
async fn all_pages(url: &str) -> HashSet<i64> {
    let mut seen = HashSet::new();
    let mut token = String::new();
    loop {
        let r = client(url)
            .await
            .search(SearchRequest {
                page_size: 100,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut last_ts = i64::MAX;
        for e in &r.events {
            let d = e.detection.as_ref().unwrap();
            assert!(d.timestamp_detected <= last_ts, "not newest first");
            last_ts = d.timestamp_detected;
            assert!(
                seen.insert(d.detection_oid.unwrap()),
                "det_oid {:?} on two pages",
                d.detection_oid
            );
        }
        if r.next_page_token.is_empty() {
            return seen;
        }
        token = r.next_page_token;
    }
}

fn replay(dir: &Path, core: &Core, seed: u64, unique: usize) -> Truth {
    let data = Dataset::generate(seed, unique, 0.1, 0.0, &[1, 2, 3]);
    let file = dir.join(format!("a{seed}.csv"));
    data.write_csv(&file);
    let mut agent = Agent::start(AgentArgs::replay(
        dir,
        &format!("replay-{seed}"),
        core.url(),
        &file,
        None,
    ));
    assert!(agent.wait(Duration::from_secs(120)).success());
    data.truth()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_events_by_det_oid_item_and_location_and_pages_without_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let locations = dir.path().join("locations.csv");
    write_locations(&locations, &[1, 2]);
    let core = Core::start(dir.path(), Some(&locations));
    let truth = replay(dir.path(), &core, 7, 2_000);
    wait_stored(&core.url(), truth.unique).await;
    let t0 = std::time::Instant::now();
    wait_indexed(&core.url(), truth.unique).await;
    println!(
        "indexed {} events {} ms after the store held them",
        truth.unique,
        t0.elapsed().as_millis()
    );

    assert_eq!(all_pages(&core.url()).await, truth.det_oids);

    let known = *truth.det_oids.iter().min().unwrap();
    let (total, oids) = hits(
        &core.url(),
        SearchRequest {
            query: format!("det_oid:{known}"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((total, oids), (1, vec![known]));

    // By item: the filter and the words agree with the truth.
    let bicycles: u64 = truth.counts.values().filter_map(|m| m.get("bicycle")).sum();
    assert!(bicycles > 0);
    let by_filter = hits(
        &core.url(),
        SearchRequest {
            item_name: Some("bicycle".into()),
            ..Default::default()
        },
    )
    .await;
    let by_words = hits(
        &core.url(),
        SearchRequest {
            query: "bicycle".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_filter.0, bicycles);
    assert_eq!(by_words.0, bicycles);

    // By the location's name (Dataset B), and by a Dataset B column; location 3
    // is not in Dataset B, so it has no name to be found by.
    let at = |loc: i64| {
        truth
            .counts
            .get(&loc)
            .map(|m| m.values().sum::<u64>())
            .unwrap_or(0)
    };
    let (named, _) = hits(
        &core.url(),
        SearchRequest {
            query: "location:\"Location 2\"".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(named, at(2));
    let (region, _) = hits(
        &core.url(),
        SearchRequest {
            query: "columns:region AND columns:1".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(region, at(1), "Region 1 is location 1's");
    let (filtered, _) = hits(
        &core.url(),
        SearchRequest {
            geographical_location_oid: Some(3),
            item_name: Some("bicycle".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        filtered,
        truth.counts[&3].get("bicycle").copied().unwrap_or(0)
    );

    // Dataset B reloaded with location 2 renamed: the index follows.
    std::fs::write(
        &locations,
        "geographical_location_oid,geographical_location,region\n1,Location 1,Region 1\n2,Harbour Gate,Region 2\n",
    )
    .unwrap();
    core.admin()
        .await
        .reload_locations(sightline_proto::v1::ReloadLocationsRequest::default())
        .await
        .unwrap();
    let url = core.url();
    wait_for(
        "the index has the new name",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let (n, _) = hits(
                    &url,
                    SearchRequest {
                        query: "location:harbour".into(),
                        ..Default::default()
                    },
                )
                .await;
                (n == at(2)).then_some(())
            }
        },
    )
    .await;
    let (old, _) = hits(
        &core.url(),
        SearchRequest {
            query: "location:\"Location 2\"".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(old, 0, "the old name is gone");
    assert_eq!(
        all_pages(&core.url()).await,
        truth.det_oids,
        "nothing lost or doubled"
    );

    // Bad input names the field.
    for (req, field) in [
        (
            SearchRequest {
                query: "item:(".into(),
                ..Default::default()
            },
            "field `query`",
        ),
        (
            SearchRequest {
                page_size: 1_000,
                ..Default::default()
            },
            "field `page_size`",
        ),
        (
            SearchRequest {
                page_token: "xyz".into(),
                ..Default::default()
            },
            "field `page_token`",
        ),
        (
            SearchRequest {
                from_ms: 10,
                to_ms: 5,
                ..Default::default()
            },
            "field `to_ms`",
        ),
    ] {
        let e = client(&core.url()).await.search(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(field), "{}", e.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_catches_up_after_kill_9_and_is_rebuilt_when_deleted_or_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let locations = dir.path().join("locations.csv");
    write_locations(&locations, &[1, 2, 3]);
    let mut core = Core::start(dir.path(), Some(&locations));
    let first = replay(dir.path(), &core, 11, 1_500);
    wait_stored(&core.url(), first.unique).await;
    wait_indexed(&core.url(), first.unique).await;

    // kill -9 while a second dataset streams in: afterwards every event once.
    let data = Dataset::generate(12, 3_000, 0.1, 0.0, &[1, 2, 3]);
    let file = dir.path().join("b.csv");
    data.write_csv(&file);
    let second = data.truth();
    let mut agent = Agent::start(AgentArgs::replay(
        dir.path(),
        "replay-b",
        core.url(),
        &file,
        Some(2_000),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    core.restart();
    assert!(agent.wait(Duration::from_secs(120)).success());
    let all: HashSet<i64> = first.det_oids.union(&second.det_oids).copied().collect();
    let n = all.len() as u64;
    wait_stored(&core.url(), n).await;
    wait_indexed(&core.url(), n).await;
    assert_eq!(all_pages(&core.url()).await, all);

    // Deleted: rebuilt from the store.
    let index = dir.path().join("core-search");
    assert!(index.is_dir(), "the index lives beside the store");
    core.terminate();
    std::fs::remove_dir_all(&index).unwrap();
    core.restart();
    wait_indexed(&core.url(), n).await;
    assert_eq!(all_pages(&core.url()).await, all);
    assert!(core
        .log()
        .contains("building the search index from the store"));

    // Corrupt: rebuilt too, and said why.
    core.terminate();
    std::fs::write(index.join("meta.json"), b"{ not json").unwrap();
    core.restart();
    wait_indexed(&core.url(), n).await;
    assert_eq!(all_pages(&core.url()).await, all);
    assert!(core.log().contains("does not open") || core.log().contains("does not load"));
}
