// Interop peer for skiff-spdy, built on Go's spdystream (what kubelet clients, crictl and
// critest use). Run by crates/spdy/tests/go_interop.rs; exits non-zero on any mismatch.
//
//	interop client <url>   dial a skiff-spdy server, upgrade, ping, exchange data on streams
//	interop server         print "LISTEN <addr>", accept one upgrade, echo every stream
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

// bufConn reads through the bufio.Reader that parsed the HTTP head, so bytes it buffered
// past the head reach the SPDY framer.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "interop: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	time.AfterFunc(60*time.Second, func() { fail("timed out") })
	if len(os.Args) < 2 {
		fail("usage: interop client <url> | interop server")
	}
	switch os.Args[1] {
	case "client":
		client(os.Args[2])
	case "server":
		server()
	default:
		fail("unknown mode %q", os.Args[1])
	}
}

func payload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + (byte(i)+seed)%26
	}
	return b
}

func client(rawURL string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		fail("url: %v", err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		fail("dial: %v", err)
	}
	req := "POST " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n" +
		"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n" +
		"Content-Length: 0\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		fail("write request: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		fail("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		fail("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Stream-Protocol-Version"); got != "v4.channel.k8s.io" {
		fail("negotiated %q", got)
	}
	conn, err := spdystream.NewConnection(&bufConn{c, br}, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)

	if _, err := conn.Ping(); err != nil {
		fail("ping: %v", err)
	}

	// Three concurrent streams; the first sends 1 MiB in ONE data frame, the others several
	// small frames. The Rust server answers "<streamtype>/<requestid>:" + uppercased data.
	var wg sync.WaitGroup
	for i, kind := range []string{"stdin", "stdout", "error"} {
		wg.Add(1)
		go func(i int, kind string) {
			defer wg.Done()
			h := http.Header{}
			h.Set("streamType", kind)
			h.Set("requestID", fmt.Sprint(100+i))
			s, err := conn.CreateStream(h, nil, false)
			if err != nil {
				fail("create %s: %v", kind, err)
			}
			if err := s.WaitTimeout(10 * time.Second); err != nil {
				fail("reply %s: %v", kind, err)
			}
			var sent []byte
			if i == 0 {
				sent = payload(1<<20, 0)
				if _, err := s.Write(sent); err != nil {
					fail("write %s: %v", kind, err)
				}
			} else {
				for j := 0; j < 5; j++ {
					p := payload(1000+j, byte(j))
					sent = append(sent, p...)
					if _, err := s.Write(p); err != nil {
						fail("write %s: %v", kind, err)
					}
				}
			}
			if err := s.Close(); err != nil { // FIN
				fail("close %s: %v", kind, err)
			}
			got, err := ioutil.ReadAll(s)
			if err != nil {
				fail("read %s: %v", kind, err)
			}
			want := append([]byte(fmt.Sprintf("%s/%d:", kind, 100+i)), bytes.ToUpper(sent)...)
			if !bytes.Equal(got, want) {
				fail("stream %s: got %d bytes, want %d (prefix %q)", kind, len(got), len(want), prefix(got))
			}
		}(i, kind)
	}
	wg.Wait()

	// A stream the server resets: reading ends without data.
	h := http.Header{}
	h.Set("streamType", "reset-me")
	s, err := conn.CreateStream(h, nil, false)
	if err != nil {
		fail("create reset stream: %v", err)
	}
	if err := s.WaitTimeout(10 * time.Second); err != nil {
		fail("reply reset stream: %v", err)
	}
	buf := make([]byte, 16)
	if n, err := s.Read(buf); n != 0 || err == nil {
		fail("reset stream read %d bytes, err %v", n, err)
	}

	if _, err := conn.Ping(); err != nil {
		fail("second ping: %v", err)
	}
	if err := conn.CloseWait(); err != nil {
		fail("close: %v", err)
	}
	fmt.Println("client OK")
}

func prefix(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

func server() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	fmt.Printf("LISTEN %s\n", l.Addr())
	c, err := l.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		fail("read request: %v", err)
	}
	if req.Method != "POST" || !strings.EqualFold(req.Header.Get("Upgrade"), "SPDY/3.1") {
		fail("bad upgrade request %s %v", req.Method, req.Header)
	}
	protos := req.Header["X-Stream-Protocol-Version"]
	if len(protos) != 2 || protos[0] != "v4.channel.k8s.io" {
		fail("offered protocols %v", protos)
	}
	io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"+
		"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
	conn, err := spdystream.NewConnection(&bufConn{c, br}, true)
	if err != nil {
		fail("spdy: %v", err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	go conn.Serve(func(s *spdystream.Stream) {
		kind := s.Headers().Get("streamType")
		mu.Lock()
		seen[kind+"/"+s.Headers().Get("requestID")] = true
		mu.Unlock()
		if err := s.SendReply(http.Header{}, false); err != nil {
			fail("reply: %v", err)
		}
		go func() {
			io.Copy(s, s)
			s.Close()
		}()
	})
	<-conn.CloseChan()
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"stdin/1", "stdout/2", "error/3"} {
		if !seen[want] {
			fail("server never saw stream %s (saw %v)", want, seen)
		}
	}
	fmt.Println("server OK")
}
