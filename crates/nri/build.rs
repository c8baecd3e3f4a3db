//! Compiles the vendored NRI `api.proto` (containerd/nri, see `proto/nri-api/README.md`)
//! into prost messages with async ttrpc clients and servers.

fn main() {
    let proto = "proto/nri-api/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    if let Err(e) = ttrpc_codegen_prost::Codegen::new()
        .out_dir(&out)
        .input(proto)
        .include("proto/nri-api")
        .prost()
        .customize(ttrpc_codegen_prost::Customize {
            async_all: true,
            gen_mod: true,
            ..Default::default()
        })
        .run()
    {
        // protoc is Debian's protobuf-compiler, installed by scripts/setup.
        panic!("compiling {proto} failed (is protobuf-compiler installed?): {e}");
    }
}
