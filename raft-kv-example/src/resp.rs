//! RESP, the Redis serialization protocol (RESP2, and the RESP3 types the server answers
//! with after `HELLO 3`): an incremental parser with limits (so hostile input cannot exhaust
//! memory) and an encoder.

use bytes::{Bytes, BytesMut};

/// A RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo` or the null bulk `$-1`.
    Bulk(Option<Bytes>),
    /// `*2\r\n...` or the null array `*-1`.
    Array(Option<Vec<Value>>),
    /// RESP3's map `%2\r\n...`; a flat array of keys and values in RESP2.
    Map(Vec<(Value, Value)>),
}

/// The protocol version a connection speaks, chosen by `HELLO`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3: nulls are `_`, maps are `%`.
    Resp3,
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    /// An error reply; `msg` should start with an error code such as `ERR`.
    pub fn err(msg: impl Into<String>) -> Value {
        Value::Error(msg.into())
    }

    /// A bulk string.
    pub fn bulk(b: impl Into<Bytes>) -> Value {
        Value::Bulk(Some(b.into()))
    }

    /// Appends the RESP2 wire form of `self` to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_as(Protocol::Resp2, out)
    }

    /// Appends the wire form of `self` in protocol `proto` to `out`.
    pub fn encode_as(&self, proto: Protocol, out: &mut BytesMut) {
        match self {
            Value::Bulk(None) | Value::Array(None) if proto == Protocol::Resp3 => {
                out.extend_from_slice(b"_\r\n")
            }
            Value::Map(pairs) if proto == Protocol::Resp3 => {
                line(out, b'%', pairs.len().to_string().as_bytes());
                for (k, v) in pairs {
                    k.encode_as(proto, out);
                    v.encode_as(proto, out);
                }
            }
            Value::Map(pairs) => {
                line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                for (k, v) in pairs {
                    k.encode_as(proto, out);
                    v.encode_as(proto, out);
                }
            }
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => line(out, b'-', s.as_bytes()),
            Value::Integer(i) => line(out, b':', i.to_string().as_bytes()),
            Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for v in items {
                    v.encode_as(proto, out);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.extend_from_slice(&[prefix]);
    // Simple strings and errors cannot carry line breaks.
    out.extend(
        body.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Bounds on what a peer may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string, in bytes.
    pub max_bulk: usize,
    /// Most elements in one array.
    pub max_array: usize,
    /// Longest inline command or header line.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 64 << 20,
            max_array: 1 << 20,
            max_line: 64 << 10,
        }
    }
}

/// Input that is not valid RESP. The connection is answered with an error and closed, as
/// Redis does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length outside the limits or malformed.
    #[error("Protocol error: invalid {what} length")]
    BadLength {
        /// "bulk" or "multibulk".
        what: &'static str,
    },
    /// A line that is too long or not terminated properly.
    #[error("Protocol error: {0}")]
    Malformed(&'static str),
}

/// Parses one client request (an array of bulk strings, or an inline command) from the
/// front of `buf`. `Ok(None)` means more bytes are needed; otherwise the arguments and the
/// number of bytes used.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Vec<Bytes>, usize)>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, limits);
    }
    let Some((count, mut pos)) = parse_len(buf, 0, limits)? else {
        return Ok(None);
    };
    if count < 0 {
        return Ok(Some((Vec::new(), pos)));
    }
    let count = count as usize;
    if count > limits.max_array {
        return Err(ProtocolError::BadLength { what: "multibulk" });
    }
    let mut args = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let Some(&tag) = buf.get(pos) else {
            return Ok(None);
        };
        if tag != b'$' {
            return Err(ProtocolError::Malformed("expected '$'"));
        }
        let Some((len, start)) = parse_len(buf, pos, limits)? else {
            return Ok(None);
        };
        if len < 0 || len as usize > limits.max_bulk {
            return Err(ProtocolError::BadLength { what: "bulk" });
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::Malformed(
                "bulk string not terminated by CRLF",
            ));
        }
        args.push(Bytes::copy_from_slice(&buf[start..end]));
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}

/// Parses `<tag><integer>\r\n` at `at`; returns the integer and the position after it.
fn parse_len(
    buf: &[u8],
    at: usize,
    limits: &Limits,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at + 1..];
    let Some(nl) = rest.iter().take(32).position(|&b| b == b'\n') else {
        if rest.len() >= 32 {
            return Err(ProtocolError::Malformed("length line too long"));
        }
        return Ok(None);
    };
    let _ = limits;
    if nl == 0 || rest[nl - 1] != b'\r' {
        return Err(ProtocolError::Malformed(
            "length line not terminated by CRLF",
        ));
    }
    let text = std::str::from_utf8(&rest[..nl - 1])
        .map_err(|_| ProtocolError::Malformed("length is not a number"))?;
    let n: i64 = text
        .parse()
        .map_err(|_| ProtocolError::Malformed("length is not a number"))?;
    if n < -1 {
        return Err(ProtocolError::BadLength { what: "multibulk" });
    }
    Ok(Some((n, at + 1 + nl + 1)))
}

/// An inline command: words separated by spaces, ended by a newline.
fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<(Vec<Bytes>, usize)>, ProtocolError> {
    let Some(nl) = buf
        .iter()
        .take(limits.max_line + 1)
        .position(|&b| b == b'\n')
    else {
        if buf.len() > limits.max_line {
            return Err(ProtocolError::Malformed("too big inline request"));
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    Ok(Some((args, nl + 1)))
}

/// Parses one reply value (for the client and for forwarding).
pub fn parse_value(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, ProtocolError> {
    parse_value_at(buf, 0, limits, 0)
}

fn parse_value_at(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<(Value, usize)>, ProtocolError> {
    if depth > 8 {
        return Err(ProtocolError::Malformed("nesting too deep"));
    }
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    match tag {
        b'+' | b'-' => {
            let rest = &buf[at + 1..];
            let Some(nl) = rest.iter().take(limits.max_line).position(|&b| b == b'\n') else {
                return if rest.len() >= limits.max_line {
                    Err(ProtocolError::Malformed("line too long"))
                } else {
                    Ok(None)
                };
            };
            let text =
                String::from_utf8_lossy(rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]))
                    .into_owned();
            let v = if tag == b'+' {
                Value::Simple(text)
            } else {
                Value::Error(text)
            };
            Ok(Some((v, at + 1 + nl + 1)))
        }
        b':' => Ok(parse_len_any(buf, at)?.map(|(n, p)| (Value::Integer(n), p))),
        b'$' => {
            let Some((len, start)) = parse_len(buf, at, limits)? else {
                return Ok(None);
            };
            if len < 0 {
                return Ok(Some((Value::Bulk(None), start)));
            }
            if len as usize > limits.max_bulk {
                return Err(ProtocolError::BadLength { what: "bulk" });
            }
            let end = start + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((
                Value::bulk(Bytes::copy_from_slice(&buf[start..end])),
                end + 2,
            )))
        }
        b'*' => {
            let Some((count, mut pos)) = parse_len(buf, at, limits)? else {
                return Ok(None);
            };
            if count < 0 {
                return Ok(Some((Value::Array(None), pos)));
            }
            if count as usize > limits.max_array {
                return Err(ProtocolError::BadLength { what: "multibulk" });
            }
            let mut items = Vec::with_capacity((count as usize).min(1024));
            for _ in 0..count {
                let Some((v, next)) = parse_value_at(buf, pos, limits, depth + 1)? else {
                    return Ok(None);
                };
                items.push(v);
                pos = next;
            }
            Ok(Some((Value::Array(Some(items)), pos)))
        }
        b'_' => match buf.get(at + 1..at + 3) {
            None => Ok(None),
            Some(b"\r\n") => Ok(Some((Value::Bulk(None), at + 3))),
            Some(_) => Err(ProtocolError::Malformed("null not terminated by CRLF")),
        },
        b'%' => {
            let Some((count, mut pos)) = parse_len(buf, at, limits)? else {
                return Ok(None);
            };
            if count < 0 || count as usize > limits.max_array / 2 {
                return Err(ProtocolError::BadLength { what: "map" });
            }
            let mut pairs = Vec::with_capacity((count as usize).min(512));
            for _ in 0..count {
                let Some((k, next)) = parse_value_at(buf, pos, limits, depth + 1)? else {
                    return Ok(None);
                };
                let Some((v, next)) = parse_value_at(buf, next, limits, depth + 1)? else {
                    return Ok(None);
                };
                pairs.push((k, v));
                pos = next;
            }
            Ok(Some((Value::Map(pairs), pos)))
        }
        _ => Err(ProtocolError::Malformed("unknown reply type")),
    }
}

fn parse_len_any(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at + 1..];
    let Some(nl) = rest.iter().take(32).position(|&b| b == b'\n') else {
        return if rest.len() >= 32 {
            Err(ProtocolError::Malformed("integer too long"))
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]))
        .map_err(|_| ProtocolError::Malformed("integer is not a number"))?;
    let n = text
        .parse()
        .map_err(|_| ProtocolError::Malformed("integer is not a number"))?;
    Ok(Some((n, at + 1 + nl + 1)))
}

/// Reads one reply from `stream`, buffering in `buf` (bytes after the reply stay there).
pub async fn read_value<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Value> {
    read_value_with(stream, buf, &Limits::default()).await
}

/// [`read_value`] with the given limits.
pub async fn read_value_with<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    limits: &Limits,
) -> std::io::Result<Value> {
    use bytes::Buf;
    use tokio::io::AsyncReadExt;
    loop {
        match parse_value(buf, limits) {
            Ok(Some((v, used))) => {
                buf.advance(used);
                return Ok(v);
            }
            Ok(None) => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            }
        }
    }
}

/// Encodes a request as an array of bulk strings.
pub fn encode_request(args: &[Bytes], out: &mut BytesMut) {
    Value::Array(Some(
        args.iter().map(|a| Value::Bulk(Some(a.clone()))).collect(),
    ))
    .encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<(Vec<Bytes>, usize)>, ProtocolError> {
        parse_request(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn parses_arrays_and_inline_commands() {
        let (args, used) = req("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(used, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".len());
        let (args, _) = req("SET a  b\r\n").unwrap().unwrap();
        assert_eq!(args.len(), 3);
    }

    #[test]
    fn half_frames_need_more_bytes() {
        let full = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for cut in 1..full.len() {
            assert_eq!(req(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocation() {
        assert!(req("*99999999999\r\n").is_err());
        assert!(req("*1\r\n$99999999999\r\n").is_err());
        assert!(req("*1\r\n$-5\r\n").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for g in ["*x\r\n", "*1\r\n+OK\r\n", "*1\r\n$2\r\nabcd\r\n", "*1\n"] {
            assert!(req(g).is_err(), "{g:?}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let v = Value::Array(Some(vec![
            Value::ok(),
            Value::err("ERR x"),
            Value::Integer(-3),
            Value::Bulk(None),
            Value::bulk("hi"),
            Value::Array(None),
        ]));
        let mut out = BytesMut::new();
        v.encode(&mut out);
        let (back, used) = parse_value(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!(back, v);
        assert_eq!(used, out.len());
    }

    #[test]
    fn resp3_nulls_and_maps_round_trip_and_flatten_in_resp2() {
        let map = Value::Map(vec![(Value::bulk("f"), Value::Bulk(None))]);
        let mut out = BytesMut::new();
        map.encode_as(Protocol::Resp3, &mut out);
        assert_eq!(&out[..], b"%1\r\n$1\r\nf\r\n_\r\n");
        let (back, used) = parse_value(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!((back, used), (map.clone(), out.len()));
        for cut in 1..out.len() {
            assert_eq!(parse_value(&out[..cut], &Limits::default()).unwrap(), None);
        }
        let mut flat = BytesMut::new();
        map.encode(&mut flat);
        assert_eq!(&flat[..], b"*2\r\n$1\r\nf\r\n$-1\r\n");
        assert!(parse_value(b"%99999999999\r\n", &Limits::default()).is_err());
        assert!(parse_value(b"_x\r\n", &Limits::default()).is_err());
    }
}
