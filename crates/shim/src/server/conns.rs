//! Control connections: one request line each, answers queued and written without
//! blocking.
//!
//! A connection lives in the table from accept until its last answer is delivered (or
//! skiffd hangs up). Its [`Role`] says what it waits for after its request: nothing
//! (answered), a container's exit (`Wait`), an ExecSync job, or a streaming exec (whose
//! client's hang-up kills the process). Answers go into the connection's queue and are
//! written as far as the socket takes them; the rest waits for `POLLOUT`. A peer that
//! stops reading holds only its own queue, never the loop.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use skiff_shim_proto::protocol::Answer;

use super::note;

/// The longest request line the shim accepts.
const MAX_REQUEST: usize = 16 << 20;
/// The most answer bytes queued for one connection (an ExecSync answer carries up to
/// twice 16 MiB of base64); past it the connection is dropped.
const MAX_QUEUED: usize = 64 << 20;

/// A connection's number, stable for its life.
pub(super) type ConnId = u64;

/// What a connection is for once its request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Its request is not complete yet.
    Reading,
    /// Its answer is queued; it closes once delivered.
    Answered,
    /// `Wait`: answered when the container exits.
    Waiting,
    /// `Exec`: answered when the job ends.
    Exec,
    /// A streaming exec of process `pid`: `Streams` sent, `Exited` follows; a hang-up
    /// from skiffd kills the process.
    Stream {
        /// The exec'd process.
        pid: i32,
    },
}

/// What reading a connection gave.
pub(super) enum Read {
    /// Nothing new (or a request still incomplete).
    Nothing,
    /// A complete request line.
    Request(Vec<u8>),
    /// skiffd closed it (or it failed); it is gone from the table. Its role says what
    /// was waiting on it.
    Closed(Role),
}

/// One queued answer line, with the fds that travel on its first byte.
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: VecDeque<Outgoing>,
    queued: usize,
    role: Role,
}

/// The control connections.
#[derive(Default)]
pub(super) struct Conns {
    table: BTreeMap<ConnId, Conn>,
    next: ConnId,
}

impl Conns {
    /// Take a newly accepted connection.
    pub(super) fn add(&mut self, stream: UnixStream) -> io::Result<ConnId> {
        stream.set_nonblocking(true)?;
        self.next += 1;
        self.table.insert(
            self.next,
            Conn {
                stream,
                inbuf: Vec::new(),
                out: VecDeque::new(),
                queued: 0,
                role: Role::Reading,
            },
        );
        Ok(self.next)
    }

    /// Every connection's socket, and whether it has answers waiting to be written.
    pub(super) fn poll_set(&self) -> impl Iterator<Item = (ConnId, &UnixStream, bool)> {
        self.table
            .iter()
            .map(|(id, c)| (*id, &c.stream, !c.out.is_empty()))
    }

    /// Whether no answer is waiting to be written.
    pub(super) fn all_flushed(&self) -> bool {
        self.table.values().all(|c| c.out.is_empty())
    }

    /// The streaming execs in flight: their connection and process.
    pub(super) fn streams(&self) -> Vec<(ConnId, i32)> {
        self.table
            .iter()
            .filter_map(|(id, c)| match c.role {
                Role::Stream { pid } => Some((*id, pid)),
                _ => None,
            })
            .collect()
    }

    /// Set what a connection waits for.
    pub(super) fn set_role(&mut self, id: ConnId, role: Role) {
        if let Some(c) = self.table.get_mut(&id) {
            c.role = role;
        }
    }

    /// Read what the peer sent. A request line ends reading; after it, anything more
    /// than a hang-up is ignored.
    pub(super) fn read(&mut self, id: ConnId) -> Read {
        let Some(c) = self.table.get_mut(&id) else {
            return Read::Nothing;
        };
        let mut chunk = [0u8; 8192];
        let closed = loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    if c.role == Role::Reading {
                        c.inbuf.extend_from_slice(&chunk[..n]);
                        if c.inbuf.len() > MAX_REQUEST {
                            note!("connection {id}: request longer than {MAX_REQUEST} bytes");
                            break true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if c.role == Role::Reading
            && let Some(end) = c.inbuf.iter().position(|&b| b == b'\n')
        {
            let mut line = std::mem::take(&mut c.inbuf);
            line.truncate(end);
            c.role = Role::Answered;
            if closed {
                // It sent its request and hung up: whatever it asked is still done,
                // but the answer has nowhere to go.
                self.table.remove(&id);
            }
            return Read::Request(line);
        }
        if closed {
            let role = self.table.remove(&id).map_or(Role::Answered, |c| c.role);
            return Read::Closed(role);
        }
        Read::Nothing
    }

    /// Queue `answer` on `id`; the connection closes once it is delivered.
    pub(super) fn answer(&mut self, id: ConnId, answer: &Answer) {
        self.answer_with_fds(id, answer, Vec::new());
    }

    /// Queue `answer` with `fds` on `id`; the connection closes once it is delivered.
    pub(super) fn answer_with_fds(&mut self, id: ConnId, answer: &Answer, fds: Vec<OwnedFd>) {
        self.queue(id, answer, fds);
        self.set_role(id, Role::Answered);
        self.flush(id);
    }

    /// Queue a streaming exec's `Streams` answer with its fds; the connection stays
    /// open for the exit line (sent with [`Conns::answer`]).
    pub(super) fn send_streams(
        &mut self,
        id: ConnId,
        answer: &Answer,
        fds: Vec<OwnedFd>,
        pid: i32,
    ) {
        self.queue(id, answer, fds);
        self.set_role(id, Role::Stream { pid });
        self.flush(id);
    }

    /// Whether the connection is still there (its peer has not gone).
    pub(super) fn is_open(&self, id: ConnId) -> bool {
        self.table.contains_key(&id)
    }

    fn queue(&mut self, id: ConnId, answer: &Answer, fds: Vec<OwnedFd>) {
        let Some(c) = self.table.get_mut(&id) else {
            return;
        };
        let mut bytes = match serde_json::to_vec(answer) {
            Ok(b) => b,
            Err(e) => {
                note!("connection {id}: encode answer: {e}");
                return;
            }
        };
        bytes.push(b'\n');
        c.queued += bytes.len();
        if c.queued > MAX_QUEUED {
            note!("connection {id}: more than {MAX_QUEUED} bytes of answers unread; dropped");
            self.table.remove(&id);
            return;
        }
        c.out.push_back(Outgoing {
            bytes,
            sent: 0,
            fds,
        });
    }

    /// Write what the socket takes; drop an answered connection once all is delivered,
    /// and one whose peer is gone.
    pub(super) fn flush(&mut self, id: ConnId) {
        let Some(c) = self.table.get_mut(&id) else {
            return;
        };
        while let Some(o) = c.out.front_mut() {
            match send(&c.stream, o) {
                Ok(true) => {
                    c.queued -= o.bytes.len();
                    c.out.pop_front();
                }
                Ok(false) => return,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EPIPE) {
                        note!("connection {id}: write answer: {e}");
                    }
                    self.table.remove(&id);
                    return;
                }
            }
        }
        if c.role == Role::Answered {
            self.table.remove(&id);
        }
    }
}

/// Write as much of `o` as the socket takes, its fds with the first bytes;
/// `Ok(true)` when all of it is out.
fn send(stream: &UnixStream, o: &mut Outgoing) -> io::Result<bool> {
    while o.sent < o.bytes.len() {
        let rest = &o.bytes[o.sent..];
        let result = if o.fds.is_empty() {
            rustix::net::send(stream, rest, rustix::net::SendFlags::NOSIGNAL)
        } else {
            let borrowed: Vec<BorrowedFd<'_>> = o.fds.iter().map(|f| f.as_fd()).collect();
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            if !control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(io::Error::other("too many fds for one message"));
            }
            rustix::net::sendmsg(
                stream,
                &[io::IoSlice::new(rest)],
                &mut control,
                rustix::net::SendFlags::NOSIGNAL,
            )
        };
        match result {
            Ok(n) => {
                o.sent += n;
                // The fds went with these bytes; ours close now.
                o.fds.clear();
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_shim_proto::protocol::Reply;
    use std::io::{BufRead, BufReader};

    #[test]
    fn a_reader_that_does_not_read_holds_only_its_own_queue() {
        let mut conns = Conns::default();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let id = conns.add(ours).unwrap();
        conns.set_role(id, Role::Exec);
        // Far more than a socket buffer: nothing blocks, the rest stays queued.
        let big = Ok(Reply::Exec {
            code: 0,
            stdout: "x".repeat(8 << 20),
            stderr: String::new(),
        });
        let start = std::time::Instant::now();
        conns.answer(id, &big);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(!conns.all_flushed(), "the rest waits for POLLOUT");
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(theirs).read_line(&mut line).unwrap();
            line.len()
        });
        while conns.is_open(id) {
            conns.flush(id);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(reader.join().unwrap() > 8 << 20);
    }

    #[test]
    fn request_lines_and_hangups() {
        let mut conns = Conns::default();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let id = conns.add(ours).unwrap();
        std::io::Write::write_all(&mut theirs, b"{\"op\":\"ping\"}\n").unwrap();
        match conns.read(id) {
            Read::Request(line) => assert_eq!(line, b"{\"op\":\"ping\"}"),
            _ => panic!("no request"),
        }
        conns.set_role(id, Role::Stream { pid: 42 });
        drop(theirs);
        match conns.read(id) {
            Read::Closed(Role::Stream { pid: 42 }) => {}
            _ => panic!("the hang-up of a streaming exec's client is reported"),
        }
        assert!(!conns.is_open(id));
    }
}
