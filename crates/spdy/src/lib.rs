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
//! What is deliberately left out, as in spdystream as Kubernetes uses it: flow control
//! (SETTINGS and WINDOW_UPDATE are read and ignored, none are sent; backpressure comes from
//! bounded queues and TCP instead), priorities, server push, and CREDENTIAL frames.

mod conn;
pub mod dictionary;
pub mod frame;
pub mod headers;
mod upgrade;

pub use conn::{Connection, Stream, StreamReader, StreamWriter};
pub use upgrade::{PrefixedIo, UpgradeError, dial, negotiate};

/// Header pairs of a stream, in wire order; names are lowercase on the wire. A name may repeat
/// (several values of one header).
pub type Headers = Vec<(String, String)>;
