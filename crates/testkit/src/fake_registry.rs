//! A fake OCI distribution registry that misbehaves on purpose.
//!
//! [`FakeRegistry`] is a small HTTP/1.1 server (std threads, one request per
//! connection, `Connection: close`) that serves the read half of the OCI
//! distribution API for images added to it:
//!
//! - `GET/HEAD /v2/`: 200, or 401 with a challenge when [`Auth`] asks for it;
//! - `GET/HEAD /v2/<repo>/manifests/<tag|digest>`: the stored manifest with its
//!   media type as `Content-Type` and a `Docker-Content-Digest` header;
//! - `GET/HEAD /v2/<repo>/blobs/<digest>`;
//! - `GET /token`: the token endpoint of the [`Auth::Bearer`] flow.
//!
//! The query (a mirror's `?ns=<registry>`) is ignored for routing but recorded.
//! Every request is recorded ([`FakeRegistry::requests`]) with its method, path,
//! query, headers and the status it got, so tests can count attempts or check
//! what a client sent.
//!
//! Faults ([`Fault`]) are injected per path pattern ([`Target`]) for a number of
//! requests ([`Times`]): an error status, a truncated or stalled body, wrong
//! bytes, an oversized manifest, a manifest whose layers have another media
//! type. Authentication (when configured) is checked before faults, so a fault
//! only counts requests that carried valid credentials.
//!
//! The listening socket is bound from a thread inside the given [`NetNs`], so it
//! lives in that namespace; the accept loop and connection threads run anywhere
//! afterwards. Dropping the registry sets a shutdown flag, wakes the accept loop
//! with a connection from inside the namespace, shuts every open connection
//! down (a stalled response ends at once) and joins all threads.
//!
//! ```no_run
//! # fn t(netns: &skiff_testkit::NetNs, image: &skiff_testkit::Image) {
//! use skiff_testkit::fake_registry::{FakeRegistry, Fault, Target, Times};
//! let reg = FakeRegistry::start(Some(netns)).unwrap();
//! reg.add_image("test/app", "1", image);
//! reg.inject(Target::manifests("test/app"), Fault::Status(500), Times::N(2));
//! // … pull 127.0.0.1:<port>/test/app:1 …
//! assert_eq!(reg.count("GET", "/v2/test/app/manifests/*"), 3);
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::image::{Image, MEDIA_TYPE_OCI_INDEX};
use crate::netns::{NetNs, NetNsError};
use crate::sha256_digest;

/// The realm named in `Basic` challenges.
pub const BASIC_REALM: &str = "fake";
/// The `service` named in `Bearer` challenges.
pub const BEARER_SERVICE: &str = "fake";

/// Longest request head (request line and headers) the server reads.
const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// How long a connection may take to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from starting a fake registry.
#[derive(Debug, thiserror::Error)]
pub enum FakeRegistryError {
    /// The listening socket could not be bound.
    #[error("binding the fake registry to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The io error.
        #[source]
        source: io::Error,
    },
    /// The namespace could not be entered.
    #[error("starting the fake registry in its namespace: {0}")]
    NetNs(#[from] NetNsError),
    /// The accept thread could not be started.
    #[error("spawning the fake registry's accept thread: {0}")]
    Spawn(#[source] io::Error),
}

/// How the registry authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// Anyone may read.
    #[default]
    None,
    /// Every request (including `/v2/`) needs `Authorization: Basic` with these
    /// credentials; otherwise 401 with `WWW-Authenticate: Basic realm="fake"`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// Every request needs `Authorization: Bearer <token>` with a token from
    /// `GET /token`; otherwise 401 with `WWW-Authenticate: Bearer
    /// realm="http://<addr>/token",service="fake"[,scope="repository:<repo>:pull"]`.
    Bearer {
        /// Basic credentials `/token` requires; `None` hands tokens to anyone.
        credentials: Option<(String, String)>,
    },
}

/// Which requests a fault applies to: a pattern over the request path (without
/// the query) where `*` matches any run of characters, `/` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    glob: String,
}

impl Target {
    /// Requests whose path matches `glob` (`*` matches anything, `/` included).
    pub fn path(glob: impl Into<String>) -> Target {
        Target { glob: glob.into() }
    }

    /// Every manifest request of `repo` (by tag or digest).
    pub fn manifests(repo: &str) -> Target {
        Target::path(format!("/v2/{repo}/manifests/*"))
    }

    /// The manifest `repo:reference` (a tag or a digest).
    pub fn manifest(repo: &str, reference: &str) -> Target {
        Target::path(format!("/v2/{repo}/manifests/{reference}"))
    }

    /// The blob `digest`, in any repository.
    pub fn blob(digest: &str) -> Target {
        Target::path(format!("/v2/*/blobs/{digest}"))
    }

    /// Every blob of `repo`.
    pub fn blobs(repo: &str) -> Target {
        Target::path(format!("/v2/{repo}/blobs/*"))
    }

    /// Every request under `/v2/`, `/v2/` itself included.
    pub fn any() -> Target {
        Target::path("/v2/*")
    }

    /// The token endpoint.
    pub fn token() -> Target {
        Target::path("/token")
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.glob.as_bytes(), path.as_bytes())
    }
}

/// Something to do instead of (or to) the normal response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an OCI error body (`UNAUTHORIZED`, `DENIED`,
    /// `MANIFEST_UNKNOWN`/`BLOB_UNKNOWN`, `TOOMANYREQUESTS`, …); a 401 carries a
    /// `Basic` challenge, a 429 or 503 `Retry-After: 0`.
    Status(u16),
    /// Send the headers with the full `Content-Length`, then only the first
    /// `after` bytes of the body (at most all but one), then close: the client
    /// sees an early EOF.
    Truncate {
        /// Body bytes sent before closing.
        after: usize,
    },
    /// Send the headers and the first `after` bytes of the body, then send
    /// nothing for `duration` (or until the registry is dropped), then close.
    Stall {
        /// Body bytes sent before stalling.
        after: usize,
        /// How long to stall.
        duration: Duration,
    },
    /// Serve the body with its middle byte flipped (same length, same headers).
    WrongBytes,
    /// Serve the manifest padded with JSON whitespace to `size` bytes in all
    /// (still valid JSON; `Docker-Content-Digest` is the padded body's digest).
    OversizedManifest {
        /// Total body size.
        size: usize,
    },
    /// Send the headers without a `Content-Length` (the body ends when the
    /// connection closes), the real body, then spaces until the client stops
    /// reading or `limit` bytes in all were sent. [`FakeRegistry::endless_sent`]
    /// tells how many bytes each such response got out.
    Endless {
        /// The most bytes sent.
        limit: usize,
    },
    /// Serve the manifest with every layer's `mediaType` replaced by this one
    /// (`Docker-Content-Digest` is the rewritten body's digest).
    LayerMediaType(String),
}

/// How many matching requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next matching request only.
    Once,
    /// The next `n` matching requests.
    N(u32),
    /// Every matching request.
    Always,
}

/// Names an injected fault, for [`FakeRegistry::hits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultId(usize);

/// One request the registry received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query after `?`, if any.
    pub query: Option<String>,
    /// Every header, names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The status the registry answered with.
    pub status: u16,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The percent-decoded value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        query_param(self.query.as_deref()?, key)
    }
}

struct Manifest {
    bytes: Vec<u8>,
    media_type: String,
}

struct Rule {
    target: Target,
    fault: Fault,
    remaining: Option<u32>,
    hits: u32,
}

#[derive(Default)]
struct State {
    /// `(repo, tag or digest)` → manifest.
    manifests: HashMap<(String, String), Arc<Manifest>>,
    /// digest → blob.
    blobs: HashMap<String, Arc<Vec<u8>>>,
    auth: Auth,
    tokens: HashSet<String>,
    next_token: u64,
    rules: Vec<Rule>,
    requests: Vec<RecordedRequest>,
    /// Bytes written by each finished `Fault::Endless` response.
    endless_sent: Vec<usize>,
    /// Clones of open connections, to shut them down on drop.
    connections: HashMap<u64, TcpStream>,
    next_connection: u64,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    /// The shutdown flag; the condvar wakes stalled responses.
    stopping: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps for `d`, or less if the registry shuts down meanwhile.
    fn sleep(&self, d: Duration) {
        let guard = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .wake
            .wait_timeout_while(guard, d, |stopping| !*stopping)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// A fake OCI registry on `127.0.0.1:<port>`; see the [module docs](self).
pub struct FakeRegistry {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// The namespace the listener lives in (`None`: the caller's own), to
    /// connect from when waking the accept loop.
    netns: Option<File>,
    /// A clone of the listener, for the fallback wake-up (`shutdown(SHUT_RD)`).
    listener: TcpListener,
}

impl std::fmt::Debug for FakeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRegistry")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl FakeRegistry {
    /// Starts a registry on a free port of `127.0.0.1`, inside `netns` (or in
    /// the caller's namespace with `None`).
    pub fn start(netns: Option<&NetNs>) -> Result<FakeRegistry, FakeRegistryError> {
        FakeRegistry::start_on(netns, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a registry on `addr`, inside `netns` (or in the caller's namespace).
    pub fn start_on(
        netns: Option<&NetNs>,
        addr: SocketAddr,
    ) -> Result<FakeRegistry, FakeRegistryError> {
        let bind =
            || TcpListener::bind(addr).map_err(|source| FakeRegistryError::Bind { addr, source });
        let (listener, ns_file) = match netns {
            Some(ns) => ns.try_run(|| {
                let listener = bind()?;
                // This thread's namespace, kept open to connect from on drop.
                let ns_file = File::open("/proc/thread-self/ns/net")
                    .map_err(|source| FakeRegistryError::Bind { addr, source })?;
                Ok::<_, FakeRegistryError>((listener, Some(ns_file)))
            })??,
            None => (bind()?, None),
        };
        let bound = listener
            .local_addr()
            .map_err(|source| FakeRegistryError::Bind { addr, source })?;
        let keep = listener
            .try_clone()
            .map_err(|source| FakeRegistryError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            addr: bound,
            state: Mutex::new(State::default()),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fake-registry-{}", bound.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(FakeRegistryError::Spawn)?
        };
        Ok(FakeRegistry {
            shared,
            accept: Some(accept),
            netns: ns_file,
            listener: keep,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `127.0.0.1:<port>`, as image references and hosts directories name it.
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Serves `image` as `repo:tag` (and `repo@<manifest digest>`), with its blobs.
    pub fn add_image(&self, repo: &str, tag: &str, image: &Image) {
        for (_, bytes) in image.blobs() {
            self.add_blob(bytes.to_vec());
        }
        self.add_manifest(
            repo,
            tag,
            &image.manifest_media_type,
            image.manifest.clone(),
        );
    }

    /// Serves the image index `index` as `repo:tag` (and by digest), with the
    /// `children` it references (by digest). Returns the index digest.
    pub fn add_index(&self, repo: &str, tag: &str, index: &[u8], children: &[&Image]) -> String {
        for child in children {
            for (_, bytes) in child.blobs() {
                self.add_blob(bytes.to_vec());
            }
            self.add_manifest(
                repo,
                &child.manifest_digest,
                &child.manifest_media_type,
                child.manifest.clone(),
            );
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(index)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| MEDIA_TYPE_OCI_INDEX.to_owned());
        self.add_manifest(repo, tag, &media_type, index.to_vec())
    }

    /// Serves `bytes` as manifest `repo:reference` (a tag, or empty for by-digest
    /// only) and as `repo@<digest>`. Returns the digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let digest = sha256_digest(&bytes);
        let m = Arc::new(Manifest {
            bytes,
            media_type: media_type.to_owned(),
        });
        let mut st = self.shared.state();
        if !reference.is_empty() {
            st.manifests
                .insert((repo.to_owned(), reference.to_owned()), m.clone());
        }
        st.manifests.insert((repo.to_owned(), digest.clone()), m);
        digest
    }

    /// Serves `bytes` as a blob (in every repository). Returns its digest.
    pub fn add_blob(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        self.shared
            .state()
            .blobs
            .insert(digest.clone(), Arc::new(bytes));
        digest
    }

    /// Sets how clients must authenticate (issued tokens stay valid).
    pub fn set_auth(&self, auth: Auth) {
        self.shared.state().auth = auth;
    }

    /// Applies `fault` to the next `times` requests matching `target`. When
    /// several faults match a request, the first injected one that has not run
    /// out applies.
    pub fn inject(&self, target: Target, fault: Fault, times: Times) -> FaultId {
        let remaining = match times {
            Times::Once => Some(1),
            Times::N(n) => Some(n),
            Times::Always => None,
        };
        let mut st = self.shared.state();
        st.rules.push(Rule {
            target,
            fault,
            remaining,
            hits: 0,
        });
        FaultId(st.rules.len() - 1)
    }

    /// How many requests fault `id` was applied to.
    pub fn hits(&self, id: FaultId) -> u32 {
        self.shared.state().rules.get(id.0).map_or(0, |r| r.hits)
    }

    /// Disables every injected fault; their ids keep reporting the hits they had.
    pub fn clear_faults(&self) {
        for rule in &mut self.shared.state().rules {
            rule.remaining = Some(0);
        }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// The requests with `method` whose path matches `glob` (as in [`Target::path`]).
    pub fn requests_matching(&self, method: &str, glob: &str) -> Vec<RecordedRequest> {
        let target = Target::path(glob);
        self.shared
            .state()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && target.matches(&r.path))
            .cloned()
            .collect()
    }

    /// How many requests with `method` had a path matching `glob`.
    pub fn count(&self, method: &str, glob: &str) -> usize {
        self.requests_matching(method, glob).len()
    }

    /// The body bytes each finished [`Fault::Endless`] response wrote before the
    /// client closed the connection (or its limit was reached), oldest first.
    pub fn endless_sent(&self) -> Vec<usize> {
        self.shared.state().endless_sent.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.state().requests.clear();
    }

    /// Wakes the accept loop: a connection from inside the listener's
    /// namespace, or `shutdown(SHUT_RD)` on the listener if that fails.
    fn wake_accept(&self) {
        let addr = self.shared.addr;
        let connected = match &self.netns {
            None => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
            Some(ns) => std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                            .is_ok()
                            && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                    })
                    .join()
                    .unwrap_or(false)
            }),
        };
        if !connected {
            // Linux wakes a blocked accept() on a listening socket shut down for reading.
            let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Read);
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        *self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        self.wake_accept();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let workers = {
            let mut st = self.shared.state();
            for conn in st.connections.values() {
                let _ = conn.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut st.workers)
        };
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("fake registry {}: accept: {e}", shared.addr);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut st = shared.state();
        let id = st.next_connection;
        st.next_connection += 1;
        if let Ok(clone) = stream.try_clone() {
            st.connections.insert(id, clone);
        }
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fake-registry-conn-{id}"))
                .spawn(move || {
                    serve(stream, &shared);
                    shared.state().connections.remove(&id);
                })
        };
        match worker {
            Ok(handle) => {
                st.workers.retain(|w| !w.is_finished());
                st.workers.push(handle);
            }
            Err(e) => {
                st.connections.remove(&id);
                eprintln!(
                    "fake registry {}: spawning a connection thread: {e}",
                    shared.addr
                );
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the request head; `None` on EOF, a timeout or garbage.
fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD_BYTES));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target, None),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
    })
}

/// A response about to be written.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
        }
    }

    fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::new(status, "application/json", body.to_string().into_bytes())
    }

    fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            &serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]}),
        )
    }

    fn header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT));
    let Some(req) = read_request(&stream) else {
        return;
    };
    let (response, fault) = respond(&req, shared);
    shared.state().requests.push(RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        status: response.status,
        fault: fault.clone(),
    });
    let head_only = req.method.eq_ignore_ascii_case("HEAD");
    let _ = write_response(&stream, &response, head_only, fault.as_ref(), shared);
    let _ = stream.shutdown(Shutdown::Write);
}

fn write_response(
    mut stream: &TcpStream,
    r: &Response,
    head_only: bool,
    fault: Option<&Fault>,
    shared: &Shared,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (name, value) in &r.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !matches!(fault, Some(Fault::Endless { .. })) {
        head.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    if head_only {
        return stream.flush();
    }
    match fault {
        Some(Fault::Endless { limit }) => {
            let mut sent = 0;
            let mut result = stream.write_all(&r.body);
            if result.is_ok() {
                sent = r.body.len();
                let spaces = vec![b' '; 64 << 10];
                while sent < *limit && !shared.stopping() {
                    let n = spaces.len().min(limit - sent);
                    if let Err(e) = stream.write_all(&spaces[..n]) {
                        result = Err(e);
                        break;
                    }
                    sent += n;
                }
            }
            shared.state().endless_sent.push(sent);
            result
        }
        Some(Fault::Truncate { after }) => {
            let n = (*after).min(r.body.len().saturating_sub(1));
            stream.write_all(&r.body[..n])?;
            stream.flush()
        }
        Some(Fault::Stall { after, duration }) => {
            let n = (*after).min(r.body.len());
            stream.write_all(&r.body[..n])?;
            stream.flush()?;
            shared.sleep(*duration);
            Ok(())
        }
        _ => {
            stream.write_all(&r.body)?;
            stream.flush()
        }
    }
}

/// The response to `req`, and the fault that shaped it.
fn respond(req: &Request, shared: &Shared) -> (Response, Option<Fault>) {
    let get = req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD");
    if !get {
        return (
            Response::error(405, "UNSUPPORTED", "the fake registry is read-only"),
            None,
        );
    }
    if req.path == "/token" {
        let fault = take_fault(shared, &req.path);
        if let Some(Fault::Status(s)) = fault {
            return (status_response(s, &req.path), fault);
        }
        return (token(req, shared), fault);
    }
    if let Some(denied) = authenticate(req, shared) {
        return (denied, None);
    }
    let fault = take_fault(shared, &req.path);
    if let Some(Fault::Status(s)) = fault {
        return (status_response(s, &req.path), fault);
    }
    let response = route(&req.path, shared);
    let response = match (&fault, response.status) {
        (Some(Fault::WrongBytes), 200) => {
            let mut r = response;
            if !r.body.is_empty() {
                let mid = r.body.len() / 2;
                r.body[mid] ^= 0xff;
            }
            r
        }
        (Some(Fault::OversizedManifest { size }), 200) => {
            let mut body = response.body;
            if body.len() < *size {
                body.resize(*size, b' ');
            }
            redigest(response.headers, body)
        }
        (Some(Fault::LayerMediaType(mt)), 200) => {
            match serde_json::from_slice::<serde_json::Value>(&response.body) {
                Ok(mut doc) => {
                    if let Some(layers) = doc.get_mut("layers").and_then(|l| l.as_array_mut()) {
                        for layer in layers {
                            layer["mediaType"] = serde_json::Value::String(mt.clone());
                        }
                    }
                    let body = serde_json::to_vec(&doc).unwrap_or(response.body);
                    redigest(response.headers, body)
                }
                Err(_) => response,
            }
        }
        _ => response,
    };
    (response, fault)
}

/// A response with `body` and the `Docker-Content-Digest` header recomputed.
fn redigest(headers: Vec<(&'static str, String)>, body: Vec<u8>) -> Response {
    let digest = sha256_digest(&body);
    let headers = headers
        .into_iter()
        .map(|(n, v)| {
            if n == "Docker-Content-Digest" {
                (n, digest.clone())
            } else {
                (n, v)
            }
        })
        .collect();
    Response {
        status: 200,
        headers,
        body,
    }
}

fn take_fault(shared: &Shared, path: &str) -> Option<Fault> {
    let mut st = shared.state();
    let rule = st
        .rules
        .iter_mut()
        .find(|r| r.remaining != Some(0) && r.target.matches(path))?;
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
    }
    rule.hits += 1;
    Some(rule.fault.clone())
}

fn status_response(status: u16, path: &str) -> Response {
    let (code, message) = match status {
        401 => ("UNAUTHORIZED", "authentication required"),
        403 => ("DENIED", "requested access to the resource is denied"),
        404 if path.contains("/manifests/") => ("MANIFEST_UNKNOWN", "manifest unknown"),
        404 if path.contains("/blobs/") => ("BLOB_UNKNOWN", "blob unknown to registry"),
        404 => ("NOT_FOUND", "not found"),
        429 => ("TOOMANYREQUESTS", "pull rate limit exceeded"),
        _ => ("UNKNOWN", "injected failure"),
    };
    let r = if status >= 500 {
        Response::new(
            status,
            "text/plain",
            format!("{status} {}: injected failure\n", reason(status)).into_bytes(),
        )
    } else {
        Response::error(status, code, message)
    };
    match status {
        401 => r.header("WWW-Authenticate", format!("Basic realm=\"{BASIC_REALM}\"")),
        429 | 503 => r.header("Retry-After", "0".into()),
        _ => r,
    }
}

/// The repository a `/v2/<repo>/{manifests,blobs}/…` path names.
fn repository(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let end = rest
        .rfind("/manifests/")
        .or_else(|| rest.rfind("/blobs/"))?;
    Some(&rest[..end])
}

/// `None` when `req` may proceed; otherwise the 401 to send.
fn authenticate(req: &Request, shared: &Shared) -> Option<Response> {
    let st = shared.state();
    let given = req.header("authorization");
    match &st.auth {
        Auth::None => None,
        Auth::Basic { username, password } => {
            if basic_matches(given, username, password) {
                None
            } else {
                Some(
                    Response::error(401, "UNAUTHORIZED", "authentication required")
                        .header("WWW-Authenticate", format!("Basic realm=\"{BASIC_REALM}\"")),
                )
            }
        }
        Auth::Bearer { .. } => {
            let token = given.and_then(|h| h.strip_prefix("Bearer "));
            if token.is_some_and(|t| st.tokens.contains(t.trim())) {
                return None;
            }
            let mut challenge = format!(
                "Bearer realm=\"http://{}/token\",service=\"{BEARER_SERVICE}\"",
                shared.addr
            );
            if let Some(repo) = repository(&req.path) {
                challenge.push_str(&format!(",scope=\"repository:{repo}:pull\""));
            }
            Some(
                Response::error(401, "UNAUTHORIZED", "authentication required")
                    .header("WWW-Authenticate", challenge),
            )
        }
    }
}

fn basic_matches(header: Option<&str>, username: &str, password: &str) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .is_ok_and(|d| d == format!("{username}:{password}").as_bytes())
}

/// `GET /token`.
fn token(req: &Request, shared: &Shared) -> Response {
    let mut st = shared.state();
    let Auth::Bearer { credentials } = &st.auth else {
        return Response::error(404, "NOT_FOUND", "no token service (auth is not bearer)");
    };
    if let Some((user, pass)) = credentials
        && !basic_matches(req.header("authorization"), user, pass)
    {
        return Response::error(401, "UNAUTHORIZED", "invalid username or password")
            .header("WWW-Authenticate", format!("Basic realm=\"{BASIC_REALM}\""));
    }
    st.next_token += 1;
    let token = format!("fake-token-{}", st.next_token);
    st.tokens.insert(token.clone());
    Response::json(
        200,
        &serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 300,
            "issued_at": "2000-01-01T00:00:00Z",
        }),
    )
}

/// The normal answer for a `/v2/…` path.
fn route(path: &str, shared: &Shared) -> Response {
    if path == "/v2/" || path == "/v2" {
        return Response::json(200, &serde_json::json!({}))
            .header("Docker-Distribution-API-Version", "registry/2.0".into());
    }
    let Some(repo) = repository(path) else {
        return Response::error(404, "NOT_FOUND", "unknown path");
    };
    let rest = &path["/v2/".len() + repo.len()..];
    let st = shared.state();
    if let Some(reference) = rest.strip_prefix("/manifests/") {
        match st.manifests.get(&(repo.to_owned(), reference.to_owned())) {
            Some(m) => Response::new(200, &m.media_type, m.bytes.clone())
                .header("Docker-Content-Digest", sha256_digest(&m.bytes)),
            None => Response::error(
                404,
                "MANIFEST_UNKNOWN",
                &format!("manifest unknown: {repo}:{reference}"),
            ),
        }
    } else if let Some(digest) = rest.strip_prefix("/blobs/") {
        match st.blobs.get(digest) {
            Some(b) => Response::new(200, "application/octet-stream", b.to_vec())
                .header("Docker-Content-Digest", digest.to_owned()),
            None => Response::error(404, "BLOB_UNKNOWN", &format!("blob unknown: {digest}")),
        }
    } else {
        Response::error(404, "NOT_FOUND", "unknown path")
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Compression, ImageBuilder, LayerBuilder};

    fn image() -> Image {
        ImageBuilder::new()
            .layer(
                LayerBuilder::new()
                    .pseudo_random_file("data", 0o644, 1, 64 * 1024)
                    .finish(Compression::Gzip)
                    .unwrap(),
            )
            .build()
    }

    /// Status, headers, and the body or the error reading it.
    type Answer = (u16, Vec<(String, String)>, Result<Vec<u8>, io::Error>);

    /// A minimal blocking HTTP client, one request per connection.
    fn get(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut hs = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            hs.push((n.to_ascii_lowercase(), v.trim().to_owned()));
        }
        let len: usize = hs
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        let body = if method == "HEAD" {
            Ok(Vec::new())
        } else {
            let mut body = vec![0; len];
            reader.read_exact(&mut body).map(|()| body)
        };
        (status, hs, body)
    }

    fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        hs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn serves_manifests_and_blobs_and_records_requests() {
        let reg = FakeRegistry::start(None).unwrap();
        let img = image();
        reg.add_image("a/b", "1", &img);
        let (s, _, body) = get(reg.addr(), "GET", "/v2/", &[]);
        assert_eq!((s, body.unwrap()), (200, b"{}".to_vec()));
        let (s, hs, body) = get(reg.addr(), "GET", "/v2/a/b/manifests/1?ns=docker.io", &[]);
        assert_eq!(s, 200);
        assert_eq!(body.unwrap(), img.manifest);
        assert_eq!(
            header(&hs, "content-type"),
            Some(img.manifest_media_type.as_str())
        );
        assert_eq!(
            header(&hs, "docker-content-digest"),
            Some(img.manifest_digest.as_str())
        );
        let (s, hs, _) = get(
            reg.addr(),
            "HEAD",
            &format!("/v2/a/b/manifests/{}", img.manifest_digest),
            &[],
        );
        assert_eq!(s, 200);
        assert_eq!(
            header(&hs, "content-length"),
            Some(img.manifest.len().to_string().as_str())
        );
        let layer = &img.layers[0];
        let (s, _, body) = get(
            reg.addr(),
            "GET",
            &format!("/v2/a/b/blobs/{}", layer.digest),
            &[],
        );
        assert_eq!((s, body.unwrap()), (200, layer.blob.clone()));
        let (s, _, _) = get(reg.addr(), "GET", "/v2/a/b/manifests/2", &[]);
        assert_eq!(s, 404);
        let reqs = reg.requests();
        assert_eq!(reqs.len(), 5);
        assert_eq!(reqs[1].query_param("ns").as_deref(), Some("docker.io"));
        assert_eq!(reqs[1].header("Host"), Some(reg.host().as_str()));
        assert_eq!(reg.count("GET", "/v2/a/b/manifests/*"), 2);
        assert_eq!(reg.count("HEAD", "/v2/a/b/manifests/*"), 1);
    }

    #[test]
    fn faults_apply_n_times() {
        let reg = FakeRegistry::start(None).unwrap();
        let img = image();
        reg.add_image("r", "t", &img);
        let layer = img.layers[0].clone();
        let path = format!("/v2/r/blobs/{}", layer.digest);
        let id = reg.inject(Target::manifests("r"), Fault::Status(503), Times::N(2));
        for _ in 0..2 {
            assert_eq!(get(reg.addr(), "GET", "/v2/r/manifests/t", &[]).0, 503);
        }
        assert_eq!(get(reg.addr(), "GET", "/v2/r/manifests/t", &[]).0, 200);
        assert_eq!(reg.hits(id), 2);

        reg.inject(
            Target::blob(&layer.digest),
            Fault::Truncate { after: 100 },
            Times::Once,
        );
        let (s, _, body) = get(reg.addr(), "GET", &path, &[]);
        assert_eq!(s, 200);
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);

        reg.inject(Target::blob(&layer.digest), Fault::WrongBytes, Times::Once);
        let body = get(reg.addr(), "GET", &path, &[]).2.unwrap();
        assert_eq!(body.len(), layer.blob.len());
        assert_ne!(body, layer.blob);
        assert_eq!(get(reg.addr(), "GET", &path, &[]).2.unwrap(), layer.blob);

        reg.inject(
            Target::manifest("r", "t"),
            Fault::OversizedManifest { size: 1 << 20 },
            Times::Once,
        );
        let (_, hs, body) = get(reg.addr(), "GET", "/v2/r/manifests/t", &[]);
        let body = body.unwrap();
        assert_eq!(body.len(), 1 << 20);
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        assert_eq!(
            header(&hs, "docker-content-digest"),
            Some(sha256_digest(&body).as_str())
        );

        reg.inject(
            Target::manifests("r"),
            Fault::LayerMediaType("application/x-nope".into()),
            Times::Once,
        );
        let body = get(reg.addr(), "GET", "/v2/r/manifests/t", &[]).2.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["layers"][0]["mediaType"], "application/x-nope");

        // A stall ends when the registry is dropped.
        reg.inject(
            Target::blob(&layer.digest),
            Fault::Stall {
                after: 10,
                duration: Duration::from_secs(600),
            },
            Times::Always,
        );
        let addr = reg.addr();
        let client = std::thread::spawn(move || get(addr, "GET", &path, &[]).2.is_err());
        std::thread::sleep(Duration::from_millis(100));
        let start = std::time::Instant::now();
        drop(reg);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(client.join().unwrap(), "the stalled body is incomplete");
    }

    #[test]
    fn basic_and_bearer_auth() {
        let reg = FakeRegistry::start(None).unwrap();
        reg.add_image("r", "t", &image());
        reg.set_auth(Auth::Basic {
            username: "u".into(),
            password: "p".into(),
        });
        let (s, hs, _) = get(reg.addr(), "GET", "/v2/", &[]);
        assert_eq!(s, 401);
        assert_eq!(
            header(&hs, "www-authenticate"),
            Some("Basic realm=\"fake\"")
        );
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:p")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:x")
        );
        assert_eq!(
            get(reg.addr(), "GET", "/v2/", &[("Authorization", &good)]).0,
            200
        );
        assert_eq!(
            get(reg.addr(), "GET", "/v2/", &[("Authorization", &bad)]).0,
            401
        );

        reg.set_auth(Auth::Bearer {
            credentials: Some(("u".into(), "p".into())),
        });
        let (s, hs, _) = get(reg.addr(), "GET", "/v2/r/manifests/t", &[]);
        assert_eq!(s, 401);
        assert_eq!(
            header(&hs, "www-authenticate").unwrap(),
            format!(
                "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:r:pull\"",
                reg.host()
            )
        );
        assert_eq!(
            get(
                reg.addr(),
                "GET",
                "/token?scope=repository%3Ar%3Apull",
                &[("Authorization", &bad)]
            )
            .0,
            401
        );
        let (s, _, body) = get(
            reg.addr(),
            "GET",
            "/token?scope=repository%3Ar%3Apull&service=fake",
            &[("Authorization", &good)],
        );
        assert_eq!(s, 200);
        let doc: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        let token = doc["token"].as_str().unwrap().to_owned();
        assert_eq!(doc["access_token"], doc["token"]);
        let bearer = format!("Bearer {token}");
        assert_eq!(
            get(
                reg.addr(),
                "GET",
                "/v2/r/manifests/t",
                &[("Authorization", &bearer)]
            )
            .0,
            200
        );
        let token_req = &reg.requests_matching("GET", "/token")[1];
        assert_eq!(
            token_req.query_param("scope").as_deref(),
            Some("repository:r:pull")
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"/v2/*/blobs/x", b"/v2/a/b/blobs/x"));
        assert!(glob_match(b"/v2/*", b"/v2/"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"/v2/a/manifests/*", b"/v2/a/b/manifests/1"));
        assert!(glob_match(b"/v2/a/b/manifests/*", b"/v2/a/b/manifests/1"));
        assert!(!glob_match(b"/token", b"/tokens"));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("scope=repository%3Aa%2Fb%3Apull&ns=docker.io", "scope").as_deref(),
            Some("repository:a/b:pull")
        );
        assert_eq!(query_param("a=1&b", "b").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz%", "a").as_deref(), Some("%zz%"));
        assert_eq!(query_param("a=1", "c"), None);
    }
}
