package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/agent/metrics"
	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestInstrument(t *testing.T) {
	m := metrics.New()
	var calls []string
	served := 0
	o := m.Instrument(supervisor.Options{
		OnUp:               func(string) { calls = append(calls, "up") },
		OnDown:             func(error) { calls = append(calls, "down") },
		OnReconnectAttempt: func(time.Duration) { calls = append(calls, "retry") },
		OnBodyBytes:        func(supervisor.Direction, int) { calls = append(calls, "bytes") },
		Serve:              func(*tunnel.Stream) { served++ },
	})
	srv, err := m.Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})

	o.OnUp("https://app.example.com")
	o.Serve(nil)
	o.Serve(nil)
	o.OnBodyBytes(supervisor.ToTarget, 100)
	o.OnBodyBytes(supervisor.FromTarget, 7)
	o.OnBodyBytes(supervisor.FromTarget, 3)
	got := scrape(t, srv.Addr())
	for _, w := range []string{
		"hopgate_client_tunnel_up 1",
		"hopgate_client_streams_total 2",
		"hopgate_client_streams_active 0",
		`hopgate_client_bytes_total{direction="to_target"} 100`,
		`hopgate_client_bytes_total{direction="from_target"} 10`,
		"hopgate_client_reconnects_total 0",
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(got, w+"\n") && !strings.Contains(got, w) {
			t.Errorf("scrape lacks %q", w)
		}
	}

	o.OnDown(errors.New("gateway gone"))
	o.OnReconnectAttempt(time.Second)
	o.OnReconnectAttempt(2 * time.Second)
	got = scrape(t, srv.Addr())
	for _, w := range []string{"hopgate_client_tunnel_up 0\n", "hopgate_client_reconnects_total 2\n"} {
		if !strings.Contains(got, w) {
			t.Errorf("scrape lacks %q", w)
		}
	}
	if served != 2 || strings.Join(calls, ",") != "up,bytes,bytes,bytes,down,retry,retry" {
		t.Errorf("hooks given to Instrument did not all run: served %d, calls %v", served, calls)
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("%s: %s", res.Status, b)
	}
	http.DefaultClient.CloseIdleConnections()
	return string(b)
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		srv, err := metrics.New().Listen("127.0.0.1:0", on)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + srv.Addr() + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		served := resp.StatusCode == http.StatusOK && strings.Contains(string(body), "goroutine profile")
		if served != on {
			t.Errorf("pprof %v: GET /debug/pprof/goroutine answered %d", on, resp.StatusCode)
		}
		if err := srv.Close(context.Background()); err != nil {
			t.Error(err)
		}
	}
}

// TestInstrumentGateway: each gateway address has its own count of tunnels up, beside the total,
// and a gateway the agent let go has no series left.
func TestInstrumentGateway(t *testing.T) {
	m := metrics.New()
	base := m.Instrument(supervisor.Options{})
	a := m.InstrumentGateway(base, "192.0.2.1:443")
	b := m.InstrumentGateway(base, "192.0.2.2:443")
	srv, err := m.Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	a.OnUp("https://a.example.com")
	a.OnUp("https://b.example.com")
	b.OnUp("https://a.example.com")
	b.OnDown(nil)
	got := scrape(t, srv.Addr())
	for _, w := range []string{
		"hopgate_client_tunnel_up 2",
		`hopgate_client_gateway_tunnels_up{gateway="192.0.2.1:443"} 2`,
		`hopgate_client_gateway_tunnels_up{gateway="192.0.2.2:443"} 0`,
	} {
		if !strings.Contains(got, w) {
			t.Errorf("scrape lacks %q:\n%s", w, got)
		}
	}
	m.ForgetGateway("192.0.2.2:443")
	if got := scrape(t, srv.Addr()); strings.Contains(got, "192.0.2.2") {
		t.Errorf("a forgotten gateway still has a series:\n%s", got)
	}
}
