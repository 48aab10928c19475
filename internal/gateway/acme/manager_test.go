package acme

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestIssuance orders certificates for the gateway's name and a registered domain with one
// challenge reachable, then checks the served chains against Pebble's root.
func TestIssuance(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		challenge string // the only one Pebble can reach
	}{
		{"http-01 only", "http-01"},
		{"tls-alpn-01 only", "tls-alpn-01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t)
			dead := freePort(t) // nothing listens there
			pc := pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr)}
			if tc.challenge == "http-01" {
				pc.tlsPort = dead
			} else {
				pc.httpPort = dead
			}
			p := startPebble(t, pc)
			var expiries sync.Map
			m, ct := newManager(t, p, t.TempDir(), func(o *Options) {
				o.OnExpiry = func(name string, notAfter time.Time) { expiries.Store(name, notAfter) }
			})
			g.setManager(m)
			m.SetDefault("gw.example.test")
			m.Manage(context.Background(), "gw.example.test", "app.example.test")
			start := time.Now()
			run(t, m)

			for _, name := range []string{"gw.example.test", "app.example.test"} {
				st := waitState(t, m, name, StateValid, 45*time.Second)
				if st.LastError != "" || st.NotAfter.IsZero() {
					t.Errorf("%s: status %+v", name, st)
				}
				leaf := handshake(t, g.tlsAddr, name, name, p.root)
				if !leaf.NotAfter.Equal(st.NotAfter) {
					t.Errorf("%s: served NotAfter %v, status %v", name, leaf.NotAfter, st.NotAfter)
				}
				if v, ok := expiries.Load(name); !ok || !v.(time.Time).Equal(st.NotAfter) {
					t.Errorf("%s: OnExpiry got %v, want %v", name, v, st.NotAfter)
				}
			}
			t.Logf("two certificates in %v, %d orders", time.Since(start), ct.orders.Load())
			// An unknown SNI gets the gateway's certificate and orders nothing.
			before := ct.orders.Load()
			handshake(t, g.tlsAddr, "unknown.example.test", "gw.example.test", p.root)
			if m.Status("unknown.example.test").State != StateNone {
				t.Error("unknown name got managed")
			}
			switch tc.challenge {
			case "http-01":
				if g.httpChallenges.Load() == 0 {
					t.Error("no HTTP-01 validation reached the HTTP listener")
				}
				// lego tries TLS-ALPN-01 first; it fails and the retry offers HTTP-01 alone.
				if n := ct.orders.Load(); n != 4 {
					t.Errorf("orders = %d, want 4 (TLS-ALPN-01 failed, HTTP-01 succeeded, for 2 names)", n)
				}
			case "tls-alpn-01":
				if g.alpnHellos.Load() == 0 {
					t.Error("no TLS-ALPN-01 validation reached the TLS listener")
				}
				if n := ct.orders.Load(); n != 2 {
					t.Errorf("orders = %d, want 2", n)
				}
			}
			time.Sleep(100 * time.Millisecond)
			if ct.orders.Load() != before {
				t.Error("orders after issuance")
			}
		})
	}
}

// TestExpectIPsGate: a name that resolves elsewhere is neither ordered nor served.
func TestExpectIPsGate(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	p := startPebble(t, pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr)})
	m, ct := newManager(t, p, t.TempDir(), func(o *Options) {
		o.ExpectIPs = []net.IP{net.ParseIP("127.0.0.1")}
		o.Resolver = func(_ context.Context, host string) ([]net.IP, error) {
			switch host {
			case "here.example.test":
				return []net.IP{net.ParseIP("::1"), net.ParseIP("127.0.0.1")}, nil
			case "elsewhere.example.test":
				return []net.IP{net.ParseIP("192.0.2.7")}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
	})
	g.setManager(m)
	m.SetDefault("here.example.test")
	m.Manage(context.Background(), "here.example.test", "elsewhere.example.test", "nxdomain.example.test")
	run(t, m)
	waitState(t, m, "here.example.test", StateValid, 45*time.Second)
	for _, name := range []string{"elsewhere.example.test", "nxdomain.example.test"} {
		st := waitState(t, m, name, StatePending, 5*time.Second)
		if st.LastError == "" {
			t.Errorf("%s: pending without last_error", name)
		}
		t.Logf("%s: %+v", name, st)
		// Served the default certificate, not one of its own.
		handshake(t, g.tlsAddr, name, "here.example.test", p.root)
	}
	if n := ct.orders.Load(); n != 1 {
		t.Errorf("orders = %d, want 1 (only the name that resolves here)", n)
	}
}

// TestRestartReusesStorage: a new Manager on the same CacheDir serves the stored certificate and
// neither orders nor registers again.
func TestRestartReusesStorage(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	p := startPebble(t, pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr)})
	cache := t.TempDir()
	m1, ct1 := newManager(t, p, cache, nil)
	g.setManager(m1)
	m1.Manage(context.Background(), "restart.example.test")
	stop := run(t, m1)
	st1 := waitState(t, m1, "restart.example.test", StateValid, 45*time.Second)
	first := handshake(t, g.tlsAddr, "restart.example.test", "restart.example.test", p.root)
	stop()
	if ct1.accounts.Load() != 1 || ct1.orders.Load() != 1 {
		t.Fatalf("first manager: %d accounts, %d orders", ct1.accounts.Load(), ct1.orders.Load())
	}

	// Layout and modes as documented.
	for _, rel := range []string{
		"accounts/127.0.0.1_" + strings.Split(p.dirURL, ":")[2][:strings.Index(strings.Split(p.dirURL, ":")[2], "/")] + "/ops@example.test/key.pem",
		"accounts/127.0.0.1_" + strings.Split(p.dirURL, ":")[2][:strings.Index(strings.Split(p.dirURL, ":")[2], "/")] + "/ops@example.test/account.json",
		"certificates/restart.example.test.crt",
		"certificates/restart.example.test.key",
	} {
		fi, err := os.Stat(filepath.Join(cache, rel))
		if err != nil {
			t.Errorf("layout: %v", err)
			continue
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", rel, fi.Mode().Perm())
		}
	}

	m2, ct2 := newManager(t, p, cache, nil)
	g.setManager(m2)
	m2.Manage(context.Background(), "restart.example.test")
	if st := m2.Status("restart.example.test"); st.State != StateValid || !st.NotAfter.Equal(st1.NotAfter) {
		t.Fatalf("after restart: %+v, want valid until %v", st, st1.NotAfter)
	}
	second := handshake(t, g.tlsAddr, "restart.example.test", "restart.example.test", p.root)
	if !second.Equal(first) {
		t.Error("restarted manager serves another certificate")
	}
	run(t, m2)
	// The start-up look (name gate, renewal information) happens; an order would follow it at once.
	deadline := time.Now().Add(3 * time.Second)
	for ct2.all.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if ct2.orders.Load() != 0 || ct2.accounts.Load() != 0 {
		t.Errorf("restarted manager: %d orders, %d new accounts; want none", ct2.orders.Load(), ct2.accounts.Load())
	}
}

// TestRenewal: a short-lived certificate is renewed without a restart; a connection opened before
// keeps working and new handshakes get the new certificate.
func TestRenewal(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	p := startPebble(t, pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr), validity: 9})
	m, ct := newManager(t, p, t.TempDir(), func(o *Options) { o.RenewCheckInterval = time.Second })
	g.setManager(m)
	const name = "renew.example.test"
	m.Manage(context.Background(), name)
	run(t, m)
	st := waitState(t, m, name, StateValid, 45*time.Second)
	old := handshake(t, g.tlsAddr, name, name, p.root)

	// A keep-alive connection made with the old certificate.
	conn, err := tls.Dial("tcp", g.tlsAddr, &tls.Config{ServerName: name, RootCAs: p.root, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func() {
		t.Helper()
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", name)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request on the old connection: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get()

	deadline := time.Now().Add(30 * time.Second)
	for m.Status(name).NotAfter.Equal(st.NotAfter) {
		if time.Now().After(deadline) {
			t.Fatalf("not renewed: %+v", m.Status(name))
		}
		time.Sleep(50 * time.Millisecond)
	}
	renewed := handshake(t, g.tlsAddr, name, name, p.root)
	if renewed.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Error("new handshake still gets the old certificate")
	}
	get()
	if conn.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(old.SerialNumber) != 0 {
		t.Error("old connection changed certificate")
	}
	t.Logf("renewed after %d orders", ct.orders.Load())
}

// TestNonceRejects: a CA that rejects many nonces still issues (lego retries badNonce itself).
func TestNonceRejects(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	p := startPebble(t, pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr), env: []string{"PEBBLE_WFE_NONCEREJECT=40"}})
	m, _ := newManager(t, p, t.TempDir(), nil)
	g.setManager(m)
	m.Manage(context.Background(), "nonce.example.test")
	run(t, m)
	waitState(t, m, "nonce.example.test", StateValid, 60*time.Second)
	handshake(t, g.tlsAddr, "nonce.example.test", "nonce.example.test", p.root)
}

// TestRenewalInformation: when the CA's renewal information (ARI) says "now", a certificate far from
// its last third is renewed.
func TestRenewalInformation(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	p := startPebble(t, pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr)})
	m, ct := newManager(t, p, t.TempDir(), func(o *Options) { o.RenewCheckInterval = 300 * time.Millisecond })
	g.setManager(m)
	const name = "ari.example.test"
	m.Manage(context.Background(), name)
	run(t, m)
	st := waitState(t, m, name, StateValid, 45*time.Second)
	leaf := handshake(t, g.tlsAddr, name, name, p.root)

	start := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	end := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	body, _ := json.Marshal(map[string]string{
		"Certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})),
		"ARIResponse": fmt.Sprintf(`{"suggestedWindow":{"start":%q,"end":%q}}`, start, end),
	})
	resp, err := pebbleClient(t).Post(p.mgmtURL+"/set-renewal-info/", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("set-renewal-info: %s", resp.Status)
	}
	deadline := time.Now().Add(30 * time.Second)
	for m.Status(name).NotAfter.Equal(st.NotAfter) {
		if time.Now().After(deadline) {
			t.Fatalf("not renewed on ARI advice: %+v", m.Status(name))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if renewed := handshake(t, g.tlsAddr, name, name, p.root); renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("still serving the old certificate")
	}
	if n := ct.orders.Load(); n < 2 {
		t.Errorf("orders = %d", n)
	}
}
