//! Lexical normalisation of tar entry names.
//!
//! This is not what keeps writes inside the layer root — `RESOLVE_IN_ROOT`
//! does that, for symlinks too. It gives every entry a canonical relative
//! name so that the parent directory / final component split is well
//! defined and the final component is never `.` or `..`.

/// Drops empty and `.` components and clamps `..` at the root, as the
/// kernel does for `..` under `RESOLVE_IN_ROOT` (and as containerd's
/// `filepath.Clean` of a rooted name does): `../../etc/passwd` → `etc/passwd`,
/// `/abs/file` → `abs/file`, `a/../../b` → `b`, `./` → `` (the root).
pub(super) fn normalise(raw: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join(&b'/')
}

/// Splits a normalised, non-empty path into its parent (possibly empty: the
/// root) and final component.
pub(super) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The number of components of a normalised path (the root has none).
pub(super) fn depth(path: &[u8]) -> usize {
    if path.is_empty() {
        0
    } else {
        1 + path.iter().filter(|&&b| b == b'/').count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_strips_and_clamps() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a/b/c", b"a/b/c"),
            (b"./a/b/", b"a/b"),
            (b"/abs/file", b"abs/file"),
            (b"///a//b", b"a/b"),
            (b"../escape", b"escape"),
            (b"../../etc/passwd", b"etc/passwd"),
            (b"a/../../b", b"b"),
            (b"a/./b/../c", b"a/c"),
            (b"..", b""),
            (b"./", b""),
            (b"", b""),
            (b"/", b""),
            (b"caf\xe9/x", b"caf\xe9/x"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                normalise(raw),
                want.to_vec(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn split_and_depth() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(depth(b""), 0);
        assert_eq!(depth(b"a"), 1);
        assert_eq!(depth(b"a/b/c"), 3);
    }
}
