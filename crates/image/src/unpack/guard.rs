//! A reader wrapper that refuses oversized tar extension headers.
//!
//! The tar crate reads a PAX (`x`) or GNU long-name / long-link (`L`/`K`)
//! record whole into memory before it returns the entry the record
//! describes, so by the time the unpacker sees that entry a hostile layer
//! could already have made it allocate gigabytes. The guard sits between the
//! tar crate and the stream: while one `Entries::next()` call runs it
//! follows the chain of headers that call reads and fails the read as soon
//! as an extension header *declares* more than the limit — before its body
//! is read.
//!
//! It relies on the unpacker reading every entry's data to the end before
//! asking for the next one, so the next header starts at the next 512-byte
//! boundary after the current stream position.

use std::cell::RefCell;
use std::io::{self, Read};

const BLOCK: u64 = 512;

/// An extension header over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Oversized {
    /// The header's typeflag (`x`, `g`, `L` or `K`).
    pub(super) kind: char,
    /// The size it declares.
    pub(super) size: u64,
}

/// Shared between the [`Guarded`] reader (owned by the tar crate) and the
/// unpacker, which arms it around each `next()`.
#[derive(Debug)]
pub(super) struct ExtensionGuard {
    limit: u64,
    state: RefCell<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes read from the stream so far.
    pos: u64,
    /// Where the next header we must inspect starts, while armed.
    next_header: Option<u64>,
    /// The header being assembled (reads may split it).
    block: [u8; 512],
    fill: usize,
    tripped: Option<Oversized>,
}

impl ExtensionGuard {
    pub(super) fn new(limit: usize) -> ExtensionGuard {
        ExtensionGuard {
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            state: RefCell::new(State {
                pos: 0,
                next_header: None,
                block: [0; 512],
                fill: 0,
                tripped: None,
            }),
        }
    }

    /// Wraps the tar stream.
    pub(super) fn reader<R: Read>(&self, inner: R) -> Guarded<'_, R> {
        Guarded { inner, guard: self }
    }

    /// Call before `Entries::next()`, with the previous entry fully read.
    pub(super) fn arm(&self) {
        let mut st = self.state.borrow_mut();
        st.next_header = Some(st.pos.div_ceil(BLOCK).saturating_mul(BLOCK));
        st.fill = 0;
    }

    /// Call after `Entries::next()`: entry data is not inspected.
    pub(super) fn disarm(&self) {
        self.state.borrow_mut().next_header = None;
    }

    /// The extension header that made a read fail, if any.
    pub(super) fn tripped(&self) -> Option<Oversized> {
        self.state.borrow().tripped
    }

    fn observe(&self, mut bytes: &[u8]) -> io::Result<()> {
        let st = &mut *self.state.borrow_mut();
        let mut pos = st.pos;
        st.pos += bytes.len() as u64;
        while let Some(at) = st.next_header {
            if bytes.is_empty() {
                break;
            }
            let want = at + st.fill as u64;
            if pos < want {
                // Padding after the previous entry's data, or the body of
                // an extension record we already checked.
                let skip = usize::try_from(want - pos).map_or(bytes.len(), |s| s.min(bytes.len()));
                bytes = &bytes[skip..];
                pos += skip as u64;
                continue;
            }
            if pos > want {
                // Cannot happen while the unpacker drains every entry; do
                // not guess where headers are.
                st.next_header = None;
                break;
            }
            let take = (st.block.len() - st.fill).min(bytes.len());
            st.block[st.fill..st.fill + take].copy_from_slice(&bytes[..take]);
            st.fill += take;
            bytes = &bytes[take..];
            pos += take as u64;
            if st.fill == st.block.len() {
                st.fill = 0;
                st.next_header = self.inspect(st, at)?;
            }
        }
        Ok(())
    }

    /// Checks one complete header; returns where the next header of the
    /// same `next()` call starts, if it reads one.
    fn inspect(&self, st: &mut State, at: u64) -> io::Result<Option<u64>> {
        let header = tar::Header::from_byte_slice(&st.block);
        let kind = header.entry_type();
        let is_extension = kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink();
        if !is_extension {
            // The entry itself (or the end-of-archive block): done.
            return Ok(None);
        }
        // An unparsable size is the tar crate's to report.
        let Ok(size) = header.entry_size() else {
            return Ok(None);
        };
        if size > self.limit {
            let kind = char::from(kind.as_byte());
            st.tripped = Some(Oversized { kind, size });
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "tar extension header '{kind}' of {size} bytes exceeds the limit of {} bytes",
                    self.limit
                ),
            ));
        }
        // A global header is handed out as an entry of its own.
        if kind.is_pax_global_extensions() {
            return Ok(None);
        }
        Ok(size
            .checked_next_multiple_of(BLOCK)
            .and_then(|body| (at + BLOCK).checked_add(body)))
    }
}

/// The tar stream as seen through an [`ExtensionGuard`].
pub(super) struct Guarded<'g, R> {
    inner: R,
    guard: &'g ExtensionGuard,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.guard.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with one PAX header of `pax_len` record bytes before a file.
    fn tar_with_pax(pax_len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        // "NNNN path=<value>\n": the length prefix counts itself.
        assert!((1000..10_000).contains(&pax_len));
        let value = "p".repeat(pax_len - "NNNN path=\n".len());
        let record = format!("{pax_len} path={value}\n");
        assert_eq!(record.len(), pax_len);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(record.len() as u64);
        h.set_path("pax").unwrap();
        h.set_cksum();
        b.append(&h, record.as_bytes()).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_path("short").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn read_all(tar: &[u8], limit: usize) -> (io::Result<Vec<Vec<u8>>>, Option<Oversized>) {
        let guard = ExtensionGuard::new(limit);
        let mut archive = tar::Archive::new(guard.reader(tar));
        let mut entries = archive.entries().unwrap();
        let mut names = Vec::new();
        let result = loop {
            guard.arm();
            let next = entries.next();
            guard.disarm();
            match next {
                None => break Ok(names),
                Some(Err(e)) => break Err(e),
                Some(Ok(mut e)) => {
                    names.push(e.path_bytes().into_owned());
                    io::copy(&mut e, &mut io::sink()).unwrap();
                }
            }
        };
        (result, guard.tripped())
    }

    #[test]
    fn small_extension_passes() {
        let tar = tar_with_pax(2000);
        let (names, tripped) = read_all(&tar, 4096);
        assert_eq!(
            names.unwrap(),
            vec![vec![b'p'; 2000 - "NNNN path=\n".len()]]
        );
        assert_eq!(tripped, None);
    }

    #[test]
    fn oversized_extension_trips_before_body() {
        let tar = tar_with_pax(2000);
        let (names, tripped) = read_all(&tar, 1000);
        assert!(names.is_err());
        let o = tripped.unwrap();
        assert_eq!(o.kind, 'x');
        assert!(o.size >= 2000);
    }

    #[test]
    fn split_reads_are_followed() {
        // A reader returning one byte at a time still finds the header.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let tar = tar_with_pax(2000);
        let guard = ExtensionGuard::new(1000);
        let mut archive = tar::Archive::new(guard.reader(OneByte(&tar)));
        let mut entries = archive.entries().unwrap();
        guard.arm();
        assert!(entries.next().unwrap().is_err());
        assert_eq!(guard.tripped().map(|o| o.kind), Some('x'));
    }
}
