//! SPDY/3.1 frames and their zlib header blocks from a peer: the decoder yields frames
//! or an error, never a panic, and a frame it decoded encodes again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::spdy_frames::run(data));
