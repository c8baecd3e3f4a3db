//! skiff-shim: the per-pod shim. See the library docs for what it does.
//!
//! `skiff-shim serve --pod ID --socket PATH --dir DIR --runtime BIN --runtime-root DIR
//! [--pause BIN] [--pause-procs FILE]...` detaches and prints `ready <pid> <pause pid>`.

use std::process::ExitCode;

use skiff_shim::server::{Options, run};

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "skiff-shim: {why}\nusage: skiff-shim --version\n       skiff-shim serve --pod ID --socket PATH \
         --dir DIR --runtime BIN --runtime-root DIR [--pause BIN] [--pause-procs FILE]..."
    );
    ExitCode::from(2)
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
        _ => usage("no command"),
    }
}
