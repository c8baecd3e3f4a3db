//! SPDY/3.1 frames and their zlib header blocks from a peer: the decoder yields frames
//! or an error, never a panic, and a frame it decoded encodes again.

use bytes::BytesMut;
use skiff_spdy::frame::{Decoder, Encoder};

/// One input.
pub fn run(data: &[u8]) {
    let mut dec = Decoder::new();
    let mut enc = Encoder::new();
    // Fed in two pieces: frames that straddle reads are the usual case.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut buf = BytesMut::from(&data[..cut]);
    let mut fed_rest = false;
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let mut out = BytesMut::new();
                let _ = enc.encode(&frame, &mut out);
            }
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&data[cut..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
}
