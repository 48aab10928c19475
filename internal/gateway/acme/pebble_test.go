package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
	"go.uber.org/goleak"
)

// Built once by TestMain.
var (
	pebbleBin  *pebbletest.Binary
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
	if pebbleBin, err = pebbletest.Build(tmp); err != nil {
		return 0, err
	}
	minicaPath = pebbleBin.MinicaPath()
	return -1, nil
}

func freePort(t *testing.T) int { return pebbletest.FreePort(t) }

type pebbleConfig struct {
	httpPort, tlsPort int
	validity          int // seconds; 0 = Pebble's 90 days
	env               []string
	dnsServer         string // Pebble's resolver; "" = one answering 127.0.0.1 for every name
}

type pebble struct {
	dirURL  string
	mgmtURL string
	root    *x509.CertPool // Pebble's issuing root, from the management interface
}

// startPebble runs Pebble with its validation ports pointed at the test's listeners.
func startPebble(t *testing.T, pc pebbleConfig) *pebble {
	t.Helper()
	p := pebbleBin.Start(t, pebbletest.Config{HTTPPort: pc.httpPort, TLSPort: pc.tlsPort, Validity: pc.validity, Env: pc.env, DNSServer: pc.dnsServer})
	return &pebble{dirURL: p.DirURL, mgmtURL: p.MgmtURL, root: p.Root}
}

// pebbleClient trusts Pebble's HTTPS certificate.
func pebbleClient(t *testing.T) *http.Client { return pebbleBin.Client(t) }

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
