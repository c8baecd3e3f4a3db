//! Pre-installed plugins: executables named `NN-name` in the plugin directory,
//! started by the runtime with one end of a socket pair as fd 3.
//!
//! As NRI launches them: no arguments, an environment of exactly `NRI_PLUGIN_NAME`,
//! `NRI_PLUGIN_IDX` and `NRI_PLUGIN_SOCKET=3`, stdio on /dev/null. A plugin's
//! configuration is the file `NN-name.conf`, else `name.conf`, in the configuration
//! directory.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::plugin::{Pending, PluginId, check_index};

/// The fd a launched plugin finds its connection on.
const PLUGIN_FD: i32 = 3;

/// `NN-name` split, if `file` is such a name.
pub(crate) fn parse_name(file: &str) -> Option<PluginId> {
    let (idx, name) = file.split_once('-')?;
    check_index(idx).ok()?;
    if name.is_empty() {
        return None;
    }
    Some(PluginId {
        idx: idx.to_string(),
        name: name.to_string(),
    })
}

/// Launch every plugin in `dir` (a missing directory has none). A file that is not
/// executable or not named `NN-name` is skipped with a warning; one that fails to
/// start too.
pub(crate) fn launch_all(dir: &Path) -> Vec<(tokio::net::UnixStream, Pending)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "NRI: read the plugin directory");
            return Vec::new();
        }
    };
    let mut files: Vec<_> = entries.flatten().collect();
    files.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for entry in files {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = parse_name(&file) else {
            tracing::warn!(path = %path.display(), "NRI: a plugin file not named NN-name; skipped");
            continue;
        };
        match launch(&path, &id) {
            Ok((stream, child)) => {
                tracing::info!(plugin = %id, pid = child.id().unwrap_or(0), "NRI: launched a pre-installed plugin");
                out.push((
                    stream,
                    Pending {
                        expected: Some(id),
                        child: Some(child),
                    },
                ));
            }
            Err(e) => {
                tracing::warn!(plugin = %id, error = %e, "NRI: launch a pre-installed plugin");
            }
        }
    }
    out
}

fn launch(
    path: &Path,
    id: &PluginId,
) -> std::io::Result<(tokio::net::UnixStream, tokio::process::Child)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(path);
    cmd.env_clear()
        .env("NRI_PLUGIN_NAME", &id.name)
        .env("NRI_PLUGIN_IDX", &id.idx)
        .env("NRI_PLUGIN_SOCKET", PLUGIN_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec only dup2 and fcntl run, both async-signal-safe;
    // `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == PLUGIN_FD {
                // Already there: only clear close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, PLUGIN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    Ok((tokio::net::UnixStream::from_std(ours)?, child))
}

/// The configuration of plugin `id`: `NN-name.conf`, else `name.conf`, in `dir`;
/// empty when there is none.
pub(crate) fn plugin_config(dir: &Path, id: &PluginId) -> String {
    for file in [format!("{id}.conf"), format!("{}.conf", id.name)] {
        match std::fs::read_to_string(dir.join(&file)) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(plugin = %id, file = %dir.join(&file).display(), error = %e, "NRI: read a plugin's configuration");
            }
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_file_names() {
        let id = parse_name("10-device-injector").unwrap();
        assert_eq!(
            (id.idx.as_str(), id.name.as_str()),
            ("10", "device-injector")
        );
        for bad in ["device", "1-x", "ab-x", "10-", "100-x"] {
            assert!(parse_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn config_by_full_name_then_base_name() {
        let dir = tempfile::tempdir().unwrap();
        let id = parse_name("05-ulimit").unwrap();
        assert_eq!(plugin_config(dir.path(), &id), "");
        std::fs::write(dir.path().join("ulimit.conf"), "base").unwrap();
        assert_eq!(plugin_config(dir.path(), &id), "base");
        std::fs::write(dir.path().join("05-ulimit.conf"), "full").unwrap();
        assert_eq!(plugin_config(dir.path(), &id), "full");
    }
}
