//! skiffd's Prometheus endpoint (`[metrics] address`, off by default): what the CRI
//! calls did, what pulls cost, what runs, and skiffd's own process figures, in the
//! names and conventions containerd and the kubelet use. The text format comes from
//! the `prometheus-client` crate.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `grpc_server_handled_total` | counter | `grpc_service`, `grpc_method`, `grpc_code` |
//! | `grpc_server_handling_seconds` | histogram | `grpc_service`, `grpc_method` |
//! | `skiff_image_pulls_total` | counter | `result` (`ok`, `error`) |
//! | `skiff_image_pull_seconds` | histogram | |
//! | `skiff_image_pull_stage_seconds_total` | counter | `stage` (`resolve`, `layers`, `commit`) |
//! | `skiff_image_pull_layer_bytes_total` | counter | |
//! | `skiff_image_layers_total` | counter | `how` (`fetched`, `present`) |
//! | `skiff_unpack_engine_info` | gauge (1) | `engine` (`io_uring`, `blocking`), `reason` |
//! | `skiff_pod_sandboxes` | gauge | `state` (`ready`, `notready`) |
//! | `skiff_containers` | gauge | `state` (`created`, `running`, `exited`) |
//! | `skiff_shims` | gauge | (shims watched: one per ready pod) |
//! | `skiff_streaming_sessions` | gauge | |
//! | `skiff_network_setup_seconds` | histogram | (a pod's network, built-in or CNI) |
//! | `skiff_network_teardown_seconds` | histogram | |
//! | `skiff_nri_plugin_calls_total` | counter | `event`, `result` (`ok`, `refused`, `failed`, `unimplemented`) |
//! | `skiff_nri_plugin_call_seconds` | histogram | `plugin` (`NN-name`), `event` |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes` | gauge | |
//! | `process_cpu_seconds_total` | counter | |
//! | `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, `process_threads` | gauge | |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency() -> Histogram {
    // 0.5 ms … ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn fast_latency() -> Histogram {
    // 50 µs … ~3.3 s: a plugin answers in well under a millisecond.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

/// What the endpoint serves.
pub struct Metrics {
    registry: Mutex<Registry>,
    cri_handled: Family<Labels, Counter>,
    cri_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pulls: Family<Labels, Counter>,
    pull_seconds: Histogram,
    net_setup: Histogram,
    net_teardown: Histogram,
    nri_calls: Family<Labels, Counter>,
    nri_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The metrics skiffd keeps itself; what is read at scrape time is added with
    /// [`Metrics::collect`].
    pub fn new() -> Arc<Metrics> {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            cri_handled: Family::default(),
            cri_seconds: Family::new_with_constructor(latency),
            pulls: Family::default(),
            pull_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            net_setup: latency(),
            net_teardown: latency(),
            nri_calls: Family::default(),
            nri_seconds: Family::new_with_constructor(fast_latency),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "grpc_server_handled",
                "CRI calls answered, by service, method and gRPC code",
                m.cri_handled.clone(),
            );
            r.register(
                "grpc_server_handling_seconds",
                "Time to answer a CRI call, by service and method",
                m.cri_seconds.clone(),
            );
            r.register(
                "skiff_image_pulls",
                "PullImage calls by result",
                m.pulls.clone(),
            );
            r.register(
                "skiff_image_pull_seconds",
                "Time a PullImage call took",
                m.pull_seconds.clone(),
            );
            r.register(
                "skiff_network_setup_seconds",
                "Time to set up a pod's network (built-in bridge or CNI ADD)",
                m.net_setup.clone(),
            );
            r.register(
                "skiff_network_teardown_seconds",
                "Time to tear down a pod's network",
                m.net_teardown.clone(),
            );
            r.register(
                "skiff_nri_plugin_calls",
                "NRI events delivered to plugins, by event and result",
                m.nri_calls.clone(),
            );
            r.register(
                "skiff_nri_plugin_call_seconds",
                "Time an NRI plugin took to answer an event, by plugin and event",
                m.nri_seconds.clone(),
            );
        }
        Arc::new(m)
    }

    /// Add a collector read at every scrape.
    pub fn collect(&self, c: impl Collector) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(c));
    }

    /// A PullImage call ended.
    pub fn pull_done(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.pulls
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        self.pull_seconds.observe(took.as_secs_f64());
    }

    /// A pod's network was set up.
    pub fn network_setup(&self, took: Duration) {
        self.net_setup.observe(took.as_secs_f64());
    }

    /// A pod's network was torn down.
    pub fn network_teardown(&self, took: Duration) {
        self.net_teardown.observe(took.as_secs_f64());
    }

    /// An NRI event was delivered to a plugin.
    pub fn nri_call(&self, c: &skiff_nri::Call<'_>) {
        let event = c.event.name().to_string();
        self.nri_calls
            .get_or_create(&vec![
                ("event", event.clone()),
                ("result", c.result.to_string()),
            ])
            .inc();
        self.nri_seconds
            .get_or_create(&vec![("plugin", c.plugin.to_string()), ("event", event)])
            .observe(c.took.as_secs_f64());
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            tracing::warn!(error = %e, "encode metrics");
        }
        out
    }
}

/// The gRPC service of a CRI method.
fn service_of(method: &str) -> &'static str {
    match method {
        "ListImages" | "ImageStatus" | "PullImage" | "RemoveImage" | "ImageFsInfo"
        | "StreamImages" => "runtime.v1.ImageService",
        _ => "runtime.v1.RuntimeService",
    }
}

impl skiff_cri::ports::CallObserver for Metrics {
    fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let service = service_of(method).to_string();
        self.cri_handled
            .get_or_create(&vec![
                ("grpc_service", service.clone()),
                ("grpc_method", method.to_string()),
                ("grpc_code", format!("{code:?}")),
            ])
            .inc();
        self.cri_seconds
            .get_or_create(&vec![
                ("grpc_service", service),
                ("grpc_method", method.to_string()),
            ])
            .observe(elapsed.as_secs_f64());
    }
}

/// What a scrape reads from skiffd's state.
pub trait StateSource: Send + Sync + 'static {
    /// Pods ready and not ready.
    fn pods(&self) -> (u64, u64);
    /// Containers created, running, exited.
    fn containers(&self) -> (u64, u64, u64);
    /// Shims watched.
    fn shims(&self) -> u64;
    /// Streaming sessions open.
    fn streaming_sessions(&self) -> u64;
}

/// The scrape-time collector: state (through a weak reference, so it never keeps the
/// runtime alive), images, the unpack engine and the process.
pub struct StateCollector {
    /// The runtime's state.
    pub state: Weak<dyn StateSource>,
    /// The image service.
    pub images: Weak<skiff_image::Images>,
    /// The unpack engine in use and why.
    pub engine: (&'static str, String),
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            ConstGauge::new(*v).encode(m.encode_family(&Vec::<(&str, &str)>::new())?)?;
        } else {
            ConstGauge::new(*v).encode(m.encode_family(&labels.to_vec())?)?;
        }
    }
    Ok(())
}

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(&labels.to_vec())?)?;
    }
    Ok(())
}

/// skiffd's own process figures from `/proc/self`.
#[derive(Debug, Default, Clone, Copy)]
struct ProcessFigures {
    rss: f64,
    vsize: f64,
    cpu_seconds: f64,
    open_fds: f64,
    max_fds: f64,
    start_time: f64,
    threads: f64,
}

fn process_figures() -> ProcessFigures {
    let mut p = ProcessFigures::default();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(") ")
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields from `state` (3rd of the line): utime 14, stime 15, threads 20,
        // starttime 22, vsize 23, rss 24 (1-based, as proc(5) counts).
        p.cpu_seconds = (num(11) + num(12)) / ticks;
        p.threads = num(17);
        p.vsize = num(20);
        p.rss = num(21) * page;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        p.start_time = boot + num(19) / ticks;
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
    p.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(0.0, |v| v as f64);
    p
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(state) = self.state.upgrade() {
            let (ready, notready) = state.pods();
            gauge(
                &mut e,
                "skiff_pod_sandboxes",
                "Pod sandboxes by state",
                &[
                    (&[("state", "ready")], ready as f64),
                    (&[("state", "notready")], notready as f64),
                ],
            )?;
            let (created, running, exited) = state.containers();
            gauge(
                &mut e,
                "skiff_containers",
                "Containers by state",
                &[
                    (&[("state", "created")], created as f64),
                    (&[("state", "running")], running as f64),
                    (&[("state", "exited")], exited as f64),
                ],
            )?;
            gauge(
                &mut e,
                "skiff_shims",
                "Per-pod shims skiffd watches (one per ready pod)",
                &[(&[], state.shims() as f64)],
            )?;
            gauge(
                &mut e,
                "skiff_streaming_sessions",
                "Exec, attach and port-forward sessions open",
                &[(&[], state.streaming_sessions() as f64)],
            )?;
        }
        if let Some(images) = self.images.upgrade() {
            let c = images.counters();
            let stages: Vec<(&[(&str, &str)], f64)> = skiff_image::counters::Stage::ALL
                .iter()
                .zip(c.stage_ns)
                .map(|(s, ns)| {
                    let labels: &[(&str, &str)] = match s.name() {
                        "resolve" => &[("stage", "resolve")],
                        "layers" => &[("stage", "layers")],
                        _ => &[("stage", "commit")],
                    };
                    (labels, ns as f64 / 1e9)
                })
                .collect();
            counter(
                &mut e,
                "skiff_image_pull_stage_seconds",
                "Time pulls spent per stage (layers: all of an image's layers at once)",
                &stages,
            )?;
            counter(
                &mut e,
                "skiff_image_pull_layer_bytes",
                "Compressed layer bytes received from registries",
                &[(&[], c.layer_bytes as f64)],
            )?;
            counter(
                &mut e,
                "skiff_image_layers",
                "Layers pulls fetched, or found present",
                &[
                    (&[("how", "fetched")], c.layers_fetched as f64),
                    (&[("how", "present")], c.layers_present as f64),
                ],
            )?;
        }
        let (engine, reason) = (&self.engine.0, self.engine.1.as_str());
        gauge(
            &mut e,
            "skiff_unpack_engine_info",
            "The layer unpack engine in use (1), and why",
            &[(&[("engine", engine), ("reason", reason)], 1.0)],
        )?;
        let p = process_figures();
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            &[(&[], p.rss)],
        )?;
        gauge(
            &mut e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            &[(&[], p.vsize)],
        )?;
        counter(
            &mut e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            &[(&[], p.cpu_seconds)],
        )?;
        gauge(
            &mut e,
            "process_open_fds",
            "Number of open file descriptors.",
            &[(&[], p.open_fds)],
        )?;
        gauge(
            &mut e,
            "process_max_fds",
            "Maximum number of open file descriptors",
            &[(&[], p.max_fds)],
        )?;
        gauge(
            &mut e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            &[(&[], p.start_time)],
        )?;
        gauge(
            &mut e,
            "process_threads",
            "Number of OS threads.",
            &[(&[], p.threads)],
        )?;
        Ok(())
    }
}

/// Serve `GET /metrics` on `addr` until the task is dropped. Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move {
                            let resp = if req.uri().path() != "/metrics" {
                                let mut r =
                                    Response::new(Full::new(Bytes::from_static(b"not found\n")));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            } else {
                                // Scrapes read /proc and the metadata store: off the workers.
                                let text = crate::blocking::spawn(move || metrics.encode())
                                    .await
                                    .unwrap_or_default();
                                let mut r = Response::new(Full::new(Bytes::from(text)));
                                r.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    "text/plain; version=0.0.4; charset=utf-8"
                                        .parse()
                                        .expect("static"),
                                );
                                r
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(local)
}
