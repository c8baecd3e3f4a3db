//! `skiff exec -i/-t`, `skiff attach` and `skiff port-forward`: the client side of
//! the streaming server, wired to this terminal and local ports.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::cli::CliError;
use crate::stream::client::{LocalIo, PortForwarder, RemoteExit, remote_command};

/// Puts the terminal in raw mode while alive (a tty session), restores it on drop.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter(tty: bool) -> RawMode {
        let stdin = std::io::stdin();
        if !tty || !rustix::termios::isatty(stdin.as_fd()) {
            return RawMode(None);
        }
        let Ok(saved) = rustix::termios::tcgetattr(stdin.as_fd()) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ =
            rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin().as_fd(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Run an exec or attach session at `url` on this terminal; the command's exit code
/// becomes the CLI's.
pub async fn session(url: &str, stdin: bool, tty: bool) -> Result<(), CliError> {
    let resize = if tty {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if let Some(size) = terminal_size() {
            let _ = tx.try_send(size);
        }
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some(size) = terminal_size()
                        && tx.send(size).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
        Some(rx)
    } else {
        None
    };
    let local = LocalIo {
        stdin: stdin.then(|| Box::new(tokio::io::stdin()) as _),
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: (!tty).then(|| Box::new(tokio::io::stderr()) as _),
        tty,
        resize,
    };
    let raw = RawMode::enter(tty && stdin);
    let result = remote_command(url, local).await;
    drop(raw);
    match result {
        Ok(RemoteExit::Code(0)) => Ok(()),
        Ok(RemoteExit::Code(code)) => Err(CliError::ExitCode(code)),
        Ok(RemoteExit::Failed(msg)) => Err(CliError::Config(msg)),
        Err(e) => Err(CliError::Config(format!("streaming session at {url}: {e}"))),
    }
}

/// `LOCAL:REMOTE` or `REMOTE` pairs.
pub fn port_pairs(specs: &[String]) -> Result<Vec<(u16, u16)>, CliError> {
    specs
        .iter()
        .map(|spec| {
            let bad = || CliError::Config(format!("bad port pair {spec:?}: want [LOCAL:]REMOTE"));
            let (local, remote) = spec.split_once(':').unwrap_or((spec, spec));
            let remote: u16 = remote.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
            let local: u16 = if local.is_empty() {
                0
            } else {
                local.parse().map_err(|_| bad())?
            };
            Ok((local, remote))
        })
        .collect()
}

/// Listen on `address` for each pair and forward every connection until interrupted.
pub async fn port_forward(
    url: &str,
    address: IpAddr,
    pairs: &[(u16, u16)],
) -> Result<(), CliError> {
    let fwd = Arc::new(
        PortForwarder::dial(url)
            .await
            .map_err(|e| CliError::Config(format!("port-forward at {url}: {e}")))?,
    );
    let mut tasks = Vec::new();
    for &(local, remote) in pairs {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(address, local))
            .await
            .map_err(|e| CliError::Config(format!("listen on {address}:{local}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| CliError::Config(e.to_string()))?;
        println!("Forwarding from {bound} -> {remote}");
        let fwd = fwd.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                println!("Handling connection for {remote}");
                let fwd = fwd.clone();
                tokio::spawn(async move {
                    match fwd.forward(conn, remote).await {
                        Ok(Some(msg)) => eprintln!("{msg}"),
                        Err(e) => eprintln!("forward to port {remote}: {e}"),
                        Ok(None) => {}
                    }
                });
            }
        }));
    }
    let _ = tokio::signal::ctrl_c().await;
    fwd.close().await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_parse() {
        let pairs = port_pairs(&["8080:80".into(), "9000".into(), ":53".into()]).unwrap();
        assert_eq!(pairs, vec![(8080, 80), (9000, 9000), (0, 53)]);
        assert!(port_pairs(&["x:80".into()]).is_err());
        assert!(port_pairs(&["80:0".into()]).is_err());
        assert!(port_pairs(&["80:70000".into()]).is_err());
    }
}
