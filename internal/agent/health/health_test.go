package health

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const interval = 20 * time.Millisecond

func service(t *testing.T, host, path, target, healthPath string) config.Service {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	return config.Service{Hostname: host, Path: path, Target: u, Health: &config.Health{Path: healthPath, Interval: interval}}
}

// run starts m and stops it at the end of the test.
func run(t *testing.T, m *Monitor) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitUp waits until host's path has state up.
func waitUp(t *testing.T, m *Monitor, host, path string, up bool) {
	t.Helper()
	deadline := time.After(3 * time.Second)
	for {
		paths, changed := m.Paths(host)
		for _, p := range paths {
			if p.Path == path && p.Up == up {
				return
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s%s: want up=%v, have %v", host, path, up, paths)
		}
	}
}

func TestTCPCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	m := New([]config.Service{service(t, "a.test", "", "http://"+addr, "")}, Options{})
	run(t, m)
	waitUp(t, m, "a.test", "/", true)
	ln.Close()
	waitUp(t, m, "a.test", "/", false)
	// The port comes back: one success is enough.
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	defer ln2.Close()
	go func() {
		for {
			c, err := ln2.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	waitUp(t, m, "a.test", "/", true)
}

func TestUnixCheck(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "t.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			w.WriteHeader(http.StatusNotFound)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	m := New([]config.Service{
		service(t, "a.test", "/ok", "unix://"+sock, "/ready"),
		service(t, "a.test", "/bad", "unix://"+sock, "/missing"),
	}, Options{})
	run(t, m)
	waitUp(t, m, "a.test", "/bad", false)
	waitUp(t, m, "a.test", "/ok", true)
}

func TestHTTPCheckStatus(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	var mu sync.Mutex
	var gotPath string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotPath = r.URL.Path
		mu.Unlock()
		if s := int(status.Load()); s >= 300 && s < 400 {
			http.Redirect(w, r, "/elsewhere", s)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer ts.Close()
	m := New([]config.Service{service(t, "a.test", "/api", ts.URL+"/base", "/healthz")}, Options{})
	run(t, m)
	waitUp(t, m, "a.test", "/api", true)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		p := gotPath
		mu.Unlock()
		if p != "" {
			break
		}
	}
	mu.Lock()
	if gotPath != "/base/healthz" {
		t.Errorf("checked %q, want the target's base path joined with the health path", gotPath)
	}
	mu.Unlock()
	status.Store(http.StatusServiceUnavailable)
	waitUp(t, m, "a.test", "/api", false)
	status.Store(http.StatusFound) // a redirect is an answer, not a failure
	waitUp(t, m, "a.test", "/api", true)
}

// TestThresholds drives one checker by hand: down after FailThreshold failures in a row, up after
// one success, and a single failure between successes changes nothing.
func TestThresholds(t *testing.T) {
	var fail atomic.Bool
	var changes atomic.Int32
	m := New([]config.Service{service(t, "a.test", "", "http://127.0.0.1:1", "")}, Options{
		OnChange: func(int, int) { changes.Add(1) },
	})
	c := m.checkers[SpecOf(m.services[0])]
	c.probe = func(context.Context) error {
		if fail.Load() {
			return context.DeadlineExceeded
		}
		return nil
	}
	up := func() bool { p, _ := m.Paths("a.test"); return p[0].Up }
	ctx := context.Background()
	steps := []struct {
		fail bool
		want bool
	}{
		{false, true}, {true, true}, {false, true}, {true, true}, {true, false}, {true, false}, {false, true},
	}
	for i, s := range steps {
		fail.Store(s.fail)
		m.checkOnce(ctx, c)
		if got := up(); got != s.want {
			t.Fatalf("step %d (fail=%v): up=%v, want %v", i, s.fail, got, s.want)
		}
	}
	if n := changes.Load(); n != 2 {
		t.Errorf("%d changes, want 2 (down once, up once)", n)
	}
}

// TestOneCheckerPerTarget: services sharing a target and check share a checker; a reload keeps it,
// adds the new ones and stops the removed ones.
func TestOneCheckerPerTarget(t *testing.T) {
	a := service(t, "a.test", "", "http://127.0.0.1:1", "")
	b := service(t, "b.test", "/x", "http://127.0.0.1:1", "")
	c := service(t, "b.test", "", "http://127.0.0.1:2", "")
	m := New([]config.Service{a, b, c}, Options{})
	if n := len(m.checkers); n != 2 {
		t.Fatalf("%d checkers for 2 distinct targets", n)
	}
	run(t, m)
	kept := m.checkers[SpecOf(a)]
	m.Update([]config.Service{a, service(t, "c.test", "", "http://127.0.0.1:3", "")})
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.checkers) != 2 || m.checkers[SpecOf(a)] != kept || m.checkers[SpecOf(c)] != nil {
		t.Errorf("after reload: %d checkers, kept=%v", len(m.checkers), m.checkers[SpecOf(a)] == kept)
	}
}

func TestTimeout(t *testing.T) {
	for _, tc := range []struct {
		interval, want time.Duration
	}{{time.Second, time.Second}, {10 * time.Second, 5 * time.Second}} {
		if got := (Spec{Interval: tc.interval}).Timeout(); got != tc.want {
			t.Errorf("interval %v: timeout %v, want %v", tc.interval, got, tc.want)
		}
	}
}

// TestTCPTarget: a tcp:// target is checked by a TCP connect (the check counts in OnChange), and it
// stays out of the HTTP paths the tunnel reports, where it would shadow the hostname's "/" service.
func TestTCPTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	type state struct{ targets, down int }
	states := make(chan state, 16)
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	m := New([]config.Service{
		service(t, "a.test", "", web.URL, ""),
		service(t, "a.test", "", "tcp://"+ln.Addr().String(), ""),
	}, Options{OnChange: func(targets, down int) { states <- state{targets, down} }})
	run(t, m)
	select {
	case <-accepted:
	case <-time.After(3 * time.Second):
		t.Fatal("the tcp:// target was never connected to")
	}
	if paths, _ := m.Paths("a.test"); len(paths) != 1 || paths[0].Path != "/" || !paths[0].Up {
		t.Fatalf("paths %v, want the HTTP service's / only", paths)
	}
	ln.Close()
	for deadline := time.After(3 * time.Second); ; {
		select {
		case s := <-states:
			if s == (state{2, 1}) {
				if paths, _ := m.Paths("a.test"); len(paths) != 1 || !paths[0].Up {
					t.Errorf("paths %v: the tcp:// target's state leaked into the HTTP paths", paths)
				}
				return
			}
		case <-deadline:
			t.Fatal("the closed tcp:// target never turned down")
		}
	}
}
