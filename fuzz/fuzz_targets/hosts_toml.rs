//! A registry's `hosts.toml` (containerd's format): any text gives endpoints or a clear
//! error, and every endpoint has a usable URL.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::hosts_toml::run(data));
