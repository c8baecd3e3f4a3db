//! The skiffd ↔ shim protocol: a request or answer line decodes or is refused, and what
//! decodes encodes to a line that decodes to the same value.

use skiff_shim_proto::protocol::{Answer, Request};

/// One input.
pub fn run(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        let line = serde_json::to_vec(&req).unwrap();
        assert!(!line.contains(&b'\n'), "an encoded request is one line");
        assert_eq!(serde_json::from_slice::<Request>(&line).unwrap(), req);
    }
    if let Ok(ans) = serde_json::from_slice::<Answer>(data) {
        let line = serde_json::to_vec(&ans).unwrap();
        assert!(!line.contains(&b'\n'), "an encoded answer is one line");
        assert_eq!(serde_json::from_slice::<Answer>(&line).unwrap(), ans);
    }
    let _ = skiff_shim_proto::options::Options::parse(
        data.split(|&b| b == 0)
            .map(|a| std::ffi::OsString::from(String::from_utf8_lossy(a).into_owned())),
    );
}
