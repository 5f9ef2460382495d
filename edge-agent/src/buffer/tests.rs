//! The buffer's promises, as tests: a model-based property test over
//! append / ack / read / crash-and-reopen, and the named cases.

use super::*;
use proptest::prelude::*;
use sightline_proto::v1::Detection;

fn det(oid: i64) -> Detection {
    Detection {
        geographical_location_oid: 1,
        video_camera_oid: 1,
        detection_oid: Some(oid),
        item_name: "person".into(),
        timestamp_detected: 1_700_000_000_000 + oid,
        ..Default::default()
    }
}

fn decode(b: &Bytes) -> EdgeEvent {
    EdgeEvent::decode(b.as_ref()).unwrap()
}

fn opts() -> BufferOptions {
    BufferOptions {
        max_events: 1_000,
        max_bytes: 10 * 1024 * 1024,
        sync: false,
    }
}

#[test]
fn seqs_are_gap_free_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let epoch;
    {
        let b = Buffer::open(dir.path(), opts()).unwrap();
        epoch = b.epoch();
        assert_eq!(
            b.append_blocking(vec![det(1), det(2)], None).unwrap(),
            Appended {
                first_seq: 1,
                count: 2
            }
        );
        assert_eq!(
            b.append_blocking(vec![det(3)], None).unwrap(),
            Appended {
                first_seq: 3,
                count: 1
            }
        );
    }
    let b = Buffer::open(dir.path(), opts()).unwrap();
    assert_eq!(b.epoch(), epoch, "the epoch must not change on reopen");
    assert_eq!(b.next_seq(), 4);
    let got: Vec<u64> = b
        .read(1, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| decode(e).seq)
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
}

#[test]
fn a_wiped_buffer_gets_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let first = Buffer::open(dir.path(), opts()).unwrap().epoch();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let second = Buffer::open(dir.path(), opts()).unwrap();
    assert_ne!(first, second.epoch());
    assert_eq!(second.next_seq(), 1);
}

#[test]
fn a_full_buffer_refuses_the_whole_append_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(
        dir.path(),
        BufferOptions {
            max_events: 3,
            ..opts()
        },
    )
    .unwrap();
    b.append_blocking(vec![det(1), det(2)], None).unwrap();
    let err = b.append_blocking(vec![det(3), det(4)], None).unwrap_err();
    assert!(
        matches!(err, BufferError::Full { held_events: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("retry"));
    assert_eq!(b.depth(), 2);
    b.ack_through(2).unwrap();
    assert_eq!(
        b.append_blocking(vec![det(3), det(4)], None)
            .unwrap()
            .first_seq,
        3
    );
}

#[test]
fn events_leave_only_through_acks() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), opts()).unwrap();
    b.append_blocking((1..=10).map(det).collect(), None)
        .unwrap();
    b.ack_through(4).unwrap();
    assert_eq!(b.depth(), 6);
    assert!(matches!(
        b.read(4, 10, usize::MAX),
        Err(BufferError::Gone { .. })
    ));
    assert_eq!(decode(&b.read(5, 10, usize::MAX).unwrap()[0]).seq, 5);
    assert!(matches!(
        b.ack_through(11),
        Err(BufferError::AckBeyond { .. })
    ));
    drop(b);
    let b = Buffer::open(dir.path(), opts()).unwrap();
    assert_eq!(b.acked(), 4);
    assert_eq!(b.depth(), 6);
}

#[test]
fn the_source_position_is_stored_with_its_events() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(dir.path(), opts()).unwrap();
        let pos = SourcePosition {
            name: "replay/x".into(),
            position: 17,
        };
        b.append_blocking(vec![det(1)], Some(pos)).unwrap();
    }
    let b = Buffer::open(dir.path(), opts()).unwrap();
    assert_eq!(b.source_position("replay/x").unwrap(), Some(17));
    assert_eq!(b.source_position("replay/y").unwrap(), None);
}

#[test]
fn reads_respect_the_byte_limit_but_return_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), opts()).unwrap();
    b.append_blocking((1..=10).map(det).collect(), None)
        .unwrap();
    assert_eq!(b.read(1, 100, 1).unwrap().len(), 1);
    assert_eq!(b.read(1, 3, usize::MAX).unwrap().len(), 3);
    assert!(b.read(11, 3, usize::MAX).unwrap().is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Ack(u8),
    Read(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..30).prop_map(Op::Append),
        2 => any::<u8>().prop_map(Op::Ack),
        2 => any::<u8>().prop_map(Op::Read),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the order of appends, acks, reads and crashes (drop + reopen),
    /// the buffer holds exactly the unacknowledged events, in seq order, with
    /// the det_oids they were appended with, under an unchanged epoch.
    #[test]
    fn buffer_matches_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Some(Buffer::open(dir.path(), opts()).unwrap());
        let epoch = buf.as_ref().unwrap().epoch();
        let mut model: VecDeque<(u64, i64)> = VecDeque::new();
        let mut next_seq = 1u64;
        let mut next_oid = 1i64;
        for op in ops {
            let b = buf.as_ref().unwrap();
            match op {
                Op::Append(n) => {
                    let dets: Vec<_> = (0..n as i64).map(|i| det(next_oid + i)).collect();
                    let r = b.append_blocking(dets, None);
                    if model.len() + n as usize > 1_000 {
                        prop_assert!(matches!(r, Err(BufferError::Full { .. })), "full buffer not refused");
                    } else {
                        let r = r.unwrap();
                        prop_assert_eq!(r.first_seq, next_seq);
                        for i in 0..n as u64 {
                            model.push_back((next_seq + i, next_oid + i as i64));
                        }
                        next_seq += n as u64;
                        next_oid += n as i64;
                    }
                }
                Op::Ack(k) => {
                    if !model.is_empty() {
                        let idx = k as usize % model.len();
                        let seq = model[idx].0;
                        b.ack_through(seq).unwrap();
                        model.drain(..=idx);
                    }
                }
                Op::Read(k) => {
                    if !model.is_empty() {
                        let idx = k as usize % model.len();
                        let got = b.read(model[idx].0, 7, usize::MAX).unwrap();
                        for (g, want) in got.iter().zip(model.iter().skip(idx)) {
                            let e = decode(g);
                            prop_assert_eq!(e.seq, want.0);
                            prop_assert_eq!(e.detection.unwrap().detection_oid, Some(want.1));
                        }
                        prop_assert_eq!(got.len(), (model.len() - idx).min(7));
                    }
                }
                Op::Reopen => {
                    drop(buf.take());
                    buf = Some(Buffer::open(dir.path(), opts()).unwrap());
                }
            }
            let b = buf.as_ref().unwrap();
            prop_assert_eq!(b.epoch(), epoch);
            prop_assert_eq!(b.next_seq(), next_seq);
            prop_assert_eq!(b.depth(), model.len() as u64);
            if let Some(front) = model.front() {
                let all = b.read(front.0, usize::MAX, usize::MAX).unwrap();
                let seqs: Vec<u64> = all.iter().map(|e| decode(e).seq).collect();
                let want: Vec<u64> = model.iter().map(|m| m.0).collect();
                prop_assert_eq!(seqs, want);
            }
        }
    }
}
