//! The documents a registry sends: top manifest (index or manifest), image manifest and
//! image config. Any bytes give a result or a clear error, never a panic.

use skiff_image::parse;

/// One input.
pub fn run(data: &[u8]) {
    let _ = parse::top(data, "amd64");
    if let Ok(m) = parse::manifest(data) {
        assert!(m.layers.iter().all(|l| !l.media_type.is_empty()));
        let _ = parse::config(data, m.layers.len());
    }
    for layers in [0, 1, 3] {
        if let Ok(c) = parse::config(data, layers) {
            assert_eq!(c.diff_ids.len(), layers);
            assert_eq!(c.chain_ids.len(), layers);
        }
    }
}
