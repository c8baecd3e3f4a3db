//! The CRI → OCI spec generator on hostile CRI configs: a container and a pod config
//! (protobuf, as the kubelet sends them) and an image config (JSON). It builds a spec or
//! refuses with an error, never panics, and a spec it builds keeps every mount inside
//! the container and serialises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::oci_spec::run(data));
