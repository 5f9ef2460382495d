//! Claims on det_oids between partitions.
//!
//! Each partition has one writer, so within a partition the check "is this
//! det_oid stored?" and the write that stores it cannot race. Across
//! partitions they could (two agents reporting one det_oid at the same
//! moment), so a writer claims the det_oids of its commit before checking and
//! releases them after the write. It takes all its claims at once or waits,
//! never holding some while waiting for others, so writers cannot deadlock.

use std::{
    collections::HashSet,
    sync::{Condvar, Mutex},
};

#[derive(Default)]
pub struct Claims {
    held: Mutex<HashSet<i64>>,
    released: Condvar,
}

impl Claims {
    /// Blocks until none of `oids` is claimed by another writer, then claims them all.
    pub fn claim(&self, oids: &[i64]) {
        let mut held = self.held.lock().unwrap();
        while oids.iter().any(|o| held.contains(o)) {
            held = self.released.wait(held).unwrap();
        }
        held.extend(oids.iter().copied());
    }

    pub fn release(&self, oids: &[i64]) {
        let mut held = self.held.lock().unwrap();
        for o in oids {
            held.remove(o);
        }
        drop(held);
        self.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_claimed_det_oid_waits_for_its_release() {
        let claims = Arc::new(Claims::default());
        claims.claim(&[1, 2]);
        let c = claims.clone();
        let t = std::thread::spawn(move || {
            c.claim(&[2, 3]);
            c.release(&[2, 3]);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!t.is_finished());
        claims.release(&[1, 2]);
        t.join().unwrap();
    }
}
