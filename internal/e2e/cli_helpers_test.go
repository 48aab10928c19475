package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clAdmin runs `hopgate-server domains args…` against g, with the admin key in the environment as
// an operator would set it.
func clAdmin(t testing.TB, g *gateway, args ...string) (int, string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(g.addr)
	full := append([]string{"domains"}, args...)
	full = append(full, "--admin-url", "https://localhost:"+port, "--ca-file", g.caFile)
	return run(t, "hopgate-server", full, []string{"HOP_ADMIN_API_KEY=" + g.adminKey}, 30*time.Second)
}

// clClosedAddr is a loopback address where nothing listens.
func clClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// clMetricsAddr waits for the agent to log where it serves metrics.
func clMetricsAddr(t testing.TB, p *process) string {
	t.Helper()
	var addr string
	waitFor(t, 10*time.Second, "the agent's metrics listener", func() bool {
		addr = p.logs.Field("addr", "serving metrics")
		return addr != ""
	})
	return addr
}

// clScrape reads /metrics at addr into series → value, keyed as written: name{labels}.
func clScrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("scrape: %s %s", res.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: bad line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}
