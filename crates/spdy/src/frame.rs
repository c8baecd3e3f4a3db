//! SPDY/3 frames and their wire encoding.
//!
//! Control frames: `1 | version(15) | type(16) | flags(8) | length(24) | payload`.
//! Data frames: `0 | stream id(31) | flags(8) | length(24) | payload`.
//! The [`Decoder`] works on a growing buffer, checks every length against a limit before waiting
//! for (or allocating) the payload, and turns malformed input into a [`FrameError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Headers;
use crate::headers::{HeaderCompressor, HeaderDecompressor};

/// The protocol version this crate speaks.
pub const VERSION: u16 = 3;

/// Control frame type numbers.
pub mod kind {
    /// SYN_STREAM: open a stream.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY: accept a stream.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM: abort a stream.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY: no new streams.
    pub const GOAWAY: u16 = 7;
    /// HEADERS: extra headers for a stream.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE: flow control credit.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FIN flag (data frames, SYN_STREAM, SYN_REPLY, HEADERS): the sender's half is closed.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag of SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM: frame for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM: stream refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// CANCEL: the stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 6;
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// STREAM_IN_USE: a second SYN_REPLY.
    pub const STREAM_IN_USE: u32 = 8;
    /// STREAM_ALREADY_CLOSED: data after the peer's FIN.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    /// Normal shutdown.
    pub const OK: u32 = 0;
    /// The peer violated the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Largest data frame payload accepted (the 24-bit maximum; Go's framer may send that much).
pub const MAX_DATA_FRAME: u32 = 0x00ff_ffff;
/// Largest control frame payload accepted: a compressed header block bigger than this cannot
/// decompress within [`MAX_HEADER_BLOCK`](crate::headers::MAX_HEADER_BLOCK) anyway.
pub const MAX_CONTROL_FRAME: u32 = (1 << 20) + 64 * 1024;
/// Largest number of SETTINGS entries accepted.
pub const MAX_SETTINGS: u32 = 1024;

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Entry flags (PERSIST_VALUE 0x1, PERSISTED 0x2).
    pub flags: u8,
    /// 24-bit setting id.
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A decoded SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Open a stream.
    SynStream {
        /// New stream id (odd from clients, even from servers).
        stream_id: u32,
        /// Associated stream id (server push), usually 0.
        associated_id: u32,
        /// 3-bit priority, 0 highest.
        priority: u8,
        /// Credential slot, 0.
        slot: u8,
        /// [`FLAG_FIN`] / [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// Request headers.
        headers: Headers,
    },
    /// Accept a stream.
    SynReply {
        /// The stream being accepted.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Abort a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// One of [`rst`].
        status: u32,
    },
    /// Connection settings (ignored by [`Connection`](crate::Connection)).
    Settings {
        /// 0x1 CLEAR_SETTINGS.
        flags: u8,
        /// Entries.
        entries: Vec<Setting>,
    },
    /// Liveness check; the receiver echoes pings it did not send.
    Ping {
        /// Ping id (odd from clients, even from servers).
        id: u32,
    },
    /// The sender accepts no new streams.
    GoAway {
        /// Last stream id the sender processed.
        last_good_stream_id: u32,
        /// One of [`goaway`].
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Flow-control credit (ignored by [`Connection`](crate::Connection)).
    WindowUpdate {
        /// The stream.
        stream_id: u32,
        /// Added window size.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame of a type this crate does not know (e.g. CREDENTIAL); ignored.
    Unknown {
        /// Its type number.
        frame_type: u16,
        /// Its flags.
        flags: u8,
    },
}

/// Why bytes could not be decoded into, or a frame encoded as, SPDY/3.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Control frame with a version other than 3.
    #[error("unsupported SPDY version {0} (only 3 is spoken)")]
    UnsupportedVersion(u16),
    /// Frame length above the limit for its kind.
    #[error("{frame} frame of {length} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Frame kind.
        frame: &'static str,
        /// Announced length.
        length: u32,
        /// Limit.
        max: u32,
    },
    /// Frame length impossible for its type.
    #[error("{frame} frame has invalid length {length}")]
    InvalidLength {
        /// Frame kind.
        frame: &'static str,
        /// Announced length.
        length: u32,
    },
    /// Stream id 0 where a stream is required.
    #[error("{frame} frame with stream id 0")]
    ZeroStreamId {
        /// Frame kind.
        frame: &'static str,
    },
    /// RST_STREAM with status 0.
    #[error("RST_STREAM for stream {0} with status 0")]
    ZeroRstStatus(u32),
    /// Too many SETTINGS entries.
    #[error("SETTINGS frame with {count} entries exceeds the limit of {max}")]
    TooManySettings {
        /// Announced count.
        count: u32,
        /// Limit.
        max: u32,
    },
    /// Header block decompresses to more than the limit.
    #[error("header block decompresses to more than {max} bytes")]
    HeaderBlockTooLarge {
        /// Limit.
        max: usize,
    },
    /// Too many header pairs.
    #[error("header block with {count} pairs exceeds the limit of {max}")]
    TooManyHeaders {
        /// Announced count.
        count: u32,
        /// Limit.
        max: u32,
    },
    /// Header block structure is broken.
    #[error("malformed header block: {0}")]
    MalformedHeaderBlock(&'static str),
    /// Header names must be lowercase on the wire.
    #[error("header name {0:?} is not lowercase")]
    UppercaseHeaderName(String),
    /// The zlib stream is corrupt.
    #[error("header decompression failed: {0}")]
    Decompress(#[source] flate2::DecompressError),
    /// The compressor failed.
    #[error("header compression failed: {0}")]
    Compress(#[source] flate2::CompressError),
    /// A frame to encode does not fit the wire format.
    #[error("cannot encode {frame} frame: {reason}")]
    Unencodable {
        /// Frame kind.
        frame: &'static str,
        /// What is out of range.
        reason: &'static str,
    },
}

/// Decodes frames from a byte buffer; owns the receiving zlib stream of a connection.
#[derive(Default)]
pub struct Decoder {
    headers: HeaderDecompressor,
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one complete frame off the front of `buf`, or returns `Ok(None)` (consuming
    /// nothing) if more bytes are needed. Lengths are validated from the 8-byte header alone, so
    /// a hostile length fails before any payload is buffered. After an error the decoder (and
    /// the connection) must not be used further.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(head) = buf.first_chunk::<8>() else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]);
        let control = word & 0x8000_0000 != 0;
        let needed = 8 + length as usize;
        if !control {
            if length > MAX_DATA_FRAME {
                return Err(FrameError::FrameTooLarge {
                    frame: "DATA",
                    length,
                    max: MAX_DATA_FRAME,
                });
            }
            if buf.len() < needed {
                return Ok(None);
            }
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId { frame: "DATA" });
            }
            buf.advance(8);
            let data = buf.split_to(length as usize).freeze();
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data,
            }));
        }
        let version = u16::try_from((word >> 16) & 0x7fff).unwrap_or(u16::MAX);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let frame_type = u16::try_from(word & 0xffff).unwrap_or(u16::MAX);
        if length > MAX_CONTROL_FRAME {
            return Err(FrameError::FrameTooLarge {
                frame: type_name(frame_type),
                length,
                max: MAX_CONTROL_FRAME,
            });
        }
        check_control_length(frame_type, length)?;
        if buf.len() < needed {
            return Ok(None);
        }
        buf.advance(8);
        let payload = buf.split_to(length as usize);
        self.control(frame_type, flags, &payload).map(Some)
    }

    fn control(&mut self, frame_type: u16, flags: u8, mut p: &[u8]) -> Result<Frame, FrameError> {
        let frame = match frame_type {
            kind::SYN_STREAM => {
                let stream_id = stream_id(p.get_u32(), "SYN_STREAM")?;
                let associated_id = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                let headers = self.headers.decompress(p)?;
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            }
            kind::SYN_REPLY | kind::HEADERS => {
                let name = type_name(frame_type);
                let stream_id = stream_id(p.get_u32(), name)?;
                let headers = self.headers.decompress(p)?;
                if frame_type == kind::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            kind::RST_STREAM => {
                let stream_id = stream_id(p.get_u32(), "RST_STREAM")?;
                let status = p.get_u32();
                if status == 0 {
                    return Err(FrameError::ZeroRstStatus(stream_id));
                }
                Frame::RstStream { stream_id, status }
            }
            kind::SETTINGS => {
                let count = p.get_u32();
                if count > MAX_SETTINGS {
                    return Err(FrameError::TooManySettings {
                        count,
                        max: MAX_SETTINGS,
                    });
                }
                if u64::from(count) * 8 != p.len() as u64 {
                    return Err(FrameError::InvalidLength {
                        frame: "SETTINGS",
                        length: u32::try_from(p.len() + 4).unwrap_or(u32::MAX),
                    });
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = p.get_u32();
                        let value = p.get_u32();
                        Setting {
                            flags: word.to_be_bytes()[0],
                            id: word & 0x00ff_ffff,
                            value,
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            kind::PING => Frame::Ping { id: p.get_u32() },
            kind::GOAWAY => Frame::GoAway {
                last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            },
            kind::WINDOW_UPDATE => {
                let stream_id = p.get_u32() & 0x7fff_ffff;
                Frame::WindowUpdate {
                    stream_id,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            frame_type => Frame::Unknown { frame_type, flags },
        };
        Ok(frame)
    }
}

fn stream_id(word: u32, frame: &'static str) -> Result<u32, FrameError> {
    match word & 0x7fff_ffff {
        0 => Err(FrameError::ZeroStreamId { frame }),
        id => Ok(id),
    }
}

/// Rejects lengths that cannot hold the fixed fields of a frame type (so the fixed-field reads
/// in [`Decoder::control`] never run past the payload).
fn check_control_length(frame_type: u16, length: u32) -> Result<(), FrameError> {
    let ok = match frame_type {
        kind::SYN_STREAM => length >= 10,
        kind::SYN_REPLY | kind::HEADERS => length >= 4,
        kind::RST_STREAM | kind::GOAWAY | kind::WINDOW_UPDATE => length == 8,
        kind::SETTINGS => length >= 4,
        kind::PING => length == 4,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(FrameError::InvalidLength {
            frame: type_name(frame_type),
            length,
        })
    }
}

fn type_name(frame_type: u16) -> &'static str {
    match frame_type {
        kind::SYN_STREAM => "SYN_STREAM",
        kind::SYN_REPLY => "SYN_REPLY",
        kind::RST_STREAM => "RST_STREAM",
        kind::SETTINGS => "SETTINGS",
        kind::PING => "PING",
        kind::GOAWAY => "GOAWAY",
        kind::HEADERS => "HEADERS",
        kind::WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown control",
    }
}

/// Encodes frames; owns the sending zlib stream of a connection.
#[derive(Default)]
pub struct Encoder {
    headers: HeaderCompressor,
}

impl Encoder {
    /// An encoder at the start of a connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the wire form of `frame` to `dst`. Header blocks go through this encoder's zlib
    /// stream, so frames must be written to the peer in the order they were encoded.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = self.headers.compress(headers)?;
                control_head(
                    dst,
                    kind::SYN_STREAM,
                    *flags,
                    block.len() + 10,
                    "SYN_STREAM",
                )?;
                dst.put_u32(nonzero_id(*stream_id, "SYN_STREAM")?);
                dst.put_u32(associated_id & 0x7fff_ffff);
                dst.put_u8((priority & 0x07) << 5);
                dst.put_u8(*slot);
                dst.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let (t, name) = match frame {
                    Frame::SynReply { .. } => (kind::SYN_REPLY, "SYN_REPLY"),
                    _ => (kind::HEADERS, "HEADERS"),
                };
                let id = nonzero_id(*stream_id, name)?;
                let block = self.headers.compress(headers)?;
                control_head(dst, t, *flags, block.len() + 4, name)?;
                dst.put_u32(id);
                dst.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_head(dst, kind::RST_STREAM, 0, 8, "RST_STREAM")?;
                dst.put_u32(nonzero_id(*stream_id, "RST_STREAM")?);
                dst.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                control_head(
                    dst,
                    kind::SETTINGS,
                    *flags,
                    4 + 8 * entries.len(),
                    "SETTINGS",
                )?;
                dst.put_u32(u32::try_from(entries.len()).unwrap_or(u32::MAX));
                for s in entries {
                    dst.put_u32((u32::from(s.flags) << 24) | (s.id & 0x00ff_ffff));
                    dst.put_u32(s.value);
                }
            }
            Frame::Ping { id } => {
                control_head(dst, kind::PING, 0, 4, "PING")?;
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_head(dst, kind::GOAWAY, 0, 8, "GOAWAY")?;
                dst.put_u32(last_good_stream_id & 0x7fff_ffff);
                dst.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_head(dst, kind::WINDOW_UPDATE, 0, 8, "WINDOW_UPDATE")?;
                dst.put_u32(stream_id & 0x7fff_ffff);
                dst.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let id = nonzero_id(*stream_id, "DATA")?;
                let len = u32::try_from(data.len())
                    .ok()
                    .filter(|&l| l <= MAX_DATA_FRAME)
                    .ok_or(FrameError::Unencodable {
                        frame: "DATA",
                        reason: "payload over 16 MiB",
                    })?;
                dst.reserve(8 + data.len());
                dst.put_u32(id);
                dst.put_u32((u32::from(*flags) << 24) | len);
                dst.put_slice(data);
            }
            Frame::Unknown { frame_type, flags } => {
                control_head(dst, *frame_type, *flags, 0, "unknown control")?;
            }
        }
        Ok(())
    }
}

fn nonzero_id(id: u32, frame: &'static str) -> Result<u32, FrameError> {
    if id == 0 || id > 0x7fff_ffff {
        return Err(FrameError::Unencodable {
            frame,
            reason: "stream id must be in 1..2^31",
        });
    }
    Ok(id)
}

fn control_head(
    dst: &mut BytesMut,
    frame_type: u16,
    flags: u8,
    length: usize,
    frame: &'static str,
) -> Result<(), FrameError> {
    let length = u32::try_from(length)
        .ok()
        .filter(|&l| l <= MAX_CONTROL_FRAME)
        .ok_or(FrameError::Unencodable {
            frame,
            reason: "payload too large",
        })?;
    dst.reserve(8 + length as usize);
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(frame_type);
    dst.put_u32((u32::from(flags) << 24) | length);
    Ok(())
}

#[cfg(test)]
mod tests;
