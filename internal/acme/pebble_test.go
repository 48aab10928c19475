package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

// Built once by TestMain.
var (
	pebbleBin  string
	pebbleDir  string // module directory: test certificates
	minicaPath string // roots of Pebble's own HTTPS certificate
)

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "acme tests:", err)
		os.Exit(1)
	}
	if code >= 0 {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m,
		// lego's package-level logger and its directory caches keep nothing running; these are
		// the runtime's own and the test binary's signal handling.
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
	)
}

func setup() (int, error) {
	tmp, err := os.MkdirTemp("", "acme-pebble-")
	if err != nil {
		return 0, err
	}
	// Deleted at process exit by the OS temp cleaner if a test exits hard; normally by the caller.
	pebbleBin = filepath.Join(tmp, "pebble")
	out, err := exec.Command("go", "build", "-o", pebbleBin, "github.com/letsencrypt/pebble/v2/cmd/pebble").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("build pebble: %v\n%s", err, out)
	}
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
	if err != nil {
		return 0, fmt.Errorf("find pebble module: %w", err)
	}
	pebbleDir = strings.TrimSpace(string(dir))
	minicaPath = filepath.Join(pebbleDir, "test/certs/pebble.minica.pem")
	return -1, nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDNS answers A 127.0.0.1 for every name (and nothing for other types), for Pebble's VA.
func startDNS(t *testing.T) string {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		msg := new(dns.Msg)
		msg.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				msg.Answer = append(msg.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(msg)
	})
	// UDP and TCP on one port: the TCP twin of a free UDP port may be taken, so try a few.
	var (
		pc   net.PacketConn
		tl   net.Listener
		addr string
		err  error
	)
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		if tl, err = net.Listen("tcp", addr); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: handler}
	tcp := &dns.Server{Listener: tl, Handler: handler}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{udp, tcp} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.ActivateAndServe() }()
	}
	t.Cleanup(func() {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
		wg.Wait()
	})
	return addr
}

type pebbleConfig struct {
	httpPort, tlsPort int
	validity          int // seconds; 0 = Pebble's 90 days
	env               []string
}

type pebble struct {
	dirURL  string
	mgmtURL string
	root    *x509.CertPool // Pebble's issuing root, from the management interface
}

// startPebble runs Pebble with its validation ports pointed at the test's listeners. Its own ports
// come from freePort and may be taken by the time it binds them; then it is started again.
func startPebble(t *testing.T, pc pebbleConfig) *pebble {
	t.Helper()
	dnsAddr := startDNS(t)
	var lastErr error
	for range 3 {
		p, err := tryStartPebble(t, pc, dnsAddr)
		if err == nil {
			return p
		}
		lastErr = err
	}
	t.Fatal(lastErr)
	return nil
}

func tryStartPebble(t *testing.T, pc pebbleConfig, dnsAddr string) (*pebble, error) {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	mgmt := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	profile := map[string]any{"description": "test"}
	if pc.validity > 0 {
		profile["validityPeriod"] = pc.validity
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             filepath.Join(pebbleDir, "test/certs/localhost/cert.pem"),
		"privateKey":              filepath.Join(pebbleDir, "test/certs/localhost/key.pem"),
		"httpPort":                pc.httpPort,
		"tlsPort":                 pc.tlsPort,
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"profiles":                map[string]any{"default": profile},
	}}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(t.TempDir(), "pebble.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pebbleBin, "-config", cfgPath, "-dnsserver", dnsAddr)
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_VA_ALWAYS_VALID=0",
		"PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	cmd.Env = append(cmd.Env, pc.env...)
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("pebble output:\n%s", logs.String())
		}
	})
	p := &pebble{dirURL: "https://" + listen + "/dir", mgmtURL: "https://" + mgmt}
	client := pebbleClient(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(p.mgmtURL + "/roots/0")
		if err == nil {
			pemBytes, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.root = x509.NewCertPool()
				if !p.root.AppendCertsFromPEM(pemBytes) {
					stop()
					return nil, fmt.Errorf("pebble root: no PEM: %q", pemBytes)
				}
				break
			}
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("pebble exited at start:\n%s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("pebble did not start: %v\n%s", err, logs.String())
		}
	}
	resp, err := client.Get(p.dirURL)
	if err != nil {
		stop()
		return nil, fmt.Errorf("pebble directory: %w", err)
	}
	resp.Body.Close()
	return p, nil
}

// pebbleClient trusts Pebble's HTTPS certificate.
func pebbleClient(t *testing.T) *http.Client {
	t.Helper()
	pemBytes, err := os.ReadFile(minicaPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// countingTransport counts ACME requests by Pebble endpoint.
type countingTransport struct {
	base     http.RoundTripper
	orders   atomic.Int64 // POST /order-plz
	accounts atomic.Int64 // POST /sign-me-up
	all      atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.all.Add(1)
	if r.Method == http.MethodPost {
		switch r.URL.Path {
		case "/order-plz":
			c.orders.Add(1)
		case "/sign-me-up":
			c.accounts.Add(1)
		}
	}
	return c.base.RoundTrip(r)
}

// gateway is the test's stand-in for the server: the plain-HTTP listener with HTTPHandler and the
// HTTPS listener with GetCertificate, the ports Pebble validates against.
type gateway struct {
	httpAddr, tlsAddr string
	alpnHellos        atomic.Int64
	httpChallenges    atomic.Int64
	mu                sync.Mutex
	m                 *Manager
}

func (g *gateway) manager() *Manager {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.m
}

func (g *gateway) setManager(m *Manager) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m = m
}

func startGateway(t *testing.T) *gateway {
	t.Helper()
	g := &gateway{}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.httpAddr, g.tlsAddr = hl.Addr().String(), tl.Addr().String()
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			g.httpChallenges.Add(1)
		}
		g.manager().HTTPHandler(nil).ServeHTTP(w, r)
	})}
	tlsCfg := &tls.Config{
		NextProtos: []string{"http/1.1", ALPNProto},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			for _, p := range hello.SupportedProtos {
				if p == ALPNProto {
					g.alpnHellos.Add(1)
				}
			}
			return g.manager().GetCertificate(hello)
		},
	}
	httpsSrv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "hello "+r.Host)
		}),
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			ALPNProto: func(*http.Server, *tls.Conn, http.Handler) {},
		},
		ErrorLog: nil,
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = httpSrv.Serve(hl) }()
	go func() { defer wg.Done(); _ = httpsSrv.Serve(tls.NewListener(tl, tlsCfg)) }()
	t.Cleanup(func() {
		_ = httpSrv.Close()
		_ = httpsSrv.Close()
		wg.Wait()
	})
	return g
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	var n int
	fmt.Sscan(p, &n)
	return n
}

// newManager builds a Manager for Pebble with a counting transport.
func newManager(t *testing.T, p *pebble, cacheDir string, mod func(*Options)) (*Manager, *countingTransport) {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	ct := &countingTransport{base: base}
	// CARoots only reach an *http.Transport; the counting wrapper carries its own roots.
	pemBytes, err := os.ReadFile(minicaPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	base.TLSClientConfig = &tls.Config{RootCAs: pool}
	o := Options{
		CADir:      p.dirURL,
		Email:      "ops@example.test",
		CacheDir:   cacheDir,
		HTTPClient: &http.Client{Transport: ct, Timeout: 30 * time.Second},
		Logger:     testLogger(t),
	}
	if mod != nil {
		mod(&o)
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return m, ct
}

// run starts m.Run and stops it (waiting for it) at cleanup or when the returned func is called.
func run(t *testing.T, m *Manager) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitState(t *testing.T, m *Manager, name, state string, within time.Duration) CertStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := m.Status(name)
		if st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: state %q (last error %q), want %q", name, st.State, st.LastError, state)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// handshake connects to the gateway's TLS listener with SNI serverName and verifies the served
// chain against root for verifyName.
func handshake(t *testing.T, addr, serverName, verifyName string, root *x509.CertPool) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: serverName, RootCAs: root, NextProtos: []string{"http/1.1"},
		VerifyConnection: nil, InsecureSkipVerify: serverName != verifyName,
	})
	if err != nil {
		t.Fatalf("handshake %s: %v", serverName, err)
	}
	defer conn.Close()
	state := conn.ConnectionState()
	leaf := state.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range state.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: verifyName, Roots: root, Intermediates: inter}); err != nil {
		t.Fatalf("handshake %s: certificate does not verify for %s: %v", serverName, verifyName, err)
	}
	return leaf
}
