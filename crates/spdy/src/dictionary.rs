//! The fixed zlib preset dictionary of SPDY/3 header compression (draft 3, section 2.6.10.1).
//!
//! The dictionary is a list of length-prefixed header names and common values followed by a run
//! of raw status codes, status texts, dates and content types. It is built here at compile time
//! from that structure so the source stays readable; a test pins its length, zlib dictionary id
//! (adler32) and sha256 to the values of the canonical 1423 bytes.

/// Entries written as a 32-bit big-endian length followed by the bytes.
const PREFIXED: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// Raw bytes appended after the prefixed entries, without separators.
const RAW: [&str; 5] = [
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request\
     401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented\
     503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,\
     text/plain,text/javascript,public",
    "privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

/// Length of the SPDY/3 header dictionary in bytes.
pub const DICTIONARY_LEN: usize = 1423;

/// The SPDY/3 zlib preset dictionary (1423 bytes; zlib dictionary id `0xe3c6a7c2`).
pub static DICTIONARY: [u8; DICTIONARY_LEN] = build();

#[allow(clippy::cast_possible_truncation)] // entries are < 256 bytes (checked by the test)
const fn build() -> [u8; DICTIONARY_LEN] {
    let mut out = [0u8; DICTIONARY_LEN];
    let mut pos = 0;
    let mut i = 0;
    while i < PREFIXED.len() {
        let word = PREFIXED[i].as_bytes();
        // Every entry is shorter than 256 bytes: the length's high three bytes are zero.
        out[pos + 3] = word.len() as u8;
        pos += 4;
        let mut j = 0;
        while j < word.len() {
            out[pos] = word[j];
            pos += 1;
            j += 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < RAW.len() {
        let raw = RAW[i].as_bytes();
        let mut j = 0;
        while j < raw.len() {
            out[pos] = raw[j];
            pos += 1;
            j += 1;
        }
        i += 1;
    }
    // Fails compilation if the pieces do not add up to exactly the canonical length.
    assert!(pos == DICTIONARY_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_is_the_canonical_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(
            DICTIONARY
                .starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post")
        );
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        // The zlib dictionary id SPDY/3 peers put in the stream header (FDICT).
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
        assert!(PREFIXED.iter().all(|w| w.len() < 256));
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(DICTIONARY)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }
}
