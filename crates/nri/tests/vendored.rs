//! The vendored NRI API is the file its README records, unedited.

use sha2::{Digest, Sha256};

#[test]
fn vendored_api_proto_is_the_recorded_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/nri-api");
    let proto = std::fs::read(dir.join("api.proto")).unwrap();
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let hash = hex::encode(Sha256::digest(&proto));
    assert!(
        readme.contains(&hash),
        "api.proto (sha256 {hash}) is not the file README.md records"
    );
    assert!(dir.join("LICENSE").is_file(), "the licence travels with it");
}
