//! The TCP wire format: length-prefixed, checksummed postcard frames.
//!
//! A frame is `len (u32 LE) ++ crc32(body) (u32 LE) ++ body`, where `body` is
//! `postcard(Frame)`. The length is checked against the maximum before anything is
//! allocated, so a hostile peer cannot make a node reserve memory it does not want to.

use raft_core::{Message, NodeId};
use serde::{Deserialize, Serialize};

/// Bytes before a frame's body.
pub const HEADER_LEN: usize = 8;
/// Identifies this protocol in the handshake.
pub const MAGIC: u32 = 0x5241_4654; // "RAFT"
/// The wire protocol's version (2: configurations carry members' addresses).
pub const VERSION: u16 = 2;

/// What travels on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The dialer's first frame.
    Hello {
        /// [`MAGIC`].
        magic: u32,
        /// [`VERSION`].
        version: u16,
        /// The cluster both ends must belong to.
        cluster_id: u64,
        /// Who is dialing.
        from: NodeId,
        /// Whom the dialer thinks it reached.
        to: NodeId,
    },
    /// The acceptor's answer to a valid `Hello`.
    Welcome,
    /// The acceptor's answer to an invalid `Hello`; the connection then closes.
    Refused(String),
    /// A Raft message.
    Raft(Message),
    /// A client's first frame (see [`crate::client`]); answered `Welcome` or `Refused`.
    ClientHello {
        /// [`MAGIC`].
        magic: u32,
        /// [`VERSION`].
        version: u16,
        /// The cluster the client wants.
        cluster_id: u64,
    },
    /// A client's request; `id` pairs it with its reply.
    ClientRequest {
        /// Chosen by the client.
        id: u64,
        /// What to do.
        op: crate::client::ClientOp,
    },
    /// The answer to the request `id`.
    ClientReply {
        /// The request's id.
        id: u64,
        /// The node's answer, or why it did not carry the request out.
        result: Result<bytes::Bytes, crate::client::ClientFailure>,
    },
}

/// Why bytes from a peer were rejected. The connection is closed; the node lives on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared length exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the {max}-byte maximum")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The body does not match its checksum.
    #[error("frame checksum mismatch: header says {expected:08x}, body hashes to {actual:08x}")]
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the body received.
        actual: u32,
    },
    /// The body is not a valid frame.
    #[error("cannot decode frame: {0}")]
    Decode(String),
}

/// Appends `frame`, encoded, to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    // Serialize straight after the header: no intermediate buffer on the hot path.
    *out = postcard::to_extend(frame, std::mem::take(out))
        .map_err(|e| FrameError::Decode(format!("cannot encode: {e}")))?;
    let body = &out[start + HEADER_LEN..];
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Parses a frame header: the body's length (checked against `max`) and checksum.
pub fn parse_header(header: [u8; HEADER_LEN], max: usize) -> Result<(usize, u32), FrameError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok((len, crc))
}

/// Verifies and decodes a frame body.
pub fn decode_body(body: &[u8], crc: u32) -> Result<Frame, FrameError> {
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(FrameError::Checksum {
            expected: crc,
            actual,
        });
    }
    postcard::from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Decodes the first frame in `buf`: `Ok(None)` if more bytes are needed, otherwise the
/// frame and the bytes it used.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let (len, crc) = parse_header(h, max)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body, crc)?, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::message::{AppendEntries, MessageBody};
    use raft_core::{Entry, EntryPayload, LogId, LogIndex, Term};

    fn sample() -> Frame {
        Frame::Raft(Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_id: LogId::new(2, 9),
                entries: vec![Entry {
                    log_id: LogId::new(3, 10),
                    payload: EntryPayload::Command(bytes::Bytes::from_static(b"hello")),
                }],
                leader_commit: LogIndex(9),
                seq: 4,
            }),
        })
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        encode(&Frame::Welcome, &mut buf).unwrap();
        let (a, used) = decode(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(a, sample());
        let (b, used2) = decode(&buf[used..], 1 << 20).unwrap().unwrap();
        assert_eq!(b, Frame::Welcome);
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn half_frames_ask_for_more_bytes() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let header = [0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        assert!(matches!(
            parse_header(header, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert!(matches!(
            decode(&buf, 1 << 20),
            Err(FrameError::Checksum { .. })
        ));
    }
}
