//! Refusals of anonymous requests, coalesced so that a flood of requests
//! without a valid credential cannot grow the log without bound.
//!
//! A refusal whose actor is a principal (a user, a token, the admin token)
//! is always recorded: it names who was refused, and that principal holds a
//! credential someone can revoke. A refusal of an *anonymous* request (no
//! credential, a wrong or expired one, a cross-site request without a
//! session, a login from a locked-out address) is recorded at most once per
//! source address per minute, and at most [`ANONYMOUS_REFUSALS_PER_MINUTE`]
//! times per minute in all. The ones left out are counted, and the count is
//! written into the detail of the next anonymous refusal recorded
//! (`"coalesced_before":{"refusals":n,"minute_ms":t}`: `n` refusals in the
//! minute starting at `t` were not recorded one by one). So the log grows by
//! at most [`ANONYMOUS_REFUSALS_PER_MINUTE`] records a minute under any
//! anonymous flood, and every refusal is still counted; the count of the
//! last minute of a flood is written with the next anonymous refusal.

use std::{collections::HashSet, net::IpAddr};

/// Anonymous refusals recorded one by one per minute, from all addresses
/// together; past it they are counted only (see the module doc). 120 a
/// minute is ~35 KiB of log a minute at most (~50 MiB a day under a
/// sustained flood, cut by `audit.retention` like the rest).
pub const ANONYMOUS_REFUSALS_PER_MINUTE: usize = 120;

/// The window anonymous refusals are coalesced over.
pub const REFUSAL_WINDOW_MS: i64 = 60_000;

/// Refusals not recorded one by one in an earlier window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub refusals: u64,
    /// The window's start (Unix ms).
    pub minute_ms: i64,
}

/// What to do with one anonymous refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Record it (with the count carried from an earlier window, if any).
    Record(Option<Carried>),
    /// Count it only.
    Coalesce,
}

/// The current window: the addresses recorded in it (at most
/// [`ANONYMOUS_REFUSALS_PER_MINUTE`]) and how many were counted only.
#[derive(Debug, Default)]
pub struct Gate {
    window_ms: i64,
    recorded: HashSet<Option<IpAddr>>,
    coalesced: u64,
    /// Counted in a window that ended before its count was written.
    carried: Option<Carried>,
}

impl Gate {
    /// Whether an anonymous refusal from `ip` at `now_ms` is recorded.
    pub fn admit(&mut self, ip: Option<IpAddr>, now_ms: i64) -> Admit {
        let window = now_ms - now_ms.rem_euclid(REFUSAL_WINDOW_MS);
        if window != self.window_ms {
            if self.coalesced > 0 {
                let c = self.carried.get_or_insert(Carried {
                    refusals: 0,
                    minute_ms: self.window_ms,
                });
                c.refusals += self.coalesced;
            }
            self.window_ms = window;
            self.recorded.clear();
            self.coalesced = 0;
        }
        if self.recorded.contains(&ip) || self.recorded.len() >= ANONYMOUS_REFUSALS_PER_MINUTE {
            self.coalesced += 1;
            return Admit::Coalesce;
        }
        self.recorded.insert(ip);
        Admit::Record(self.carried.take())
    }

    /// A recorded refusal's write failed: its carried count goes back.
    pub fn restore(&mut self, carried: Option<Carried>) {
        if let Some(c) = carried {
            let mine = self.carried.get_or_insert(Carried {
                refusals: 0,
                minute_ms: c.minute_ms,
            });
            mine.refusals += c.refusals;
            mine.minute_ms = mine.minute_ms.min(c.minute_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn an_anonymous_flood_is_recorded_once_per_address_per_minute_and_counted() {
        let mut g = Gate::default();
        let t0 = 1_764_480_000_000; // a whole minute
        assert_eq!(g.admit(ip(1), t0), Admit::Record(None));
        for i in 0..1000 {
            assert_eq!(g.admit(ip(1), t0 + i), Admit::Coalesce);
        }
        assert_eq!(g.admit(ip(2), t0 + 5), Admit::Record(None));
        // The next minute: recorded again, carrying the count.
        assert_eq!(
            g.admit(ip(2), t0 + 60_000),
            Admit::Record(Some(Carried {
                refusals: 1000,
                minute_ms: t0
            }))
        );
        assert_eq!(g.admit(ip(1), t0 + 60_001), Admit::Record(None));
    }

    #[test]
    fn many_addresses_are_recorded_at_most_the_cap_a_minute() {
        let mut g = Gate::default();
        let t0 = 1_764_480_000_000;
        let recorded = (0..10_000u32)
            .filter(|i| {
                let a = Some(IpAddr::from(i.to_be_bytes()));
                g.admit(a, t0 + i64::from(*i % 60_000)) != Admit::Coalesce
            })
            .count();
        assert_eq!(recorded, ANONYMOUS_REFUSALS_PER_MINUTE);
        assert!(g.recorded.len() <= ANONYMOUS_REFUSALS_PER_MINUTE);
        match g.admit(ip(1), t0 + 60_000) {
            Admit::Record(Some(c)) => {
                assert_eq!(c.refusals, 10_000 - ANONYMOUS_REFUSALS_PER_MINUTE as u64)
            }
            other => panic!("{other:?}"),
        }
    }
}
