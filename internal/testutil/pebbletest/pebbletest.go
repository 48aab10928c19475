// Package pebbletest runs the Pebble ACME test server (a pinned Go tool dependency) and a DNS server
// that answers 127.0.0.1 for every name, on loopback, for tests of certificate issuance.
package pebbletest

import (
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
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Binary is a built Pebble and the module directory holding its test certificates.
type Binary struct {
	Path string
	// ModuleDir holds test/certs: Pebble's own HTTPS certificate and the minica root that signs it.
	ModuleDir string
}

// Build compiles Pebble into dir (once per test binary, from TestMain).
func Build(dir string) (*Binary, error) {
	bin := filepath.Join(dir, "pebble")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/letsencrypt/pebble/v2/cmd/pebble").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("build pebble: %v\n%s", err, out)
	}
	mod, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
	if err != nil {
		return nil, fmt.Errorf("find pebble module: %w", err)
	}
	return &Binary{Path: bin, ModuleDir: strings.TrimSpace(string(mod))}, nil
}

// MinicaPath is the PEM root that Pebble's own HTTPS certificate chains to (HOP_ACME_CA_ROOTS).
func (b *Binary) MinicaPath() string {
	return filepath.Join(b.ModuleDir, "test/certs/pebble.minica.pem")
}

// Config points Pebble's validation at the ports under test.
type Config struct {
	HTTPPort, TLSPort int
	// Validity of issued certificates in seconds; 0 keeps Pebble's default.
	Validity int
	Env      []string
	// DNSServer, if set, is the DNS server Pebble resolves through (e.g. a ChallTestSrv's DNSAddr,
	// for DNS-01); by default one that answers 127.0.0.1 for every name is started.
	DNSServer string
}

// Pebble is a running server.
type Pebble struct {
	DirURL  string
	MgmtURL string
	// Root is Pebble's issuing root, from its management interface.
	Root *x509.CertPool
	// RootPEM is the same root as PEM.
	RootPEM []byte
	Client  *http.Client

	// logs is Pebble's output, kept for Orders and shown when the test fails.
	logs *lockedBuffer
}

// orderLogLine is what Pebble logs for each order it creates (wfe.go, NewOrder).
const orderLogLine = "Added order "

// Orders is how many orders Pebble has created so far, for every account and name: the count a
// cluster of gateways sharing one order per name must keep at one.
func (p *Pebble) Orders() int {
	return strings.Count(p.logs.String(), orderLogLine)
}

// Logs is Pebble's output so far, for assertions on what it did (replacement orders, say).
func (p *Pebble) Logs() string { return p.logs.String() }

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartDNS answers A 127.0.0.1 for every name (nothing for other types), on UDP and TCP.
func StartDNS(t testing.TB) string {
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

// Start runs Pebble with its validation ports pointed at the ports under test. Its own ports come
// from FreePort and may be taken by the time it binds them; then it is started again.
func (b *Binary) Start(t testing.TB, c Config) *Pebble {
	t.Helper()
	dnsAddr := c.DNSServer
	if dnsAddr == "" {
		dnsAddr = StartDNS(t)
	}
	var lastErr error
	for range 3 {
		p, err := b.tryStart(t, c, dnsAddr)
		if err == nil {
			return p
		}
		lastErr = err
	}
	t.Fatal(lastErr)
	return nil
}

func (b *Binary) tryStart(t testing.TB, c Config, dnsAddr string) (*Pebble, error) {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	mgmt := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	profile := map[string]any{"description": "test"}
	if c.Validity > 0 {
		profile["validityPeriod"] = c.Validity
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             filepath.Join(b.ModuleDir, "test/certs/localhost/cert.pem"),
		"privateKey":              filepath.Join(b.ModuleDir, "test/certs/localhost/key.pem"),
		"httpPort":                c.HTTPPort,
		"tlsPort":                 c.TLSPort,
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"profiles":                map[string]any{"default": profile},
	}}
	raw, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(t.TempDir(), "pebble.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(b.Path, "-config", cfgPath, "-dnsserver", dnsAddr)
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_VA_ALWAYS_VALID=0",
		"PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	cmd.Env = append(cmd.Env, c.Env...)
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
	p := &Pebble{DirURL: "https://" + listen + "/dir", MgmtURL: "https://" + mgmt, Client: b.Client(t), logs: logs}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := p.Client.Get(p.MgmtURL + "/roots/0")
		if err == nil {
			pemBytes, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.Root = x509.NewCertPool()
				if !p.Root.AppendCertsFromPEM(pemBytes) {
					stop()
					return nil, fmt.Errorf("pebble root: no PEM: %q", pemBytes)
				}
				p.RootPEM = pemBytes
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
	resp, err := p.Client.Get(p.DirURL)
	if err != nil {
		stop()
		return nil, fmt.Errorf("pebble directory: %w", err)
	}
	resp.Body.Close()
	return p, nil
}

// Client trusts Pebble's HTTPS certificate (its directory and management interface).
func (b *Binary) Client(t testing.TB) *http.Client {
	t.Helper()
	pemBytes, err := os.ReadFile(b.MinicaPath())
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
