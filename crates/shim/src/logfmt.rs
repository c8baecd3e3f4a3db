//! The CRI log format: `<RFC3339Nano> <stdout|stderr> <P|F> <content>\n`.
//!
//! A line ends at `\n` (tag `F`). A line longer than the bound is cut into `P`
//! (partial) entries of at most that many bytes, the last piece tagged `F`. Output
//! that ends without a newline when the stream closes is written as `P`, as containerd
//! does: a reader that joins entries gets exactly the bytes written, with no newline
//! added.

/// The longest content of one log entry, in bytes (containerd's default is 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a log entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// Turns one stream's bytes into CRI log entries, keeping an unfinished line.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter for `stream` with entries of at most `max` content bytes.
    pub fn new(stream: Stream, max: usize) -> LineSplitter {
        LineSplitter {
            stream,
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feed `data` read at `timestamp`; complete entries are appended to `out`.
    pub fn feed(&mut self, timestamp: &str, data: &[u8], out: &mut Vec<u8>) {
        // Room for the data plus a prefix per (short) line, roughly.
        out.reserve(data.len() + data.len() / 2);
        let mut rest = data;
        while let Some(&first) = rest.first() {
            // A full pending line is only partial once we know no newline follows it.
            if self.pending.len() == self.max && first != b'\n' {
                entry(self.stream, timestamp, b'P', &self.pending, out);
                self.pending.clear();
            }
            // Only the bytes that can still join this entry are searched (a long line
            // without newlines is not rescanned per entry).
            let room = self.max - self.pending.len();
            let window = &rest[..rest.len().min(room + 1)];
            match memchr::memchr(b'\n', window) {
                Some(i) if i <= room => {
                    let (line, tail) = rest.split_at(i);
                    if self.pending.is_empty() {
                        entry(self.stream, timestamp, b'F', line, out);
                    } else {
                        self.pending.extend_from_slice(line);
                        entry(self.stream, timestamp, b'F', &self.pending, out);
                        self.pending.clear();
                    }
                    rest = &tail[1..];
                }
                _ if self.pending.is_empty() && rest.len() > self.max => {
                    // A whole partial entry straight from the input.
                    entry(self.stream, timestamp, b'P', &rest[..self.max], out);
                    rest = &rest[self.max..];
                }
                _ => {
                    let take = room.min(rest.len());
                    self.pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                }
            }
        }
    }

    /// The stream closed: write what is left (a line without its newline) as a
    /// partial entry.
    pub fn finish(&mut self, timestamp: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            entry(self.stream, timestamp, b'P', &self.pending, out);
            self.pending = Vec::new();
        }
    }
}

fn entry(stream: Stream, timestamp: &str, tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

pub use skiff_shim_proto::clock::now_ns;

/// Format `ns` since the epoch as RFC 3339 in UTC with nanoseconds,
/// e.g. `2026-12-01T03:15:00.123456789Z`.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: usize, chunks: &[&[u8]], finish: bool) -> String {
        let mut s = LineSplitter::new(Stream::Stdout, max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed("T", c, &mut out);
        }
        if finish {
            s.finish("T", &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn full_lines_across_reads() {
        assert_eq!(
            run(100, &[b"hel", b"lo\nwor", b"ld\n"], false),
            "T stdout F hello\nT stdout F world\n"
        );
        assert_eq!(run(100, &[b"\n\n"], false), "T stdout F \nT stdout F \n");
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        assert_eq!(
            run(4, &[b"abcdefghij\n"], false),
            "T stdout P abcd\nT stdout P efgh\nT stdout F ij\n"
        );
        // Exactly the bound followed by a newline is one full entry.
        assert_eq!(run(4, &[b"abcd\n"], false), "T stdout F abcd\n");
        assert_eq!(run(4, &[b"ab", b"cd", b"\n"], false), "T stdout F abcd\n");
    }

    #[test]
    fn unterminated_output_is_flushed_at_close() {
        assert_eq!(run(100, &[b"no newline"], false), "");
        assert_eq!(run(100, &[b"no newline"], true), "T stdout P no newline\n");
    }

    #[test]
    fn stderr_is_named() {
        let mut s = LineSplitter::new(Stream::Stderr, 10);
        let mut out = Vec::new();
        s.feed("T", b"x\n", &mut out);
        assert_eq!(out, b"T stderr F x\n");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(1_764_558_900_123_456_789),
            "2025-12-01T03:15:00.123456789Z"
        );
        assert_eq!(
            rfc3339_nano(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    /// The entries `data` must become, computed the slow obvious way.
    fn reference(data: &[u8], max: usize) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for (k, &b) in data.iter().enumerate() {
            if b == b'\n' {
                out.push((b'F', std::mem::take(&mut cur)));
                continue;
            }
            if cur.len() == max {
                out.push((b'P', std::mem::take(&mut cur)));
            }
            cur.push(b);
            let _ = k;
        }
        if !cur.is_empty() {
            out.push((b'P', cur));
        }
        out
    }

    fn parse(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut rest = out;
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n').unwrap();
            let line = &rest[..nl];
            // "<ts> stdout <tag> <content>"
            let mut parts = line.splitn(4, |&b| b == b' ');
            let (_, _, tag, content) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or_default(),
            );
            entries.push((tag[0], content.to_vec()));
            rest = &rest[nl + 1..];
        }
        entries
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)]
    fn random_input_and_chunking_match_the_reference() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let max = 1 + (next() % 12) as usize;
            let len = (next() % 200) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    if next() % 5 == 0 {
                        b'\n'
                    } else {
                        b'a' + (next() % 3) as u8
                    }
                })
                .collect();
            let mut split = LineSplitter::new(Stream::Stdout, max);
            let mut out = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len().min(40));
                split.feed("T", &rest[..n], &mut out);
                rest = &rest[n..];
            }
            split.finish("T", &mut out);
            assert_eq!(
                parse(&out),
                reference(&data, max),
                "round {round} max {max} {data:?}"
            );
        }
    }
}
