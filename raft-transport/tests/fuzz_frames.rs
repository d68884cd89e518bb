//! The frame decoder under a fuzzer (proptest: `cargo fuzz` needs a nightly toolchain this
//! project does not assume). Bodies carry a valid checksum, so the postcard decoder behind
//! it is reached, not just the CRC check. No input may panic, claim more bytes than it was
//! given, or get a length past the maximum (the reader allocates a body only after
//! `parse_header` checked its length).
//!
//! `RAFT_FUZZ_CASES` sets the cases per property (CI: 3,000; on demand, e.g. 100,000);
//! `RAFT_FUZZ_SEED` replays a run (the seed is printed).

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use raft_core::message::{AppendEntries, InstallSnapshot, MessageBody};
use raft_core::{Entry, EntryPayload, LogId, LogIndex, Message, NodeId, Term};
use raft_transport::client::ClientOp;
use raft_transport::frame::{self, Frame, FrameError, HEADER_LEN};

fn fuzz_config(what: &str) -> Config {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let (cases, seed) = (
        env("RAFT_FUZZ_CASES").unwrap_or(3000),
        env("RAFT_FUZZ_SEED").unwrap_or_else(rand::random),
    );
    println!("fuzz {what}: {cases} cases, seed {seed} (RAFT_FUZZ_SEED={seed} replays)");
    Config {
        cases: cases as u32,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

const MAX: usize = 4096;

/// Frames of every kind, with contents drawn from `seed` bytes.
fn sample(kind: u8, payload: Vec<u8>, n: u64) -> Frame {
    let data = Bytes::from(payload);
    let msg = |body| Message {
        from: NodeId(n % 5),
        to: NodeId(n % 7),
        term: Term(n),
        body,
    };
    match kind % 7 {
        0 => Frame::Hello {
            magic: frame::MAGIC,
            version: frame::VERSION,
            cluster_id: n,
            from: NodeId(1),
            to: NodeId(2),
        },
        1 => Frame::Raft(msg(MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(n, n.wrapping_mul(3)),
            entries: (0..(n % 4))
                .map(|i| Entry {
                    log_id: LogId::new(n, n + i),
                    payload: EntryPayload::Command(data.clone()),
                })
                .collect(),
            leader_commit: LogIndex(n / 2),
            seq: n,
        }))),
        2 => Frame::Raft(msg(MessageBody::InstallSnapshot(InstallSnapshot {
            meta: Default::default(),
            offset: n,
            data,
            done: n % 2 == 0,
        }))),
        3 => Frame::ClientRequest {
            id: n,
            op: ClientOp::Propose(data),
        },
        4 => Frame::ClientReply {
            id: n,
            result: Ok(data),
        },
        5 => Frame::Refused(String::from_utf8_lossy(&data).into_owned()),
        _ => Frame::ClientHello {
            magic: frame::MAGIC,
            version: frame::VERSION,
            cluster_id: n,
        },
    }
}

/// Rewrites the header of the frame in `buf` to match its body (length and checksum).
fn reseal(buf: &mut [u8]) {
    let body_len = (buf.len() - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&buf[HEADER_LEN..]);
    buf[..4].copy_from_slice(&body_len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The decoder's contract on any input.
fn check(buf: &[u8]) -> Result<(), TestCaseError> {
    match frame::decode(buf, MAX) {
        Ok(Some((f, used))) => {
            prop_assert!(used <= buf.len() && used >= HEADER_LEN);
            // Whatever decodes encodes again, and decodes to the same frame.
            let mut again = Vec::new();
            frame::encode(&f, &mut again).unwrap();
            prop_assert_eq!(
                frame::decode(&again, usize::MAX).unwrap().map(|(g, _)| g),
                Some(f)
            );
        }
        Ok(None) => {}
        Err(FrameError::TooLarge { len, max }) => prop_assert!(len > max),
        Err(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config("frames"))]

    /// Any body under a valid header: the postcard decoder sees arbitrary bytes.
    #[test]
    fn sealed_arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(&body);
        reseal(&mut buf);
        check(&buf)?;
    }

    /// Real frames, mutated (bytes flipped, inserted, removed, cut), resealed or not.
    #[test]
    fn mutated_frames_never_panic(
        kind in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        n in prop_oneof![0u64..300, any::<u64>()],
        edits in proptest::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..8),
        seal in any::<bool>(),
    ) {
        let mut buf = Vec::new();
        frame::encode(&sample(kind, payload, n), &mut buf).unwrap();
        check(&buf)?;
        for (op, at, byte) in edits {
            let body = buf.len() - HEADER_LEN;
            let at = HEADER_LEN + at % body.max(1);
            match op {
                0 if body > 0 => buf[at] ^= byte | 1,
                1 => buf.insert(at.min(buf.len()), byte),
                2 if body > 0 => { buf.remove(at); }
                _ => buf.truncate(at.max(HEADER_LEN)),
            }
        }
        if seal {
            reseal(&mut buf);
        }
        check(&buf)?;
        // Every prefix asks for more bytes or fails; none panics.
        for cut in [0, buf.len() / 3, buf.len() / 2, buf.len().saturating_sub(1)] {
            check(&buf[..cut])?;
        }
    }

    /// Any header: a length past the maximum is refused before a body is read.
    #[test]
    fn headers_past_the_maximum_are_refused(header in any::<[u8; HEADER_LEN]>(), max in 0usize..(1 << 20)) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match frame::parse_header(header, max) {
            Ok((l, _)) => prop_assert!(l == len && l <= max),
            Err(e) => prop_assert_eq!(e, FrameError::TooLarge { len, max }),
        }
    }
}
