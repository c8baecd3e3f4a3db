//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! A block is a 32-bit pair count followed by 32-bit length-prefixed names and values; several
//! values of one name are joined with NUL bytes. Each direction of a connection compresses all of
//! its blocks on ONE zlib stream primed with [`DICTIONARY`], each
//! block ending with a sync flush, so a block can only be decoded after every earlier one.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::Headers;
use crate::dictionary::DICTIONARY;
use crate::frame::FrameError;

/// Largest decompressed header block accepted (1 MiB).
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest number of name/value pairs accepted in one block.
pub const MAX_HEADER_PAIRS: u32 = 4096;

/// Serializes `headers` into an uncompressed block: names lowercased, values of repeated names
/// joined with NUL into one pair (Go's framer rejects duplicate names), first-seen order kept.
pub fn encode_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut merged: Vec<(String, Vec<u8>)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(0);
                v.extend_from_slice(value.as_bytes());
            }
            None => merged.push((name, value.as_bytes().to_vec())),
        }
    }
    let mut out = Vec::new();
    put_len(&mut out, merged.len());
    for (name, value) in &merged {
        put_len(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        put_len(&mut out, value.len());
        out.extend_from_slice(value);
    }
    out
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Header blocks are bounded far below 4 GiB by the 24-bit frame length.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

/// Parses an uncompressed block. Names must be non-empty and lowercase; a value holding NUL
/// separators yields one `(name, value)` entry per value.
pub fn decode_block(mut block: &[u8]) -> Result<Headers, FrameError> {
    let count = take_u32(&mut block)?;
    if count > MAX_HEADER_PAIRS {
        return Err(FrameError::TooManyHeaders {
            count,
            max: MAX_HEADER_PAIRS,
        });
    }
    // Each pair needs at least 8 bytes of lengths: reject impossible counts before allocating.
    if u64::from(count) * 8 > block.len() as u64 {
        return Err(FrameError::MalformedHeaderBlock(
            "pair count exceeds block size",
        ));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = take_bytes(&mut block)?;
        if name.is_empty() {
            return Err(FrameError::MalformedHeaderBlock("empty header name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| FrameError::MalformedHeaderBlock("header name is not UTF-8"))?;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(FrameError::UppercaseHeaderName(name.to_owned()));
        }
        let value = take_bytes(&mut block)?;
        let value = std::str::from_utf8(value)
            .map_err(|_| FrameError::MalformedHeaderBlock("header value is not UTF-8"))?;
        for v in value.split('\0') {
            headers.push((name.to_owned(), v.to_owned()));
        }
    }
    if !block.is_empty() {
        return Err(FrameError::MalformedHeaderBlock(
            "trailing bytes after the last pair",
        ));
    }
    Ok(headers)
}

fn take_u32(block: &mut &[u8]) -> Result<u32, FrameError> {
    let Some((head, rest)) = block.split_first_chunk::<4>() else {
        return Err(FrameError::MalformedHeaderBlock("truncated length"));
    };
    *block = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_bytes<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let len = take_u32(block)? as usize;
    if len > block.len() {
        return Err(FrameError::MalformedHeaderBlock("length exceeds block"));
    }
    let (head, rest) = block.split_at(len);
    *block = rest;
    Ok(head)
}

/// The sending half of a connection's header compression: one zlib stream for its lifetime.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    /// A fresh zlib stream primed with the SPDY/3 dictionary.
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::best(), true);
        // Setting a dictionary on a fresh stream cannot fail for a valid compressor.
        let _ = zlib.set_dictionary(&DICTIONARY);
        Self { zlib }
    }

    /// Encodes and compresses `headers`, ending with a sync flush so the peer can decode the
    /// block on its own (given every earlier block on this stream).
    pub fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, FrameError> {
        let raw = encode_block(headers);
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut input: &[u8] = &raw;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(FrameError::Compress)?;
            let consumed = usize::try_from(self.zlib.total_in() - before).unwrap_or(usize::MAX);
            input = &input[consumed.min(input.len())..];
            // Done once all input is consumed and the flush did not run out of room.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving half of a connection's header compression: one zlib stream for its lifetime.
pub struct HeaderDecompressor {
    zlib: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh zlib stream; the SPDY/3 dictionary is supplied when the stream asks for it.
    pub fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Decompresses one block (the compressed bytes of one frame) and parses it. The output is
    /// capped at [`MAX_HEADER_BLOCK`]. After an error the stream is unusable (so is the
    /// connection).
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate(compressed)?;
        decode_block(&raw)
    }

    fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let mut input = compressed;
        loop {
            if out.len() == out.capacity() {
                if out.len() > MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlockTooLarge {
                        max: MAX_HEADER_BLOCK,
                    });
                }
                // Grow up to one byte past the limit so exceeding it is detectable.
                let grow = out.capacity().min(MAX_HEADER_BLOCK + 1 - out.len());
                out.reserve_exact(grow);
            }
            let (in_before, out_before) = (self.zlib.total_in(), out.len());
            let status = match self
                .zlib
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(status) => status,
                Err(e) if e.needs_dictionary().is_some() => {
                    let consumed = self.zlib.total_in() - in_before;
                    input = &input[usize::try_from(consumed)
                        .unwrap_or(usize::MAX)
                        .min(input.len())..];
                    self.zlib
                        .set_dictionary(&DICTIONARY)
                        .map_err(FrameError::Decompress)?;
                    continue;
                }
                Err(e) => return Err(FrameError::Decompress(e)),
            };
            let consumed = usize::try_from(self.zlib.total_in() - in_before).unwrap_or(usize::MAX);
            input = &input[consumed.min(input.len())..];
            if status == Status::StreamEnd {
                return Err(FrameError::MalformedHeaderBlock(
                    "peer ended its zlib stream",
                ));
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::HeaderBlockTooLarge {
                    max: MAX_HEADER_BLOCK,
                });
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && out.len() == out_before && out.len() < out.capacity() {
                return Err(FrameError::MalformedHeaderBlock(
                    "compressed block is truncated",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn block_roundtrip_lowercases_and_merges() {
        let raw = encode_block(&h(&[
            ("StreamType", "error"),
            ("Port", "80"),
            ("port", "443"),
        ]));
        let back = decode_block(&raw).unwrap();
        assert_eq!(
            back,
            h(&[("streamtype", "error"), ("port", "80"), ("port", "443")])
        );
    }

    #[test]
    fn compressed_blocks_share_one_stream() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new();
        let first = h(&[("streamtype", "stdout"), ("requestid", "1234567890")]);
        let b1 = c.compress(&first).unwrap();
        let b2 = c.compress(&first).unwrap();
        // The second identical block is a back reference into the first one's window.
        assert!(b2.len() < b1.len(), "{} !< {}", b2.len(), b1.len());
        // A fresh decompressor cannot decode the second block on its own.
        assert!(HeaderDecompressor::new().decompress(&b2).is_err());
        assert_eq!(d.decompress(&b1).unwrap(), first);
        assert_eq!(d.decompress(&b2).unwrap(), first);
        let third = h(&[("streamtype", "stdin")]);
        assert_eq!(d.decompress(&c.compress(&third).unwrap()).unwrap(), third);
        assert_eq!(d.decompress(&c.compress(&[]).unwrap()).unwrap(), Vec::new());
    }

    #[test]
    fn rejects_bad_blocks() {
        // Count larger than what the bytes can hold.
        assert!(decode_block(&[0, 0, 0, 9, 0, 0, 0, 0]).is_err());
        assert!(matches!(
            decode_block(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooManyHeaders { .. })
        ));
        // Truncated value length.
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0]).is_err());
        // Empty name, uppercase name, trailing bytes.
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(matches!(
            decode_block(&[0, 0, 0, 1, 0, 0, 0, 1, b'A', 0, 0, 0, 0]),
            Err(FrameError::UppercaseHeaderName(_))
        ));
        assert!(decode_block(&[0, 0, 0, 0, 1]).is_err());
        assert!(
            HeaderDecompressor::new()
                .decompress(b"not zlib at all")
                .is_err()
        );
    }

    #[test]
    fn decompression_is_capped() {
        let big = "x".repeat(MAX_HEADER_BLOCK);
        let block = HeaderCompressor::new()
            .compress(&h(&[("a", &big)]))
            .unwrap();
        assert!(block.len() < 64 * 1024);
        assert!(matches!(
            HeaderDecompressor::new().decompress(&block),
            Err(FrameError::HeaderBlockTooLarge { .. })
        ));
    }
}
