//! How a shim is started: `skiff-shim serve` and its flags, written by skiffd
//! ([`Options::to_args`]) and read by the shim ([`Options::parse`]).

use std::ffi::OsString;
use std::path::PathBuf;

/// A shim's start options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The pod sandbox id.
    pub pod_id: String,
    /// The control socket to listen on.
    pub socket: PathBuf,
    /// The pod's state directory (the shim's pid file and log go there).
    pub dir: PathBuf,
    /// The OCI runtime: a binary, or the shim's own handler.
    pub runtime: Runtime,
    /// The OCI runtime's `--root`.
    pub runtime_root: PathBuf,
    /// The pause binary to start as PID 1 of a new PID namespace, if the pod has one.
    pub pause: Option<PathBuf>,
    /// The `cgroup.procs` files the pause process joins.
    pub pause_procs: Vec<PathBuf>,
    /// A user-namespaced pod's pinned user namespace: the pause's PID namespace is made
    /// inside it (so the pod's containers may mount its /proc) and the pause runs as its
    /// root.
    pub pause_userns: Option<PathBuf>,
}

/// How the shim runs containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// An OCI runtime binary with runc's command line (`runc`, `crun`).
    Binary(PathBuf),
    /// The shim's own handler: no runtime binary is executed.
    Native,
}

impl Runtime {
    /// How `--runtime` names the native handler (not a path: it has a colon and no
    /// slash, and a binary is named by its path or a PATH lookup).
    pub const NATIVE_ARG: &'static str = "builtin:native";

    fn to_arg(&self) -> OsString {
        match self {
            Runtime::Binary(p) => p.clone().into(),
            Runtime::Native => Self::NATIVE_ARG.into(),
        }
    }

    fn from_arg(value: OsString) -> Runtime {
        if value == Self::NATIVE_ARG {
            Runtime::Native
        } else {
            Runtime::Binary(value.into())
        }
    }

    /// Whether the runtime is not named at all.
    fn is_empty(&self) -> bool {
        matches!(self, Runtime::Binary(p) if p.as_os_str().is_empty())
    }
}

/// The command line is not one [`Options::to_args`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Options {
    /// The arguments after the binary: `serve --pod ID --socket PATH …`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["serve".into()];
        let mut flag = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        flag("--pod", self.pod_id.clone().into());
        flag("--socket", self.socket.clone().into());
        flag("--dir", self.dir.clone().into());
        flag("--runtime", self.runtime.to_arg());
        flag("--runtime-root", self.runtime_root.clone().into());
        if let Some(p) = &self.pause {
            flag("--pause", p.clone().into());
        }
        for f in &self.pause_procs {
            flag("--pause-procs", f.clone().into());
        }
        if let Some(user) = &self.pause_userns {
            flag("--pause-userns", user.clone().into());
        }
        args
    }

    /// Read the flags that follow `serve`.
    pub fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Options, UsageError> {
        let mut o = Options {
            pod_id: String::new(),
            socket: PathBuf::new(),
            dir: PathBuf::new(),
            runtime: Runtime::Binary(PathBuf::new()),
            runtime_root: PathBuf::new(),
            pause: None,
            pause_procs: Vec::new(),
            pause_userns: None,
        };
        while let Some(flag) = args.next() {
            let flag = flag.to_string_lossy().into_owned();
            let value = args
                .next()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))?;
            match flag.as_str() {
                "--pod" => {
                    o.pod_id = value
                        .into_string()
                        .map_err(|_| UsageError("--pod is not UTF-8".into()))?
                }
                "--socket" => o.socket = value.into(),
                "--dir" => o.dir = value.into(),
                "--runtime" => o.runtime = Runtime::from_arg(value),
                "--runtime-root" => o.runtime_root = value.into(),
                "--pause" => o.pause = Some(value.into()),
                "--pause-procs" => o.pause_procs.push(value.into()),
                "--pause-userns" => o.pause_userns = Some(value.into()),
                other => return Err(UsageError(format!("unknown flag {other}"))),
            }
        }
        for (name, missing) in [
            ("--pod", o.pod_id.is_empty()),
            ("--socket", o.socket.as_os_str().is_empty()),
            ("--dir", o.dir.as_os_str().is_empty()),
            ("--runtime", o.runtime.is_empty()),
            ("--runtime-root", o.runtime_root.as_os_str().is_empty()),
        ] {
            if missing {
                return Err(UsageError(format!("{name} is required")));
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let o = Options {
            pod_id: "p".into(),
            socket: "/run/s".into(),
            dir: "/run/d".into(),
            runtime: Runtime::Binary("/usr/bin/runc".into()),
            runtime_root: "/run/r".into(),
            pause: Some("/bin/pause".into()),
            pause_procs: vec!["/a".into(), "/b".into()],
            pause_userns: Some("/ns/user".into()),
        };
        let args = o.to_args();
        assert_eq!(args[0], "serve");
        assert_eq!(Options::parse(args.into_iter().skip(1)).unwrap(), o);
        let native = Options {
            runtime: Runtime::Native,
            ..o
        };
        let args = native.to_args();
        assert_eq!(Options::parse(args.into_iter().skip(1)).unwrap(), native);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let parse = |a: &[&str]| Options::parse(a.iter().map(OsString::from)).unwrap_err().0;
        assert!(parse(&["--pod"]).contains("needs a value"));
        assert!(parse(&["--nope", "x"]).contains("unknown flag"));
        assert!(parse(&["--pod", "p"]).contains("--socket is required"));
    }
}
