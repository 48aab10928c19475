package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/testutil/poll"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// TestResolveEntries: a name stands for each distinct address it resolves to (A and AAAA alike,
// on the entry's port); a literal IP is not looked up; a failed or empty lookup is an error and no
// address.
func TestResolveEntries(t *testing.T) {
	var asked []string
	resolve := func(_ context.Context, host string) ([]string, error) {
		asked = append(asked, host)
		switch host {
		case "gw.test":
			return []string{"192.0.2.1", "2001:db8::1", "192.0.2.1", "192.0.2.2"}, nil
		case "empty.test":
			return nil, nil
		}
		return nil, errors.New("no such host")
	}
	entries := []string{"gw.test:8443", "192.0.2.9:443", "[2001:db8::9]:443", "gone.test:443", "empty.test:443"}
	got := resolveEntries(context.Background(), entries, resolve)
	if len(got) != len(entries) {
		t.Fatalf("%d results for %d entries", len(got), len(entries))
	}
	want := [][]string{
		{"192.0.2.1:8443", "[2001:db8::1]:8443", "192.0.2.2:8443"},
		{"192.0.2.9:443"},
		{"[2001:db8::9]:443"},
		nil,
		nil,
	}
	for i, r := range got {
		if r.entry != entries[i] || !slices.Equal(r.addrs, want[i]) {
			t.Errorf("entry %s: %s stands for %v, want %v", entries[i], r.entry, r.addrs, want[i])
		}
		if failed := i >= 3; (r.err != nil) != failed {
			t.Errorf("entry %s: err %v", r.entry, r.err)
		}
	}
	if !slices.Equal(asked, []string{"gw.test", "gone.test", "empty.test"}) {
		t.Errorf("looked up %v; literal addresses must not be", asked)
	}
	if hasNames([]string{"192.0.2.9:443", "[2001:db8::9]:443"}) || !hasNames([]string{"192.0.2.9:443", "gw.test:443"}) {
		t.Error("hasNames: only an entry with a name is resolved again")
	}
}

// TestPickGateways: the cap of --ha-connections, taken in turns across entries; an address named
// twice held once; held addresses kept while their entry still stands for them; an entry whose
// lookup failed keeping what it had.
func TestPickGateways(t *testing.T) {
	ok := func(entry string, addrs ...string) entryAddrs { return entryAddrs{entry: entry, addrs: addrs} }
	failed := entryAddrs{entry: "f:1", err: errors.New("lookup failed")}
	for _, tc := range []struct {
		name     string
		resolved []entryAddrs
		current  map[string]string
		max      int
		want     []string // addr<entry
		dropped  int
	}{
		{"every entry before a second from any", []entryAddrs{ok("a:1", "a1", "a2", "a3"), ok("b:1", "b1"), ok("c:1", "c1", "c2")}, nil, 4,
			[]string{"a1<a:1", "b1<b:1", "c1<c:1", "a2<a:1"}, 2},
		{"under the cap, all", []entryAddrs{ok("a:1", "a1", "a2"), ok("b:1", "b1")}, nil, 4,
			[]string{"a1<a:1", "b1<b:1", "a2<a:1"}, 0},
		{"duplicate across entries held once", []entryAddrs{ok("a:1", "x", "y"), ok("b:1", "x")}, nil, 4,
			[]string{"x<a:1", "y<a:1"}, 0},
		{"held address kept whatever the order", []entryAddrs{ok("a:1", "a1", "a2", "a3")}, map[string]string{"a3": "a:1"}, 1,
			[]string{"a3<a:1"}, 2},
		{"vanished address let go", []entryAddrs{ok("a:1", "a2")}, map[string]string{"a1": "a:1"}, 4,
			[]string{"a2<a:1"}, 0},
		{"failed lookup keeps its addresses", []entryAddrs{failed, ok("b:1", "b1")}, map[string]string{"f2": "f:1", "f1": "f:1", "b1": "b:1"}, 4,
			[]string{"f1<f:1", "f2<f:1", "b1<b:1"}, 0},
		{"failed lookup with nothing held dials the entry", []entryAddrs{failed}, nil, 4,
			[]string{"f:1<f:1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			picked, dropped := pickGateways(tc.resolved, tc.current, tc.max)
			var got []string
			for _, p := range picked {
				got = append(got, p.addr+"<"+p.entry)
			}
			if !slices.Equal(got, tc.want) || dropped != tc.dropped {
				t.Errorf("picked %v, dropped %d; want %v, %d", got, dropped, tc.want, tc.dropped)
			}
		})
	}
}

// resGateway is a gateway at one address: TLS with a certificate for the test names only (no IP
// address), one accepted tunnel per hello, and a record of who came.
type resGateway struct {
	tunnelv1.UnimplementedTunnelServiceServer
	addr string
	srv  *grpc.Server

	mu     sync.Mutex
	names  []string // the TLS server name of each handshake
	hellos []string // agent id and domain of each tunnel
	live   int      // tunnels open now
}

func (g *resGateway) OpenTunnel(st tunnelv1.TunnelService_OpenTunnelServer) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	h := first.GetHello()
	g.mu.Lock()
	g.hellos = append(g.hellos, h.GetAgentId()+" "+h.GetDomain())
	g.live++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.live--
		g.mu.Unlock()
	}()
	if err := st.Send(&tunnelv1.TunnelFrame{Kind: &tunnelv1.TunnelFrame_Accepted{Accepted: &tunnelv1.Accepted{
		SessionId: "s-" + g.addr, InitialWindow: tunnel.DefaultInitialWindow,
	}}}); err != nil {
		return err
	}
	sess := tunnel.NewSession(tunnel.WrapGRPC(st), tunnel.Config{LocalWindow: tunnel.DefaultInitialWindow, PeerWindow: h.GetInitialWindow()})
	_ = sess.Run(st.Context())
	return nil
}

type resState struct {
	names, hellos []string
	live          int
}

func (g *resGateway) state() resState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return resState{names: slices.Clone(g.names), hellos: slices.Clone(g.hellos), live: g.live}
}

// resGateways serves a gateway on each of 127.0.0.1, 127.0.0.2, 127.0.0.3 and ::1, all on one port
// (a name's addresses share the entry's port), until the test ends. It returns them by IP, the
// port, and the CA file that trusts their certificate.
func resGateways(t *testing.T) (map[string]*resGateway, string, string) {
	t.Helper()
	certPEM, keyPEM := resCert(t, "gw.test", "a.test")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"}
	var lns []net.Listener
	var port string
	for attempt := 0; ; attempt++ {
		lns, port = nil, "0"
		var err error
		for _, ip := range ips {
			var ln net.Listener
			if ln, err = net.Listen("tcp", net.JoinHostPort(ip, port)); err != nil {
				break
			}
			lns = append(lns, ln)
			_, port, _ = net.SplitHostPort(ln.Addr().String())
		}
		if err == nil {
			break
		}
		for _, ln := range lns {
			_ = ln.Close()
		}
		if attempt == 20 {
			t.Fatalf("no port free on every loopback address: %v", err)
		}
	}
	gws := map[string]*resGateway{}
	var wg sync.WaitGroup
	for i, ip := range ips {
		g := &resGateway{addr: net.JoinHostPort(ip, port)}
		conf := &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			g.mu.Lock()
			g.names = append(g.names, hello.ServerName)
			g.mu.Unlock()
			return &cert, nil
		}}
		g.srv = grpc.NewServer(append(tunnel.ServerOptions(), grpc.Creds(credentials.NewTLS(conf)))...)
		tunnelv1.RegisterTunnelServiceServer(g.srv, g)
		wg.Add(1)
		go func() { defer wg.Done(); _ = g.srv.Serve(lns[i]) }()
		gws[ip] = g
	}
	t.Cleanup(func() {
		for _, g := range gws {
			g.srv.Stop()
		}
		wg.Wait()
	})
	return gws, port, caFile
}

// resCert makes a self-signed certificate for names, which is also its CA. Not devcert's: that one
// always covers the loopback addresses, and this certificate must not, so that a gateway entry
// given as an IP verifies only under the TLS server name.
func resCert(t *testing.T, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: names[0]},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// resLog is a log sink read while the agent writes it.
type resLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *resLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *resLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// resolver is a DNS the test changes while the agent runs.
type resolver struct {
	mu    sync.Mutex
	hosts map[string][]string
	err   error
	calls int
}

func (r *resolver) set(hosts map[string][]string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hosts, r.err = hosts, err
}

func (r *resolver) lookups() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func (r *resolver) lookup(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.err != nil {
		return nil, r.err
	}
	addrs, ok := r.hosts[host]
	if !ok {
		return nil, fmt.Errorf("lookup %s: no such host", host)
	}
	return slices.Clone(addrs), nil
}

// runResAgent runs an agent for app.test with args and the test's DNS until the test ends.
func runResAgent(t *testing.T, caFile string, r *resolver, every time.Duration, args ...string) *resLog {
	t.Helper()
	args = append(args, "--domain", "app.test", "--api-key", "k", "--local-target", "127.0.0.1:1",
		"--ca-file", caFile, "--agent-id", "hc-agent")
	cfg, err := config.LoadClient(args, func(string) (string, bool) { return "", false }, "")
	if err != nil {
		t.Fatal(err)
	}
	logs := &resLog{}
	a, err := New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.resolve, a.resolveEvery = r.lookup, every
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the agent did not stop")
		}
		a.Close()
	})
	return logs
}

// wantTunnels waits until exactly the gateways at up hold one tunnel of app.test each and the
// others hold none; each handshake named serverName, and the agent id names the address when the
// agent holds several.
func wantTunnels(t *testing.T, gws map[string]*resGateway, serverName string, up ...string) {
	t.Helper()
	poll.Until(t, 10*time.Second, "tunnels on "+strings.Join(up, ", "), func() bool {
		for ip, g := range gws {
			n := 0
			if slices.Contains(up, ip) {
				n = 1
			}
			if g.state().live != n {
				return false
			}
		}
		return true
	})
	for _, ip := range up {
		s := gws[ip].state()
		if len(s.names) == 0 {
			t.Errorf("%s: no TLS handshake recorded", gws[ip].addr)
		}
		for _, n := range s.names {
			if n != serverName {
				t.Errorf("%s: handshake asked for %q, want every gateway verified under %q", gws[ip].addr, n, serverName)
			}
		}
		id := "hc-agent"
		if len(up) > 1 {
			id += "@" + gws[ip].addr
		}
		if last := s.hellos[len(s.hellos)-1]; last != id+" app.test" {
			t.Errorf("%s: hello %q, want %q", gws[ip].addr, last, id+" app.test")
		}
	}
}

// TestAgentTunnelPerAddress: a name resolving to several A and AAAA records (one twice) is one
// gateway per distinct address, each verified under the name, whatever IP it is dialled on.
func TestAgentTunnelPerAddress(t *testing.T) {
	gws, port, caFile := resGateways(t)
	r := &resolver{hosts: map[string][]string{"gw.test": {"127.0.0.1", "::1", "127.0.0.2", "127.0.0.1"}}}
	runResAgent(t, caFile, r, time.Hour, "--server-addr", "gw.test:"+port)
	wantTunnels(t, gws, "gw.test", "127.0.0.1", "127.0.0.2", "::1")
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "::1"} {
		if n := len(gws[ip].state().hellos); n != 1 {
			t.Errorf("%s: %d tunnels opened, want 1 (an address listed twice is one gateway)", ip, n)
		}
	}
}

// TestAgentHAConnectionsCap: a comma list of a name (three addresses) and a literal IP, capped at
// two by --ha-connections: each entry gets one gateway (not the name's first two), the literal
// IP is verified under the first entry's host name, and the address left out is logged.
func TestAgentHAConnectionsCap(t *testing.T) {
	gws, port, caFile := resGateways(t)
	r := &resolver{hosts: map[string][]string{"a.test": {"127.0.0.1", "127.0.0.2", "127.0.0.3"}}}
	logs := runResAgent(t, caFile, r, time.Hour, "--server-addr", "a.test:"+port+",127.0.0.3:"+port, "--ha-connections", "2")
	wantTunnels(t, gws, "a.test", "127.0.0.1", "127.0.0.3")
	if !strings.Contains(logs.String(), "more gateway addresses than --ha-connections") || !strings.Contains(logs.String(), "left_out=1") {
		t.Errorf("no warning naming the address left out:\n%s", logs)
	}
}

// TestAgentFollowsDNS: resolving again gives a new address its tunnel and drains the one that left
// DNS, without touching the one that stayed; a failed lookup then changes nothing.
func TestAgentFollowsDNS(t *testing.T) {
	gws, port, caFile := resGateways(t)
	r := &resolver{hosts: map[string][]string{"gw.test": {"127.0.0.1", "127.0.0.2"}}}
	logs := runResAgent(t, caFile, r, 20*time.Millisecond, "--server-addr", "gw.test:"+port)
	wantTunnels(t, gws, "gw.test", "127.0.0.1", "127.0.0.2")

	r.set(map[string][]string{"gw.test": {"127.0.0.3", "127.0.0.2"}}, nil)
	wantTunnels(t, gws, "gw.test", "127.0.0.2", "127.0.0.3")
	if n := len(gws["127.0.0.2"].state().hellos); n != 1 {
		t.Errorf("the address that stayed opened %d tunnels, want 1 (kept, not reconnected)", n)
	}
	if !strings.Contains(logs.String(), "gateway address gone; draining its tunnels") {
		t.Errorf("no line for the address gone:\n%s", logs)
	}

	r.set(nil, errors.New("SERVFAIL"))
	from := r.lookups()
	poll.Until(t, 10*time.Second, "three failed lookups", func() bool { return r.lookups() >= from+3 })
	wantTunnels(t, gws, "gw.test", "127.0.0.2", "127.0.0.3")
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		if n := len(gws[ip].state().hellos); n != 1 {
			t.Errorf("%s: %d tunnels opened across a failed lookup, want 1", ip, n)
		}
	}
	if !strings.Contains(logs.String(), "cannot resolve the gateway's name; keeping its addresses") {
		t.Errorf("no line for the failed lookup:\n%s", logs)
	}
}
