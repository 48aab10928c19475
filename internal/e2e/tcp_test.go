package e2e

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// TCP tunnels (issue 17): a domain in mode tcp gets a public port of HOP_SERVER_TCP_PORTS, and every
// connection to it is carried as a raw stream to the agent, which dials its tcp:// target.

// TestTCPPostgres: a real PostgreSQL session through a TCP tunnel. lib/pq (the driver registered in
// gateway_helpers_test.go) connects to the gateway's public port and reaches this machine's Postgres
// through the agent; 100 MiB go in by COPY and come back by SELECT, row for row, with the same sha256.
func TestTCPPostgres(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t) // skips without Postgres, fails under CI=true
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pgAddr := u.Host
	if u.Port() == "" {
		pgAddr = net.JoinHostPort(u.Hostname(), "5432")
	}
	schema := u.Query().Get("search_path")

	g, low, high := rtStartGateway(t, 4)
	const domain = "pg.tcp.test"
	reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, "")
	if reg.TCPPort < low || reg.TCPPort > high {
		t.Fatalf("assigned port %d, outside the range %d-%d", reg.TCPPort, low, high)
	}
	g.startAgent(domain, reg.Key, "tcp://"+pgAddr)

	u.Host = rtAddr(reg.TCPPort)
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(2)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	waitFor(t, 15*time.Second, "Postgres through the tunnel", func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		defer pcancel()
		return db.PingContext(pctx) == nil
	})
	var got string
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&got); err != nil || got != schema {
		t.Fatalf("current_schema() through the tunnel = %q, %v; want the test's %q", got, err, schema)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE blob (i integer PRIMARY KEY, data text NOT NULL)"); err != nil {
		t.Fatal(err)
	}

	// 100 MiB of text: 12 800 rows of 8 KiB (hex of pseudo-random bytes, so nothing compresses it
	// away on the wire). The hash covers the row numbers and their order too.
	const rows, rowBytes = 12800, 8 << 10
	sent := sha256.New()
	src := tnData(17, rows*rowBytes/2)
	raw := make([]byte, rowBytes/2)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := tx.PrepareContext(ctx, "COPY blob (i, data) FROM STDIN") // lib/pq's COPY IN
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range rows {
		if _, err := io.ReadFull(src, raw); err != nil {
			t.Fatal(err)
		}
		row := hex.EncodeToString(raw)
		fmt.Fprintf(sent, "%d:%s\n", i, row)
		if _, err := stmt.ExecContext(ctx, i, row); err != nil {
			t.Fatalf("COPY row %d: %v", i, err)
		}
	}
	if _, err := stmt.ExecContext(ctx); err != nil {
		t.Fatalf("end COPY: %v", err)
	}
	if err := stmt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	copyIn := time.Since(start)

	start = time.Now()
	res, err := db.QueryContext(ctx, "SELECT i, data FROM blob ORDER BY i")
	if err != nil {
		t.Fatal(err)
	}
	back := sha256.New()
	var n, total int
	for res.Next() {
		var i int
		var data sql.RawBytes
		if err := res.Scan(&i, &data); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(back, "%d:%s\n", i, data)
		n++
		total += len(data)
	}
	if err := res.Err(); err != nil {
		t.Fatalf("read the rows back after %d: %v", n, err)
	}
	res.Close()
	if n != rows || total != rows*rowBytes {
		t.Fatalf("read back %d rows, %d bytes; want %d, %d", n, total, rows, rows*rowBytes)
	}
	if a, b := hex.EncodeToString(sent.Sum(nil)), hex.EncodeToString(back.Sum(nil)); a != b {
		t.Fatalf("sha256 of the rows read back %s, of the rows copied in %s", b, a)
	}
	t.Logf("100 MiB through the TCP tunnel: COPY in %s, SELECT back %s", copyIn.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestTCPEchoHalfClose: an SSH-like stream, 64 MiB each way: the visitor sends everything and
// half-closes, the target echoes and half-closes when it sees the end, and the visitor reads the
// echo to EOF with the same sha256. A requested port is the one served; status and list show the
// mode; the metrics and the access log count the connection.
func TestTCPEchoHalfClose(t *testing.T) {
	t.Parallel()
	target := rtNewTarget(t, false)
	g, low, _ := rtStartGateway(t, 4)
	metrics := tnMetricsAddr(t, g)
	const domain = "echo.tcp.test"
	reg := rtRegister(t, g, domain, hoptest.ModeTCP, low+2, "")
	rtCheckMode(t, "domains/status", rtStatus(t, g, domain), hoptest.ModeTCP, low+2, "")
	rtCheckMode(t, "the domain list", rtListed(t, g, domain), hoptest.ModeTCP, low+2, "")
	g.startAgent(domain, reg.Key, "tcp://"+target.addr)
	addr := rtAddr(reg.TCPPort)
	rtWaitServes(t, addr, 10*time.Second)
	before := target.bytes.Load()

	const size = 64 << 20
	c := rtDial(t, addr)
	_ = c.SetDeadline(time.Now().Add(90 * time.Second))
	sentHash := make(chan string, 1)
	var wg sync.WaitGroup
	var writeErr error
	wg.Go(func() {
		h, n, err := tnHash(io.TeeReader(tnData(64, size), c))
		if err == nil && n != size {
			err = fmt.Errorf("sent %d bytes", n)
		}
		if err == nil {
			err = c.CloseWrite()
		}
		writeErr = err
		sentHash <- h
	})
	gotHash, gotN, err := tnHash(c)
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("send: %v", writeErr)
	}
	if err != nil {
		t.Fatalf("read the echo to EOF after %d bytes: %v", gotN, err)
	}
	if want := <-sentHash; gotN != size || gotHash != want {
		t.Fatalf("echo: %d bytes, sha256 %s; want %d bytes, %s", gotN, gotHash, size, want)
	}
	c.Close()
	if n := target.bytes.Load() - before; n != size {
		t.Errorf("the target read %d bytes, want %d", n, size)
	}

	// The metrics and the access log, once the gateway has seen the connection end.
	var samples map[string]float64
	waitFor(t, 10*time.Second, "no TCP connection open in the metrics", func() bool {
		samples = rtScrape(t, metrics, "hopgate_tcp_")
		_, exported := samples[`hopgate_tcp_connections_open{mode="tcp"}`]
		return exported && samples[`hopgate_tcp_connections_open{mode="tcp"}`] == 0 &&
			rtSum(samples, "hopgate_tcp_connection_duration_seconds_count", `mode="tcp"`) >= 2
	})
	if n := rtSum(samples, "hopgate_tcp_connections_total", `mode="tcp"`); n < 2 {
		t.Errorf("hopgate_tcp_connections_total{mode=\"tcp\"} adds up to %v, want at least 2 (the probe and the transfer)", n)
	}
	if n := rtSum(samples, "hopgate_tcp_bytes_total", `mode="tcp"`); n < 2*size {
		t.Errorf("hopgate_tcp_bytes_total{mode=\"tcp\"} adds up to %v, want at least %d (64 MiB each way)", n, 2*size)
	}
	for _, tc := range []string{"tcp connection opened", "tcp connection closed"} {
		if len(rtLogEntries(g.process, tc)) < 2 {
			t.Errorf("fewer than 2 access log lines %q:\n%s", tc, strings.Join(lines(g.process, "tcp connection"), "\n"))
		}
	}
	found := false
	for _, e := range rtLogEntries(g.process, "tcp connection closed") {
		if rtNum(e, "bytes_in") == size && rtNum(e, "bytes_out") == size {
			found = true
			if e["reason"] == nil || e["duration"] == nil {
				t.Errorf("the closing line has no reason or duration: %v", e)
			}
		}
	}
	if !found {
		t.Errorf("no \"tcp connection closed\" line with bytes_in = bytes_out = %d:\n%s", size, strings.Join(lines(g.process, "tcp connection closed"), "\n"))
	}
}

// TestTCPManyConnections: 200 connections at once through one TCP tunnel, each with its own small
// exchange and half-close; the agent reads its tcp:// target from a YAML config file.
func TestTCPManyConnections(t *testing.T) {
	t.Parallel()
	target := rtNewTarget(t, false)
	g, _, _ := rtStartGateway(t, 4)
	const domain = "many.tcp.test"
	reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, "")
	file := filepath.Join(t.TempDir(), "hopgate.yaml")
	writeConfig(t, file, fmt.Sprintf("server_addr: %s\nca_file: %s\nservices:\n  - hostname: %s\n    api_key: %s\n    target: tcp://%s\n",
		g.addr, g.caFile, domain, reg.Key, target.addr))
	g.startConfigAgent(t, file, nil, domain)
	addr := rtAddr(reg.TCPPort)
	rtWaitServes(t, addr, 10*time.Second)
	conns0 := target.conns.Load()

	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			errs[i] = rtRoundTripWithin(addr, fmt.Sprintf("connection %03d says hello\n", i), 30*time.Second)
		})
	}
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			if failed++; failed <= 5 {
				t.Errorf("connection %d: %v", i, err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent connections failed", failed, n)
	}
	if got := target.conns.Load() - conns0; got < n {
		t.Errorf("the target accepted %d connections, want %d (and the agent's health checks)", got, n)
	}
	t.Logf("%d concurrent connections, each dial + echo + half-close, in %s", n, time.Since(start).Round(time.Millisecond))
}

// TestTCPAgentKilled: the agent dies while a visitor's connection is open: the visitor's connection
// is closed, and once a new agent connects the same port serves again.
func TestTCPAgentKilled(t *testing.T) {
	t.Parallel()
	target := rtNewTarget(t, false)
	g, _, _ := rtStartGateway(t, 4)
	const domain = "kill.tcp.test"
	reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, "")
	agent := g.startAgent(domain, reg.Key, "tcp://"+target.addr)
	addr := rtAddr(reg.TCPPort)
	rtWaitServes(t, addr, 10*time.Second)

	c := rtDial(t, addr)
	if err := rtExchange(c, "before the agent dies\n"); err != nil {
		t.Fatal(err)
	}
	agent.hp.Kill()
	if err := rtClosedByPeer(c, 15*time.Second); err != nil {
		t.Fatalf("visitor connection after the agent was killed: %v", err)
	}
	tnWaitAgents(t, g, domain, 0, 15*time.Second)

	g.startAgent(domain, reg.Key, "tcp://"+target.addr)
	rtWaitServes(t, addr, 15*time.Second)
	if err := rtRoundTrip(addr, "after a new agent connected\n"); err != nil {
		t.Fatal(err)
	}
}

// TestTCPAdminErrors: what the admin API answers for ports it cannot give, and that unregister gives
// a port back: a port another process listens on (409 naming it), a port held by another domain
// (409 naming it), a port outside the range (400), a bad mode (400), an unknown domain (404), the
// range exhausted (409), and TCP mode off (400 naming HOP_SERVER_TCP_PORTS).
func TestTCPAdminErrors(t *testing.T) {
	t.Parallel()
	// Three ports: domains a and b take the first two; the test holds a listener on the third.
	low, high := rtPorts(t, 3)
	held, err := net.Listen("tcp", rtAddr(high))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	g := startGateway(t, gatewayOptions{Env: rtEnv(low, high)})

	a := rtRegister(t, g, "a.tcp.test", hoptest.ModeTCP, low, "")
	b := rtRegister(t, g, "b.tcp.test", hoptest.ModeTCP, low+1, "v1")
	webKey := g.register("web.tcp.test") // an HTTP-mode domain needs no port

	const register, mode = "/api/v1/admin/domains/register", "/api/v1/admin/domains/mode"
	refused := func(t *testing.T, path string, body map[string]any, want int, names ...string) string {
		t.Helper()
		code, out := rtAdmin(t, g, http.MethodPost, path, body)
		msg := rtErrorText(out)
		if code != want || msg == "" || out["success"] != false {
			t.Fatalf("%v: %d %v, want %d with an error message", body, code, out, want)
		}
		for _, s := range names {
			if !strings.Contains(msg, s) {
				t.Errorf("%v: message %q does not name %s", body, msg, s)
			}
		}
		t.Logf("%v: %d %s", body, code, msg)
		return msg
	}
	for _, tc := range []struct {
		name  string
		path  string
		body  map[string]any
		code  int
		names []string // each must appear in the error message
	}{
		{"port in use by another process", register, map[string]any{"domain": "c.tcp.test", "mode": "tcp", "tcp_port": high},
			http.StatusConflict, []string{fmt.Sprint(high)}},
		{"port in use by another process on a mode change", mode, map[string]any{"domain": "web.tcp.test", "mode": "tcp", "tcp_port": high},
			http.StatusConflict, []string{fmt.Sprint(high)}},
		{"port held by another domain", register, map[string]any{"domain": "c.tcp.test", "mode": "tcp", "tcp_port": a.TCPPort},
			http.StatusConflict, []string{fmt.Sprint(a.TCPPort)}},
		{"port held by another domain on a mode change", mode, map[string]any{"domain": "web.tcp.test", "mode": "tcp", "tcp_port": b.TCPPort},
			http.StatusConflict, []string{fmt.Sprint(b.TCPPort)}},
		{"port outside the range", register, map[string]any{"domain": "c.tcp.test", "mode": "tcp", "tcp_port": high + 1},
			http.StatusBadRequest, []string{fmt.Sprint(high + 1)}},
		{"bad mode", register, map[string]any{"domain": "c.tcp.test", "mode": "udp"}, http.StatusBadRequest, nil},
		{"bad mode on a mode change", mode, map[string]any{"domain": "web.tcp.test", "mode": "udp"}, http.StatusBadRequest, nil},
		{"bad proxy protocol", register, map[string]any{"domain": "c.tcp.test", "mode": "tcp", "proxy_protocol": "v3"}, http.StatusBadRequest, nil},
		{"unknown domain", mode, map[string]any{"domain": "nobody.tcp.test", "mode": "tcp"}, http.StatusNotFound, nil},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, tc.path, tc.body, tc.code, tc.names...) })
	}
	if st := rtStatus(t, g, "c.tcp.test"); st["exists"] != false {
		t.Errorf("a refused registration registered c.tcp.test all the same: %v", st)
	}
	rtCheckMode(t, "web after refused mode changes", rtStatus(t, g, "web.tcp.test"), hoptest.ModeHTTP, 0, "")

	// Once the other process lets go, its port is the one left, then none is.
	held.Close()
	c := rtRegister(t, g, "c.tcp.test", hoptest.ModeTCP, 0, "")
	if c.TCPPort != high {
		t.Fatalf("c got port %d, want %d, the only one left", c.TCPPort, high)
	}
	t.Run("range exhausted", func(t *testing.T) {
		rangeText := fmt.Sprintf("%d-%d", low, high)
		for _, tc := range []struct {
			path string
			body map[string]any
		}{
			{register, map[string]any{"domain": "d.tcp.test", "mode": "tcp"}},
			{mode, map[string]any{"domain": "web.tcp.test", "mode": "tcp"}},
		} {
			if msg := refused(t, tc.path, tc.body, http.StatusConflict); !strings.Contains(msg, rangeText) && !strings.Contains(msg, "HOP_SERVER_TCP_PORTS") {
				t.Errorf("message %q names neither the range %s nor HOP_SERVER_TCP_PORTS", msg, rangeText)
			}
		}
	})

	// Unregister gives a's port back: another domain gets it by a mode change, and it is served.
	if code, out := rtAdmin(t, g, http.MethodPost, "/api/v1/admin/domains/unregister", map[string]any{"domain": "a.tcp.test"}); code != http.StatusOK {
		t.Fatalf("unregister a: %d %v", code, out)
	}
	code, out := rtAdmin(t, g, http.MethodPost, mode, map[string]any{"domain": "web.tcp.test", "mode": "tcp", "tcp_port": a.TCPPort})
	if code != http.StatusOK || out["success"] != true || out["domain"] != "web.tcp.test" {
		t.Fatalf("web takes a's port after a was unregistered: %d %v", code, out)
	}
	rtCheckMode(t, "the mode change's answer", out, hoptest.ModeTCP, a.TCPPort, "")
	rtCheckMode(t, "domains/status after the mode change", rtStatus(t, g, "web.tcp.test"), hoptest.ModeTCP, a.TCPPort, "")
	target := rtNewTarget(t, false)
	g.startAgent("web.tcp.test", webKey, "tcp://"+target.addr)
	rtWaitServes(t, rtAddr(a.TCPPort), 10*time.Second)

	// Back to HTTP mode: the port closes and is free again.
	code, out = rtAdmin(t, g, http.MethodPost, mode, map[string]any{"domain": "web.tcp.test", "mode": "http"})
	if code != http.StatusOK {
		t.Fatalf("back to http: %d %v", code, out)
	}
	rtCheckMode(t, "the mode change's answer", out, hoptest.ModeHTTP, 0, "")
	waitFor(t, 10*time.Second, "the port closed after the domain left TCP mode", func() bool {
		c, err := net.DialTimeout("tcp", rtAddr(a.TCPPort), time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	rtRegister(t, g, "d.tcp.test", hoptest.ModeTCP, a.TCPPort, "")

	// A gateway without HOP_SERVER_TCP_PORTS refuses TCP mode, naming the setting; passthrough needs
	// no port and is accepted.
	off := startGateway(t, gatewayOptions{})
	code, out = rtAdmin(t, off, http.MethodPost, register, map[string]any{"domain": "c.tcp.test", "mode": "tcp"})
	if code != http.StatusBadRequest || !strings.Contains(rtErrorText(out), "HOP_SERVER_TCP_PORTS") {
		t.Errorf("TCP mode with TCP tunnels off: %d %v, want 400 naming HOP_SERVER_TCP_PORTS", code, out)
	}
	rtRegister(t, off, "pass.tcp.test", hoptest.ModePassthrough, 0, "")
}

// TestTCPPortSurvivesRestart: the port a domain got is stored: after a restart on the same data dir
// the agent reconnects and the same port serves.
func TestTCPPortSurvivesRestart(t *testing.T) {
	t.Parallel()
	target := rtNewTarget(t, true)
	low, high := rtPorts(t, 8)
	env := rtEnv(low, high)
	g := startGateway(t, gatewayOptions{Env: env})
	const domain = "restart.tcp.test"
	reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, "v2")
	rtRegister(t, g, "other.tcp.test", hoptest.ModeTCP, 0, "") // a second port, so that order does not decide
	agent := g.startAgent(domain, reg.Key, "tcp://"+target.addr)
	addr := rtAddr(reg.TCPPort)

	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit %d", code)
	}
	g2 := startGateway(t, gatewayOptions{Addr: g.addr, DataDir: g.dataDir, Env: env})
	waitFor(t, 20*time.Second, "the agent back on the restarted gateway", func() bool {
		if agent.exited() {
			t.Fatalf("agent exited:\n%s", agent.logs.String())
		}
		return g2.agents(domain) == 1
	})
	rtCheckMode(t, "domains/status after the restart", rtStatus(t, g2, domain), hoptest.ModeTCP, reg.TCPPort, "v2")

	// v2: the target reads a PROXY header first, then echoes.
	c := rtDial(t, addr)
	if err := rtExchange(c, "after the restart\n"); err != nil {
		t.Fatalf("port %d after the restart: %v", reg.TCPPort, err)
	}
	if h := target.header(t); h.Version != 2 {
		t.Errorf("PROXY header version %d after the restart, want 2", h.Version)
	}
}

// TestTCPLimits: HOP_SERVER_TCP_MAX_CONNS_PER_DOMAIN caps a domain's open connections (one more is
// closed at once, and served again once one ends) and HOP_SERVER_TCP_IDLE_TIMEOUT closes a
// connection with no byte either way for that long.
func TestTCPLimits(t *testing.T) {
	t.Parallel()
	const idleTimeout = 5 * time.Second
	target := rtNewTarget(t, false)
	g, _, _ := rtStartGateway(t, 4, "HOP_SERVER_TCP_MAX_CONNS_PER_DOMAIN=2", "HOP_SERVER_TCP_IDLE_TIMEOUT="+idleTimeout.String())
	const domain = "limits.tcp.test"
	reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, "")
	g.startAgent(domain, reg.Key, "tcp://"+target.addr)
	addr := rtAddr(reg.TCPPort)
	rtWaitServes(t, addr, 10*time.Second)

	first, second := rtDial(t, addr), rtDial(t, addr)
	for _, c := range []net.Conn{first, second} {
		if err := rtExchange(c, "within the limit\n"); err != nil {
			t.Fatal(err)
		}
	}
	// Well before the idle timeout, so that it is the limit that closes it.
	third := rtDial(t, addr)
	_, _ = io.WriteString(third, "one too many\n")
	if err := rtClosedByPeer(third, idleTimeout/2); err != nil {
		t.Errorf("a third connection with a limit of 2: %v", err)
	}
	second.Close()
	var last error
	waitFor(t, 5*time.Second, "a connection served again after one of the two ended", func() bool {
		last = rtRoundTripWithin(addr, "room again\n", 3*time.Second)
		return last == nil
	})
	first.Close()

	// An idle connection is closed after about the idle timeout, not before. The gateway frees the
	// slots of the connections just closed when it sees their FIN, which may be after this dial:
	// until then a connection over the cap is closed at once, so dial again.
	var idle net.Conn
	waitFor(t, 5*time.Second, "a connection under the cap for the idle check", func() bool {
		c := rtDial(t, addr)
		if last = rtExchange(c, "then nothing\n"); last != nil {
			c.Close()
			return false
		}
		idle = c
		return true
	})
	since := time.Now()
	if err := rtClosedByPeer(idle, 3*idleTimeout); err != nil {
		t.Fatalf("idle connection: %v", err)
	}
	if d := time.Since(since); d < idleTimeout*8/10 {
		t.Errorf("an idle connection closed after %s, want about %s (HOP_SERVER_TCP_IDLE_TIMEOUT)", d, idleTimeout)
	}
	reasons := map[string]int{}
	for _, e := range rtLogEntries(g.process, "tcp connection closed") {
		r, _ := e["reason"].(string)
		reasons[r]++
	}
	t.Logf("close reasons in the access log: %v", reasons)
}
