package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// tnTarget is a local target (the private service) in the test process, closed at cleanup.
func tnTarget(t testing.TB, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(func() {
		// Handlers blocked on a visitor that is gone end with their connections.
		s.CloseClientConnections()
		s.Close()
	})
	return s
}

// tnData is n deterministic pseudo-random bytes, generated as they are read (nothing held in memory).
func tnData(seed byte, n int64) io.Reader {
	var s [32]byte
	for i := range s {
		s[i] = seed + byte(i)
	}
	return io.LimitReader(rand.NewChaCha8(s), n)
}

// tnZeros is an endless cheap body, for when only the volume matters.
type tnZeros struct{}

func (tnZeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// tnCounter discards what it is given and counts it as it goes.
type tnCounter struct{ n *atomic.Int64 }

func (c tnCounter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// tnHash returns the hex sha256 and length of everything r yields.
func tnHash(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// tnVmHWM is the peak resident set size of process pid, in bytes.
func tnVmHWM(t testing.TB, pid int) int64 {
	t.Helper()
	kib, err := hoptest.MemKiB(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	return kib << 10
}

// tnMetricsAddr is the address of the gateway's metrics listener (HOP_SERVER_METRICS_LISTEN=127.0.0.1:0).
func tnMetricsAddr(t testing.TB, g *gateway) string {
	t.Helper()
	var addr string
	waitFor(t, 5*time.Second, "metrics listener in the server log", func() bool {
		addr = g.logs.Field("addr", "metrics listening")
		return addr != ""
	})
	return addr
}

// tnMetric reads one unlabelled series from /metrics at addr.
func tnMetric(t testing.TB, addr, name string) float64 {
	t.Helper()
	for line := range strings.Lines(opsScrape(t, addr)) {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("parse %s: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

// tnGet sends a GET and returns status and body; a transport error fails the test.
func tnGet(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return res.StatusCode, string(b)
}

// tnTry is tnGet for goroutines: it reports errors instead of failing.
func tnTry(ctx context.Context, c *http.Client, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

// tnClosedAddr is a loopback address where nothing listens.
func tnClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// tnPercentile returns the p-th percentile (0 < p <= 1) of ds (nearest rank).
func tnPercentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// tnLatencies sends n GETs at once and returns how long each took; any failure is an error.
func tnLatencies(c *http.Client, url string, n int) ([]time.Duration, error) {
	ds := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			code, body, err := tnTry(ctx, c, fmt.Sprintf("%s?i=%d", url, i))
			ds[i] = time.Since(start)
			if err == nil && (code != http.StatusOK || body != "pong") {
				err = fmt.Errorf("request %d: %d %q", i, code, body)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return ds, err
		}
	}
	return ds, nil
}

// tnWaitAgents waits until the admin API reports n agents for domain.
func tnWaitAgents(t testing.TB, g *gateway, domain string, n int, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, d, fmt.Sprintf("%d agents for %s", n, domain), func() bool { return g.agents(domain) == n })
	return time.Since(start)
}
