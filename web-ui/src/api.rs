//! Server functions: called in-process while rendering on the server, and
//! over `POST /api/<name>` from the browser. Relative ranges ("last 1 h")
//! are resolved with the core's clock.

use leptos::prelude::*;

use crate::model::{
    AgentRow, AuditFilter, AuditPage, AuditQuery, EventDetail, EventRow, QuarantinePage,
    SearchPage, SearchQuery, Timeline, TopItems, Totals,
};

/// A time range as the pages ask for it: `5m`, `15m`, `1h`, `24h`, `7d`, or
/// `custom` with `from` and `to` given as epoch milliseconds or as UTC
/// date-times (`2026-11-25 14:00:00`).
pub fn resolve_range(range: &str, from: &str, to: &str, now_ms: i64) -> Result<(i64, i64), String> {
    let span = match range {
        "5m" => 5 * 60_000,
        "15m" => 15 * 60_000,
        "1h" => 3_600_000,
        "24h" => 86_400_000,
        "7d" => 7 * 86_400_000,
        "custom" => {
            let (from_ms, to_ms) = (parse_time("from", from)?, parse_time("to", to)?);
            if to_ms <= from_ms {
                return Err(format!("field `to`: {to} is not after `from` {from}"));
            }
            return Ok((from_ms, to_ms));
        }
        other => {
            return Err(format!(
                "field `range`: {other:?} is not one of 5m, 15m, 1h, 24h, 7d, custom"
            ))
        }
    };
    // The current minute is included: aggregates are per minute.
    Ok((now_ms - span, now_ms + 60_000))
}

/// Epoch milliseconds, or a UTC date-time.
fn parse_time(field: &str, v: &str) -> Result<i64, String> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|e| {
        format!("field `{field}`: {v:?} is neither epoch ms nor a date-time like 2026-11-25 14:00:00 ({e})")
    })?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("field `{field}`: {v:?} is before 1970"))
}

#[server(endpoint = "get_totals")]
pub async fn get_totals() -> Result<Totals, ServerFnError> {
    crate::backend::call(|b| b.totals()).await
}

#[server(endpoint = "get_latest")]
pub async fn get_latest(limit: u32) -> Result<Vec<EventRow>, ServerFnError> {
    crate::backend::call(move |b| b.latest(limit.min(500) as usize)).await
}

#[server(endpoint = "get_top_items")]
pub async fn get_top_items(
    range: String,
    from: String,
    to: String,
    x: u32,
) -> Result<TopItems, ServerFnError> {
    crate::backend::call(move |b| {
        if x == 0 || x > 100 {
            return Err(format!("field `x`: {x} is not between 1 and 100"));
        }
        let (from, to) = resolve_range(&range, &from, &to, b.now_ms())?;
        b.top_items(from, to, x)
    })
    .await
}

#[server(endpoint = "get_timeline")]
pub async fn get_timeline(
    range: String,
    from: String,
    to: String,
    by: String,
) -> Result<Timeline, ServerFnError> {
    crate::backend::call(move |b| {
        let (from, to) = resolve_range(&range, &from, &to, b.now_ms())?;
        b.timeline(from, to, &by)
    })
    .await
}

#[server(endpoint = "search_events")]
pub async fn search_events(query: SearchQuery) -> Result<SearchPage, ServerFnError> {
    crate::backend::call(move |b| b.search(&query)).await
}

#[server(endpoint = "get_event")]
pub async fn get_event(det_oid: i64) -> Result<Option<EventDetail>, ServerFnError> {
    crate::backend::call(move |b| b.event(det_oid)).await
}

#[server(endpoint = "get_whoami")]
pub async fn get_whoami() -> Result<crate::model::WhoAmI, ServerFnError> {
    crate::backend::call(|b| Ok(b.whoami())).await
}

#[server(endpoint = "get_fleet")]
pub async fn get_fleet() -> Result<Vec<AgentRow>, ServerFnError> {
    crate::backend::call(|b| b.fleet()).await
}

#[server(endpoint = "get_cluster")]
pub async fn get_cluster() -> Result<Option<crate::model::ClusterTable>, ServerFnError> {
    crate::backend::call(|b| b.cluster()).await
}

#[server(endpoint = "get_quarantine")]
pub async fn get_quarantine(page_token: String) -> Result<QuarantinePage, ServerFnError> {
    crate::backend::call(move |b| b.quarantine(&page_token)).await
}

/// Checks the audit page's form: numbers are numbers, `to` is after
/// `from`, at most one of `before` and `after`. The action and the actor
/// are checked by the core (it knows the names).
pub fn parse_audit_query(q: &AuditQuery) -> Result<AuditFilter, String> {
    fn text(v: &str) -> Option<String> {
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }
    fn num<T: std::str::FromStr>(field: &str, v: &str) -> Result<Option<T>, String> {
        match text(v) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("field `{field}`: {v:?} is not a whole number")),
        }
    }
    let from_ms = text(&q.from).map(|v| parse_time("from", &v)).transpose()?;
    let to_ms = text(&q.to).map(|v| parse_time("to", &v)).transpose()?;
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if t <= f {
            return Err(format!(
                "field `to`: {:?} is not after `from` {:?}",
                q.to.trim(),
                q.from.trim()
            ));
        }
    }
    let (before, after) = (num("before", &q.before)?, num("after", &q.after)?);
    if before.is_some() && after.is_some() {
        return Err("field `after`: give `before` or `after`, not both".into());
    }
    Ok(AuditFilter {
        actor: text(&q.actor),
        action: text(&q.action),
        camera: num("camera", &q.camera)?,
        location: num("location", &q.location)?,
        from_ms,
        to_ms,
        before,
        after,
        limit: num("limit", &q.limit)?,
    })
}

/// A page of the audit log (admin only; `/api/get_audit…` is admin-only in
/// the core's HTTP layer as well). At a fixed path, `POST /api/get_audit`.
#[server(endpoint = "get_audit")]
pub async fn get_audit(query: AuditQuery) -> Result<AuditPage, ServerFnError> {
    crate::backend::call(move |b| b.audit(&parse_audit_query(&query)?)).await
}

/// The audit actions the page's filter offers (admin only), at
/// `POST /api/get_audit_actions`.
#[server(endpoint = "get_audit_actions")]
pub async fn get_audit_actions() -> Result<Vec<String>, ServerFnError> {
    crate::backend::call(|b| b.audit_actions()).await
}

#[cfg(test)]
mod tests {
    use super::{parse_audit_query, resolve_range};
    use crate::model::{AuditFilter, AuditQuery};

    #[test]
    fn bad_audit_filters_name_the_field() {
        let bad = |q: AuditQuery| parse_audit_query(&q).unwrap_err();
        assert!(bad(AuditQuery {
            camera: "three".into(),
            ..AuditQuery::default()
        })
        .starts_with("field `camera`: \"three\" is not a whole number"));
        assert!(bad(AuditQuery {
            from: "2026-11-30 10:00:00".into(),
            to: "2026-11-30 09:00:00".into(),
            ..AuditQuery::default()
        })
        .starts_with("field `to`: "));
        assert!(bad(AuditQuery {
            before: "9".into(),
            after: "3".into(),
            ..AuditQuery::default()
        })
        .starts_with("field `after`: "));
        assert!(bad(AuditQuery {
            before: "-1".into(),
            ..AuditQuery::default()
        })
        .starts_with("field `before`: "));
    }

    #[test]
    fn an_empty_audit_form_asks_for_everything_and_times_take_dates() {
        assert_eq!(
            parse_audit_query(&AuditQuery::default()),
            Ok(AuditFilter::default())
        );
        let f = parse_audit_query(&AuditQuery {
            actor: " alice ".into(),
            action: "login_succeeded".into(),
            camera: "3".into(),
            from: "1970-01-01 00:00:01".into(),
            to: "60000".into(),
            after: "12".into(),
            ..AuditQuery::default()
        })
        .unwrap();
        assert_eq!(f.actor.as_deref(), Some("alice"));
        assert_eq!(f.action.as_deref(), Some("login_succeeded"));
        assert_eq!(
            (f.camera, f.from_ms, f.to_ms),
            (Some(3), Some(1000), Some(60_000))
        );
        assert_eq!((f.before, f.after), (None, Some(12)));
    }

    #[test]
    fn relative_ranges_end_after_the_current_minute() {
        assert_eq!(
            resolve_range("1h", "", "", 10_000_000),
            Ok((6_400_000, 10_060_000))
        );
    }

    #[test]
    fn custom_ranges_take_epoch_ms_or_utc_date_times() {
        assert_eq!(resolve_range("custom", "5", "9", 0), Ok((5, 9)));
        assert_eq!(
            resolve_range("custom", "1970-01-01 00:00:01", "1970-01-01T00:01:00Z", 0),
            Ok((1_000, 60_000))
        );
    }

    #[test]
    fn bad_ranges_name_the_field() {
        assert!(resolve_range("2h", "", "", 0)
            .unwrap_err()
            .contains("field `range`"));
        assert!(resolve_range("custom", "5", "5", 0)
            .unwrap_err()
            .contains("field `to`"));
        assert!(resolve_range("custom", "soon", "5", 0)
            .unwrap_err()
            .contains("field `from`"));
    }
}
