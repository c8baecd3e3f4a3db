//! An entry's metadata: the header fields, overridden by its PAX records.

use std::ffi::CString;
use std::io::Read;

use rustix::fs::{Gid, Mode, Timespec, Timestamps, Uid};

use super::UnpackError;

/// PAX record prefix of an extended attribute (GNU tar, bsdtar, Go).
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// What the unpacker applies to a created node.
pub(super) struct EntryMeta {
    /// Permission bits, setuid/setgid/sticky included.
    pub(super) mode: Mode,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) times: Timestamps,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
}

impl EntryMeta {
    /// Reads the metadata of `entry` (named `shown` in errors). The tar
    /// crate already applied PAX `uid`/`gid`/`size`/`path`/`linkpath`; this
    /// adds PAX `mtime`/`atime` (sub-second, beyond 8 GiB seconds) and
    /// `SCHILY.xattr.*`.
    pub(super) fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<EntryMeta, UnpackError> {
        let invalid = |what: &str, e: std::io::Error| UnpackError::Invalid {
            path: shown.to_owned(),
            reason: format!("{what}: {e}"),
        };
        let header = entry.header();
        let old = header.as_old();
        let mode =
            lenient(header.mode().map(u64::from), &old.mode).map_err(|e| invalid("mode", e))?;
        let uid = lenient(header.uid(), &old.uid).map_err(|e| invalid("uid", e))?;
        let gid = lenient(header.gid(), &old.gid).map_err(|e| invalid("gid", e))?;
        let (uid, gid) = (id(uid, "uid", shown)?, id(gid, "gid", shown)?);
        let mtime = lenient(header.mtime(), &old.mtime).map_err(|e| invalid("mtime", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| invalid("PAX header", e))?
        {
            for record in pax {
                let record = record.map_err(|e| invalid("PAX record", e))?;
                let (key, value) = (record.key_bytes(), record.value_bytes());
                if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                    let name = CString::new(name).map_err(|_| UnpackError::Invalid {
                        path: shown.to_owned(),
                        reason: "xattr name contains a NUL byte".to_owned(),
                    })?;
                    xattrs.push((name, value.to_vec()));
                } else if key.starts_with(b"GNU.sparse.") {
                    // The tar crate would hand out the sparse map and data
                    // as the file's content: refuse rather than corrupt.
                    return Err(UnpackError::Invalid {
                        path: shown.to_owned(),
                        reason: "PAX sparse files (GNU.sparse.*) are not supported".to_owned(),
                    });
                } else if key == b"mtime" {
                    mtime = pax_time(value).ok_or_else(|| bad_time("mtime", shown))?;
                } else if key == b"atime" {
                    atime = Some(pax_time(value).ok_or_else(|| bad_time("atime", shown))?);
                }
            }
        }
        Ok(EntryMeta {
            // Masked to the permission bits, so it fits.
            mode: Mode::from_raw_mode(u32::try_from(mode & 0o7777).unwrap_or_default()),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs,
        })
    }
}

/// A numeric header field; an empty one (all NULs or spaces) is 0, as Go's
/// archive/tar — hence containerd — reads it.
pub(super) fn lenient(parsed: std::io::Result<u64>, raw: &[u8]) -> std::io::Result<u64> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

/// The device major and minor number of a ustar or GNU header (both keep
/// them at the same offsets; a v7 header has none).
pub(super) fn device_numbers(header: &tar::Header) -> std::io::Result<(u32, u32)> {
    const MAJOR: std::ops::Range<usize> = 329..337;
    const MINOR: std::ops::Range<usize> = 337..345;
    let raw = header.as_bytes();
    let major = header.device_major().map(Option::unwrap_or_default);
    let minor = header.device_minor().map(Option::unwrap_or_default);
    let as_u32 =
        |n: u64| u32::try_from(n).map_err(|_| std::io::Error::other("device number out of range"));
    Ok((
        as_u32(lenient(major.map(u64::from), &raw[MAJOR])?)?,
        as_u32(lenient(minor.map(u64::from), &raw[MINOR])?)?,
    ))
}

/// A uid or gid as the kernel takes it; `u32::MAX` means "leave unchanged"
/// to chown, so it is refused too.
fn id(raw: u64, what: &str, shown: &str) -> Result<u32, UnpackError> {
    u32::try_from(raw)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| UnpackError::Invalid {
            path: shown.to_owned(),
            reason: format!("{what} {raw} is out of range"),
        })
}

fn bad_time(what: &str, shown: &str) -> UnpackError {
    UnpackError::Invalid {
        path: shown.to_owned(),
        reason: format!("malformed PAX {what}"),
    }
}

/// Parses a PAX time, `[-]seconds[.fraction]`; digits beyond nanoseconds
/// are dropped.
fn pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for digit in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + i64::from(digit - b'0');
    }
    Some(if !negative {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        // -1.25 is 2 seconds before the epoch plus 0.75.
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(tv_sec: i64, tv_nsec: i64) -> Option<Timespec> {
        Some(Timespec { tv_sec, tv_nsec })
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1700000000"), ts(1_700_000_000, 0));
        assert_eq!(pax_time(b"1700000000.5"), ts(1_700_000_000, 500_000_000));
        assert_eq!(
            pax_time(b"1.1234567899999"),
            ts(1, 123_456_789),
            "sub-nanosecond digits are dropped"
        );
        assert_eq!(pax_time(b"-1.25"), ts(-2, 750_000_000));
        assert_eq!(pax_time(b"-3"), ts(-3, 0));
        assert_eq!(pax_time(b""), None);
        assert_eq!(pax_time(b"1.x"), None);
        assert_eq!(pax_time(b"abc"), None);
        assert_eq!(pax_time(b"99999999999999999999999"), None);
    }
}
