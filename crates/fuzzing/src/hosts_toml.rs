//! A registry's `hosts.toml` (containerd's format): any text gives endpoints or a clear
//! error, and every endpoint has a usable URL.

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/etc/skiff/certs.d/registry.example/hosts.toml");
    if let Ok(endpoints) = skiff_image::hosts::parse(text, path, "registry.example") {
        assert!(!endpoints.is_empty(), "at least the registry itself");
    }
}
