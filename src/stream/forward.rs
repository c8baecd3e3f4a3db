//! Kubernetes' port-forward protocol over SPDY streams.
//!
//! For each forwarded connection the client opens two streams carrying the same
//! `requestid` and `port` headers: `streamtype: error` (the server writes a message
//! there if the port cannot be reached) and `streamtype: data` (the bytes). The
//! server connects to the port on the pod's loopback from inside the pod's network
//! namespace and copies both ways.

use std::collections::HashMap;
use std::sync::Arc;

use skiff_spdy::{Connection, Stream};
use tokio::sync::mpsc::Receiver;

use crate::pods::Runtime;

/// How many half-opened stream pairs one connection may hold.
const MAX_HALF_OPEN: usize = 1000;

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serve port forwarding into `pod` until the client closes the connection.
pub async fn serve(
    conn: Connection,
    mut incoming: Receiver<Stream>,
    pod: String,
    runtime: Arc<Runtime>,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        let kind = stream.header("streamtype").unwrap_or("").to_string();
        let port = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0);
        // Old clients send no request id: the kubelet pairs an error stream with the
        // data stream opened right after it (ids two apart).
        let request = stream.header("requestid").map(str::to_string).or_else(|| {
            match stream.header("streamtype") {
                Some("error") => Some(stream.id().to_string()),
                Some("data") => stream.id().checked_sub(2).map(|id| id.to_string()),
                _ => None,
            }
        });
        let (Some(port), Some(request)) = (port, request) else {
            tracing::debug!("port-forward stream without a valid port or request id");
            stream.split().1.reset().await;
            continue;
        };
        if !pairs.contains_key(&request) && pairs.len() >= MAX_HALF_OPEN {
            stream.split().1.reset().await;
            continue;
        }
        let pair = pairs.entry(request.clone()).or_default();
        match kind.as_str() {
            "error" => pair.error = Some(stream),
            "data" => pair.data = Some(stream),
            _ => {
                stream.split().1.reset().await;
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pairs.remove(&request)
            else {
                continue;
            };
            let conn = conn.clone();
            let (pod, runtime) = (pod.clone(), runtime.clone());
            tokio::spawn(async move {
                // The connection's end ends the forwarded connection too.
                tokio::select! {
                    () = forward(error, data, port, pod, runtime) => {}
                    () = conn.closed() => {}
                }
            });
        }
    }
    conn.close().await;
}

/// One forwarded connection.
async fn forward(error: Stream, data: Stream, port: u16, pod: String, runtime: Arc<Runtime>) {
    let (_error_in, error_out) = error.split();
    let (data_in, data_out) = data.split();
    let tcp = match runtime.connect_in_pod(&pod, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            tracing::debug!("{msg}");
            let _ = error_out.send(msg.as_bytes()).await;
            let _ = error_out.finish().await;
            let _ = data_out.finish().await;
            return;
        }
    };
    super::splice_tcp(tcp, data_in, &data_out).await;
    let _ = error_out.finish().await;
}
