//! SPDY/3.1 for the Kubernetes streaming protocols (exec, attach, port-forward).
//!
//! kubelet clients, `crictl` and `critest` speak SPDY/3.1 through Go's `moby/spdystream` after an
//! HTTP/1.1 `Upgrade: SPDY/3.1`. This crate is wire-compatible with that implementation:
//!
//! - [`frame`]: the frame codec ([`frame::Encoder`] / [`frame::Decoder`]), with limits on every
//!   length and errors (never panics) on malformed input;
//! - [`headers`]: header blocks, zlib-compressed on one stream per direction with the SPDY/3
//!   [`dictionary`];
//! - [`Connection`]: streams multiplexed over any tokio byte stream, one reader task and one
//!   writer task per connection;
//! - [`dial`] / [`negotiate`]: the HTTP/1.1 upgrade, client side and protocol choice.
//!
//! # Connections
//!
//! Each [`Connection`] runs two tasks:
//!
//! - the **reader** decodes frames (owning the receiving zlib stream) and dispatches them:
//!   stream data goes into a bounded per-stream queue (16 frames), new streams into the accept
//!   queue. When a queue is full the reader waits, so it stops reading the socket and TCP pushes
//!   back on the peer; one stream whose reader is never drained therefore stalls the whole
//!   connection, as with spdystream. A dropped [`StreamReader`] discards its data instead.
//!   PINGs from the peer are echoed; after the peer's GOAWAY no new streams are opened; data
//!   for an unknown or finished stream is answered with RST_STREAM (INVALID_STREAM /
//!   STREAM_ALREADY_CLOSED); a malformed frame is answered with GOAWAY(PROTOCOL_ERROR) and ends
//!   the connection, after which every [`StreamReader`] returns `None`.
//! - the **writer** owns the write half and the sending zlib stream, so header blocks are
//!   compressed in exactly the order they hit the wire. Frames reach it through two queues: an
//!   unbounded one for the reader's answers (SYN_REPLY, PING echoes, RST_STREAM, GOAWAY),
//!   served first so the reader never waits on the writer, and a bounded one for what the
//!   application sends, which backpressures [`StreamWriter::send`].
//!
//! # Not implemented
//!
//! Deliberately left out, as in spdystream as Kubernetes uses it: flow control
//! (SETTINGS and WINDOW_UPDATE are read and ignored, none are sent; backpressure comes from
//! bounded queues and TCP instead), priorities, server push, and CREDENTIAL frames.

mod conn;
pub mod dictionary;
pub mod frame;
pub mod headers;
mod upgrade;

pub use conn::{Connection, Stream, StreamReader, StreamWriter};
pub use upgrade::{PROTOCOL_HEADER, PrefixedIo, UPGRADE_TOKEN, UpgradeError, dial, negotiate};

/// Header pairs of a stream, in wire order; names are lowercase on the wire. A name may repeat
/// (several values of one header).
pub type Headers = Vec<(String, String)>;
