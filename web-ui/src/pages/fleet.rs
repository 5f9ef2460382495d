//! Fleet: every agent the core knows — connected or not, last seen, buffer
//! depth, lag, duplicates dropped — and its cameras: seen in its events, and
//! their capture (mode, input state, footage made) as the agent reports it;
//! the link (QUIC or gRPC, mutual TLS or flagged plaintext, a fallback from
//! QUIC), events refused for cameras not its own, revocations; per camera,
//! completeness over the last 24 h ("complete", or the missing ranges and
//! why).
//! In cluster mode, first the cluster: its nodes, and each partition's
//! owner, applied stream sequence, lag and checkpoint age (what
//! `sightline-core cluster status` prints).
//! Refreshed every 5 s.

use leptos::prelude::*;

use super::every;
use crate::{
    api::{get_cluster, get_fleet},
    components::error_view,
    format,
    model::{AgentRow, ClusterTable},
};

#[component]
pub fn FleetPage() -> impl IntoView {
    let fleet = Resource::new(|| (), |_| get_fleet());
    let cluster = Resource::new(|| (), |_| get_cluster());
    every(5, move || {
        fleet.refetch();
        cluster.refetch();
    });
    view! {
        <h1>"Fleet"</h1>
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                match cluster.await {
                    Ok(Some(c)) => view! { <Cluster c/> }.into_any(),
                    Ok(None) => ().into_any(),
                    Err(e) => error_view(e),
                }
            })}
        </Transition>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match fleet.await {
                    Ok(agents) if agents.is_empty() => view! { <p>"No agent has connected yet."</p> }.into_any(),
                    Ok(agents) => view! {
                        <div class="cards wide">
                            {agents.into_iter().map(|a| view! { <Agent a/> }).collect_view()}
                        </div>
                    }.into_any(),
                    Err(e) => error_view(e),
                }
            })}
        </Transition>
    }
}

#[component]
fn Agent(a: AgentRow) -> impl IntoView {
    let status = if a.revoked {
        "revoked"
    } else if a.connected {
        "connected"
    } else {
        "disconnected"
    };
    let plaintext = a.link.contains("PLAINTEXT");
    let link = match (a.link.is_empty(), a.agent_transport.is_empty()) {
        (true, _) => "-".to_string(),
        (false, true) => a.link.clone(),
        (false, false) => format!("{} · agent: {}", a.link, a.agent_transport),
    };
    let cameras = a.cameras.clone();
    view! {
        <section class="card agent" data-agent=a.agent_id.clone()>
            <h2><span class=format!("dot {status}")></span>{a.agent_id.clone()}<span class="muted">" · "{status}</span></h2>
            <dl class="kv">
                <dt>"last seen"</dt><dd>{format::time_ms(a.last_seen_ms)}</dd>
                <dt>"buffer depth"</dt><dd data-backlog=a.buffer_depth>{format::count(a.buffer_depth)}{(a.buffer_depth > 0 && a.oldest_held_ms > 0).then(|| format!(" · oldest accepted {}", format::time_ms(a.oldest_held_ms)))}</dd>
                <dt>"lag (events)"</dt><dd>{format::count(a.lag)}</dd>
                <dt>"acked seq"</dt><dd>{format::count(a.acked_seq)}</dd>
                <dt>"duplicates dropped"</dt><dd>{format::count(a.duplicates_transport)}" resent · "{format::count(a.duplicates_semantic)}" same det_oid"</dd>
                <dt>"rejected"</dt><dd>{format::count(a.rejected)}</dd>
                <dt>"link"</dt><dd class=if plaintext { "warn" } else { "" } data-link=a.link.clone()>{link}{plaintext.then_some(" — not authenticated")}</dd>
                <dt>"not its cameras"</dt><dd data-denied=a.denied>{format::count(a.denied)}{(!a.last_denied.is_empty()).then(|| format!(" · last: {}", a.last_denied))}</dd>
                {(!a.last_refusal.is_empty()).then(|| view! { <dt>"refused"</dt><dd class="warn">{a.last_refusal.clone()}</dd> })}
                {(a.epochs_started > 0).then(|| view! { <dt>"new epochs"</dt><dd class="warn">{format::count(a.epochs_started)}" · last: "{a.last_new_epoch.clone()}</dd> })}
                {(!a.buffer_disk_fault.is_empty()).then(|| view! { <dt>"buffer disk"</dt><dd class="warn">{a.buffer_disk_fault.clone()}</dd> })}
                <dt>"version · peer"</dt><dd>{a.version.clone()}" · "{a.peer.clone()}</dd>
            </dl>
            <table class="cameras">
                <thead><tr><th>"Camera"</th><th class="num">"Events"</th><th>"Last event"</th><th>"Capture"</th><th>"Footage"</th><th>"Completeness (24 h)"</th></tr></thead>
                <tbody>
                    {cameras.into_iter().map(|c| {
                        let capture = if c.mode.is_empty() {
                            view! { <span class="muted">"none"</span> }.into_any()
                        } else {
                            let title = if c.detail.is_empty() {
                                format!("newest frame {}", format::time_ms(c.last_frame_ms))
                            } else {
                                c.detail.clone()
                            };
                            view! {
                                <span class=format!("dot {}", c.state) title=title></span>
                                {c.mode.clone()}" · "{c.state.clone()}
                            }.into_any()
                        };
                        view! {
                            <tr data-camera=c.camera_oid data-state=c.state.clone()>
                                <td>{c.camera_oid}</td>
                                <td class="num">{format::count(c.events)}</td>
                                <td>{format::time_ms(c.last_event_ms)}</td>
                                <td>{capture}</td>
                                <td>{(!c.mode.is_empty()).then(|| format!("{} snapshots · {} clips", format::count(c.snapshots), format::count(c.clips)))}</td>
                                <td class=if c.completeness == "complete" || c.completeness.is_empty() { "" } else { "warn" } data-completeness=c.completeness.clone()>
                                    {c.completeness.clone()}
                                    {(!c.gaps.is_empty()).then(|| view! {
                                        <ul class="gaps">{c.gaps.iter().map(|g| view! { <li>{g.clone()}</li> }).collect_view()}</ul>
                                    })}
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
}

#[component]
fn Cluster(c: ClusterTable) -> impl IntoView {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), format::count);
    view! {
        <section class="card cluster" data-cluster-node=c.node_id.clone()>
            <h2>"Cluster"<span class="muted">" · as node "{c.node_id.clone()}" sees it, "{format::time_ms(c.at_ms)}</span></h2>
            <table class="nodes">
                <thead><tr><th>"Node"</th><th>"gRPC"</th><th>"HTTP"</th><th class="num">"Partitions"</th></tr></thead>
                <tbody>
                    {c.nodes.into_iter().map(|n| {
                        let id = n.node_id.clone();
                        view! {
                            <tr data-node=id>
                                <td>{n.node_id}</td><td>{n.grpc}</td><td>{n.http}</td>
                                <td class="num">{n.partitions}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
            {(!c.unreachable.is_empty()).then(|| view! {
                <ul class="warn">{c.unreachable.into_iter().map(|u| view! { <li>"unreachable: "{u}</li> }).collect_view()}</ul>
            })}
            <table class="partitions">
                <thead><tr><th class="num">"Partition"</th><th>"Owner"</th><th class="num">"Applied seq"</th><th class="num">"Lag"</th><th class="num">"Checkpoint age"</th><th class="num">"Lost seqs"</th></tr></thead>
                <tbody>
                    {c.partitions.into_iter().map(|p| {
                        let behind = p.lag.is_some_and(|l| l > 0);
                        let lost = p.lost_seqs.is_some_and(|l| l > 0);
                        view! {
                            <tr data-partition=p.partition data-owner=p.owner.clone().unwrap_or_default()>
                                <td class="num">{p.partition}</td>
                                <td class=if p.owner.is_none() { "warn" } else { "" }>{p.owner.clone().unwrap_or_else(|| "none".into())}</td>
                                <td class="num">{opt(p.applied_seq)}</td>
                                <td class=if behind { "num warn" } else { "num" }>{opt(p.lag)}</td>
                                <td class="num">{p.checkpoint_age_s.map_or_else(|| "-".to_string(), |a| format!("{a:.0} s"))}</td>
                                <td class=if lost { "num warn" } else { "num" } data-lost=p.lost_seqs.unwrap_or_default()>{opt(p.lost_seqs)}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
}
