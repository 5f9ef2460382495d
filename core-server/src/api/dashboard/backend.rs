//! The dashboard's view of the core: [`sightline_web::backend::Backend`]
//! over the store, Dataset B, the search index and the fleet. Every method
//! runs on a blocking thread (the server functions see to it).

use std::sync::Arc;

use sightline_proto::v1::{EventFilter, JoinedEvent};
use sightline_web::{
    backend::Backend,
    model::{
        AgentRow, AuditFilter, AuditPage, AuditRow, CameraRow, ClusterNodeRow, ClusterPartitionRow,
        ClusterTable, EventDetail, EventRow, LocationTop, QuarantinePage, QuarantineRow,
        SearchPage, SearchQuery, Series, Timeline, TopItems, Totals,
    },
};

use super::feed::{row, CamerasSeen};
use crate::{
    access::{Principal, Role},
    cluster::query::ClusterQuery,
    enrich::{LocationTable, Locations},
    fleet::Fleet,
    search::{SearchIndex, SearchRequest},
    store::{
        keys::Bucket,
        views::{TimelineBy, MAX_TIME_MS},
        Store,
    },
};

/// Series a timeline shows before folding the rest into "other".
const TIMELINE_SERIES: usize = 7;
/// Largest X of "top X items per location".
pub const MAX_TOP_X: u32 = 100;
/// Most events the live page's first load asks for.
pub const MAX_LATEST: usize = 500;
/// Events the quarantine page scans for unmatched locations.
const UNMATCHED_SCAN: usize = 20_000;
/// Records on a page of the audit page when the form does not say
/// (at most [`crate::audit::MAX_PAGE`]).
pub const AUDIT_PAGE: usize = 50;

/// The dashboard's view of the core for one principal: what it reads is
/// limited to the principal's scope, and footage to investigators.
#[derive(Clone)]
pub struct CoreBackend {
    pub store: Arc<Store>,
    pub locations: Arc<Locations>,
    pub fleet: Arc<Fleet>,
    pub cameras: Arc<CamerasSeen>,
    pub search: Arc<SearchIndex>,
    /// Who is asking (set per request by the dashboard's router).
    pub who: Principal,
    /// The asking session's CSRF token, if a session asks.
    pub csrf: Option<String>,
    /// Where searches and top-X queries are recorded (none in tests).
    pub audit: Option<crate::audit::AuditLog>,
    /// The asking client's address (set per request), recorded as the
    /// `source` of what it asks.
    pub peer: Option<std::net::SocketAddr>,
    /// Cluster mode: events, counts, search and the fleet are read across
    /// every partition (from their owners, as the query API does); this
    /// node's own `store` and `search` hold none of them.
    pub cluster: Option<Arc<ClusterQuery>>,
}

/// Cluster mode: runs `f` to its end on this (blocking) thread.
fn across<T>(f: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, String> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| format!("the dashboard's backend runs outside the runtime: {e}"))?;
    rt.block_on(f).map_err(|s| s.message().to_string())
}

impl CoreBackend {
    fn in_scope(&self, e: &JoinedEvent) -> bool {
        e.detection
            .as_ref()
            .is_some_and(|d| self.who.scope.allows(d.geographical_location_oid))
    }

    /// Records what the dashboard's caller asked (no record, no answer);
    /// the filters left unset (`null`) are left out.
    fn record(
        &self,
        action: crate::audit::Action,
        mut detail: serde_json::Value,
    ) -> Result<(), String> {
        if let Some(m) = detail.as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
        self.record_entry(self.who.entry(action).detail(detail))
    }

    /// Records `entry`, from the asking client's address.
    fn record_entry(&self, entry: crate::audit::Entry) -> Result<(), String> {
        match &self.audit {
            Some(a) => a
                .record_blocking(entry.from(self.peer))
                .map(|_| ())
                .map_err(|e| sightline_proto::ApiError::from(e).message),
            None => Ok(()),
        }
    }

    fn require(&self, role: Role, what: &str) -> Result<(), String> {
        self.who.require(role, what).map_err(|e| e.message)
    }
}

/// Events the newest-events view scans at most to fill a scoped page.
const MAX_LATEST_SCAN: usize = 20_000;

/// The Fleet page's completeness window.
const COMPLETENESS_WINDOW_MS: i64 = 24 * 3600 * 1000;

fn time_text(ms: i64) -> String {
    crate::cases::export::rfc3339(ms)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A range the pages ask for: both ends from 1970 to the end of 9999
/// ([`MAX_TIME_MS`]), `to` after `from`; checked before any work.
fn check_range(from_ms: i64, to_ms: i64) -> Result<(), String> {
    for (field, v) in [("from", from_ms), ("to", to_ms)] {
        if !(0..=MAX_TIME_MS).contains(&v) {
            return Err(format!(
                "field `{field}`: {v} is outside 0..={MAX_TIME_MS} (epoch ms, 1970 to the end of 9999)"
            ));
        }
    }
    if to_ms <= from_ms {
        return Err(format!("field `to`: {to_ms} is not after `from` {from_ms}"));
    }
    Ok(())
}

impl CoreBackend {
    /// Joins with Dataset B and attaches media, as the query API does.
    fn with_media(&self, mut events: Vec<JoinedEvent>) -> Result<Vec<JoinedEvent>, String> {
        // In cluster mode the partitions' owners gave the media already.
        if self.cluster.is_none() {
            self.store.fill_media(&mut events).map_err(err)?;
        }
        Ok(events)
    }

    fn rows(&self, events: Vec<JoinedEvent>) -> Result<Vec<EventRow>, String> {
        let table = self.locations.current();
        Ok(self
            .with_media(events)?
            .iter()
            .map(|e| self.row(e, &table))
            .collect())
    }

    /// An event's row as this principal may see it (its location's name
    /// from `table`): no thumbnail for a viewer.
    fn row(&self, e: &JoinedEvent, table: &LocationTable) -> EventRow {
        let mut r = row(e, table);
        if self.who.role < Role::Investigator {
            r.thumbnail = None;
        }
        r
    }
}

impl Backend for CoreBackend {
    fn totals(&self) -> Result<Totals, String> {
        if let Some(c) = &self.cluster {
            if self.who.scope.is_all() {
                return Ok(super::feed::totals(&across(c.counters())?));
            }
            return Ok(Totals {
                stored: across(c.scoped_stored(&self.who.scope))?,
                at_ms: sightline_proto::now_ms(),
                ..Totals::default()
            });
        }
        if self.who.scope.is_all() {
            return Ok(super::feed::totals(&self.store.counters().map_err(err)?));
        }
        // A scoped principal sees its locations' stored events only (from
        // the aggregates); the other counters are not per location.
        Ok(Totals {
            stored: super::feed::scoped_stored(&self.store, &self.who.scope).map_err(err)?,
            at_ms: sightline_proto::now_ms(),
            ..Totals::default()
        })
    }

    fn latest(&self, limit: usize) -> Result<Vec<EventRow>, String> {
        if limit > MAX_LATEST {
            return Err(format!("field `limit`: {limit} is more than {MAX_LATEST}"));
        }
        let events = match &self.cluster {
            Some(c) => across(c.latest(limit, |e| self.in_scope(e)))?,
            None => self
                .store
                .latest_events(limit, limit.max(MAX_LATEST_SCAN), |e| self.in_scope(e))
                .map_err(err)?,
        };
        self.rows(events)
    }

    fn top_items(&self, from_ms: i64, to_ms: i64, x: u32) -> Result<TopItems, String> {
        if !(1..=MAX_TOP_X).contains(&x) {
            return Err(format!("field `x`: {x} is not between 1 and {MAX_TOP_X}"));
        }
        check_range(from_ms, to_ms)?;
        self.record(
            crate::audit::Action::TopItems,
            serde_json::json!({ "x": x, "from_ms": from_ms, "to_ms": to_ms, "via": "dashboard" }),
        )?;
        let counts = match &self.cluster {
            Some(c) => across(c.top_items(&self.who.scope, from_ms, to_ms, x as usize, None))?,
            None => crate::access::scoped_top_items(
                &self.store,
                &self.who.scope,
                from_ms,
                to_ms,
                x as usize,
                None,
            )
            .map_err(err)?,
        };
        let table = self.locations.current();
        Ok(TopItems {
            from_ms: Bucket::Minute.floor(from_ms),
            to_ms: Bucket::Minute.floor(to_ms),
            x,
            locations: counts
                .into_iter()
                .map(|c| LocationTop {
                    location_oid: c.location,
                    location: table
                        .get(c.location)
                        .map(|l| l.geographical_location.clone()),
                    total: c.total,
                    items: c.items,
                })
                .collect(),
        })
    }

    fn timeline(&self, from_ms: i64, to_ms: i64, by: &str) -> Result<Timeline, String> {
        let by = match by {
            "item" => TimelineBy::Item,
            "location" => TimelineBy::Location,
            other => return Err(format!("field `by`: {other:?} is not item or location")),
        };
        check_range(from_ms, to_ms)?;
        // The store picks the bucket width: at most MAX_TIMELINE_BUCKETS.
        let scope = &self.who.scope;
        let t = match &self.cluster {
            Some(c) => across(c.timeline(scope, from_ms, to_ms, by))?,
            None => self
                .store
                .timeline_in(from_ms, to_ms, by, |l| scope.allows(l))
                .map_err(err)?,
        };
        let (from, bucket_ms, buckets, all) = (t.from_ms, t.bucket_ms, t.buckets, t.series);
        let table = self.locations.current();
        let name = |key: String| match by {
            TimelineBy::Item => key,
            TimelineBy::Location => {
                let oid = key.parse::<i64>().unwrap_or_default();
                sightline_web::format::location(
                    &table.get(oid).map(|l| l.geographical_location.clone()),
                    oid,
                )
            }
        };
        let mut series: Vec<Series> = Vec::new();
        let mut other = vec![0u64; buckets];
        for (i, s) in all.into_iter().enumerate() {
            if i < TIMELINE_SERIES {
                series.push(Series {
                    name: name(s.key),
                    total: s.counts.iter().sum(),
                    counts: s.counts,
                });
            } else {
                for (o, c) in other.iter_mut().zip(s.counts) {
                    *o += c;
                }
            }
        }
        if other.iter().any(|&c| c > 0) {
            series.push(Series {
                name: "other".into(),
                total: other.iter().sum(),
                counts: other,
            });
        }
        Ok(Timeline {
            from_ms: from,
            bucket_ms,
            buckets,
            series,
        })
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchPage, String> {
        self.record(
            crate::audit::Action::Search,
            serde_json::json!({
                "query": query.query, "location": query.location_oid, "camera": query.camera_oid,
                "item": query.item, "from_ms": query.from_ms, "to_ms": query.to_ms, "via": "dashboard",
            }),
        )?;
        let req = SearchRequest {
            query: query.query.clone(),
            location_oid: query.location_oid,
            scope_locations: self
                .who
                .scope
                .locations
                .as_ref()
                .map(|s| s.iter().copied().collect()),
            camera_oid: query.camera_oid,
            item_name: query.item.clone(),
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            page_size: 50,
            page_token: query.page_token.clone(),
        };
        if let Some(c) = &self.cluster {
            let r = sightline_proto::v1::SearchRequest {
                query: req.query,
                geographical_location_oid: req.location_oid,
                video_camera_oid: req.camera_oid,
                item_name: req.item_name,
                from_ms: req.from_ms,
                to_ms: req.to_ms,
                page_size: req.page_size as u32,
                page_token: req.page_token,
            };
            let found = across(c.search(&self.who.scope, r))?;
            let table = self.locations.current();
            return Ok(SearchPage {
                events: found.events.iter().map(|e| self.row(e, &table)).collect(),
                total_hits: found.total_hits,
                next_page_token: found.next_page_token,
            });
        }
        let (events, hits) = self
            .search
            .search_joined(&self.store, &self.locations, &req)
            .map_err(err)?;
        let table = self.locations.current();
        Ok(SearchPage {
            events: events.iter().map(|e| self.row(e, &table)).collect(),
            total_hits: hits.total,
            next_page_token: hits.next_page_token,
        })
    }

    fn event(&self, det_oid: i64) -> Result<Option<EventDetail>, String> {
        // Outside the scope reads as absent.
        let ev = match &self.cluster {
            Some(c) => across(c.get_event(&self.who.scope, det_oid))?,
            None => self.store.get_event(det_oid).map_err(err)?,
        };
        let Some(ev) = ev.filter(|e| self.in_scope(e)) else {
            return Ok(None);
        };
        if let Some(d) = &ev.detection {
            // Who looked at which event, as GetEvent over gRPC.
            self.record_entry(
                self.who
                    .entry(crate::audit::Action::GetEvent)
                    .event(det_oid, d.video_camera_oid, d.geographical_location_oid)
                    .detail(serde_json::json!({ "via": "dashboard" })),
            )?;
        }
        let footage = self.who.role >= Role::Investigator;
        let mut ev = self
            .with_media(vec![ev])?
            .pop()
            .ok_or_else(|| "event vanished".to_string())?;
        let table = self.locations.current();
        table.join(&mut ev);
        let d = ev.detection.clone().unwrap_or_default();
        let media = |kind: &str| {
            ev.media
                .iter()
                .find(|m| m.kind == kind)
                .map(|m| m.sha256.clone())
        };
        let pending = d
            .media_expected
            .iter()
            .filter(|k| !ev.media.iter().any(|m| &m.kind == *k))
            .cloned()
            .collect();
        // The same camera, a minute either side.
        let filter = EventFilter {
            video_camera_oid: Some(d.video_camera_oid),
            ..EventFilter::default()
        };
        let (from, to) = (d.timestamp_detected - 60_000, d.timestamp_detected + 60_000);
        let (around, _) = match &self.cluster {
            Some(c) => across(c.list_events(&self.who.scope, from, to, Some(filter), 200, ""))?,
            None => self
                .store
                .list_events(from, to, Some(&filter), 200, "")
                .map_err(err)?,
        };
        let mut around: Vec<JoinedEvent> = around
            .into_iter()
            .filter(|e| e.detection.as_ref().and_then(|x| x.detection_oid) != Some(det_oid))
            .filter(|e| self.in_scope(e))
            .collect();
        around.sort_by_key(|e| {
            let t = e
                .detection
                .as_ref()
                .map(|x| x.timestamp_detected)
                .unwrap_or_default();
            (t - d.timestamp_detected).abs()
        });
        around.truncate(20);
        around.sort_by_key(|e| e.detection.as_ref().map(|x| x.timestamp_detected));
        let mut location_columns: Vec<(String, String)> = ev
            .location
            .as_ref()
            .map(|l| {
                l.extra
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        location_columns.sort();
        let mut attributes: Vec<(String, String)> = d
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attributes.sort();
        Ok(Some(EventDetail {
            // As this principal may see it (a viewer's has no thumbnail).
            row: self.row(&ev, &table),
            seq: ev.seq,
            accepted_ms: ev.accepted_ms,
            confidence: d.confidence,
            location_columns,
            attributes,
            // A viewer sees no footage (not even its address).
            snapshot: media("snapshot").filter(|_| footage),
            clip: media("clip").filter(|_| footage),
            pending: if footage { pending } else { Vec::new() },
            footage_allowed: footage,
            nearby: self.rows(around)?,
        }))
    }

    fn fleet(&self) -> Result<Vec<AgentRow>, String> {
        self.require(Role::Admin, "the fleet view")?;
        let (agents, received) = match &self.cluster {
            // Every node's agents, and the cameras' sequences of every partition.
            Some(c) => (
                across(c.fleet(self.fleet.snapshot()))?,
                across(c.received_all())?,
            ),
            None => (
                self.fleet.snapshot(),
                self.store.received_all().map_err(err)?,
            ),
        };
        let complete = crate::completeness::report(
            received,
            &agents,
            sightline_proto::now_ms() - COMPLETENESS_WINDOW_MS,
        );
        let cams = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        Ok(agents
            .into_iter()
            .map(|a| AgentRow {
                cameras: {
                    let mut by_oid = cams.get(&a.agent_id).cloned().unwrap_or_default();
                    for c in &a.cameras {
                        let row = by_oid
                            .entry(c.video_camera_oid)
                            .or_insert_with(|| CameraRow {
                                camera_oid: c.video_camera_oid,
                                ..CameraRow::default()
                            });
                        row.mode = c.mode.clone();
                        row.state = c.state.clone();
                        row.detail = c.detail.clone();
                        row.last_frame_ms = c.last_frame_ms;
                        row.snapshots = c.snapshots;
                        row.clips = c.clips;
                    }
                    for c in complete.cameras.iter().filter(|c| c.agent_id == a.agent_id) {
                        let row = by_oid
                            .entry(c.video_camera_oid)
                            .or_insert_with(|| CameraRow {
                                camera_oid: c.video_camera_oid,
                                ..CameraRow::default()
                            });
                        let (verdict, gaps) = crate::completeness::camera_lines(c, time_text);
                        row.completeness = verdict;
                        row.gaps = gaps;
                    }
                    by_oid.into_values().collect()
                },
                agent_id: a.agent_id,
                connected: a.connected,
                last_seen_ms: a.last_seen_ms,
                acked_seq: a.acked_seq,
                buffer_depth: a.buffer_depth,
                lag: a.lag,
                duplicates_transport: a.duplicates_transport,
                duplicates_semantic: a.duplicates_semantic,
                rejected: a.rejected,
                version: a.version,
                peer: a.peer,
                link: a.link,
                agent_transport: a.agent_transport,
                denied: a.denied,
                last_denied: a.last_denied,
                revoked: a.revoked,
                last_refusal: a.last_refusal,
                epochs_started: a.epochs_started,
                last_new_epoch: a.last_new_epoch,
                buffer_disk_fault: a.buffer_disk_fault,
                oldest_held_ms: a.oldest_held_ms,
            })
            .collect())
    }

    fn cluster(&self) -> Result<Option<ClusterTable>, String> {
        self.require(Role::Admin, "the cluster view")?;
        let Some(c) = &self.cluster else {
            return Ok(None);
        };
        let (status, unreachable) = across(c.status())?;
        let owned = |id: &str| {
            status
                .partitions
                .iter()
                .filter(|p| p.owner.as_deref() == Some(id))
                .count() as u32
        };
        Ok(Some(ClusterTable {
            node_id: c.view.node_id().to_string(),
            nodes: status
                .nodes
                .iter()
                .map(|n| ClusterNodeRow {
                    node_id: n.node_id.clone(),
                    grpc: n.grpc.clone(),
                    http: n.http.clone(),
                    partitions: owned(&n.node_id),
                })
                .collect(),
            partitions: status
                .partitions
                .iter()
                .map(|p| ClusterPartitionRow {
                    partition: p.partition.into(),
                    owner: p.owner.clone(),
                    applied_seq: p.applied_seq,
                    lag: p.lag,
                    checkpoint_age_s: p.checkpoint_age_s,
                    lost_seqs: p.lost_seqs,
                })
                .collect(),
            unreachable,
            at_ms: sightline_proto::now_ms(),
        }))
    }

    fn quarantine(&self, page_token: &str) -> Result<QuarantinePage, String> {
        self.require(Role::Admin, "the quarantine view")?;
        let table = self.locations.current();
        let is_unmatched = |e: &JoinedEvent| {
            e.detection
                .as_ref()
                .is_some_and(|d| table.get(d.geographical_location_oid).is_none())
        };
        let (events, next_page_token, total, unmatched) = match &self.cluster {
            Some(c) => {
                let q = across(c.list_quarantine(100, page_token))?;
                let unmatched = across(c.latest(50, is_unmatched))?;
                (q.events, q.next_page_token, q.total, unmatched)
            }
            None => {
                let (events, next) = self.store.list_quarantine(100, page_token).map_err(err)?;
                let total = self.store.counters().map_err(err)?.rejected;
                let unmatched = self
                    .store
                    .latest_events(50, UNMATCHED_SCAN, is_unmatched)
                    .map_err(err)?;
                (events, next, total, unmatched)
            }
        };
        Ok(QuarantinePage {
            rows: events
                .into_iter()
                .map(|q| QuarantineRow {
                    at_ms: q.quarantined_ms,
                    agent_id: q.agent_id,
                    seq: q.seq,
                    field: q.field,
                    reason: q.reason,
                    received: match &q.event {
                        Some(e) => format!("{:?}", e.detection),
                        None => format!("{} undecodable bytes", q.raw.len()),
                    },
                })
                .collect(),
            total,
            next_page_token,
            unmatched: self.rows(unmatched)?,
        })
    }

    fn audit(&self, f: &AuditFilter) -> Result<AuditPage, String> {
        use crate::audit::{query, query_after, Action, Page};
        self.require(Role::Admin, "the audit log")?;
        let log = self
            .audit
            .as_ref()
            .ok_or("the audit log is not open on this core")?;
        let filter = audit_filter(f)?;
        let limit = f.limit.unwrap_or(AUDIT_PAGE);
        if !(1..=crate::audit::MAX_PAGE).contains(&limit) {
            return Err(format!(
                "field `limit`: {limit} is not within 1..={}",
                crate::audit::MAX_PAGE
            ));
        }
        // Who read the audit log, and what they looked for.
        self.record(
            Action::AuditViewed,
            serde_json::json!({
                "actor": f.actor, "action": f.action, "camera": f.camera, "location": f.location,
                "from_ms": f.from_ms, "to_ms": f.to_ms, "before": f.before, "after": f.after,
            }),
        )?;
        let (records, older_before, newer_after) = match (f.before, f.after) {
            (_, Some(after)) => {
                let p = query_after(log.dir(), &filter, after, limit).map_err(|e| e.message)?;
                let older = p.records.last().map_or(after + 1, |r| r.seq);
                (p.records, (older > 1).then_some(older), p.newer_after)
            }
            (before, None) => {
                let p =
                    query(log.dir(), &filter, &Page { before, limit }).map_err(|e| e.message)?;
                let newer =
                    before.map(|b| p.records.first().map_or(b.saturating_sub(1), |r| r.seq));
                (p.records, p.next_before, newer)
            }
        };
        Ok(AuditPage {
            rows: records.into_iter().map(audit_row).collect(),
            older_before,
            newer_after,
        })
    }

    fn audit_actions(&self) -> Result<Vec<String>, String> {
        self.require(Role::Admin, "the audit log")?;
        Ok(crate::audit::record::ACTIONS
            .iter()
            .map(|(_, n)| n.to_string())
            .collect())
    }

    fn whoami(&self) -> sightline_web::model::WhoAmI {
        sightline_web::model::WhoAmI {
            actor: self.who.actor.clone(),
            role: self.who.role.to_string(),
            admin: self.who.role >= Role::Admin,
            scope: self.who.scope.to_string(),
            csrf: self.csrf.clone().unwrap_or_default(),
        }
    }

    fn now_ms(&self) -> i64 {
        sightline_proto::now_ms()
    }
}

/// The page's filter as the audit log reads it: `actor` is `user:NAME`,
/// `token:NAME`, `agent:ID`, `admin-token`, `anonymous`, `system`, or a bare
/// name meaning `user:NAME`; `action` a stored action name.
fn audit_filter(f: &AuditFilter) -> Result<crate::audit::Filter, String> {
    use crate::audit::{Action, Actor};
    let actor = match f.actor.as_deref() {
        None => None,
        Some(a) if !a.contains(':') && a.parse::<Actor>().is_err() => {
            crate::access::accounts::validate_name("actor", a).map_err(|e| e.message)?;
            Some(Actor::User(a.to_string()))
        }
        Some(a) => Some(
            a.parse::<Actor>()
                .map_err(|e| format!("field `actor`: {e}"))?,
        ),
    };
    let action = f
        .action
        .as_deref()
        .map(|a| a.parse::<Action>())
        .transpose()
        .map_err(|e| format!("field `action`: {e}"))?;
    Ok(crate::audit::Filter {
        actor,
        action,
        camera: f.camera,
        location: f.location,
        since: f.from_ms,
        until: f.to_ms,
    })
}

fn audit_row(r: crate::audit::Record) -> AuditRow {
    AuditRow {
        seq: r.seq,
        time_ms: r.time,
        actor: r.actor.to_string(),
        source: r.source.map(|s| s.to_string()),
        action: r.action.name().to_string(),
        det_oid: r.det_oid,
        camera: r.camera,
        location: r.location,
        object: r.object,
        detail: if r.detail.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(r.detail).to_string()
        },
        outcome: match r.outcome {
            crate::audit::Outcome::Ok => "ok",
            crate::audit::Outcome::Denied => "denied",
            crate::audit::Outcome::Error => "error",
        }
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leptos::prelude::{provide_context, Owner};
    use sightline_web::backend::SharedBackend;

    /// A far-future range through the dashboard's server function, as the
    /// browser sends it (`POST /api/get_timeline`): refused with a 400 that
    /// names the field, before any work.
    #[tokio::test]
    async fn a_far_future_timeline_range_answers_400_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store"), false, 8 << 20).unwrap());
        let locations = Arc::new(Locations::new(None).unwrap());
        let hub = crate::api::live::LiveHub::new(8);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let search = SearchIndex::start(
            &dir.path().join("search"),
            store.clone(),
            locations.clone(),
            &hub,
            std::time::Duration::from_millis(50),
            shutdown.clone(),
        )
        .unwrap();
        let backend: SharedBackend = Arc::new(CoreBackend {
            store,
            locations,
            fleet: Arc::new(Fleet::new(Arc::new(crate::metrics::Metrics::new()), vec![])),
            cameras: Arc::default(),
            search,
            who: Principal::admin_token(),
            csrf: None,
            audit: None,
            peer: None,
            cluster: None,
        });
        let owner = Owner::new();
        owner.set();
        provide_context(backend);
        let response = leptos_axum::ResponseOptions::default();
        provide_context(response.clone());
        let far = (MAX_TIME_MS + 1).to_string();
        let e = sightline_web::api::get_timeline("custom".into(), "0".into(), far, "item".into())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `to`: "), "{e}");
        let status = response.0.read().unwrap().status;
        assert_eq!(status.map(|s| s.as_u16()), Some(400));
        // The widest range allowed is answered, in at most
        // MAX_TIMELINE_BUCKETS buckets.
        let t = sightline_web::api::get_timeline(
            "custom".into(),
            "0".into(),
            MAX_TIME_MS.to_string(),
            "item".into(),
        )
        .await
        .unwrap();
        assert!(t.buckets <= crate::store::views::MAX_TIMELINE_BUCKETS);
        shutdown.cancel();
    }

    /// A viewer's event page names no footage at all (not the thumbnail's
    /// address either, which the page's serialised data would carry to the
    /// browser); an investigator's names all three; outside the scope the
    /// event reads as absent.
    #[tokio::test]
    async fn a_viewers_event_detail_names_no_footage_and_an_investigators_names_all() {
        use crate::{
            access::{Credential, Scope},
            store::{cf, keys, CF_DET, CF_EVENTS},
        };
        use prost::Message;
        use sightline_proto::v1::{Detection, MediaRef};

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store"), false, 8 << 20).unwrap());
        let (det, ts) = (77, 1_700_000_000_000);
        let ev = JoinedEvent {
            detection: Some(Detection {
                detection_oid: Some(det),
                timestamp_detected: ts,
                geographical_location_oid: 1,
                video_camera_oid: 101,
                item_name: "backpack".into(),
                ..Default::default()
            }),
            agent_id: "camera-host".into(),
            ..Default::default()
        };
        let db = store.db().unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            cf(&db, CF_EVENTS),
            keys::event_key(ts, det),
            ev.encode_to_vec(),
        );
        batch.put_cf(cf(&db, CF_DET), keys::det_key(det), keys::i64_key(ts));
        drop(db);
        store.write(batch).unwrap();
        let shas: Vec<String> = ["a", "b", "c"].iter().map(|c| c.repeat(64)).collect();
        for (kind, sha) in ["snapshot", "thumbnail", "clip"].iter().zip(&shas) {
            let media = MediaRef {
                kind: kind.to_string(),
                sha256: sha.clone(),
                ..Default::default()
            };
            store.attach_media(&[det], &media, ts, None).unwrap();
        }

        let shutdown = tokio_util::sync::CancellationToken::new();
        let locations = Arc::new(Locations::new(None).unwrap());
        let search = SearchIndex::start(
            &dir.path().join("search"),
            store.clone(),
            locations.clone(),
            &crate::api::live::LiveHub::new(8),
            std::time::Duration::from_millis(50),
            shutdown.clone(),
        )
        .unwrap();
        let as_ = |role: Role, scope: Scope| CoreBackend {
            store: store.clone(),
            locations: locations.clone(),
            fleet: Arc::new(Fleet::new(Arc::new(crate::metrics::Metrics::new()), vec![])),
            cameras: Arc::default(),
            search: search.clone(),
            who: Principal {
                actor: "user:someone".into(),
                role,
                scope,
                credential: Credential::AdminToken,
            },
            csrf: None,
            audit: None,
            peer: None,
            cluster: None,
        };
        let named = |d: &EventDetail| -> Vec<String> {
            let text = serde_json::to_string(d).unwrap();
            shas.iter().filter(|s| text.contains(*s)).cloned().collect()
        };

        let viewer = as_(Role::Viewer, Scope::locations([1]))
            .event(det)
            .unwrap()
            .expect("in scope");
        assert!(!viewer.footage_allowed);
        assert_eq!(named(&viewer), Vec::<String>::new(), "{viewer:?}");
        let investigator = as_(Role::Investigator, Scope::locations([1]))
            .event(det)
            .unwrap()
            .expect("in scope");
        assert_eq!(named(&investigator), shas);
        assert!(as_(Role::Investigator, Scope::locations([2]))
            .event(det)
            .unwrap()
            .is_none());
        shutdown.cancel();
    }

    #[test]
    fn dashboard_ranges_out_of_bounds_are_refused_naming_the_field() {
        assert!(check_range(0, MAX_TIME_MS).is_ok());
        for (from, to, field) in [
            (0, i64::MAX, "field `to`: "),
            (0, MAX_TIME_MS + 1, "field `to`: "),
            (-1, 5, "field `from`: "),
            (i64::MIN, 5, "field `from`: "),
            (5, 5, "field `to`: "),
            (6, 5, "field `to`: "),
        ] {
            let e = check_range(from, to).unwrap_err();
            assert!(e.starts_with(field), "{from}..{to}: {e}");
        }
    }
}
