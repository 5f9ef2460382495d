//! Server functions: called in-process while rendering on the server, and
//! over `POST /api/<name>` from the browser. Relative ranges ("last 1 h")
//! are resolved with the core's clock.

use leptos::prelude::*;

use crate::model::{
    AgentRow, EventDetail, EventRow, QuarantinePage, SearchPage, SearchQuery, Timeline, TopItems,
    Totals,
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

#[server]
pub async fn get_totals() -> Result<Totals, ServerFnError> {
    crate::backend::call(|b| b.totals()).await
}

#[server]
pub async fn get_latest(limit: u32) -> Result<Vec<EventRow>, ServerFnError> {
    crate::backend::call(move |b| b.latest(limit.min(500) as usize)).await
}

#[server]
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

#[server]
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

#[server]
pub async fn search_events(query: SearchQuery) -> Result<SearchPage, ServerFnError> {
    crate::backend::call(move |b| b.search(&query)).await
}

#[server]
pub async fn get_event(det_oid: i64) -> Result<Option<EventDetail>, ServerFnError> {
    crate::backend::call(move |b| b.event(det_oid)).await
}

#[server]
pub async fn get_whoami() -> Result<crate::model::WhoAmI, ServerFnError> {
    crate::backend::call(|b| Ok(b.whoami())).await
}

#[server]
pub async fn get_fleet() -> Result<Vec<AgentRow>, ServerFnError> {
    crate::backend::call(|b| b.fleet()).await
}

#[server]
pub async fn get_quarantine(page_token: String) -> Result<QuarantinePage, ServerFnError> {
    crate::backend::call(move |b| b.quarantine(&page_token)).await
}

#[cfg(test)]
mod tests {
    use super::resolve_range;

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
