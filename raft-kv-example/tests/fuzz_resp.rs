//! The RESP parsers under a fuzzer (proptest: `cargo fuzz` needs a nightly toolchain this
//! project does not assume): requests as clients send them, and replies as the client and
//! forwarding links read them. No input may panic, claim more bytes than it was given, or
//! pass a length over the limits (the parsers copy a bulk string only once it is whole,
//! and reserve at most 1,024 array slots ahead of the elements).
//!
//! `RAFT_FUZZ_CASES` sets the cases per property (CI: 3,000; on demand, e.g. 100,000);
//! `RAFT_FUZZ_SEED` replays a run (the seed is printed).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use raft_kv_example::resp::{self, Limits, Protocol, Value};

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

/// Small limits, so that inputs reach them.
const LIMITS: Limits = Limits {
    max_bulk: 512,
    max_array: 16,
    max_line: 256,
};

/// Reply values nested up to twelve deep (past the parser's nesting limit).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[ -~]{0,20}".prop_map(Value::Simple),
        "[ -~]{0,20}".prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|b| Value::Bulk(b.map(Bytes::from))),
    ];
    leaf.prop_recursive(12, 64, 6, |inner| {
        prop_oneof![
            proptest::option::of(proptest::collection::vec(inner.clone(), 0..6))
                .prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

/// How deep `v` nests (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(Some(items)) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// Applies byte edits (flip, insert, remove, cut) to `buf`.
fn mutate(buf: &mut Vec<u8>, edits: &[(u8, usize, u8)]) {
    for &(op, at, byte) in edits {
        let at = at % buf.len().max(1);
        match op {
            0 if !buf.is_empty() => buf[at] ^= byte | 1,
            1 => buf.insert(at.min(buf.len()), byte),
            2 if !buf.is_empty() => {
                buf.remove(at);
            }
            3 => buf.insert(
                at.min(buf.len()),
                [b'\r', b'\n', b'*', b'$', b'%', b'-', b'9'][byte as usize % 7],
            ),
            _ => buf.truncate(at),
        }
    }
}

fn check_request(buf: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(Some((args, used))) = resp::parse_request(buf, &LIMITS) {
        prop_assert!(used <= buf.len() && used > 0);
        prop_assert!(args.len() <= LIMITS.max_array.max(LIMITS.max_line));
        prop_assert!(args
            .iter()
            .all(|a| a.len() <= LIMITS.max_bulk.max(LIMITS.max_line)));
    }
    Ok(())
}

fn check_value(buf: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(Some((_, used))) = resp::parse_value(buf, &LIMITS) {
        prop_assert!(used <= buf.len() && used > 0);
    }
    Ok(())
}

fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    proptest::collection::vec((0u8..5, any::<usize>(), any::<u8>()), 0..8)
}

proptest! {
    #![proptest_config(fuzz_config("resp"))]

    /// Arbitrary bytes, biased towards RESP's own symbols.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'*'), Just(b'$'), Just(b'1')], 0..256)) {
        check_request(&bytes)?;
        check_value(&bytes)?;
    }

    /// Real requests parse back to their arguments; mutated, they parse or fail, never panic.
    #[test]
    fn requests_round_trip_and_mutated_ones_never_panic(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
        edits in edits(),
    ) {
        let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
        let mut out = BytesMut::new();
        resp::encode_request(&args, &mut out);
        let mut buf = out.to_vec();
        prop_assert_eq!(resp::parse_request(&buf, &LIMITS).unwrap(), Some((args, buf.len())));
        mutate(&mut buf, &edits);
        check_request(&buf)?;
        for cut in 0..buf.len() {
            check_request(&buf[..cut])?;
        }
    }

    /// Replies in both protocols parse back (within the nesting limit); mutated, they parse
    /// or fail, never panic.
    #[test]
    fn replies_round_trip_and_mutated_ones_never_panic(v in value(), resp3 in any::<bool>(), edits in edits()) {
        let mut out = BytesMut::new();
        v.encode_as(if resp3 { Protocol::Resp3 } else { Protocol::Resp2 }, &mut out);
        let mut buf = out.to_vec();
        let big = Limits { max_bulk: 1 << 20, max_array: 1 << 20, max_line: 1 << 20 };
        // Replies nest at most eight deep; deeper ones are refused, never misread.
        match resp::parse_value(&buf, &big) {
            Ok(parsed) => prop_assert_eq!(parsed.map(|(_, used)| used), Some(buf.len())),
            Err(_) => prop_assert!(depth(&v) > 8, "a reply {} deep was refused", depth(&v)),
        }
        mutate(&mut buf, &edits);
        check_value(&buf)?;
        for cut in 0..buf.len() {
            check_value(&buf[..cut])?;
        }
    }
}
