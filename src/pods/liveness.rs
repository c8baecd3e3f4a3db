//! Watching each pod's shim while skiffd runs.
//!
//! A shim's death is an event, handled at once (as containerd's
//! `cleanupAfterDeadShim`): a pidfd of the shim becomes readable when it exits, and
//! skiffd then reports the pod's containers exited (reason `Unknown`, a message naming
//! the dead shim), kills what is left of them and the pause process through the
//! runtime and their cgroups, unmounts their root filesystems and releases the pod's
//! network, namespaces and cgroups; the pod becomes NotReady, and the kubelet's
//! StopPodSandbox / RemovePodSandbox then succeed. A shim that stops answering (a
//! SIGSTOP, a hang) is pinged: after `shim_liveness_timeout` without an answer it is
//! killed, and its death is handled the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use skiff_shim_proto::protocol::{Reply, Request};

use crate::stream::fdio::FdIo;

use super::records::{CtrState, PodState};
use super::{Runtime, RuntimeError, shim};

/// Misses in a row that make a shim unresponsive (pings every timeout / MISSES).
const MISSES: u32 = 3;

/// The running watchers, by pod id.
#[derive(Debug, Default)]
pub(super) struct Watchers(Mutex<HashMap<String, tokio::task::AbortHandle>>);

impl Watchers {
    fn set(&self, pod: &str, handle: tokio::task::AbortHandle) {
        let old = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pod.to_string(), handle);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Stop watching `pod` (its shim is being shut down on purpose).
    pub(super) fn cancel(&self, pod: &str) {
        let handle = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pod);
        if let Some(h) = handle {
            h.abort();
        }
    }

    /// How many shims are watched.
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Forget `pod`'s watcher without aborting it (called from the watcher itself).
    fn done(&self, pod: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pod);
    }
}

/// How a shim's end was noticed.
enum Gone {
    /// It exited (or was killed by someone).
    Exited,
    /// It did not answer for the liveness timeout and was killed.
    Unresponsive,
}

/// A pidfd of `pid`, readable once the process exits. `Ok(None)`: it is already gone.
fn pidfd(pid: u32) -> std::io::Result<Option<FdIo>> {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(None);
    };
    match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(fd) => FdIo::new(fd).map(Some),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Runtime {
    /// Watch pod `pod`'s shim (process `pid`) until it ends, then handle its end.
    pub(super) fn watch_shim(self: &Arc<Self>, pod: &str, pid: u32) {
        let rt = self.clone();
        let pod_id = pod.to_string();
        let task = tokio::spawn(async move {
            let gone = rt.wait_for_shim_end(&pod_id, pid).await;
            rt.watchers.done(&pod_id);
            let why = match gone {
                Gone::Exited => "the pod's shim died",
                Gone::Unresponsive => "the pod's shim stopped answering and was killed",
            };
            if let Err(e) = rt.shim_gone(&pod_id, pid, why).await {
                tracing::error!(pod_id = %pod_id, error = %e, "clean up after a dead shim");
            }
        });
        self.watchers.set(pod, task.abort_handle());
    }

    async fn wait_for_shim_end(&self, pod: &str, pid: u32) -> Gone {
        let fd = match pidfd(pid) {
            Ok(Some(fd)) => Some(fd),
            Ok(None) => return Gone::Exited,
            Err(e) => {
                // No pidfd (an old kernel): pings alone tell.
                tracing::warn!(pod_id = %pod, error = %e, "pidfd_open of the shim; watching by ping only");
                None
            }
        };
        let timeout = self.config.shim_liveness_timeout;
        let every = timeout / MISSES;
        let mut misses = 0;
        loop {
            let exited = async {
                match &fd {
                    Some(fd) => {
                        // Readable (once and for good) when the process has exited.
                        if let Err(e) = fd.readable().await {
                            tracing::warn!(pod_id = %pod, error = %e, "wait on the shim's pidfd");
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = exited => return Gone::Exited,
                () = tokio::time::sleep(every) => {}
            }
            if self.ping(pod, pid, every).await {
                misses = 0;
                continue;
            }
            misses += 1;
            if misses < MISSES {
                continue;
            }
            tracing::warn!(pod_id = %pod, shim_pid = pid, "the shim did not answer for {} s; killing it", timeout.as_secs());
            match &fd {
                Some(fd) => {
                    if let Err(e) =
                        rustix::process::pidfd_send_signal(fd.fd(), rustix::process::Signal::KILL)
                        && e != rustix::io::Errno::SRCH
                    {
                        tracing::error!(pod_id = %pod, error = %e, "kill the unresponsive shim");
                    }
                    // Wait for it to be gone (a stopped process dies at SIGKILL too).
                    let _ = tokio::time::timeout(Duration::from_secs(10), fd.readable()).await;
                }
                None => {
                    tracing::error!(pod_id = %pod, "no pidfd to kill the unresponsive shim with");
                }
            }
            return Gone::Unresponsive;
        }
    }

    /// Whether the pod's shim answers a Ping within `within`, as the process `pid`.
    async fn ping(&self, pod: &str, pid: u32, within: Duration) -> bool {
        let Ok(Some(p)) = self.pod(pod) else {
            return true;
        };
        match shim::call(pod, &p.shim_socket, &Request::Ping, Some(within)).await {
            Ok(Reply::Pong { pid: answered, .. }) => answered == pid,
            _ => false,
        }
    }

    /// Pod `pod`'s shim (process `shim_pid`) is gone: report its containers exited,
    /// kill what is left of them, and release the pod. Nothing to do if the pod was
    /// stopped meanwhile or has another shim.
    pub(super) async fn shim_gone(
        self: &Arc<Self>,
        pod: &str,
        shim_pid: u32,
        why: &str,
    ) -> Result<(), RuntimeError> {
        let _guard = self.lock(pod).await;
        let Some(mut p) = self.pod(pod)? else {
            return Ok(());
        };
        if p.state != PodState::Ready || p.shim_pid != shim_pid {
            return Ok(());
        }
        tracing::warn!(pod_id = %p.id, shim_pid, "{why}; its containers are reported exited");
        super::pod::kill_orphans(self, &p).await;
        let message = format!("{why}; the container's processes were killed");
        for c in self.containers()?.into_iter().filter(|c| c.pod_id == p.id) {
            let _ctr = self.lock(&c.id).await;
            let Some(mut c) = self.container(&c.id)? else {
                continue;
            };
            if c.state != CtrState::Exited {
                self.settle_exit(&mut c, Some(&message));
                self.save_container(&c)?;
                self.nri_stopped(&mut c).await;
            }
            if let Err(e) = self.unmount_container(&c).await {
                tracing::warn!(container_id = %c.id, error = %e, "unmount after the shim died; tried again at RemoveContainer");
            }
        }
        if let Err(e) = super::pod::release_pod(self, &p).await {
            tracing::warn!(pod_id = %p.id, error = %e, "release the pod after its shim died; tried again at StopPodSandbox");
        }
        p.state = PodState::NotReady;
        self.save_pod(&p)
    }
}
