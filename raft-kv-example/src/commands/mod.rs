//! The command table: every command the server knows, with its arity, whether it reads or
//! writes, and (in the module of its data type) how it parses and how it applies.
//!
//! A data command parses into a [`Cmd`]: a [`ReadOp`] answered after a linearizable read
//! barrier, or a [`WriteOp`] that goes through the log and applies on every replica. Both
//! are deterministic functions of the keyspace and a stamped time, so replicas agree.
//! Connection commands (HELLO, MULTI, ...) are listed here too, for arity checks and for
//! COMMAND, and handled by the server.

pub mod hashes;
pub mod keys;
pub mod strings;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::db::{Db, Millis, Stamp};

/// A reply, independent of the protocol version it is sent in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `+OK`
    Ok,
    /// A status such as `string` for TYPE.
    Status(String),
    /// An integer.
    Int(i64),
    /// A string.
    Bulk(Bytes),
    /// No value (a missing key).
    Nil,
    /// A list.
    Array(Vec<Reply>),
    /// Field-value pairs (a map in RESP3, a flat list in RESP2).
    Map(Vec<(Reply, Reply)>),
    /// A transaction aborted because a watched key changed.
    Aborted,
    /// An error; the command changed nothing.
    Err(String),
}

impl Reply {
    /// An error reply with Redis's text for a syntax error.
    pub fn syntax() -> Reply {
        Reply::Err(SYNTAX.into())
    }

    fn opt(v: Option<Bytes>) -> Reply {
        v.map_or(Reply::Nil, Reply::Bulk)
    }
}

/// Redis's reply to a value of the wrong type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// Redis's reply to an argument that should be an integer.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// Redis's reply to unknown options.
pub const SYNTAX: &str = "ERR syntax error";

/// A read-only data command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// String reads.
    Str(strings::Read),
    /// Keyspace reads.
    Key(keys::Read),
    /// Hash reads.
    Hash(hashes::Read),
}

impl ReadOp {
    /// The answer at time `now` (already the state machine's read time).
    pub fn answer(&self, db: &Db, now: Millis) -> Reply {
        match self {
            ReadOp::Str(r) => r.answer(db, now),
            ReadOp::Key(r) => r.answer(db, now),
            ReadOp::Hash(r) => r.answer(db, now),
        }
    }
}

/// A data command that changes the keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// String writes.
    Str(strings::Write),
    /// Keyspace writes.
    Key(keys::Write),
    /// Hash writes.
    Hash(hashes::Write),
}

impl WriteOp {
    /// Applies the write at `stamp` (after [`Db::begin`]).
    pub fn apply(self, db: &mut Db, stamp: Stamp) -> Reply {
        match self {
            WriteOp::Str(w) => w.apply(db, stamp),
            WriteOp::Key(w) => w.apply(db, stamp),
            WriteOp::Hash(w) => w.apply(db, stamp),
        }
    }
}

/// What one log entry changes: one write, or a whole transaction. A transaction holds
/// commands, never another transaction, so nothing decoded from the log nests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A single write command.
    One(WriteOp),
    /// MULTI ... EXEC: applied all at once.
    Exec(Transaction),
}

impl Change {
    /// Applies the change at `stamp` (after [`Db::begin`]).
    pub fn apply(self, db: &mut Db, stamp: Stamp) -> Reply {
        match self {
            Change::One(w) => w.apply(db, stamp),
            Change::Exec(t) => t.apply(db, stamp),
        }
    }
}

/// A parsed data command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Answered from state after a read barrier.
    Read(ReadOp),
    /// Goes through the log.
    Write(WriteOp),
}

/// One command queued between MULTI and EXEC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Queued {
    /// A data command, run at EXEC.
    Cmd(Cmd),
    /// A connection command allowed in a transaction (PING, ECHO, SELECT 0, UNWATCH): its
    /// reply is known when queued and takes its place in EXEC's answer.
    Constant(Reply),
}

/// Most commands one transaction may queue.
pub const MAX_QUEUED: usize = 100_000;

/// What a command sent between MULTI and EXEC becomes, or why it is refused (which makes
/// EXEC answer EXECABORT). `args` includes the name.
pub fn queue(args: &[Bytes]) -> Result<Queued, String> {
    let name = word(args.first().map_or(&b""[..], |a| &a[..]));
    let rest = &args[1..];
    if let Some(parsed) = parse(&name, rest) {
        return parsed.map(Queued::Cmd);
    }
    let spec = lookup(&name).ok_or_else(|| format!("ERR unknown command '{name}'"))?;
    if !arity_ok(spec, args.len()) {
        return Err(arity_error(&name));
    }
    let constant = match (name.as_str(), rest) {
        ("PING", []) => Reply::Status("PONG".into()),
        ("PING" | "ECHO", [msg]) => Reply::Bulk(msg.clone()),
        // The watch is checked when EXEC applies, before any queued command runs.
        ("UNWATCH", []) => Reply::Ok,
        ("SELECT", [db]) if db.as_ref() == b"0" => Reply::Ok,
        ("SELECT", _) => return Err("ERR DB index is out of range".into()),
        _ => return Err(format!("ERR {name} is not allowed inside MULTI")),
    };
    Ok(Queued::Constant(constant))
}

/// The commands queued between MULTI and EXEC, and the keys watched before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The applied index WATCH read at, and the keys it watched.
    pub watch: Option<(u64, Vec<Bytes>)>,
    /// The queued commands, in order.
    pub cmds: Vec<Queued>,
}

impl Transaction {
    fn apply(self, db: &mut Db, stamp: Stamp) -> Reply {
        // WATCH: decided here, at apply time, so every replica decides the same.
        if let Some((since, keys)) = &self.watch {
            if keys.iter().any(|k| db.changed_since(k, *since, stamp.now)) {
                return Reply::Aborted;
            }
        }
        let replies = self
            .cmds
            .into_iter()
            .map(|c| match c {
                Queued::Cmd(Cmd::Read(r)) => r.answer(db, stamp.now),
                Queued::Cmd(Cmd::Write(w)) => w.apply(db, stamp),
                Queued::Constant(reply) => reply,
            })
            .collect();
        Reply::Array(replies)
    }
}

/// How the server treats a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Answered after a linearizable read barrier (ReadIndex or lease).
    Read,
    /// One log entry, applied on every replica.
    Write,
    /// About the connection or the server, answered by the node itself.
    Connection,
    /// A membership change run on the leader.
    Admin,
}

/// A parser for the arguments after the command name.
pub type Parse = fn(&str, &[Bytes]) -> Result<Cmd, String>;

/// One row of the command table.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Upper-case name.
    pub name: &'static str,
    /// Redis convention, counting the name: `n` exactly n arguments, `-n` at least n.
    pub arity: i32,
    /// How the server treats it.
    pub kind: Kind,
    /// For data commands, the parser (in the data type's module, next to its apply).
    pub parse: Option<Parse>,
}

const fn data(name: &'static str, arity: i32, kind: Kind, parse: Parse) -> Spec {
    Spec {
        name,
        arity,
        kind,
        parse: Some(parse),
    }
}

const fn conn(name: &'static str, arity: i32) -> Spec {
    Spec {
        name,
        arity,
        kind: Kind::Connection,
        parse: None,
    }
}

use Kind::{Read as R, Write as W};

/// Every command, in the order the README lists them.
pub const TABLE: &[Spec] = &[
    data("GET", 2, R, strings::parse),
    data("MGET", -2, R, strings::parse),
    data("STRLEN", 2, R, strings::parse),
    data("SET", -3, W, strings::parse),
    data("SETNX", 3, W, strings::parse),
    data("GETSET", 3, W, strings::parse),
    data("GETDEL", 2, W, strings::parse),
    data("MSET", -3, W, strings::parse),
    data("APPEND", 3, W, strings::parse),
    data("INCR", 2, W, strings::parse),
    data("INCRBY", 3, W, strings::parse),
    data("DECR", 2, W, strings::parse),
    data("DECRBY", 3, W, strings::parse),
    data("EXISTS", -2, R, keys::parse),
    data("TYPE", 2, R, keys::parse),
    data("TTL", 2, R, keys::parse),
    data("PTTL", 2, R, keys::parse),
    data("KEYS", 2, R, keys::parse),
    data("SCAN", -2, R, keys::parse),
    data("DBSIZE", 1, R, keys::parse),
    data("DEL", -2, W, keys::parse),
    data("EXPIRE", -3, W, keys::parse),
    data("PEXPIRE", -3, W, keys::parse),
    data("EXPIREAT", -3, W, keys::parse),
    data("PEXPIREAT", -3, W, keys::parse),
    data("PERSIST", 2, W, keys::parse),
    data("FLUSHDB", -1, W, keys::parse),
    data("FLUSHALL", -1, W, keys::parse),
    data("HGET", 3, R, hashes::parse),
    data("HMGET", -3, R, hashes::parse),
    data("HGETALL", 2, R, hashes::parse),
    data("HKEYS", 2, R, hashes::parse),
    data("HVALS", 2, R, hashes::parse),
    data("HLEN", 2, R, hashes::parse),
    data("HEXISTS", 3, R, hashes::parse),
    data("HSET", -4, W, hashes::parse),
    data("HMSET", -4, W, hashes::parse),
    data("HSETNX", 4, W, hashes::parse),
    data("HDEL", -3, W, hashes::parse),
    data("HINCRBY", 4, W, hashes::parse),
    conn("MULTI", 1),
    conn("EXEC", 1),
    conn("DISCARD", 1),
    conn("WATCH", -2),
    conn("UNWATCH", 1),
    conn("SESSION", -4),
    conn("AUTH", -2),
    conn("HELLO", -1),
    conn("CLIENT", -2),
    conn("SELECT", 2),
    conn("PING", -1),
    conn("ECHO", 2),
    conn("QUIT", 1),
    conn("INFO", -1),
    conn("COMMAND", -1),
    conn("CONFIG", -2),
    Spec {
        name: "RAFT.ADDLEARNER",
        arity: -3,
        kind: Kind::Admin,
        parse: None,
    },
    Spec {
        name: "RAFT.PROMOTE",
        arity: 2,
        kind: Kind::Admin,
        parse: None,
    },
    Spec {
        name: "RAFT.REMOVE",
        arity: 2,
        kind: Kind::Admin,
        parse: None,
    },
    Spec {
        name: "RAFT.TRANSFER",
        arity: 2,
        kind: Kind::Admin,
        parse: None,
    },
];

/// The table row for `name` (upper case).
pub fn lookup(name: &str) -> Option<&'static Spec> {
    TABLE.iter().find(|s| s.name == name)
}

/// Checks the argument count (`args` includes the name) against the row's arity.
pub fn arity_ok(spec: &Spec, args: usize) -> bool {
    let n = spec.arity.unsigned_abs() as usize;
    if spec.arity >= 0 {
        args == n
    } else {
        args >= n
    }
}

/// Redis's reply to a wrong argument count.
pub fn arity_error(name: &str) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )
}

/// Parses a data command: `name` is upper case, `args` the arguments after it.
pub fn parse(name: &str, args: &[Bytes]) -> Option<Result<Cmd, String>> {
    let spec = lookup(name)?;
    let parse = spec.parse?;
    if !arity_ok(spec, args.len() + 1) {
        return Some(Err(arity_error(name)));
    }
    Some(parse(name, args))
}

/// An integer argument or stored value, in Redis's canonical form only (no `+`, no
/// leading zeros, no `-0`), so `SET k 007` then `INCR k` is an error here as in Redis.
pub fn int(b: &[u8]) -> Result<i64, String> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == b.len(), // "0", not "-0"
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    canonical
        .then(|| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| NOT_INTEGER.to_string())
}

/// An option word, upper case.
pub fn word(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// A relative or absolute expiry given in `unit_ms` units, as an absolute leader time at
/// apply. Refuses non-positive relative times and overflow with Redis's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Deadline {
    /// This many milliseconds after the write's stamped time.
    In(u64),
    /// At this leader time.
    At(Millis),
}

impl Deadline {
    /// Parses `n` (seconds or milliseconds, relative or absolute) for command `cmd`.
    pub fn parse(n: &[u8], unit_ms: u64, absolute: bool, cmd: &str) -> Result<Deadline, String> {
        let bad = || {
            format!(
                "ERR invalid expire time in '{}' command",
                cmd.to_lowercase()
            )
        };
        let n = int(n)?;
        let ms = u64::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .filter(|&ms| ms > 0 && ms < i64::MAX as u64 / 2)
            .ok_or_else(bad)?;
        Ok(if absolute {
            Deadline::At(ms)
        } else {
            Deadline::In(ms)
        })
    }

    /// The absolute time at `now`.
    pub fn at(self, now: Millis) -> Millis {
        match self {
            Deadline::In(ms) => now.saturating_add(ms),
            Deadline::At(at) => at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_unique_and_data_rows_have_parsers() {
        let mut names: Vec<_> = TABLE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "a command is listed twice");
        for s in TABLE {
            let is_data = matches!(s.kind, Kind::Read | Kind::Write);
            assert_eq!(is_data, s.parse.is_some(), "{}", s.name);
            assert_eq!(s.name, s.name.to_ascii_uppercase());
        }
    }

    /// The README's command list: every `NAME` that opens a backticked syntax in the first
    /// column, with the row's kind.
    fn readme_commands() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let start = readme
            .find("<!-- commands -->")
            .expect("the commands table");
        let end = readme.find("<!-- /commands -->").expect("its end");
        let mut out = Vec::new();
        for row in readme[start..end].lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let kind = cells[1].trim().to_string();
            for syntax in cells[0].split('`').skip(1).step_by(2) {
                let name = syntax.split([' ', ',']).next().unwrap_or_default();
                if name != "..." && !name.is_empty() {
                    out.push((name.to_string(), kind.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_readme_lists_exactly_the_command_table() {
        let kind = |k: Kind| match k {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Connection => "connection",
            Kind::Admin => "admin",
        };
        let mut documented = readme_commands();
        documented.sort();
        let mut table: Vec<(String, String)> = TABLE
            .iter()
            .map(|s| (s.name.to_string(), kind(s.kind).to_string()))
            .collect();
        table.sort();
        assert_eq!(
            documented, table,
            "README.md's command list and TABLE differ"
        );
    }

    #[test]
    fn integers_are_read_in_canonical_form_only() {
        assert_eq!(int(b"-42"), Ok(-42));
        assert_eq!(int(b"0"), Ok(0));
        for bad in ["+5", "007", "-0", " 1", "1 ", "", "9223372036854775808"] {
            assert!(int(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_may_be_queued_in_a_transaction() {
        let q = |line: &str| {
            let args: Vec<Bytes> = line
                .split(' ')
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect();
            queue(&args)
        };
        assert!(matches!(q("SET k v"), Ok(Queued::Cmd(Cmd::Write(_)))));
        assert!(matches!(q("GET k"), Ok(Queued::Cmd(Cmd::Read(_)))));
        assert_eq!(
            q("PING"),
            Ok(Queued::Constant(Reply::Status("PONG".into())))
        );
        assert_eq!(q("UNWATCH"), Ok(Queued::Constant(Reply::Ok)));
        for refused in [
            "WATCH k",
            "HELLO 3",
            "SELECT 1",
            "GET",
            "NOPE x",
            "SESSION 1 1 INCR k",
        ] {
            assert!(q(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn arity_follows_the_redis_convention() {
        let get = lookup("GET").unwrap();
        assert!(arity_ok(get, 2) && !arity_ok(get, 1) && !arity_ok(get, 3));
        let del = lookup("DEL").unwrap();
        assert!(arity_ok(del, 2) && arity_ok(del, 9) && !arity_ok(del, 1));
        assert_eq!(
            parse("GET", &[]).unwrap().unwrap_err(),
            "ERR wrong number of arguments for 'get' command"
        );
    }

    #[test]
    fn parsed_kind_matches_the_table() {
        for s in TABLE.iter().filter(|s| s.parse.is_some()) {
            // The fewest arguments the arity allows, each a plausible "1".
            let n = s.arity.unsigned_abs() as usize - 1;
            let args: Vec<Bytes> = (0..n).map(|_| Bytes::from_static(b"1")).collect();
            let args = match s.name {
                "SCAN" => vec![Bytes::from_static(b"0")],
                "MSET" => vec![Bytes::from_static(b"k"), Bytes::from_static(b"v")],
                "HSET" | "HMSET" => vec![Bytes::from("h"), Bytes::from("f"), Bytes::from("v")],
                _ => args,
            };
            let cmd = parse(s.name, &args)
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let kind = match cmd {
                Cmd::Read(_) => Kind::Read,
                Cmd::Write(_) => Kind::Write,
            };
            assert_eq!(kind, s.kind, "{}", s.name);
        }
    }
}

/// A keyspace driven by command lines, for the command modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A keyspace and the next log index.
    pub struct Tdb {
        pub db: Db,
        pub index: u64,
    }

    impl Tdb {
        pub fn new() -> Tdb {
            Tdb {
                db: Db::default(),
                index: 0,
            }
        }

        /// Runs `line` (words split on spaces) at leader time `now`, as a read or as the
        /// next log entry.
        pub fn run(&mut self, line: &str, now: Millis) -> Reply {
            let words: Vec<Bytes> = line
                .split(' ')
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect();
            let name = word(&words[0]);
            match parse(&name, &words[1..]).expect("a data command") {
                Err(e) => Reply::Err(e),
                Ok(Cmd::Read(r)) => r.answer(&self.db, self.db.read_time(now)),
                Ok(Cmd::Write(w)) => {
                    self.index += 1;
                    let stamp = self.db.begin(self.index, now);
                    w.apply(&mut self.db, stamp)
                }
            }
        }
    }
}
