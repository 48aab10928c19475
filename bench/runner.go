package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// benchDomain is the tenant every visitor scenario goes through.
const benchDomain = "bench.hopgate.test"

// Names of the ways to reach the origin, in table order.
const (
	tDirect  = "direct"
	tRProxy  = "rproxy"
	tHopHTTP = "hop-http"
	tHopTLS  = "hop-tls"
)

var targetOrder = []string{tDirect, tRProxy, tHopHTTP, tHopTLS}

// runner owns every process of a run and the results.
type runner struct {
	p    profile
	bin  string
	log  *slog.Logger
	keep bool
	dir  string
	// profiling serves the runtime profiles of hopgate-server and hopgate-client on their metrics
	// listeners (hold mode only: metrics cost CPU in measured runs).
	profiling bool

	origin, rproxy *hoptest.Process
	originAddr     string
	// originTCPAddr is the origin's raw TCP port (S11, S12).
	originTCPAddr string
	rproxyTLSAddr string
	rproxyPool    *x509.CertPool
	gw            *hoptest.Gateway
	client        *hoptest.Process
	// tcp is the gateway and agent of the TCP scenarios, started by the first of them.
	tcp *tcpStack

	targets map[string]target
	result  runResult
}

// run sets up, measures (or holds) and reports. It returns the exit code.
func (r *runner) run(ctx context.Context, hold time.Duration, resultsDir string) int {
	if _, err := os.Stat(r.bin + "/hopgate-server"); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s/hopgate-server not found: run `make build` first (or `make bench`)\n", r.bin)
		return 2
	}
	dir, err := os.MkdirTemp("", "hopgate-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	r.dir = dir
	r.profiling = hold > 0
	defer r.cleanup()

	start := time.Now()
	r.result = runResult{Profile: r.p, Machine: thisMachine(), Started: start}
	if err := r.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench: setup failed:", err)
		r.keep = true
		return 1
	}
	if hold > 0 {
		r.holdForProfiling(ctx, hold)
		return 0
	}

	for _, id := range r.p.Scenarios {
		if ctx.Err() != nil {
			r.log.Warn("run cut short", "reason", context.Cause(ctx))
			break
		}
		r.log.Info("scenario", "id", id)
		t0 := time.Now()
		res := r.scenario(ctx, id)
		res.Seconds = time.Since(t0).Seconds()
		if res.Error != "" {
			r.log.Warn("scenario failed", "id", id, "err", res.Error)
		}
		r.result.Scenarios = append(r.result.Scenarios, res)
		if r.client != nil && r.client.Exited() && slices.Contains([]string{"S1", "S2", "S3", "S4", "S5", "S6", "S7", "S10", "S14"}, id) {
			// The product crashed: a finding, reported, not a harness failure. Nothing after it through
			// the tunnel would mean anything, so the visitor scenarios stop here.
			r.log.Error("hopgate-client exited during the run", "log", r.client.Log.Tail(2000))
			break
		}
	}
	r.result.WallSeconds = time.Since(start).Seconds()
	r.result.Machine.LoadAvgEnd = loadAvg()

	printTable(os.Stdout, &r.result)
	path, err := writeJSON(resultsDir, &r.result)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: write results:", err)
		return 1
	}
	fmt.Printf("\nJSON: %s · wall time %.0f s\n", path, r.result.WallSeconds)
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return 130 // interrupted
	}
	return 0
}

func (r *runner) scenario(ctx context.Context, id string) scenarioResult {
	switch id {
	case "S1":
		return r.s1(ctx)
	case "S2":
		return r.s2(ctx)
	case "S3":
		return r.s3(ctx)
	case "S4":
		return r.s4(ctx)
	case "S5":
		return r.s5(ctx)
	case "S6":
		return r.s6(ctx)
	case "S7":
		return r.s7(ctx)
	case "S8":
		return r.s8(ctx)
	case "S9":
		return r.s9(ctx)
	case "S10":
		return r.s10(ctx)
	case "S11":
		return r.s11(ctx)
	case "S12":
		return r.s12(ctx)
	case "S13":
		return r.s13(ctx)
	case "S14":
		return r.s14(ctx)
	case "S15":
		return r.s15(ctx)
	}
	return scenarioResult{ID: id, Error: "unknown scenario"}
}

// setup starts the origin, the reverse proxy, the gateway and one real agent, and checks every path.
func (r *runner) setup(ctx context.Context) error {
	var addrs map[string]string
	var err error
	r.origin, addrs, err = startRole(ctx, r.dir, "origin")
	if err != nil {
		return err
	}
	r.originAddr = addrs["http"]
	r.originTCPAddr = addrs["tcp"]

	// The same P-256 kind as HopGate's development certificate, so that both pay the same handshake
	// and record costs.
	cert, err := hoptest.SelfSigned(r.dir, "rproxy")
	if err != nil {
		return fmt.Errorf("reverse proxy certificate: %w", err)
	}
	r.rproxyPool = cert.Pool
	r.rproxy, addrs, err = startRole(ctx, r.dir, "rproxy", "-origin", "http://"+r.originAddr, "-cert", cert.CertFile, "-key", cert.KeyFile)
	if err != nil {
		return err
	}
	rproxyAddr := addrs["http"]
	r.rproxyTLSAddr = addrs["tls"]

	var profEnv, profArgs []string
	if r.profiling {
		profEnv = []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0", "HOP_SERVER_PPROF=true"}
		profArgs = []string{"--metrics-listen", "127.0.0.1:0", "--pprof"}
	}
	r.gw, err = startGateway(ctx, r.bin, r.dir, "hopgate-server", []string{benchDomain}, profEnv...)
	if err != nil {
		return err
	}
	key, err := r.gw.Register(ctx, benchDomain)
	if err != nil {
		return err
	}
	r.client, err = r.gw.StartAgent(hoptest.AgentOptions{BinDir: r.bin, Log: filepath.Join(r.dir, "hopgate-client.log"),
		Domain: benchDomain, Key: key, Target: "http://" + r.originAddr, AgentID: "bench", Args: profArgs})
	if err != nil {
		return err
	}
	err = r.gw.WaitAgents(ctx, benchDomain, 1, 20*time.Second, func() error {
		if r.client.Exited() {
			return fmt.Errorf("hopgate-client exited: %s", r.client.Log.Tail(2000))
		}
		return nil
	})
	if err != nil {
		return err
	}

	_, httpsPort, _ := net.SplitHostPort(r.gw.HTTPSAddr)
	r.targets = map[string]target{
		tDirect:  {Name: tDirect, base: "http://" + r.originAddr, dial: r.originAddr, proto: "h1"},
		tRProxy:  {Name: tRProxy, base: "http://" + rproxyAddr, dial: rproxyAddr, proto: "h1"},
		tHopHTTP: {Name: tHopHTTP, base: "http://" + r.gw.HTTPAddr, host: benchDomain, dial: r.gw.HTTPAddr, proto: "h1"},
		tHopTLS: {Name: tHopTLS, base: "https://" + net.JoinHostPort(benchDomain, httpsPort), dial: r.gw.HTTPSAddr, proto: "h1",
			tls: &tls.Config{RootCAs: r.gw.CAPool, ServerName: benchDomain}},
	}
	r.log.Info("stack up", "origin", r.originAddr, "rproxy", rproxyAddr, "hopgate_https", r.gw.HTTPSAddr,
		"hopgate_http", r.gw.HTTPAddr, "server_pid", r.gw.Pid(), "client_pid", r.client.Pid())
	return r.smoke(ctx)
}

// smoke checks that each target serves every origin path whole before anything is measured, and
// records how long the first server-sent event takes (a buffering proxy would hold it back).
func (r *runner) smoke(ctx context.Context) error {
	res := scenarioResult{ID: "S0", Name: "smoke: every path through every target", Targets: map[string]metrics{}}
	for _, name := range targetOrder {
		t := r.targets[name]
		c := t.client(2, 30*time.Second)
		buf := make([]byte, 256*kib)
		if err := getSmall(ctx, c, t); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if _, err := download(ctx, c, t, 3*mib+17, buf); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if _, err := upload(ctx, c, t, 3*mib+17); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		first, total, err := firstEvent(ctx, c, t, 3, 200*time.Millisecond)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.Targets[name] = metrics{"sse_first_event_ms": ms(first), "sse_total_ms": ms(total)}
		closeClient(c)
	}
	rw := res.addRow("SSE: first of 3 events, 200 ms apart", "sse_first_event_ms", msStr)
	rw.Result = "streams (not buffered) if ≪ 400 ms"
	r.result.Scenarios = append(r.result.Scenarios, res)
	return nil
}

// holdForProfiling keeps the stack up for a profiler attached by hand.
func (r *runner) holdForProfiling(ctx context.Context, d time.Duration) {
	fmt.Printf("HopGate stack is up for %s (Ctrl-C to stop):\n", d)
	fmt.Printf("  origin          http://%s            pid %d\n", r.originAddr, r.origin.Pid())
	fmt.Printf("  reverse proxy   %s  (TLS %s)  pid %d\n", r.targets[tRProxy].base, r.rproxyTLSAddr, r.rproxy.Pid())
	fmt.Printf("  hopgate-server  http %s, https %s  pid %d  (Host: %s)\n", r.gw.HTTPAddr, r.gw.HTTPSAddr, r.gw.Pid(), benchDomain)
	fmt.Printf("  hopgate-client  pid %d\n", r.client.Pid())
	fmt.Printf("  e.g. curl -o /dev/null -H 'Host: %s' http://%s/bytes/1073741824\n", benchDomain, r.gw.HTTPAddr)
	for _, p := range []*hoptest.Process{r.gw.Process, r.client} {
		if addr := p.Log.Field("addr", "metrics listening", "serving metrics"); addr != "" {
			fmt.Printf("  %s profiles: go tool pprof http://%s/debug/pprof/profile?seconds=10 (or /heap, /allocs)\n", p.Name, addr)
		}
	}
	fmt.Printf("  logs in %s\n", r.dir)
	r.keep = true
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (r *runner) cleanup() {
	if r.tcp != nil {
		r.tcp.stop()
	}
	for _, p := range []*hoptest.Process{r.client, r.rproxy, r.origin} {
		if p != nil {
			p.Stop(5 * time.Second)
		}
	}
	if r.gw != nil {
		r.gw.Stop(5 * time.Second)
	}
	if r.keep {
		fmt.Fprintf(os.Stderr, "bench: logs and data kept in %s\n", r.dir)
		return
	}
	_ = os.RemoveAll(r.dir)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
