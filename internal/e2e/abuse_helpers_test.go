package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// abH2 is a raw HTTP/2 client connection to the gateway: the test writes whatever frames it likes,
// and a reader goroutine (once started) records what the server answers.
type abH2 struct {
	conn *tls.Conn

	wmu    sync.Mutex // owns bw, fr's writing side and enc
	bw     *bufio.Writer
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer

	mu    sync.Mutex
	st    abH2State
	done  chan struct{}
	begun atomic.Bool
}

// abH2State is what the server has sent so far.
type abH2State struct {
	Status     map[uint32]string        // :status of response HEADERS per stream
	Rst        map[uint32]http2.ErrCode // RST_STREAM per stream
	GoAway     bool
	GoAwayCode http2.ErrCode
	PingAcks   int
	Settings   map[http2.SettingID]uint32
	Frames     int
	Closed     bool  // the read side ended
	Err        error // why it ended
}

// abH2Opts shape a raw HTTP/2 connection.
type abH2Opts struct {
	// NoRead leaves the server's frames unread until startReader is called.
	NoRead bool
	// RcvBuf, if set, is the socket's receive buffer: a small one makes the server's writes block
	// as soon as the test stops reading.
	RcvBuf int
	// Settings are sent in the client's first SETTINGS frame.
	Settings []http2.Setting
}

// abDialH2 opens a TLS connection for sni with ALPN h2, sends the preface and the client's SETTINGS,
// and starts reading unless o.NoRead. Everything on it ends within 45 s.
func abDialH2(t testing.TB, g *gateway, sni string, o abH2Opts) *abH2 {
	t.Helper()
	conf := g.tlsConfig()
	conf.ServerName = sni
	conf.NextProtos = []string{"h2"}
	d := abDialer(o.RcvBuf)
	conn, err := tls.DialWithDialer(d, "tcp", g.addr, conf)
	if err != nil {
		t.Fatalf("dial h2 for %s: %v", sni, err)
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	_ = conn.SetDeadline(time.Now().Add(45 * time.Second))
	h := &abH2{conn: conn, bw: bufio.NewWriterSize(conn, 64<<10), done: make(chan struct{})}
	h.fr = http2.NewFramer(h.bw, conn)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.enc = hpack.NewEncoder(&h.encBuf)
	h.st = abH2State{Status: map[uint32]string{}, Rst: map[uint32]http2.ErrCode{}, Settings: map[http2.SettingID]uint32{}}
	err = h.write(func(fr *http2.Framer) error {
		if _, err := h.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		return fr.WriteSettings(o.Settings...)
	})
	if err != nil {
		t.Fatalf("h2 preface: %v", err)
	}
	if !o.NoRead {
		h.startReader()
	}
	return h
}

// write runs fn with the framer under the write lock and flushes what it wrote.
// abDialer dials loopback with a 5 s timeout and, if rcvBuf > 0, that socket receive buffer: a small
// one keeps what the gateway sends on its side.
func abDialer(rcvBuf int) *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if rcvBuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	return d
}

func (h *abH2) write(fn func(fr *http2.Framer) error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := fn(h.fr); err != nil {
		return err
	}
	return h.bw.Flush()
}

// block HPACK-encodes name/value pairs; call it only inside write, so that the encoder's dynamic
// table follows the order of the frames on the wire.
func (h *abH2) block(kv ...string) []byte {
	h.encBuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = h.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(h.encBuf.Bytes())
}

// get is the header block of a GET of path on authority.
func (h *abH2) get(authority, path string) []byte {
	return h.block(":method", "GET", ":scheme", "https", ":authority", authority, ":path", path)
}

func (h *abH2) startReader() {
	if h.begun.Swap(true) {
		return
	}
	go h.readLoop()
}

func (h *abH2) readLoop() {
	defer close(h.done)
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.mu.Lock()
			h.st.Closed, h.st.Err = true, err
			h.mu.Unlock()
			return
		}
		var ackSettings bool
		h.mu.Lock()
		h.st.Frames++
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" {
				h.st.Status[f.StreamID] = s
			}
		case *http2.RSTStreamFrame:
			h.st.Rst[f.StreamID] = f.ErrCode
		case *http2.GoAwayFrame:
			h.st.GoAway, h.st.GoAwayCode = true, f.ErrCode
		case *http2.PingFrame:
			if f.IsAck() {
				h.st.PingAcks++
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error {
					h.st.Settings[s.ID] = s.Val
					return nil
				})
				ackSettings = true
			}
		}
		h.mu.Unlock()
		if ackSettings {
			_ = h.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
		}
	}
}

// state is a copy of what the reader has seen.
func (h *abH2) state() abH2State {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.st
	s.Status = make(map[uint32]string, len(h.st.Status))
	for k, v := range h.st.Status {
		s.Status[k] = v
	}
	s.Rst = make(map[uint32]http2.ErrCode, len(h.st.Rst))
	for k, v := range h.st.Rst {
		s.Rst[k] = v
	}
	s.Settings = make(map[http2.SettingID]uint32, len(h.st.Settings))
	for k, v := range h.st.Settings {
		s.Settings[k] = v
	}
	return s
}

// await polls the reader's state until cond holds or d passes; it reports whether cond held.
func (h *abH2) await(d time.Duration, cond func(abH2State) bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond(h.state()) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closedOrPing finds out whether the server still serves this connection: it sends a PING and
// waits up to d for its ACK or for the connection to end. It returns true if the connection ended.
func (h *abH2) closedOrPing(d time.Duration) bool {
	before := h.state().PingAcks
	if err := h.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'p', 'r', 'o', 'b', 'e'}) }); err != nil {
		h.await(d, func(s abH2State) bool { return s.Closed })
		return true
	}
	h.await(d, func(s abH2State) bool { return s.Closed || s.PingAcks > before })
	return h.state().Closed
}

// abH2Request sends one request (stream 1, no body) on a new connection for sni and waits up to
// 5 s for the answer: a :status, a RST_STREAM or the end of the connection.
func abH2Request(t testing.TB, g *gateway, sni string, kv ...string) abH2State {
	t.Helper()
	h := abDialH2(t, g, sni, abH2Opts{})
	err := h.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h.block(kv...), EndStream: true, EndHeaders: true})
	})
	if err != nil {
		t.Fatalf("write request: %v", err)
	}
	h.await(5*time.Second, func(s abH2State) bool { return s.Status[1] != "" || abStreamEnded(s, 1) })
	return h.state()
}

// abStreamEnded reports whether the server ended stream id without a response: RST_STREAM, or a
// GOAWAY whose connection is gone.
func abStreamEnded(s abH2State, id uint32) bool {
	_, rst := s.Rst[id]
	return rst || s.GoAway || s.Closed
}

// abVmRSS is the resident set size of process pid, in bytes.
func abVmRSS(t testing.TB, pid int) int64 {
	t.Helper()
	kib, err := hoptest.MemKiB(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	return kib << 10
}

// abPeakRSS samples the resident set size of pid every 20 ms until the returned func is called,
// which reports the highest value seen.
func abPeakRSS(t testing.TB, pid int) func() int64 {
	t.Helper()
	var peak atomic.Int64
	peak.Store(abVmRSS(t, pid))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			kib, err := hoptest.MemKiB(pid, "VmRSS")
			if err != nil {
				return
			}
			if kib<<10 > peak.Load() {
				peak.Store(kib << 10)
			}
		}
	}()
	var once sync.Once
	finish := func() int64 {
		once.Do(func() { close(stop); <-done })
		return peak.Load()
	}
	t.Cleanup(func() { finish() })
	return finish
}

// abBystander is another tenant whose small GETs are timed while an attack runs.
type abBystander struct {
	c   *http.Client
	url string
}

// abNewBystander registers other.example.test with a target that answers "pong" and connects it.
func abNewBystander(t testing.TB, g *gateway) *abBystander {
	t.Helper()
	const domain = "other.example.test"
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "pong") })
	g.startAgent(domain, g.register(domain), target.URL)
	b := &abBystander{c: g.httpClient(true), url: g.url(domain, "/ping")}
	// Warm the connection so that the handshake is not counted as the attack's cost.
	if _, err := tnLatencies(b.c, b.url, 5); err != nil {
		t.Fatalf("bystander before the attack: %v", err)
	}
	return b
}

// probe times rounds of 10 concurrent GETs until stop is called (at most 300 rounds), and returns
// what stop returns: every latency and the first failure.
func (b *abBystander) probe() (stop func() ([]time.Duration, error)) {
	quit := make(chan struct{})
	done := make(chan struct{})
	var ds []time.Duration
	var firstErr error
	go func() {
		defer close(done)
		for range 300 {
			select {
			case <-quit:
				return
			default:
			}
			got, err := tnLatencies(b.c, b.url, 10)
			ds = append(ds, got...)
			if err != nil && firstErr == nil {
				firstErr = err
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var once sync.Once
	return func() ([]time.Duration, error) {
		once.Do(func() { close(quit); <-done })
		return ds, firstErr
	}
}

// abCheckBystander fails the test if the bystander saw an error, or if its p99 reached a second in
// the gateway's own view (its access log) or two seconds as the test measured it. The test process
// runs under -race on a small machine beside the other parallel tests: its own view carries its own
// slowness, hence the wider bound there.
func abCheckBystander(t testing.TB, g *gateway, ds []time.Duration, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("another tenant failed during the attack: %v", err)
	}
	if len(ds) == 0 {
		t.Errorf("another tenant was not measured during the attack")
		return
	}
	p50, p99 := tnPercentile(ds, 0.5), tnPercentile(ds, 0.99)
	t.Logf("other tenant during the attack: %d GETs, p50 %s, p99 %s", len(ds), p50, p99)
	if p99 >= 2*time.Second {
		t.Errorf("other tenant's p99 %s during the attack, want < 2s (as measured by the test)", p99)
	}
	srv := abServerDurations(g, "other.example.test")
	if len(srv) == 0 {
		t.Errorf("no access log lines for the other tenant")
		return
	}
	sp99 := tnPercentile(srv, 0.99)
	t.Logf("other tenant in the gateway's access log: %d requests, p50 %s, p99 %s, max %s",
		len(srv), tnPercentile(srv, 0.5), sp99, tnPercentile(srv, 1))
	if sp99 >= time.Second {
		t.Errorf("other tenant's p99 %s in the gateway's access log, want < 1s", sp99)
	}
}

// abServerDurations are the durations the gateway's access log gives for requests to domain.
func abServerDurations(g *gateway, domain string) []time.Duration {
	var out []time.Duration
	for _, l := range lines(g.process, `"domain":"`+domain+`"`) {
		var e struct {
			Msg      string `json:"msg"`
			Duration int64  `json:"duration"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "request" {
			out = append(out, time.Duration(e.Duration))
		}
	}
	return out
}

// abAlive fails the test unless the gateway process runs and answers /healthz with 200.
func abAlive(t testing.TB, g *gateway) {
	t.Helper()
	if g.exited() {
		t.Fatalf("the gateway exited")
	}
	code, body := tnGet(t, g.forTest(t).httpClient(true), g.url("localhost", "/healthz"))
	if code != http.StatusOK {
		t.Fatalf("/healthz after the attack: %d %q", code, body)
	}
}

// abHit is one request a recording target received.
type abHit struct {
	Host, URI string
	Header    http.Header
}

// abRecorder is a tenant's target that records every request and answers with its own name.
type abRecorder struct {
	name string
	mu   sync.Mutex
	hits []abHit
}

func abNewRecorder(t testing.TB, name string) (*abRecorder, string) {
	t.Helper()
	rec := &abRecorder{name: name}
	s := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		rec.mu.Lock()
		rec.hits = append(rec.hits, abHit{Host: r.Host, URI: r.RequestURI, Header: r.Header.Clone()})
		rec.mu.Unlock()
		_, _ = io.WriteString(w, "target "+name)
	})
	return rec, s.URL
}

// with returns the requests whose URI contains s.
func (r *abRecorder) with(s string) []abHit {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []abHit
	for _, h := range r.hits {
		if strings.Contains(h.URI, s) {
			out = append(out, h)
		}
	}
	return out
}

// abRawH1 writes raw bytes on a TLS connection that negotiated http/1.1 for sni (no SNI at all if
// sni is empty, as a client connecting by IP address) and reads one response.
func abRawH1(t testing.TB, g *gateway, sni, raw string) (int, string, error) {
	t.Helper()
	conf := g.tlsConfig()
	conf.ServerName = sni
	if sni == "" {
		// Without a name there is nothing to verify the certificate against; the test is about routing.
		conf.InsecureSkipVerify = true
	}
	conf.NextProtos = []string{"http/1.1"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr, conf)
	if err != nil {
		t.Fatalf("dial http/1.1 for %q: %v", sni, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		return 0, "", fmt.Errorf("write: %w", err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", fmt.Errorf("read response: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return res.StatusCode, string(b), fmt.Errorf("read body: %w", err)
	}
	return res.StatusCode, string(b), nil
}
