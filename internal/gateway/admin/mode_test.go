package admin_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/rawedge"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// storeRoutes is the raw edge's view of a real store, as the gateway's adapter gives it.
type storeRoutes struct{ s *registry.Store }

func (r storeRoutes) RawRoutes(ctx context.Context) ([]rawedge.Route, error) {
	ds, err := r.s.RawDomains(ctx)
	if err != nil {
		return nil, err
	}
	var out []rawedge.Route
	for _, d := range ds {
		mode := tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH
		if d.Mode.Mode == registry.ModeTCP {
			mode = tunnelv1.StreamMode_STREAM_MODE_TCP
		}
		out = append(out, rawedge.Route{Domain: d.Name, Mode: mode, Port: d.TCPPort, ProxyProtocol: uint32(d.ProxyProtocol)})
	}
	return out, nil
}

type noRawAgents struct{}

func (noRawAgents) Pick(string) rawedge.Agent { return nil }
func (noRawAgents) Release(rawedge.Agent)     {}

// freeRange finds n consecutive free loopback ports (best effort: another process may take one
// afterwards, which the test would then see as a 409).
func freeRange(t *testing.T, n int) config.PortRange {
	t.Helper()
	low, high, err := hoptest.FreePortRange(n)
	if err != nil {
		t.Fatal(err)
	}
	return config.PortRange{Low: low, High: high}
}

// TestModes drives register and domains/mode against a real raw edge: ports are bound before they
// are stored, handed out lowest first, refused clearly when the range is spent or a port is held by
// another process, and released on unregister and on leaving tcp mode.
func TestModes(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ports := freeRange(t, 2)
		var edge *rawedge.Edge
		e := newEnv(t, b, adminKey, admin.WithPorts(portsOf(func() *rawedge.Edge { return edge })))
		edge = rawedge.New(rawedge.Options{Source: storeRoutes{e.store}, Agents: noRawAgents{}, ListenHost: "127.0.0.1",
			Ports: ports, Refresh: time.Hour})
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = edge.Shutdown(ctx)
		})
		dial := func(port int) error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}

		r := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"ssh.example.com","mode":"tcp"}`))
		if r.code != http.StatusCreated || r.body["mode"] != "tcp" || r.body["tcp_port"] != float64(ports.Low) {
			t.Fatalf("register tcp: %d %s", r.code, r.raw)
		}
		if err := dial(ports.Low); err != nil {
			t.Fatalf("the assigned port is not listening: %v", err)
		}
		// The last free port is held by another process: "any port" finds none, asking for it names it.
		other, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports.High))
		if err != nil {
			t.Fatal(err)
		}
		r = e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"db.example.com","mode":"tcp"}`))
		if r.code != http.StatusConflict || !strings.Contains(r.raw, "no free port") {
			t.Fatalf("register with the range spent: %d %s", r.code, r.raw)
		}
		r = e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(fmt.Sprintf(`{"domain":"db.example.com","mode":"tcp","tcp_port":%d}`, ports.High)))
		if r.code != http.StatusConflict || !strings.Contains(r.raw, fmt.Sprint(ports.High)) || !strings.Contains(r.raw, "another process") {
			t.Fatalf("register on a port another process holds: %d %s", r.code, r.raw)
		}
		r = e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(fmt.Sprintf(`{"domain":"db.example.com","mode":"tcp","tcp_port":%d}`, ports.Low)))
		if r.code != http.StatusConflict {
			t.Fatalf("register on another domain's port: %d %s", r.code, r.raw)
		}
		if _, err := e.store.Get(context.Background(), "db.example.com"); err == nil {
			t.Fatal("a refused registration was stored")
		}
		other.Close()
		r = e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(fmt.Sprintf(`{"domain":"db.example.com","mode":"tcp","tcp_port":%d}`, ports.High+1)))
		if r.code != http.StatusBadRequest || !strings.Contains(r.raw, "HOP_SERVER_TCP_PORTS") {
			t.Fatalf("register outside the range: %d %s", r.code, r.raw)
		}

		// Switch modes: to passthrough (the port is released at once), back to tcp on the other port.
		r = e.do(http.MethodPost, "/api/v1/admin/domains/mode", "", jsonBody(`{"domain":"ssh.example.com","mode":"tls-passthrough","proxy_protocol":"v2"}`))
		if r.code != http.StatusOK || r.body["mode"] != "tls-passthrough" || r.body["proxy_protocol"] != "v2" || r.body["tcp_port"] != nil {
			t.Fatalf("mode passthrough: %d %s", r.code, r.raw)
		}
		if err := dial(ports.Low); err == nil {
			t.Fatal("the port of a domain that left tcp mode still listens")
		}
		if !edge.Claims("ssh.example.com") {
			t.Fatal("the raw edge does not serve the passthrough name after the change")
		}
		r = e.do(http.MethodPost, "/api/v1/admin/domains/mode", "", jsonBody(fmt.Sprintf(`{"domain":"ssh.example.com","mode":"tcp","tcp_port":%d}`, ports.High)))
		if r.code != http.StatusOK || r.body["tcp_port"] != float64(ports.High) {
			t.Fatalf("mode tcp: %d %s", r.code, r.raw)
		}
		r = e.do(http.MethodGet, "/api/v1/admin/domains/status?domain=ssh.example.com", "", nil)
		if r.body["mode"] != "tcp" || r.body["tcp_port"] != float64(ports.High) {
			t.Fatalf("status: %s", r.raw)
		}
		for _, bad := range []string{`{"domain":"ssh.example.com","mode":"udp"}`, `{"domain":"ssh.example.com","mode":"http","proxy_protocol":"v1"}`,
			`{"domain":"ssh.example.com","mode":"tcp","proxy_protocol":"v3"}`} {
			if r := e.do(http.MethodPost, "/api/v1/admin/domains/mode", "", jsonBody(bad)); r.code != http.StatusBadRequest {
				t.Errorf("%s: %d %s, want 400", bad, r.code, r.raw)
			}
		}
		if r := e.do(http.MethodPost, "/api/v1/admin/domains/mode", "", jsonBody(`{"domain":"nobody.example.com","mode":"http"}`)); r.code != http.StatusNotFound {
			t.Errorf("mode of an unknown domain: %d %s", r.code, r.raw)
		}
		// Unregistering releases the port: another domain can have it.
		if r := e.do(http.MethodPost, "/api/v1/admin/domains/unregister", "", jsonBody(`{"domain":"ssh.example.com"}`)); r.code != http.StatusOK {
			t.Fatalf("unregister: %d %s", r.code, r.raw)
		}
		if err := dial(ports.High); err == nil {
			t.Fatal("an unregistered domain's port still listens")
		}
		r = e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(fmt.Sprintf(`{"domain":"db.example.com","mode":"tcp","tcp_port":%d}`, ports.High)))
		if r.code != http.StatusCreated {
			t.Fatalf("register on a released port: %d %s", r.code, r.raw)
		}
	})
}

// TestModesWithoutPorts: with TCP tunnels off, mode tcp is a 400 that says how to turn them on.
func TestModesWithoutPorts(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, adminKey)
		r := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"ssh.example.com","mode":"tcp"}`))
		if r.code != http.StatusBadRequest || !strings.Contains(r.raw, "HOP_SERVER_TCP_PORTS") {
			t.Fatalf("register tcp without ports: %d %s", r.code, r.raw)
		}
		r = e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"secure.example.com","mode":"tls-passthrough"}`))
		if r.code != http.StatusCreated || r.body["mode"] != "tls-passthrough" {
			t.Fatalf("register passthrough: %d %s", r.code, r.raw)
		}
	})
}

// portsOf defers to the edge built after the handler (the edge's Source needs the env's store).
type portsOf func() *rawedge.Edge

func (p portsOf) Assign(ctx context.Context, domain string, want int, commit func(int) error) (int, error) {
	return p().Assign(ctx, domain, want, commit)
}
func (p portsOf) Reload(ctx context.Context) error { return p().Reload(ctx) }
func (p portsOf) Release(domain string)            { p().Release(domain) }
