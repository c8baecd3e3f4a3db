//! Compiles skiff's own admin API (`proto/admin.proto`); the CRI types come from `k8s-cri`.

fn main() {
    println!("cargo:rerun-if-changed=proto/admin.proto");
    if let Err(e) =
        tonic_prost_build::configure().compile_protos(&["proto/admin.proto"], &["proto"])
    {
        // protoc is Debian's protobuf-compiler, installed by scripts/setup.
        panic!("compiling proto/admin.proto failed (is protobuf-compiler installed?): {e}");
    }
}
