//! Image references, normalised the way the kubelet and containerd do
//! (`busybox` → `docker.io/library/busybox:latest`).

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::ImageError;

/// Parse and normalise a reference; a reference without tag or digest gets `:latest`.
pub fn parse(reference: &str) -> Result<Reference, ImageError> {
    let invalid = |reason: String| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    if reference.is_empty() || reference.len() > 4096 || reference.chars().any(char::is_whitespace)
    {
        return Err(invalid("empty, too long or contains white space".into()));
    }
    let r = Reference::try_from(reference).map_err(|e| invalid(e.to_string()))?;
    // The distribution grammar: repository path components are lowercase.
    let repo_ok = r.repository().split('/').all(|c| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    });
    if !repo_ok {
        return Err(invalid(format!(
            "repository {:?} must be lowercase letters, digits and separators",
            r.repository()
        )));
    }
    if let Some(d) = r.digest() {
        Digest::parse(d).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(r)
}

/// `registry/repository:tag`, if the reference has a tag.
pub fn tag_name(r: &Reference) -> Option<String> {
    r.tag()
        .map(|t| format!("{}/{}:{}", r.registry(), r.repository(), t))
}

/// `registry/repository@digest` for `digest`.
pub fn digest_name(r: &Reference, digest: &Digest) -> String {
    format!("{}/{}@{}", r.registry(), r.repository(), digest)
}

/// What a CRI image string names: an image id, or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An image id (config digest).
    Id(Digest),
    /// A tag or digest name, normalised.
    Name(String),
}

/// Interpret a CRI `ImageSpec.image`: `sha256:<hex>` or 64 hex digits are ids; anything else
/// is a reference, normalised to `registry/repo:tag` or `registry/repo@digest`.
pub fn lookup(image: &str) -> Result<Lookup, ImageError> {
    if let Ok(d) = Digest::parse(image) {
        return Ok(Lookup::Id(d));
    }
    if image.len() == 64
        && image.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(d) = Digest::parse(&format!("sha256:{}", image.to_ascii_lowercase()))
    {
        return Ok(Lookup::Id(d));
    }
    let r = parse(image)?;
    match r.digest() {
        Some(d) => {
            let d = Digest::parse(d).map_err(|e| ImageError::InvalidReference {
                reference: image.into(),
                reason: e.to_string(),
            })?;
            Ok(Lookup::Name(digest_name(&r, &d)))
        }
        None => Ok(Lookup::Name(tag_name(&r).unwrap_or_else(|| r.whole()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_the_kubelet() {
        assert_eq!(
            lookup("busybox").unwrap(),
            Lookup::Name("docker.io/library/busybox:latest".into())
        );
        assert_eq!(
            lookup("127.0.0.1:5000/test/bb:v1").unwrap(),
            Lookup::Name("127.0.0.1:5000/test/bb:v1".into())
        );
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            lookup(&format!("quay.io/x/y@{d}")).unwrap(),
            Lookup::Name(format!("quay.io/x/y@{d}"))
        );
        assert_eq!(lookup(&d).unwrap(), Lookup::Id(Digest::parse(&d).unwrap()));
        assert_eq!(
            lookup(&"b".repeat(64)).unwrap(),
            Lookup::Id(Digest::parse(&d).unwrap())
        );
        assert!(lookup("UPPER/case").is_err());
        assert!(lookup("").is_err());
        assert!(lookup("a b").is_err());
    }
}
