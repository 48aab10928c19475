// Package health checks an agent's local targets and tells its tunnels which service paths are up.
//
// One checker runs per distinct check (target, health path, interval, TLS settings), however many
// services share it. A check is a TCP connect to the target's address (a connect to a unix socket's
// path; always for a tcp:// target), or with a health path an HTTP GET of it that must answer 2xx or 3xx (redirects are not
// followed). A target starts up, turns down after FailThreshold failures in a row and up again after
// one success: a single lost connect must not move traffic, and a target that answers again should
// get it back at once.
package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hopgate/hopgate/internal/config"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

const (
	// DefaultInterval applies to a service without a health block.
	DefaultInterval = 10 * time.Second
	// MaxTimeout caps one check's time; a shorter interval is its own timeout.
	MaxTimeout = 5 * time.Second
	// FailThreshold is how many failed checks in a row mark a target down.
	FailThreshold = 2
)

// Spec is what one checker checks; services with the same Spec share it.
type Spec struct {
	Target   string // the target URL
	Path     string // HTTP health path; empty for a TCP connect
	Interval time.Duration
	TLSSkip  bool
	CAFile   string
}

// SpecOf is the check of a service.
func SpecOf(s config.Service) Spec {
	sp := Spec{Target: s.Target.String(), Interval: DefaultInterval, TLSSkip: s.TLSSkipVerify, CAFile: s.CAFile}
	if s.Health != nil {
		sp.Path = s.Health.Path
		if s.Health.Interval > 0 {
			sp.Interval = s.Health.Interval
		}
	}
	return sp
}

// Timeout is one check's bound: min(interval, MaxTimeout).
func (sp Spec) Timeout() time.Duration { return min(sp.Interval, MaxTimeout) }

// Options wire a Monitor.
type Options struct {
	// TLS returns the client TLS settings for an https target's service (the local proxy's). Nil
	// uses TLSSkipVerify alone.
	TLS func(config.Service) *tls.Config
	// OnChange, if set, is told the number of checked targets and how many are down after each change.
	OnChange func(targets, down int)
	Logger   *slog.Logger
}

// Monitor runs the checkers of a set of services and answers which paths of a hostname are up.
type Monitor struct {
	o Options

	mu       sync.Mutex
	services []config.Service
	checkers map[Spec]*checker
	// changed is closed, and replaced, each time a target's state or the services change.
	changed chan struct{}
	ctx     context.Context // set by Run; nil before
	wg      sync.WaitGroup
}

type checker struct {
	spec   Spec
	probe  func(context.Context) error
	cancel context.CancelFunc
	up     bool // guarded by Monitor.mu
	fails  int  // owned by the checker's goroutine
}

// New returns a Monitor for services; nothing is checked before Run.
func New(services []config.Service, o Options) *Monitor {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Monitor{o: o, checkers: map[Spec]*checker{}, changed: make(chan struct{})}
	m.setLocked(services)
	return m
}

// OnChange sets Options.OnChange (the metrics, known only once the agent serves them) and tells it
// the current state. Call before Run.
func (m *Monitor) OnChange(f func(targets, down int)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.o.OnChange = f
	m.notifyLocked()
}

// Run checks the targets until ctx ends, then waits for every checker to stop.
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	for _, c := range m.checkers {
		m.startLocked(c)
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.wg.Wait()
	return nil
}

// Update replaces the services (a reload): checks still needed keep their state and their checker,
// new ones start up, the others stop.
func (m *Monitor) Update(services []config.Service) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setLocked(services)
	m.notifyLocked()
}

func (m *Monitor) setLocked(services []config.Service) {
	m.services = append([]config.Service(nil), services...)
	want := map[Spec]config.Service{}
	for _, s := range services {
		if s.Target != nil {
			want[SpecOf(s)] = s
		}
	}
	for sp, c := range m.checkers {
		if _, ok := want[sp]; !ok {
			if c.cancel != nil {
				c.cancel()
			}
			delete(m.checkers, sp)
		}
	}
	for sp, s := range want {
		if m.checkers[sp] != nil {
			continue
		}
		c := &checker{spec: sp, up: true, probe: m.probeFor(s, sp)}
		m.checkers[sp] = c
		if m.ctx != nil {
			m.startLocked(c)
		}
	}
}

func (m *Monitor) startLocked(c *checker) {
	ctx, cancel := context.WithCancel(m.ctx)
	c.cancel = cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.run(ctx, c)
	}()
}

// run checks at once, then every interval, until ctx ends.
func (m *Monitor) run(ctx context.Context, c *checker) {
	t := time.NewTicker(c.spec.Interval)
	defer t.Stop()
	for {
		m.checkOnce(ctx, c)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Monitor) checkOnce(ctx context.Context, c *checker) {
	cctx, cancel := context.WithTimeout(ctx, c.spec.Timeout())
	err := c.probe(cctx)
	cancel()
	if ctx.Err() != nil {
		return // stopping: a cancelled check says nothing about the target
	}
	if err == nil {
		c.fails = 0
	} else {
		c.fails++
	}
	up := err == nil || c.fails < FailThreshold
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.checkers[c.spec] != c || c.up == up {
		return
	}
	c.up = up
	if up {
		m.o.Logger.Info("local target is answering again", "target", redacted(c.spec.Target), "health_path", c.spec.Path)
	} else {
		m.o.Logger.Warn("local target is down", "target", redacted(c.spec.Target), "health_path", c.spec.Path, "err", err)
	}
	m.notifyLocked()
}

func (m *Monitor) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
	if m.o.OnChange != nil {
		down := 0
		for _, c := range m.checkers {
			if !c.up {
				down++
			}
		}
		m.o.OnChange(len(m.checkers), down)
	}
}

// Paths is the state of host's HTTP services, one per path prefix ("/" for a service without a
// path), sorted by path, and a channel closed at the next change. A tcp:// service has no path: the
// gateway reads these paths for HTTP requests, which never reach it, so it is left out (its checks
// still count in OnChange and the logs).
func (m *Monitor) Paths(host string) ([]*tunnelv1.PathHealth, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	var out []*tunnelv1.PathHealth
	for _, s := range m.services {
		if s.Hostname != host || s.Target == nil || s.Raw() {
			continue
		}
		p := s.Path
		if p == "" {
			p = "/"
		}
		if seen[p] {
			continue // the first rule of a path wins, as in the routing table
		}
		seen[p] = true
		c := m.checkers[SpecOf(s)]
		out = append(out, &tunnelv1.PathHealth{Path: p, Up: c == nil || c.up})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, m.changed
}

// probeFor builds the check of spec for service s.
func (m *Monitor) probeFor(s config.Service, sp Spec) func(context.Context) error {
	u := s.Target
	var d net.Dialer
	network, addr := "tcp", hostPort(u)
	if u.Scheme == "unix" {
		network, addr = "unix", u.Path
	}
	if sp.Path == "" || u.Scheme == "tcp" {
		return func(ctx context.Context) error {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return err
			}
			return conn.Close()
		}
	}
	tr := &http.Transport{
		// A fresh connection per check: the check is about the target accepting, and an idle pooled
		// connection would outlive the checker.
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
	if m.o.TLS != nil {
		tr.TLSClientConfig = m.o.TLS(s)
	} else {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: s.TLSSkipVerify}
	}
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse // 3xx is an answer: the target is up
	}}
	target := &url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimSuffix(u.Path, "/") + sp.Path}
	if u.Scheme == "unix" {
		target = &url.URL{Scheme: "http", Host: "localhost", Path: sp.Path}
	}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "hopgate-client health check")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("GET %s: status %d", sp.Path, resp.StatusCode)
		}
		return nil
	}
}

// hostPort is the address to connect to for u, with the scheme's port when u names none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

func redacted(target string) string {
	u, err := url.Parse(target)
	if err != nil {
		return ""
	}
	return u.Redacted()
}
