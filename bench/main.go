// Command bench measures HopGate against a direct connection to the origin and against a plain
// httputil.ReverseProxy, in one run on this machine (issue 8). It starts every part itself on
// loopback: an origin, a reverse proxy, the real hopgate-server and hopgate-client binaries, and
// (for the tunnel-count scenarios) fake agents built on internal/tunnel. It prints a markdown table,
// writes the figures as JSON under bench/results/, and exits 0 unless the harness itself broke:
// slow numbers are reported against the targets, never turned into a failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	role := flag.String("role", "", "internal: run as a helper process (origin, rproxy or floor)")
	profileName := flag.String("profile", "quick", "quick (under 5 minutes on 2 cores) or full (the issue's sizes)")
	only := flag.String("only", "", "comma-separated scenario ids to run (e.g. S1,S4); empty runs the profile's set")
	binDir := flag.String("bin", "bin", "directory holding hopgate-server and hopgate-client (make build)")
	resultsDir := flag.String("results", filepath.Join("bench", "results"), "directory for the JSON result")
	keep := flag.Bool("keep", false, "keep the temporary directory (server logs, data dir) and print where it is")
	hold := flag.Duration("hold", 0, "start everything, print the endpoints and pids, and wait this long (or until Ctrl-C) "+
		"instead of measuring: for profiling by hand (see bench/README.md)")
	s8Steps := flag.String("s8-steps", "", "override the S8 tunnel counts, comma-separated and increasing (e.g. 1,100,1000)")
	s9Tunnels := flag.Int("s9-tunnels", 0, "override the S9 tunnel count (0: the profile's)")
	s9Domains := flag.Int("s9-domains", 0, "override the S9 domain count (0: the profile's)")
	s9Seconds := flag.Int("s9-seconds", 0, "override the S9 load duration in seconds (0: the profile's)")
	originFlag := flag.String("origin", "", "internal: origin base URL for -role rproxy")
	certFlag := flag.String("cert", "", "internal: TLS certificate file for -role rproxy or floor")
	keyFlag := flag.String("key", "", "internal: TLS key file for -role rproxy or floor")
	flag.Parse()

	switch *role {
	case "":
	case "origin":
		runRole(serveOrigin)
		return
	case "rproxy":
		runRole(func(ctx context.Context) error { return serveReverseProxy(ctx, *originFlag, *certFlag, *keyFlag) })
		return
	case "floor":
		runRole(func(ctx context.Context) error { return serveFloor(ctx, *certFlag, *keyFlag) })
		return
	default:
		fatalf("unknown -role %q", *role)
	}

	p, ok := profiles[*profileName]
	if !ok {
		fatalf("unknown -profile %q (quick or full)", *profileName)
	}
	if *s8Steps != "" {
		p.S8Steps = nil
		for _, f := range strings.Split(*s8Steps, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || (len(p.S8Steps) > 0 && n <= p.S8Steps[len(p.S8Steps)-1]) {
				fatalf("bad -s8-steps %q: want increasing positive counts", *s8Steps)
			}
			p.S8Steps = append(p.S8Steps, n)
		}
		if len(p.S8Steps) < 2 {
			fatalf("bad -s8-steps %q: want at least two counts", *s8Steps)
		}
	}
	if *s9Tunnels > 0 {
		p.S9Tunnels = *s9Tunnels
	}
	if *s9Domains > 0 {
		p.S9Domains = *s9Domains
	}
	if *s9Seconds > 0 {
		p.S9Duration = time.Duration(*s9Seconds) * time.Second
	}
	if *only != "" {
		p.Scenarios = nil
		for _, id := range strings.Split(*only, ",") {
			id = strings.ToUpper(strings.TrimSpace(id))
			if !slices.Contains(allScenarios, id) {
				fatalf("unknown scenario %q in -only (known: %s)", id, strings.Join(allScenarios, ","))
			}
			p.Scenarios = append(p.Scenarios, id)
		}
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	raiseFileLimit(log)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The whole run is bounded, whatever happens to the product under test.
	ctx, cancel := context.WithTimeout(ctx, p.Deadline)
	defer cancel()

	r := &runner{p: p, bin: *binDir, log: log, keep: *keep}
	code := r.run(ctx, *hold, *resultsDir)
	os.Exit(code)
}

// raiseFileLimit lifts the soft open-file limit to the hard one: S9 holds one connection per tunnel
// here and another in the server, which inherits the limit.
func raiseFileLimit(log *slog.Logger) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur >= l.Max {
		return
	}
	want := l
	want.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		log.Warn("cannot raise the open-file limit", "soft", l.Cur, "hard", l.Max, "err", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

// machine describes where the figures come from; they only make sense as ratios within one run.
type machine struct {
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Commit    string `json:"commit,omitempty"`
	// LoadAvg is /proc/loadavg when the run started and ended: other work on the machine shows here.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end,omitempty"`
}

func thisMachine() machine {
	return machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, Commit: gitCommit(), LoadAvgStart: loadAvg()}
}

// loadAvg is the 1, 5 and 15 minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
