//! A new epoch: every held event renumbered into a fresh epoch in one write
//! (PROTOCOL.md, "Time travel").

use super::*;

/// Renumbers every held event into a fresh epoch (see [`Buffer::new_epoch`])
/// — and, given the core's `watermark`, the acknowledged events still on
/// disk after it first (see [`Buffer::new_epoch_after`]).
pub(super) fn renumber(shared: &Shared, watermark: Option<u64>) -> Result<NewEpoch, BufferError> {
    shared.recover();
    shared.with_db(|db| {
        let mut st = shared.state.lock().unwrap();
        let unacked = st.acked + 1;
        let (from, lost) = match watermark {
            Some(wm) if wm < st.acked => {
                // Acknowledged events on disk count only when kept on
                // purpose (`keep_acked`); otherwise the unacknowledged alone.
                let first = if shared.opts.keep_acked > 0 {
                    st.first_on_disk().clamp(1, unacked)
                } else {
                    unacked
                };
                (first.max(wm + 1), first.saturating_sub(wm + 1))
            }
            _ => (unacked, 0),
        };
        let expect = (st.next_seq - from) as usize;
        let held = if expect == 0 {
            Vec::new()
        } else {
            read_db(
                db,
                st.run_start(from),
                from,
                st.next_seq,
                usize::MAX,
                usize::MAX,
            )?
        };
        if held.len() != expect {
            return Err(BufferError::Corrupt(format!(
                "renumbering: expected {expect} events from seq {from}, read {}",
                held.len()
            )));
        }
        let old_epoch = st.epoch;
        let epoch = loop {
            let e = rand::random::<u64>().max(1);
            if e != old_epoch {
                break e;
            }
        };
        let events_cf = db.cf_handle(CF_EVENTS).expect("events cf");
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let mut batch = WriteBatch::default();
        // Every key of the old epoch goes, including acknowledged ones not
        // yet deleted on disk.
        batch.delete_range_cf(events_cf, key(0), key(u64::MAX));
        let mut renumbered = Vec::with_capacity(held.len());
        for (i, b) in held.iter().enumerate() {
            let mut e = EdgeEvent::decode(b.as_ref()).map_err(|e| {
                BufferError::Corrupt(format!("renumbering: event {}: {e}", from + i as u64))
            })?;
            e.seq = i as u64 + 1;
            renumbered.push(Bytes::from(e.encode_to_vec()));
        }
        let runs = pack_runs(1, &renumbered);
        let run_starts: VecDeque<u64> = runs.iter().map(|(s, _)| *s).collect();
        for (first, run) in runs {
            batch.put_cf(events_cf, key(first), run);
        }
        let n = renumbered.len() as u64;
        batch.put_cf(meta, "epoch", epoch.to_be_bytes());
        batch.put_cf(meta, "next_seq", (n + 1).to_be_bytes());
        batch.put_cf(meta, "acked", 0u64.to_be_bytes());
        shared.write(db, batch, true)?;
        st.epoch = epoch;
        st.next_seq = n + 1;
        st.acked = 0;
        st.persisted_acked = 0;
        // The old seqs mean nothing now: what is held settles as a whole.
        st.cameras.reset_checkpoints(n);
        st.held.clear();
        st.held.extend(1, renumbered.iter().map(|b| b.len() as u64));
        st.runs = run_starts;
        st.kept_runs.clear();
        st.deleted_below = 1;
        st.cache.clear();
        st.cache_bytes = 0;
        // Renumbered events lose their durable marks (unknown, not wrong).
        st.durable.clear();
        st.cache_first = n + 1;
        for b in renumbered.into_iter().rev() {
            if st.cache_bytes + cached_cost(&b) > CACHE_BYTES {
                break;
            }
            st.cache_bytes += cached_cost(&b);
            st.cache_first -= 1;
            st.cache.push_front(b);
        }
        drop(st);
        shared.next_seq_tx.send_replace(n + 1);
        Ok(NewEpoch {
            old_epoch,
            epoch,
            renumbered: n,
            resent_acked: unacked - from,
            lost,
        })
    })
}
