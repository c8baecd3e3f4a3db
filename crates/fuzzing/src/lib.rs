//! The bodies of skiff's fuzz targets, one module each with `run(data)`: every parser
//! of skiff that takes bytes from outside. `fuzz/` runs them under libFuzzer
//! (`scripts/fuzz`); `tests/corpus.rs` runs them over the corpus and mutations of it in
//! the ordinary test suite.

pub mod hosts_toml;
pub mod image_json;
pub mod oci_spec;
pub mod shim_protocol;
pub mod spdy_frames;
pub mod unpack_tar;
