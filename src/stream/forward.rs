//! Kubernetes' port-forward protocol, over SPDY streams (also SPDY tunnelled in a
//! WebSocket) or WebSocket channels.
//!
//! Over SPDY, for each forwarded connection the client opens two streams carrying the
//! same `requestid` and `port` headers: `streamtype: error` (the server writes a message
//! there if the port cannot be reached) and `streamtype: data` (the bytes). Over
//! WebSocket channels, the ports come in the URL and channel 2i / 2i+1 are port i's
//! data and error. The server connects to the port on the pod's loopback from inside
//! the pod's network namespace and copies both ways.

use std::collections::HashMap;
use std::sync::Arc;

use skiff_spdy::{Connection, Stream};
use tokio::sync::mpsc::Receiver;

use super::Limits;
use super::chan::{Activity, ChanReader, ChanWriter};
use super::ws::{Codec, Mux, Ws};
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
    limits: Limits,
) {
    let activity = Activity::new();
    let idle = {
        let (activity, conn) = (activity.clone(), conn.clone());
        tokio::spawn(async move {
            activity.idle_for(limits.idle_timeout).await;
            tracing::debug!("port-forward idle for {:?}; closed", limits.idle_timeout);
            conn.close().await;
        })
    };
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
            let (pod, runtime, activity) = (pod.clone(), runtime.clone(), activity.clone());
            tokio::spawn(async move {
                let error_out = ChanWriter::Spdy(error.split().1, activity.clone());
                let (data_in, data_out) = data.split();
                let data_in = ChanReader::Spdy(data_in, activity.clone());
                let data_out = ChanWriter::Spdy(data_out, activity);
                // The connection's end ends the forwarded connection too.
                tokio::select! {
                    () = forward(error_out, data_in, data_out, port, pod, runtime) => {}
                    () = conn.closed() => {}
                }
            });
        }
    }
    idle.abort();
    conn.close().await;
}

/// Serve port forwarding on WebSocket channels: `ports` from the URL, port i on
/// channels 2i (data) and 2i+1 (error), each opened by the port number (two bytes,
/// little-endian) as the kubelet does; one connection per port.
pub async fn serve_ws(
    ws: Ws,
    protocol: &str,
    ports: Vec<u16>,
    pod: String,
    runtime: Arc<Runtime>,
    limits: Limits,
) {
    let activity = Activity::new();
    let inbound: Vec<u8> = (0..ports.len())
        .filter_map(|i| u8::try_from(2 * i).ok())
        .collect();
    let mut mux = Mux::start(ws, Codec::of(protocol), &inbound, activity.clone());
    let mut done = mux.take_done();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        let (Ok(d), Ok(e)) = (u8::try_from(2 * i), u8::try_from(2 * i + 1)) else {
            break;
        };
        let (data_out, error_out) = (ChanWriter::Ws(mux.writer(d)), ChanWriter::Ws(mux.writer(e)));
        let Some(data_in) = mux.reader(d) else {
            continue;
        };
        let (pod, runtime) = (pod.clone(), runtime.clone());
        forwards.spawn(async move {
            let opening = port.to_le_bytes();
            if data_out.send(&opening).await.is_err() || error_out.send(&opening).await.is_err() {
                return;
            }
            forward(error_out, data_in, data_out, port, pod, runtime).await;
        });
    }
    drop(mux);
    let all = async { while forwards.join_next().await.is_some() {} };
    tokio::select! {
        () = all => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut done).await;
        }
        _ = &mut done => {}
        () = activity.idle_for(limits.idle_timeout) => {}
    }
}

/// One forwarded connection.
async fn forward(
    error_out: ChanWriter,
    data_in: ChanReader,
    data_out: ChanWriter,
    port: u16,
    pod: String,
    runtime: Arc<Runtime>,
) {
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
