//! The xenstore wire format (`xen/include/public/io/xs_wire.h`).
//!
//! Every message in either direction is a 16-byte header of four `u32` in the
//! host's byte order (`type`, `req_id`, `tx_id`, `len`) followed by `len` bytes
//! of payload, `len <= 4096`. Payloads are mostly nul-terminated strings.
//!
//! This module does no I/O: [`decode`] is a pure function over a byte buffer so
//! that fuzz targets and both the client and the server share one parser.

use std::fmt;

/// Size of the message header in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Largest absolute path xenstored accepts (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Largest relative path a client should send (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// Largest whole message (header plus payload).
pub const MESSAGE_MAX: usize = HEADER_LEN + PAYLOAD_MAX;

/// Message types (`enum xsd_sockmsg_type`). Numbering is part of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control,
    /// `XS_DIRECTORY`: list the children of a node.
    Directory,
    /// `XS_READ`: read a node's value.
    Read,
    /// `XS_GET_PERMS`: read a node's permissions.
    GetPerms,
    /// `XS_WATCH`: register a watch.
    Watch,
    /// `XS_UNWATCH`: remove a watch.
    Unwatch,
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END`.
    TransactionEnd,
    /// `XS_INTRODUCE`: tell xenstored about a new domain (dom0 only).
    Introduce,
    /// `XS_RELEASE`: tell xenstored a domain is gone (dom0 only).
    Release,
    /// `XS_GET_DOMAIN_PATH`: `/local/domain/<domid>`.
    GetDomainPath,
    /// `XS_WRITE`: write a node's value, creating it and its parents.
    Write,
    /// `XS_MKDIR`: create a node (and parents) if missing.
    Mkdir,
    /// `XS_RM`: remove a node and its children.
    Rm,
    /// `XS_SET_PERMS`: replace a node's permissions.
    SetPerms,
    /// `XS_WATCH_EVENT`: unsolicited watch notification (server to client).
    WatchEvent,
    /// `XS_ERROR`: error reply, payload is an errno name.
    Error,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced,
    /// `XS_RESUME`.
    Resume,
    /// `XS_SET_TARGET`.
    SetTarget,
    /// `XS_RESET_WATCHES`: drop all watches and transactions of the caller.
    ResetWatches,
    /// `XS_DIRECTORY_PART`: a directory listing too long for one reply.
    DirectoryPart,
}

impl Op {
    /// Every known operation, for table-driven code and tests.
    pub const ALL: [Op; 22] = [
        Op::Control,
        Op::Directory,
        Op::Read,
        Op::GetPerms,
        Op::Watch,
        Op::Unwatch,
        Op::TransactionStart,
        Op::TransactionEnd,
        Op::Introduce,
        Op::Release,
        Op::GetDomainPath,
        Op::Write,
        Op::Mkdir,
        Op::Rm,
        Op::SetPerms,
        Op::WatchEvent,
        Op::Error,
        Op::IsDomainIntroduced,
        Op::Resume,
        Op::SetTarget,
        Op::ResetWatches,
        Op::DirectoryPart,
    ];

    /// The numeric `type` field for this operation.
    pub fn code(self) -> u32 {
        match self {
            Op::Control => 0,
            Op::Directory => 1,
            Op::Read => 2,
            Op::GetPerms => 3,
            Op::Watch => 4,
            Op::Unwatch => 5,
            Op::TransactionStart => 6,
            Op::TransactionEnd => 7,
            Op::Introduce => 8,
            Op::Release => 9,
            Op::GetDomainPath => 10,
            Op::Write => 11,
            Op::Mkdir => 12,
            Op::Rm => 13,
            Op::SetPerms => 14,
            Op::WatchEvent => 15,
            Op::Error => 16,
            Op::IsDomainIntroduced => 17,
            Op::Resume => 18,
            Op::SetTarget => 19,
            // 20 was XS_RESTRICT, removed in Xen 4.9.
            Op::ResetWatches => 21,
            Op::DirectoryPart => 22,
        }
    }

    /// The operation for a numeric `type` field, if it is one we know.
    pub fn from_code(code: u32) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.code() == code)
    }

    /// The name xenstore documentation uses (`READ`, `WATCH_EVENT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Control => "CONTROL",
            Op::Directory => "DIRECTORY",
            Op::Read => "READ",
            Op::GetPerms => "GET_PERMS",
            Op::Watch => "WATCH",
            Op::Unwatch => "UNWATCH",
            Op::TransactionStart => "TRANSACTION_START",
            Op::TransactionEnd => "TRANSACTION_END",
            Op::Introduce => "INTRODUCE",
            Op::Release => "RELEASE",
            Op::GetDomainPath => "GET_DOMAIN_PATH",
            Op::Write => "WRITE",
            Op::Mkdir => "MKDIR",
            Op::Rm => "RM",
            Op::SetPerms => "SET_PERMS",
            Op::WatchEvent => "WATCH_EVENT",
            Op::Error => "ERROR",
            Op::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            Op::Resume => "RESUME",
            Op::SetTarget => "SET_TARGET",
            Op::ResetWatches => "RESET_WATCHES",
            Op::DirectoryPart => "DIRECTORY_PART",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fixed 16-byte message header (`struct xsd_sockmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Raw message type; see [`Header::op`].
    pub msg_type: u32,
    /// Request id, echoed by the server in its reply; 0 in watch events.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Parses a header. Any 16 bytes form a header; check the length with
    /// [`Header::payload_len`] before trusting it.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// The header as it goes on the wire.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.msg_type.to_ne_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_ne_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_ne_bytes());
        out[12..16].copy_from_slice(&self.len.to_ne_bytes());
        out
    }

    /// The operation, if the type is known.
    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.msg_type)
    }

    /// The payload length, refusing anything above [`PAYLOAD_MAX`] before
    /// anybody allocates for it.
    pub fn payload_len(&self) -> Result<usize, DecodeError> {
        let len = self.len as usize;
        if len > PAYLOAD_MAX {
            return Err(DecodeError::TooLong { len: self.len });
        }
        Ok(len)
    }
}

/// Why bytes are not a valid xenstore message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces more than [`PAYLOAD_MAX`] bytes of payload.
    #[error("payload length {len} exceeds the xenstore maximum of 4096 bytes")]
    TooLong {
        /// The announced length.
        len: u32,
    },
}

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header; `header.len` always equals `payload.len()`.
    pub header: Header,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// Builds a message, refusing payloads above [`PAYLOAD_MAX`].
    pub fn new(op: Op, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Result<Message, DecodeError> {
        Message::with_type(op.code(), req_id, tx_id, payload)
    }

    /// Like [`Message::new`] with a raw type code (replies echo the request's type).
    pub fn with_type(
        msg_type: u32,
        req_id: u32,
        tx_id: u32,
        payload: Vec<u8>,
    ) -> Result<Message, DecodeError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if payload.len() > PAYLOAD_MAX {
            return Err(DecodeError::TooLong { len });
        }
        Ok(Message {
            header: Header {
                msg_type,
                req_id,
                tx_id,
                len,
            },
            payload,
        })
    }

    /// The operation, if the type is known.
    pub fn op(&self) -> Option<Op> {
        self.header.op()
    }

    /// Header and payload as one buffer, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The payload split into its nul-terminated fields; see [`split_fields`].
    pub fn fields(&self) -> Vec<&[u8]> {
        split_fields(&self.payload)
    }
}

/// Decodes the first message in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a message, and
/// `Ok(Some((message, consumed)))` when a whole one is there. A header that
/// announces an oversized payload is an error at once, without waiting for
/// (or allocating) the payload. Never panics, whatever the input.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(head);
    let len = header.payload_len()?;
    let total = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((
        Message {
            header,
            payload: payload.to_vec(),
        },
        total,
    )))
}

/// Splits a payload into its fields: each field ends at a nul byte; a last
/// piece without a terminating nul is returned as a field too (some clients
/// omit the final nul). An empty payload has no fields.
pub fn split_fields(payload: &[u8]) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
    // `split` yields a trailing empty piece after a final nul (or for an empty
    // payload); it is not a field.
    if fields.last().is_some_and(|last| last.is_empty()) {
        fields.pop();
    }
    fields
}

/// Joins fields into a payload, each followed by a nul.
pub fn join_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    for field in fields {
        out.extend_from_slice(field);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_host_order() {
        let h = Header {
            msg_type: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 5,
        };
        let bytes = h.to_bytes();
        assert_eq!(&bytes[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(Header::parse(&bytes), h);
    }

    #[test]
    fn op_codes_match_xs_wire_h() {
        assert_eq!(Op::Read.code(), 2);
        assert_eq!(Op::Write.code(), 11);
        assert_eq!(Op::WatchEvent.code(), 15);
        assert_eq!(Op::Error.code(), 16);
        assert_eq!(Op::ResetWatches.code(), 21);
        assert_eq!(Op::DirectoryPart.code(), 22);
        assert_eq!(Op::from_code(20), None);
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
    }

    #[test]
    fn decode_waits_for_whole_message() {
        let msg = Message::new(Op::Read, 9, 0, b"/a\0".to_vec()).unwrap();
        let bytes = msg.encode();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let (got, used) = decode(&two).unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn decode_rejects_oversized_length_from_header_alone() {
        let h = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        };
        assert_eq!(
            decode(&h.to_bytes()),
            Err(DecodeError::TooLong { len: 4097 })
        );
        let h = Header { len: u32::MAX, ..h };
        assert!(decode(&h.to_bytes()).is_err());
    }

    #[test]
    fn fields_split_with_and_without_final_nul() {
        assert_eq!(split_fields(b"a\0b\0"), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(split_fields(b"a\0b"), vec![&b"a"[..], &b"b"[..]]);
        assert!(split_fields(b"").is_empty());
        assert_eq!(split_fields(b"\0"), vec![&b""[..]]);
        assert_eq!(join_fields(&[b"p", b"t"]), b"p\0t\0");
    }

    #[test]
    fn message_new_refuses_big_payload() {
        assert!(Message::new(Op::Write, 1, 0, vec![b'x'; PAYLOAD_MAX]).is_ok());
        assert!(Message::new(Op::Write, 1, 0, vec![b'x'; PAYLOAD_MAX + 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
