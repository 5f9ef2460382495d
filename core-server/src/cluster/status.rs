//! The cluster's state for operators: `sightline-core cluster status` and
//! the `sightline_cluster_*` gauges of `/metrics`.
//!
//! Each node publishes, every [`STATUS_INTERVAL`], what it knows: every live
//! node (`sightline_cluster_node`), the owner of every partition
//! (`sightline_cluster_partition_owner`), and for the partitions it holds the
//! IN stream's last sequence for the partition's subject, the sequence the
//! partition applied through, their difference (the lag) and the age of its
//! newest checkpoint, where the write path reports them
//! ([`ClusterView::applied_seq`], [`ClusterView::checkpoint_ms`]).
//! `cluster status` reads one node's `/metrics`, then every node's it names,
//! and prints one line per partition.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    peer::PeerTls,
    view::{ClusterView, NodeInfo},
};
use crate::metrics::{Metrics, NodeLabel, OwnerLabel, PartitionLabel};

/// How often a node refreshes its cluster gauges.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How long `cluster status` waits for one node's `/metrics`.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/metrics` answer `cluster status` reads from one node.
pub const MAX_METRICS_BYTES: usize = 16 << 20;

/// One partition, as the cluster reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: u16,
    pub owner: Option<String>,
    pub in_last_seq: Option<u64>,
    pub applied_seq: Option<u64>,
    pub lag: Option<u64>,
    pub checkpoint_age_s: Option<f64>,
    /// Acknowledged seqs the partition's owners named lost (PROTOCOL.md
    /// rule 32), counted by each node since it started; summed over the
    /// nodes that answer by [`gather`].
    #[serde(default)]
    pub lost_seqs: Option<u64>,
}

/// What one node knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeInfo>,
    pub partitions: Vec<PartitionStatus>,
}

/// The IN stream's last sequence on partition `p`'s subject (0: none).
async fn in_last_seq(stream: &jetstream::stream::Stream, p: u16) -> Option<u64> {
    super::owner::in_last_seq(stream, p)
        .await
        .inspect_err(
            |e| tracing::debug!(error = %e, partition = p, "cluster status: IN stream sequence"),
        )
        .ok()
}

/// This node's view now: nodes, owners, and for the partitions it holds
/// the lag (with `js`, the IN stream's sequences) and checkpoint age.
pub async fn collect(view: &dyn ClusterView, js: Option<&jetstream::Context>) -> ClusterStatus {
    let stream = match js {
        Some(js) => js.get_stream(super::IN_STREAM).await.ok(),
        None => None,
    };
    let held = view.opened();
    let now = sightline_proto::now_ms();
    let mut partitions = Vec::with_capacity(view.partitions() as usize);
    for p in 0..view.partitions() {
        let mut s = PartitionStatus {
            partition: p,
            owner: view.owner(p).map(|n| n.node_id),
            ..Default::default()
        };
        if held.contains(&p) {
            s.applied_seq = view.applied_seq(p);
            if let Some(stream) = &stream {
                s.in_last_seq = in_last_seq(stream, p).await;
            }
            s.lag = match (s.in_last_seq, s.applied_seq) {
                (Some(last), Some(applied)) => Some(last.saturating_sub(applied)),
                _ => None,
            };
            s.checkpoint_age_s = view
                .checkpoint_ms(p)
                .map(|ms| (now - ms).max(0) as f64 / 1000.0);
        }
        partitions.push(s);
    }
    let mut nodes = view.nodes();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    ClusterStatus { nodes, partitions }
}

/// Sets the `sightline_cluster_*` gauges to `s` (what is gone is removed).
pub fn set_gauges(m: &Metrics, s: &ClusterStatus) {
    let g = &m.cluster;
    g.nodes.clear();
    for n in &s.nodes {
        g.nodes
            .get_or_create(&NodeLabel {
                node: n.node_id.clone(),
                grpc: n.grpc.clone(),
                http: n.http.clone(),
            })
            .set(1);
    }
    g.owner.clear();
    for f in [&g.applied_seq, &g.in_last_seq, &g.lag] {
        f.clear();
    }
    g.checkpoint_age.clear();
    for p in &s.partitions {
        let partition = p.partition.to_string();
        if let Some(node) = &p.owner {
            g.owner
                .get_or_create(&OwnerLabel {
                    partition: partition.clone(),
                    node: node.clone(),
                })
                .set(1);
        }
        let label = PartitionLabel { partition };
        for (f, v) in [
            (&g.applied_seq, p.applied_seq),
            (&g.in_last_seq, p.in_last_seq),
            (&g.lag, p.lag),
        ] {
            if let Some(v) = v {
                f.get_or_create(&label).set(v.min(i64::MAX as u64) as i64);
            }
        }
        if let Some(age) = p.checkpoint_age_s {
            g.checkpoint_age.get_or_create(&label).set(age);
        }
    }
}

/// Refreshes the gauges every [`STATUS_INTERVAL`] until `shutdown`,
/// and keeps the status they were set from in `latest`.
pub fn spawn(
    view: Arc<dyn ClusterView>,
    js: Option<jetstream::Context>,
    metrics: Arc<Metrics>,
    latest: Arc<std::sync::Mutex<Option<ClusterStatus>>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut s = collect(view.as_ref(), js.as_ref()).await;
            set_gauges(&metrics, &s);
            for p in &mut s.partitions {
                p.lost_seqs = metrics
                    .cluster
                    .lost_seqs
                    .get(&PartitionLabel {
                        partition: p.partition.to_string(),
                    })
                    .map(|c| c.get());
            }
            *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            }
        }
    })
}

/// `name{k="v",...} value` lines of a Prometheus text exposition.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (BTreeMap<String, String>, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let end = r.find("} ")?;
                (&r[..end], &r[end + 2..])
            }
            None => ("", rest.strip_prefix(' ')?),
        };
        let mut map = BTreeMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once("=\"")?;
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        Some((map, value.trim().parse().ok()?))
    })
}

/// A node's [`ClusterStatus`] back from its `/metrics` text.
pub fn parse_metrics(text: &str) -> ClusterStatus {
    let mut s = ClusterStatus::default();
    for (l, _) in samples(text, "sightline_cluster_node") {
        s.nodes.push(NodeInfo {
            node_id: l.get("node").cloned().unwrap_or_default(),
            grpc: l.get("grpc").cloned().unwrap_or_default(),
            http: l.get("http").cloned().unwrap_or_default(),
            edge: None,
            heartbeat_ms: 0,
        });
    }
    s.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let mut parts: BTreeMap<u16, PartitionStatus> = BTreeMap::new();
    let mut entry = |l: &BTreeMap<String, String>| -> Option<u16> {
        let p = l.get("partition")?.parse().ok()?;
        parts.entry(p).or_insert_with(|| PartitionStatus {
            partition: p,
            ..Default::default()
        });
        Some(p)
    };
    let mut set: Vec<(u16, &str, f64, Option<String>)> = Vec::new();
    for (name, key) in [
        ("sightline_cluster_partition_owner", "owner"),
        ("sightline_cluster_partition_applied_seq", "applied"),
        ("sightline_cluster_partition_in_last_seq", "in_last"),
        ("sightline_cluster_partition_lag", "lag"),
        ("sightline_cluster_partition_checkpoint_age_seconds", "age"),
        ("sightline_cluster_lost_seqs_total", "lost"),
    ] {
        for (l, v) in samples(text, name) {
            if let Some(p) = entry(&l) {
                set.push((p, key, v, l.get("node").cloned()));
            }
        }
    }
    for (p, key, v, node) in set {
        let e = parts.get_mut(&p).expect("entered above");
        match key {
            "owner" => e.owner = node,
            "applied" => e.applied_seq = Some(v as u64),
            "in_last" => e.in_last_seq = Some(v as u64),
            "lag" => e.lag = Some(v as u64),
            "lost" => e.lost_seqs = Some(v as u64),
            _ => e.checkpoint_age_s = Some(v),
        }
    }
    s.partitions = parts.into_values().collect();
    s
}

/// Merges the nodes' reports: owners as `first` (the node asked) sees
/// them, sequences, lag and checkpoint age as each partition's owner
/// reports them, and the seqs named lost summed over `others` and, with
/// `count_first` (`first`'s node is not among `others`), `first`: whichever
/// node owned the partition when it counted them.
pub fn merge(
    first: ClusterStatus,
    count_first: bool,
    others: &BTreeMap<String, ClusterStatus>,
) -> ClusterStatus {
    let mut out = first;
    let counted = |p: u16, s: &ClusterStatus| {
        s.partitions
            .iter()
            .find(|q| q.partition == p)
            .and_then(|q| q.lost_seqs)
    };
    for p in &mut out.partitions {
        let own = p.lost_seqs.filter(|_| count_first);
        p.lost_seqs = others
            .values()
            .filter_map(|s| counted(p.partition, s))
            .chain(own)
            .reduce(|a, b| a + b);
        let Some(owner) = p.owner.clone() else {
            continue;
        };
        if let Some(o) = others
            .get(&owner)
            .and_then(|s| s.partitions.iter().find(|q| q.partition == p.partition))
        {
            p.in_last_seq = o.in_last_seq.or(p.in_last_seq);
            p.applied_seq = o.applied_seq.or(p.applied_seq);
            p.lag = o.lag.or(p.lag);
            p.checkpoint_age_s = o.checkpoint_age_s.or(p.checkpoint_age_s);
        }
    }
    out
}

/// The table `cluster status` prints.
pub fn render(s: &ClusterStatus) -> String {
    let mut out = format!("nodes: {}\n", s.nodes.len());
    for n in &s.nodes {
        out += &format!("  {}  grpc {}  http {}\n", n.node_id, n.grpc, n.http);
    }
    let owned = s.partitions.iter().filter(|p| p.owner.is_some()).count();
    out += &format!(
        "partitions: {} ({} owned)\n{:>9}  {:<16} {:>12} {:>12} {:>8} {:>14} {:>9}\n",
        s.partitions.len(),
        owned,
        "partition",
        "owner",
        "in_last_seq",
        "applied_seq",
        "lag",
        "checkpoint_age",
        "lost_seqs"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for p in &s.partitions {
        out += &format!(
            "{:>9}  {:<16} {:>12} {:>12} {:>8} {:>14} {:>9}\n",
            p.partition,
            p.owner.as_deref().unwrap_or("(none)"),
            opt(p.in_last_seq),
            opt(p.applied_seq),
            opt(p.lag),
            p.checkpoint_age_s
                .map_or("-".to_string(), |a| format!("{a:.0}s")),
            opt(p.lost_seqs)
        );
    }
    let lost: u64 = s.partitions.iter().filter_map(|p| p.lost_seqs).sum();
    if lost > 0 {
        out += &format!(
            "LOST: {lost} acknowledged seqs the IN stream lost (PROTOCOL.md rule 32; the nodes' logs name each as ACKNOWLEDGED EVENTS LOST)\n"
        );
    }
    out
}

/// `GET <base>/metrics` over HTTP/1.0 (`host:port` or `http://`: plain;
/// `https://`: TLS trusting `tls` only), at most [`MAX_METRICS_BYTES`],
/// within [`FETCH_TIMEOUT`]. Written by hand: the workspace has no HTTP
/// client (hyper is built with its server side only), and one GET of a
/// text page needs none.
pub async fn fetch_metrics(base: &str, tls: Option<&PeerTls>) -> anyhow::Result<String> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    let (secure, host) = match base.strip_prefix("https://") {
        Some(h) => (true, h),
        None => (false, base.trim_start_matches("http://")),
    };
    let host = host.trim_end_matches('/').to_string();
    anyhow::ensure!(
        !host.contains("://") && !host.contains('/'),
        "{base}: expected host:port, http://host:port or https://host:port"
    );
    let tls = match (secure, tls) {
        (true, None) => anyhow::bail!(
            "{base} serves TLS: give the CA that issued its certificate (cluster.peer_ca; SIGHTLINE_CA for the command)"
        ),
        (true, Some(t)) => Some(t),
        (false, _) => None,
    };
    async fn get<S: AsyncRead + AsyncWrite + Unpin>(
        mut conn: S,
        host: &str,
    ) -> anyhow::Result<String> {
        conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        let read = (&mut conn)
            .take(MAX_METRICS_BYTES as u64)
            .read_to_end(&mut buf)
            .await;
        // A TLS peer that closes without close_notify still sent the page.
        if let Err(e) = read {
            anyhow::ensure!(
                e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty(),
                e
            );
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(&host).await?;
        match tls {
            Some(t) => {
                let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
                get(t.connect(name, tcp).await?, &host).await
            }
            None => get(tcp, &host).await,
        }
    };
    let text = tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("{base}: no answer within {FETCH_TIMEOUT:?}"))??;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{base}: not an HTTP answer"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{base}/metrics: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}

/// `first` (one node's view) completed by each other node's own report
/// (`skip`: a node not to ask, e.g. the one whose view `first` is), read
/// from their `/metrics` at once; with the nodes that could not be read,
/// and why.
/// `https://` nodes are read trusting `tls`.
pub async fn gather(
    first: ClusterStatus,
    skip: Option<&str>,
    tls: Option<&PeerTls>,
) -> (ClusterStatus, Vec<String>) {
    let reads = first
        .nodes
        .iter()
        .filter(|n| Some(n.node_id.as_str()) != skip)
        .map(|n| async move {
            let r = fetch_metrics(&n.http, tls).await.map(|t| parse_metrics(&t));
            (n.node_id.clone(), r)
        });
    let mut others = BTreeMap::new();
    let mut unreachable = Vec::new();
    for (id, r) in futures::future::join_all(reads).await {
        match r {
            Ok(s) => {
                others.insert(id, s);
            }
            Err(e) => unreachable.push(format!("{id}: {e}")),
        }
    }
    (merge(first, skip.is_some(), &others), unreachable)
}

/// `sightline-core cluster status`: `base`'s view, completed by each
/// owner's own report (a node that does not answer is named, its
/// partitions shown without sequences). `https://` nodes are read trusting
/// `tls`.
pub async fn status(base: &str, tls: Option<&PeerTls>) -> anyhow::Result<String> {
    let first = parse_metrics(&fetch_metrics(base, tls).await?);
    anyhow::ensure!(
        !first.nodes.is_empty() || !first.partitions.is_empty(),
        "{base}: no cluster gauges (a single-node core, or a cluster node that has not published its status yet)"
    );
    let (all, unreachable) = gather(first, None, tls).await;
    let mut out = render(&all);
    for u in unreachable {
        out += &format!("unreachable: {u}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_gauges_read_back_into_the_status_they_were_set_from() {
        let m = Metrics::new();
        let node = |id: &str| NodeInfo {
            node_id: id.into(),
            grpc: format!("{id}:50051"),
            http: format!("{id}:8080"),
            edge: None,
            heartbeat_ms: 0,
        };
        let s = ClusterStatus {
            nodes: vec![node("a"), node("b")],
            partitions: vec![
                PartitionStatus {
                    partition: 0,
                    owner: Some("a".into()),
                    in_last_seq: Some(120),
                    applied_seq: Some(100),
                    lag: Some(20),
                    checkpoint_age_s: Some(12.5),
                    lost_seqs: None,
                },
                PartitionStatus {
                    partition: 1,
                    owner: Some("b".into()),
                    ..Default::default()
                },
                PartitionStatus {
                    partition: 2,
                    ..Default::default()
                },
            ],
        };
        set_gauges(&m, &s);
        let back = parse_metrics(&m.encode());
        assert_eq!(back.nodes, s.nodes);
        // A partition with no owner and no figures publishes nothing.
        assert_eq!(back.partitions, s.partitions[..2].to_vec());
        // Owner moved: the old owner's line is gone.
        let mut moved = s.clone();
        moved.partitions[1].owner = Some("a".into());
        set_gauges(&m, &moved);
        let back = parse_metrics(&m.encode());
        assert_eq!(back.partitions[1].owner.as_deref(), Some("a"));
        let text = render(&back);
        assert!(text.contains("nodes: 2") && text.contains("20"), "{text}");
    }

    /// Serves `body` as `/metrics` to every connection, plain HTTP.
    async fn serve_metrics(body: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf).await;
                    let _ = c
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn cluster_status_takes_owners_from_the_node_asked_and_lag_from_each_owner() {
        // Node b's report: it holds partition 1, 7 behind.
        let mb = Metrics::new();
        let b_status = |http: &str| ClusterStatus {
            nodes: vec![NodeInfo {
                node_id: "b".into(),
                grpc: String::new(),
                http: http.into(),
                edge: None,
                heartbeat_ms: 0,
            }],
            partitions: vec![PartitionStatus {
                partition: 1,
                owner: Some("b".into()),
                in_last_seq: Some(57),
                applied_seq: Some(50),
                lag: Some(7),
                checkpoint_age_s: Some(3.0),
                lost_seqs: None,
            }],
        };
        set_gauges(&mb, &b_status(""));
        // b named 3 acknowledged seqs of partition 1 lost.
        mb.cluster
            .lost_seqs
            .get_or_create(&PartitionLabel {
                partition: "1".into(),
            })
            .inc_by(3);
        let b_http = serve_metrics(mb.encode()).await;
        // Node a: holds partition 0, knows b owns 1; partition 2 has no owner.
        // Its own report names 2 more of partition 1 lost (counted while
        // it owned it).
        let ma = Metrics::new();
        let a_http_listener =
            serve_metrics("sightline_cluster_lost_seqs_total{partition=\"1\"} 2\n".into()).await;
        let node = |id: &str, http: &str| NodeInfo {
            node_id: id.into(),
            grpc: String::new(),
            http: http.into(),
            edge: None,
            heartbeat_ms: 0,
        };
        set_gauges(
            &ma,
            &ClusterStatus {
                nodes: vec![node("a", &a_http_listener), node("b", &b_http)],
                partitions: vec![
                    PartitionStatus {
                        partition: 0,
                        owner: Some("a".into()),
                        in_last_seq: Some(10),
                        applied_seq: Some(10),
                        lag: Some(0),
                        checkpoint_age_s: None,
                        lost_seqs: None,
                    },
                    PartitionStatus {
                        partition: 1,
                        owner: Some("b".into()),
                        ..Default::default()
                    },
                ],
            },
        );
        let a_http = serve_metrics(ma.encode()).await;
        let out = status(&format!("http://{a_http}"), None).await.unwrap();
        let line = |p: &str| {
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(p))
                .unwrap_or_else(|| panic!("no line for partition {p}: {out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("0"), ["0", "a", "10", "10", "0", "-", "-"], "{out}");
        assert_eq!(line("1"), ["1", "b", "57", "50", "7", "3s", "5"], "{out}");
        assert!(
            out.contains("LOST: 5 acknowledged seqs") && out.contains("ACKNOWLEDGED EVENTS LOST"),
            "{out}"
        );
        assert!(out.contains("nodes: 2"), "{out}");
        // A single-node core (no cluster gauges) is said to be one.
        let lone = serve_metrics(Metrics::new().encode()).await;
        let e = status(&format!("http://{lone}"), None).await.unwrap_err();
        assert!(e.to_string().contains("single-node"), "{e}");
    }
}
