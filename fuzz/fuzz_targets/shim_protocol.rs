//! The skiffd ↔ shim protocol: a request or answer line decodes or is refused, and what
//! decodes encodes to a line that decodes to the same value.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::shim_protocol::run(data));
