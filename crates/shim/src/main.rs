//! skiff-shim: the per-pod shim. See the library docs for what it does.
//!
//! `skiff-shim serve --pod ID --socket PATH --dir DIR --runtime BIN --runtime-root DIR
//! [--pause BIN] [--pause-procs FILE]...` detaches and prints `ready <pid> <pause pid>`.
//! `skiff-shim oci --root DIR delete --force ID` deletes a native-handler container
//! whose shim is gone (skiffd's clean-up of orphans; runc's command line).

use std::process::ExitCode;

use skiff_shim::server::{Options, run};

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "skiff-shim: {why}\nusage: skiff-shim --version\n       skiff-shim serve --pod ID --socket PATH \
         --dir DIR --runtime BIN --runtime-root DIR [--pause BIN] [--pause-procs FILE]..."
    );
    ExitCode::from(2)
}

/// `oci --root DIR delete [--force] ID`: the native handler's delete, standalone.
fn oci(args: Vec<std::ffi::OsString>) -> ExitCode {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (root, id) = match strs.as_slice() {
        ["--root", root, "delete", "--force", id] | ["--root", root, "delete", id] => (*root, *id),
        _ => return usage("oci: only `--root DIR delete [--force] ID` is supported"),
    };
    match skiff_shim::native::Handler::new(std::path::Path::new(root)).delete(id) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-shim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next().and_then(|a| a.into_string().ok()).as_deref() {
        Some("--version") | Some("-V") => {
            println!("skiff-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("serve") => {
            let opts = match Options::parse(args) {
                Ok(o) => o,
                Err(e) => return usage(&e.0),
            };
            let pod = opts.pod_id.clone();
            skiff_shim::cloexec_inherited();
            // SAFETY: main has started no thread; the shim stays single-threaded.
            match unsafe { run(opts) } {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff-shim: pod {pod}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("oci") => oci(args.collect()),
        _ => usage("no command"),
    }
}
