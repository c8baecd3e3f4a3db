//! The documents a registry sends: top manifest (index or manifest), image manifest and
//! image config. Any bytes give a result or a clear error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::image_json::run(data));
