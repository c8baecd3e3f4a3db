//! A tar stream unpacked into a throwaway root: it may fail, but nothing may appear
//! outside the root (a sibling canary directory stays empty, and the root's parent holds
//! nothing new).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::unpack_tar::run(data));
