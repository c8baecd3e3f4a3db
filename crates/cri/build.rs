//! Compiles the vendored CRI `api.proto` (kubernetes/cri-api, see `proto/cri-api/README.md`).
//!
//! The vendored file is never edited. Debian's protoc 3.21 does not know the
//! `debug_redact` field option that cri-api uses on credentials, so a copy with that
//! option removed is written to `OUT_DIR` and compiled instead; the option only
//! affects Go's text formatting, nothing on the wire.

use std::path::PathBuf;

fn main() {
    let vendored = "proto/cri-api/api.proto";
    println!("cargo:rerun-if-changed={vendored}");
    let text =
        std::fs::read_to_string(vendored).unwrap_or_else(|e| panic!("reading {vendored}: {e}"));
    let stripped = text.replace(" [debug_redact = true]", "");
    assert!(
        !stripped.contains("debug_redact"),
        "{vendored}: a debug_redact option in an unexpected form; extend the strip in build.rs"
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("cri-proto");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/cri-proto");
    let file = dir.join("api.proto");
    std::fs::write(&file, stripped).expect("writing the stripped api.proto");
    if let Err(e) = tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // cri-api made `KeyValue.value` bytes in 1.34 but kept its JSON a plain string.
        .field_attribute(
            ".runtime.v1.KeyValue.value",
            "#[serde(with = \"crate::json::text_bytes\")]",
        )
        .compile_protos(&[&file], &[&dir])
    {
        // protoc is Debian's protobuf-compiler, installed by scripts/setup.
        panic!("compiling {vendored} failed (is protobuf-compiler installed?): {e}");
    }
}
