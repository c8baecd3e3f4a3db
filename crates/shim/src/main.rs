//! skiff-shim: the per-pod shim. See the library docs for what it does.
//!
//! `skiff-shim serve --pod ID --socket PATH --dir DIR --runtime BIN --runtime-root DIR
//! [--pause BIN] [--pause-procs FILE]...` detaches and prints `ready <pid> <pause pid>`.

use std::path::PathBuf;
use std::process::ExitCode;

use skiff_shim::server::{Options, run};

fn usage() -> ExitCode {
    eprintln!(
        "usage: skiff-shim --version\n       skiff-shim serve --pod ID --socket PATH --dir DIR \
         --runtime BIN --runtime-root DIR [--pause BIN] [--pause-procs FILE]..."
    );
    ExitCode::from(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Option<Options> {
    let mut o = Options {
        pod_id: String::new(),
        socket: PathBuf::new(),
        dir: PathBuf::new(),
        runtime: PathBuf::new(),
        runtime_root: PathBuf::new(),
        pause: None,
        pause_procs: Vec::new(),
    };
    while let Some(flag) = args.next() {
        let value = args.next()?;
        match flag.as_str() {
            "--pod" => o.pod_id = value,
            "--socket" => o.socket = value.into(),
            "--dir" => o.dir = value.into(),
            "--runtime" => o.runtime = value.into(),
            "--runtime-root" => o.runtime_root = value.into(),
            "--pause" => o.pause = Some(value.into()),
            "--pause-procs" => o.pause_procs.push(value.into()),
            _ => return None,
        }
    }
    let complete = !o.pod_id.is_empty()
        && !o.socket.as_os_str().is_empty()
        && !o.dir.as_os_str().is_empty()
        && !o.runtime.as_os_str().is_empty()
        && !o.runtime_root.as_os_str().is_empty();
    complete.then_some(o)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version") | Some("-V") => {
            println!("skiff-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("serve") => {
            let Some(opts) = parse(args) else {
                return usage();
            };
            let pod = opts.pod_id.clone();
            match run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff-shim: pod {pod}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
