//! Formatting shared by server and browser. Times are shown in UTC so that
//! the server's rendering and the browser's hydration print the same text.

use std::time::{Duration, UNIX_EPOCH};

/// `2026-11-25 14:02:11.250Z`.
pub fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t)
        .to_string()
        .replacen('T', " ", 1)
}

/// `14:02:11Z` (the date is left out).
pub fn clock_ms(ms: i64) -> String {
    let full = time_ms(ms);
    full.split(' ')
        .nth(1)
        .map(|t| format!("{}Z", &t[..8]))
        .unwrap_or(full)
}

/// `12,345`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A location's name, or its oid flagged as not in Dataset B.
pub fn location(name: &Option<String>, oid: i64) -> String {
    match name {
        Some(n) => n.clone(),
        None => format!("#{oid} (not in Dataset B)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_stable() {
        assert_eq!(time_ms(1_764_079_331_250), "2025-11-25 14:02:11.250Z");
        assert_eq!(clock_ms(1_764_079_331_250), "14:02:11Z");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(location(&None, 7), "#7 (not in Dataset B)");
    }
}
