//! Cluster mode: a partition store's outbox — the events each share of the
//! partition's stream stored, in the same `WriteBatch` as the events
//! themselves, for the owner's publisher to send to the OUT stream.
//!
//! Key `outbox/` ‖ the share's stream sequence (big-endian), value the
//! share's stored events as `events` keys (16 bytes each), in the order the
//! writer stored them. Applying the stream is deterministic (shares in stream
//! order, the first copy of a det_oid wins), so any owner — this node after a
//! restart, or another after a move, restored from a checkpoint and
//! replaying — has the same entries at the same [`Position`]s. The publisher
//! puts the position of each event in its message, reads the last one back
//! when it starts, and goes on after it: an event committed but not yet
//! published when an owner dies is published by the next one, once.
//!
//! Entries are deleted once published ([`Store::outbox_trim`]); what the
//! OUT stream says was published is the truth, not what is left here.

use sightline_proto::v1::JoinedEvent;

use super::{cf, decode_event, Store, StoreError, CF_EVENTS, CF_META};

const PREFIX: &[u8] = b"outbox/";

/// The key of share `share`'s entry.
pub fn key(share: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + 8);
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(&share.to_be_bytes());
    k
}

/// Where an event is in the outbox: the stream sequence of the share that
/// stored it and its index among that share's stored events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub share: u64,
    pub index: u32,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.share, self.index)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (share, index) = s
            .split_once('.')
            .ok_or_else(|| format!("{s:?} is not <share>.<index>"))?;
        Ok(Position {
            share: share.parse().map_err(|e| format!("{s:?}: share: {e}"))?,
            index: index.parse().map_err(|e| format!("{s:?}: index: {e}"))?,
        })
    }
}

impl Store {
    /// The outbox's events after `after` (all when `None`), in order, whole
    /// shares until `limit` is reached. An event cut by retention before it was published
    /// is left out (its position is skipped).
    pub fn outbox_after(
        &self,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<(Position, JoinedEvent)>, StoreError> {
        let db = self.db()?;
        let start = key(after.map_or(0, |a| a.share));
        let mut positions = Vec::new();
        let mut it = db.raw_iterator_cf(cf(&db, CF_META));
        it.seek(&start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(PREFIX) || positions.len() >= limit {
                break;
            }
            let (Ok(share), true) = (
                <[u8; 8]>::try_from(&k[PREFIX.len()..]).map(u64::from_be_bytes),
                v.len() % 16 == 0,
            ) else {
                return Err(StoreError::Corrupt("an outbox entry is malformed".into()));
            };
            for (index, ev) in v.chunks_exact(16).enumerate() {
                let pos = Position {
                    share,
                    index: index as u32,
                };
                if after.is_some_and(|a| pos <= a) {
                    continue;
                }
                positions.push((pos, ev.to_vec()));
            }
            it.next();
        }
        it.status()?;
        let cf_e = cf(&db, CF_EVENTS);
        let got = db.batched_multi_get_cf(cf_e, positions.iter().map(|(_, k)| k), false);
        let mut out = Vec::with_capacity(positions.len());
        for ((pos, _), ev) in positions.into_iter().zip(got) {
            if let Some(ev) = ev? {
                out.push((pos, decode_event(&ev)?));
            }
        }
        Ok(out)
    }

    /// Deletes the outbox entries of `shares` (published). Point deletes,
    /// not a range: every read of the column family would fragment the
    /// range tombstones in the memtable (it was most of an owner's CPU).
    pub fn outbox_trim(&self, shares: impl IntoIterator<Item = u64>) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut b = rocksdb::WriteBatch::default();
        for share in shares {
            b.delete_cf(cf(&db, CF_META), key(share));
        }
        drop(db);
        self.write(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_proto::v1::Detection;

    fn event(det: i64) -> JoinedEvent {
        JoinedEvent {
            detection: Some(Detection {
                detection_oid: Some(det),
                timestamp_detected: 1_700_000_000_000 + (det % 7) * 1000,
                item_name: "car".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn commit(s: &Store, shares: &[(u64, &[i64])]) {
        let mut c = s.begin(1).unwrap();
        for (share, dets) in shares {
            for d in *dets {
                let e = event(*d);
                c.put_event(&e, None);
                c.to_outbox(*share, &e);
            }
            c.set_stream_seq(*share);
        }
        s.commit(c).unwrap();
    }

    fn dets(v: &[(Position, JoinedEvent)]) -> Vec<i64> {
        v.iter()
            .map(|(_, e)| e.detection.as_ref().unwrap().detection_oid.unwrap())
            .collect()
    }

    #[test]
    fn the_outbox_goes_on_after_a_position_in_share_order_and_forgets_what_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        // Two commits, the first of two shares (the writer groups them).
        commit(&s, &[(3, &[30, 31, 32]), (4, &[])]);
        commit(&s, &[(5, &[50]), (9, &[90, 91])]);
        let all = s.outbox_after(None, 100).unwrap();
        assert_eq!(dets(&all), [30, 31, 32, 50, 90, 91]);
        assert_eq!(all[2].0, Position { share: 3, index: 2 });
        assert_eq!(all[5].0, Position { share: 9, index: 1 });
        // After a position in the middle of a share.
        let after: Position = "3.0".parse().unwrap();
        assert_eq!(
            dets(&s.outbox_after(Some(after), 100).unwrap()),
            [31, 32, 50, 90, 91]
        );
        // At the end of a share, and a limit (whole shares).
        let after = Position { share: 3, index: 2 };
        assert_eq!(dets(&s.outbox_after(Some(after), 2).unwrap()), [50, 90, 91]);
        assert_eq!(dets(&s.outbox_after(Some(after), 1).unwrap()), [50]);
        // A position past everything (another owner published further).
        let after = Position { share: 9, index: 1 };
        assert!(s.outbox_after(Some(after), 100).unwrap().is_empty());
        s.outbox_trim([3, 4, 5]).unwrap();
        assert_eq!(dets(&s.outbox_after(None, 100).unwrap()), [90, 91]);
        assert_eq!(s.stream_seq().unwrap(), 9);
        assert!("3".parse::<Position>().is_err());
        assert_eq!(after.to_string().parse::<Position>().unwrap(), after);
    }
}
