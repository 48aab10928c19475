package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// fakeAgent is one tunnel opened by the harness itself through supervisor.Open, which opens it exactly as
// hopgate-client does (its own TLS connection offering the tunnel ALPN, the same gRPC options, Hello,
// Accepted, then the agent-side tunnel.Session). Starting a hopgate-client process per tunnel would
// cost the machine more than the server under test.
type fakeAgent struct {
	t    *supervisor.Tunnel
	done chan struct{}
}

// refuseStream is an idle bench agent's answer to a request.
func refuseStream(st *tunnel.Stream) {
	st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "idle bench agent")
}

// openFakeAgent dials addr, authenticates as domain and serves streams with serve (nil: idle agent
// that refuses streams).
func openFakeAgent(ctx context.Context, addr string, tlsConf *tls.Config, domain, key, id string, serve func(*tunnel.Stream)) (*fakeAgent, error) {
	if serve == nil {
		serve = refuseStream
	}
	return startFakeAgent(ctx, supervisor.Options{
		ServerAddr:   addr,
		Domain:       domain,
		APIKey:       key,
		AgentID:      id,
		Version:      "bench",
		TLS:          tlsConf,
		PingInterval: 15 * time.Second, // as hopgate-client's default
		Serve:        serve,
	})
}

// startFakeAgent opens one tunnel with o and serves it until close.
func startFakeAgent(ctx context.Context, o supervisor.Options) (*fakeAgent, error) {
	// Bound the wait for Accepted: a server that never answers must not hold the harness.
	ctx, cancel := context.WithTimeoutCause(ctx, 20*time.Second, errors.New("no Accepted within 20 s"))
	defer cancel()
	t, err := supervisor.Open(ctx, o)
	if err != nil {
		if c := context.Cause(ctx); c != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, c)
		}
		return nil, fmt.Errorf("open tunnel: %w", err)
	}
	a := &fakeAgent{t: t, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		_ = t.Run()
	}()
	return a, nil
}

// openShared opens conns gRPC connections and per tunnels over each, as hopgate-client does for
// the hostnames it serves on one gateway. stop ends them all.
func openShared(ctx context.Context, g *hoptest.Gateway, conns, per int, domain, key string) (stop func(), err error) {
	o := supervisor.Options{
		ServerAddr: g.HTTPSAddr, Domain: domain, APIKey: key, Version: "bench",
		TLS: &tls.Config{RootCAs: g.CAPool, ServerName: "localhost"}, PingInterval: 15 * time.Second, // as openFakeAgent's
		Serve: refuseStream,
	}
	var agents []*fakeAgent
	var dialled []interface{ Close() error }
	stop = func() {
		for _, a := range agents {
			a.close()
		}
		for _, c := range dialled {
			_ = c.Close()
		}
	}
	for c := range conns {
		conn, err := supervisor.Dial(o)
		if err != nil {
			stop()
			return nil, err
		}
		dialled = append(dialled, conn)
		oc := o
		oc.Conn = conn
		for i := range per {
			oc.AgentID = fmt.Sprintf("shared-%d-%d", c, i)
			a, err := startFakeAgent(ctx, oc)
			if err != nil {
				stop()
				return nil, fmt.Errorf("shared connection %d: %w", c, err)
			}
			agents = append(agents, a)
		}
	}
	return stop, nil
}

func (a *fakeAgent) close() {
	a.t.Close()
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
	}
}

// serveSmall answers every request with the same 100-byte response the origin's /small gives.
func serveSmall(st *tunnel.Stream) {
	defer st.Close()
	if !st.Request().EndStream {
		if _, err := io.Copy(io.Discard, st); err != nil {
			return
		}
	}
	head := &tunnelv1.ResponseHead{
		Status:        http.StatusOK,
		Headers:       []*tunnelv1.Header{{Name: "Content-Type", Values: []string{"text/plain"}}},
		ContentLength: int64(len(smallBody)),
	}
	if err := st.SendResponse(head); err != nil {
		return
	}
	if _, err := st.Write(smallBody); err != nil {
		return
	}
	_ = st.CloseWrite(nil)
}

// agentPool opens and holds many fake agents.
type agentPool struct {
	mu     sync.Mutex
	agents []*fakeAgent
}

// open adds n agents, at most parallel dialling at once; agent i serves domains[i%len(domains)].
func (p *agentPool) open(ctx context.Context, g *hoptest.Gateway, n, parallel int, domains, keys []string, serve func(*tunnel.Stream)) error {
	tlsConf := &tls.Config{RootCAs: g.CAPool, ServerName: "localhost"}
	sem := make(chan struct{}, parallel)
	var (
		wg   sync.WaitGroup
		errs errCounter
	)
	p.mu.Lock()
	base := len(p.agents)
	p.mu.Unlock()
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		if errs.n.Load() > 0 {
			<-sem
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			k := (base + i) % len(domains)
			a, err := openFakeAgent(ctx, g.HTTPSAddr, tlsConf, domains[k], keys[k], fmt.Sprintf("bench-%d", base+i), serve)
			if err != nil {
				errs.add(err)
				return
			}
			p.mu.Lock()
			p.agents = append(p.agents, a)
			p.mu.Unlock()
		})
	}
	wg.Wait()
	if errs.n.Load() > 0 {
		return fmt.Errorf("%d of %d tunnels failed to open (first: %s)", errs.n.Load(), n, errs.first)
	}
	return nil
}

// alive counts agents whose session still runs.
func (p *agentPool) alive() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, a := range p.agents {
		if a.t.Session.Err() == nil {
			n++
		}
	}
	return n
}

func (p *agentPool) closeAll() {
	p.mu.Lock()
	agents := p.agents
	p.agents = nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, a := range agents {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			a.close()
		})
	}
	wg.Wait()
}

// settleRSS waits, then reads the server's resident memory in KiB.
func settleRSS(ctx context.Context, pid int, wait time.Duration) (int64, error) {
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(wait):
	}
	return hoptest.MemKiB(pid, "VmRSS")
}

// heapAndStacks is the gateway's heap and goroutine stacks in use after collections, from the heap
// profile's runtime statistics (pprof on its metrics listener at addr).
func heapAndStacks(ctx context.Context, addr string) (int64, error) {
	if addr == "" {
		return 0, errors.New("the gateway logged no metrics address")
	}
	var text string
	// Twice: sync.Pool keeps what it held through one collection.
	for range 2 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/heap?gc=1&debug=1", nil)
		if err != nil {
			return 0, err
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("heap profile: %d, %v", res.StatusCode, err)
		}
		text = string(b)
	}
	var heap, stack int64
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			heap, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "# Stack = "); ok {
			f, _, _ := strings.Cut(v, " ")
			stack, _ = strconv.ParseInt(f, 10, 64)
		}
	}
	if heap == 0 || stack == 0 {
		return 0, errors.New("heap profile without runtime statistics")
	}
	return heap + stack, nil
}

// s8: server memory per idle tunnel, on a fresh server so earlier scenarios' heap does not count.
func (r *runner) s8(ctx context.Context) scenarioResult {
	steps := r.p.S8Steps
	s := scenarioResult{ID: "S8", Name: fmt.Sprintf("server RSS with %v idle tunnels (fresh server)", steps)}
	// pprof on the metrics listener: its heap endpoint collects garbage and reports the runtime's
	// statistics, the same heap + stacks figure S15 gives for a bare connection.
	g, err := startGateway(ctx, r.bin, r.dir, "hopgate-server-s8", nil, "HOP_SERVER_METRICS_LISTEN=127.0.0.1:0", "HOP_SERVER_PPROF=true")
	if err != nil {
		return s.fail(err)
	}
	defer g.Stop(5 * time.Second)
	const domain = "idle.hopgate.test"
	key, err := g.Register(ctx, domain)
	if err != nil {
		return s.fail(err)
	}
	pid := g.Pid()
	var pool agentPool
	defer pool.closeAll()
	base, err := settleRSS(ctx, pid, time.Second)
	if err != nil {
		return s.fail(err)
	}
	s.set("server", "rss_kib_0", float64(base))
	metricsAddr := g.Process.Log.Field("addr", "metrics listening", "serving metrics")
	rss := make([]int64, len(steps))
	inuse := make([]int64, len(steps))
	have := 0
	for i, n := range steps {
		if err := pool.open(ctx, g, n-have, 32, []string{domain}, []string{key}, nil); err != nil {
			return s.fail(err)
		}
		have = n
		if err := g.WaitAgents(ctx, domain, n, 30*time.Second, nil); err != nil {
			return s.fail(err)
		}
		rss[i], err = settleRSS(ctx, pid, 2*time.Second)
		if err != nil {
			return s.fail(err)
		}
		s.set("server", fmt.Sprintf("rss_kib_%d", n), float64(rss[i]))
		if inuse[i], err = heapAndStacks(ctx, metricsAddr); err != nil {
			return s.fail(err)
		}
	}
	last := len(steps) - 1
	perTunnel := float64(rss[last]-rss[0]) / float64(steps[last]-steps[0])
	s.set("server", "kib_per_tunnel", perTunnel)
	perInuse := float64(inuse[last]-inuse[0]) / 1024 / float64(steps[last]-steps[0])
	s.set("server", "kib_inuse_per_tunnel", perInuse)
	// The same tunnels sharing connections, as hopgate-client's hostnames on one gateway do: what a
	// tunnel costs beyond its TLS connection and grpc transport.
	const sharedConns, sharedPer = 5, 100
	stopShared, err := openShared(ctx, g, sharedConns, sharedPer, domain, key)
	if err != nil {
		return s.fail(err)
	}
	defer stopShared()
	if err := g.WaitAgents(ctx, domain, steps[last]+sharedConns*sharedPer, 30*time.Second, nil); err != nil {
		return s.fail(err)
	}
	withShared, err := settleRSS(ctx, pid, 2*time.Second)
	if err != nil {
		return s.fail(err)
	}
	perShared := float64(withShared-rss[last]) / (sharedConns * sharedPer)
	s.set("server", "kib_per_shared_tunnel", perShared)
	sharedInuse, err := heapAndStacks(ctx, metricsAddr)
	if err != nil {
		return s.fail(err)
	}
	perSharedInuse := float64(sharedInuse-inuse[last]) / 1024 / (sharedConns * sharedPer)
	s.set("server", "kib_inuse_per_shared_tunnel", perSharedInuse)
	txt := fmt.Sprintf("0: %.1f MiB", float64(base)/1024)
	for i, n := range steps {
		txt += fmt.Sprintf(" · %d: %.1f MiB", n, float64(rss[i])/1024)
	}
	s.rows = append(s.rows, row{Metric: "server VmRSS by tunnel count", Result: txt})
	s.rows = append(s.rows, row{Metric: fmt.Sprintf("KiB per tunnel (%d→%d)", steps[0], steps[last]), Result: fmt.Sprintf("%.1f KiB", perTunnel)})
	s.addCheck("server RSS growth per idle tunnel (KiB)", "≤ 40 KiB", perTunnel, perTunnel <= 40)
	s.rows = append(s.rows, row{Metric: "KiB per tunnel, heap + stacks after GC (S15: a bare connection)", Result: fmt.Sprintf("%.1f KiB", perInuse)})
	s.rows = append(s.rows, row{Metric: fmt.Sprintf("KiB per tunnel, %d per connection (%d more)", sharedPer, sharedConns*sharedPer), Result: fmt.Sprintf("%.1f KiB RSS · %.1f KiB heap + stacks", perShared, perSharedInuse)})
	if alive := pool.alive(); alive != steps[last] {
		s.Notes = append(s.Notes, fmt.Sprintf("%d of %d tunnels still up at the end", alive, steps[last]))
	}
	s.Notes = append(s.Notes, "S8 tunnels are harness-side agents opened like hopgate-client's (supervisor.Open, one TLS gRPC connection each); RSS is VmRSS of a fresh hopgate-server after 2 s of quiet")
	return s
}

// s9: many tunnels, requests spread over them: success rate, memory and CPU of the server.
func (r *runner) s9(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S9", Name: fmt.Sprintf("%d tunnels over %d domains, %d req/s for %s (fresh server)", p.S9Tunnels, p.S9Domains, p.S9Rate, p.S9Duration)}
	g, err := startGateway(ctx, r.bin, r.dir, "hopgate-server-s9", nil)
	if err != nil {
		return s.fail(err)
	}
	defer g.Stop(5 * time.Second)
	pid := g.Pid()

	domains := make([]string, p.S9Domains)
	keys := make([]string, p.S9Domains)
	t0 := time.Now()
	var (
		wg   sync.WaitGroup
		errs errCounter
		sem  = make(chan struct{}, 8)
	)
	for i := range domains {
		domains[i] = fmt.Sprintf("t%05d.s9.hopgate.test", i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			k, err := g.Register(ctx, domains[i])
			if err != nil {
				errs.add(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	if errs.n.Load() > 0 {
		return s.fail(fmt.Errorf("register %d domains: %d failed (first: %s)", len(domains), errs.n.Load(), errs.first))
	}
	registerSecs := time.Since(t0).Seconds()

	var pool agentPool
	defer pool.closeAll()
	t0 = time.Now()
	if err := pool.open(ctx, g, p.S9Tunnels, 64, domains, keys, serveSmall); err != nil {
		return s.fail(err)
	}
	connectSecs := time.Since(t0).Seconds()
	rssIdle, err := settleRSS(ctx, pid, 3*time.Second)
	if err != nil {
		return s.fail(err)
	}

	visitor := target{Name: "hop-http", base: "http://" + g.HTTPAddr, dial: g.HTTPAddr, proto: "h1"}
	c := visitor.client(512, 10*time.Second)
	defer closeClient(c)
	var peak atomic.Int64
	peak.Store(rssIdle)
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				if v, err := hoptest.MemKiB(pid, "VmRSS"); err == nil && v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()
	cpu0, _ := cpuTime(pid)
	smp := openLoop(ctx, p.S9Rate, p.S9Duration, 2048, func(ctx context.Context, i int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, visitor.base+"/small", nil)
		if err != nil {
			return err
		}
		req.Host = domains[i%len(domains)]
		res, err := c.Do(req)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK || n != int64(len(smallBody)) {
			return fmt.Errorf("status %d, %d bytes, %v", res.StatusCode, n, err)
		}
		return nil
	})
	cpu1, _ := cpuTime(pid)
	stopSampling()
	<-sampled
	hwm, _ := hoptest.MemKiB(pid, "VmHWM")

	total := int(float64(p.S9Rate) * p.S9Duration.Seconds())
	success := ratio(float64(smp.Requests), float64(total))
	cpuSecs := (cpu1 - cpu0).Seconds()
	s.set("server", "success", success)
	s.set("server", "requests", float64(total))
	s.set("server", "errors", float64(smp.Errors+smp.Dropped))
	s.set("server", "p50_ms", ms(smp.quantile(0.5)))
	s.set("server", "p99_ms", ms(smp.quantile(0.99)))
	s.set("server", "rss_idle_kib", float64(rssIdle))
	s.set("server", "rss_peak_kib", float64(peak.Load()))
	s.set("server", "vmhwm_kib", float64(hwm))
	s.set("server", "cpu_seconds", cpuSecs)
	s.set("server", "cpu_cores", cpuSecs/p.S9Duration.Seconds())
	s.set("server", "register_seconds", registerSecs)
	s.set("server", "connect_seconds", connectSecs)
	s.set("server", "tunnels_alive_after", float64(pool.alive()))
	harness, _ := hoptest.MemKiB(os.Getpid(), "VmRSS")
	s.set("harness", "rss_kib", float64(harness))

	s.rows = append(s.rows, row{Metric: "success", Result: fmt.Sprintf("%.3f %% of %d (p50 %s, p99 %s)", 100*success, total,
		msStr(ms(smp.quantile(0.5))), msStr(ms(smp.quantile(0.99))))})
	s.addCheck("requests answered 200 with the whole body", "100 %", success, smp.Requests == int64(total))
	s.rows = append(s.rows, row{Metric: "server RSS idle → peak", Result: fmt.Sprintf("%.0f → %.0f MiB (VmHWM %.0f MiB)",
		float64(rssIdle)/1024, float64(peak.Load())/1024, float64(hwm)/1024)})
	s.addCheck("server peak RSS (MiB)", "≤ 1 GiB", float64(peak.Load())/1024, peak.Load() <= 1<<20)
	s.rows = append(s.rows, row{Metric: "server CPU under load", Result: fmt.Sprintf("%.1f s = %.2f cores", cpuSecs, cpuSecs/p.S9Duration.Seconds())})
	s.rows = append(s.rows, row{Metric: "setup", Result: fmt.Sprintf("register %.1f s · connect %d tunnels %.1f s · %d alive after load · harness RSS %.0f MiB",
		registerSecs, p.S9Tunnels, connectSecs, pool.alive(), float64(harness)/1024)})
	if smp.Errors+smp.Dropped > 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("%d errors, %d dropped (first: %s)", smp.Errors, smp.Dropped, smp.FirstErr))
	}
	return s
}
