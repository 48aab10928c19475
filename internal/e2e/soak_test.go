package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

const (
	soakBig     = 1 << 20
	soakSmall   = 4 << 10
	soakChunks  = 16
	soakWorkers = 64
	soakLoad    = 60 * time.Second
	soakMaxReqs = 6000
	// soakIdleConns is the gateway's HOP_DB_MAX_IDLE_CONNS.
	soakIdleConns = 2
)

// soakKinds are the request kinds every worker cycles through.
var soakKinds = []string{"small", "big", "upload", "stream", "ws"}

// soakBytes is the deterministic body for seed, held once (the target and the checks share it).
func soakBytes(seed byte, n int64) []byte {
	b, err := io.ReadAll(tnData(seed, n))
	if err != nil {
		panic(err)
	}
	return b
}

func soakSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// soakTally counts outcomes by kind and reason; corrupt ones are also test failures.
type soakTally struct {
	mu  sync.Mutex
	ok  map[string]int
	bad map[string]int
}

func (s *soakTally) add(kind, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reason == "" {
		s.ok[kind]++
		return
	}
	s.bad[kind+"/"+reason]++
}

// soakClientGoroutines counts the goroutines labelled soak=client: the workers' and everything
// they started (transport connections inherit the label).
func soakClientGoroutines() int {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	n := 0
	for block := range strings.SplitSeq(buf.String(), "\n\n") {
		if !strings.Contains(block, `"soak":"client"`) {
			continue
		}
		first, _, _ := strings.Cut(block, " ")
		if c, err := strconv.Atoi(first); err == nil {
			n += c
		}
	}
	return n
}

// TestSoak: 64 clients with mixed bodies (small, 1 MiB, upload, streaming, WebSocket) over HTTP/1.1
// and HTTP/2 while agents are killed and restarted; every response that completed is byte-exact,
// every broken one broke visibly, and afterwards the gateway's goroutines, descriptors, heap and
// database pool as well as the client's goroutines are back to their baseline.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test")
	}
	t.Parallel()
	start := time.Now()
	const domain = "soak.example.test"

	small, big, stream := soakBytes(1, soakSmall), soakBytes(2, soakBig), soakBytes(3, soakBig)
	sums := map[string]string{"small": soakSum(small), "big": soakSum(big), "stream": soakSum(stream)}
	upload := soakBytes(4, soakBig)
	uploadSum := soakSum(upload)

	target := htServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/small", "/big":
			b := small
			if r.URL.Path == "/big" {
				b = big
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.Header().Set("X-Sha256", soakSum(b))
			_, _ = w.Write(b)
		case "/upload":
			sum, n, err := tnHash(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			_, _ = fmt.Fprintf(w, "%s %d", sum, n)
		case "/stream":
			w.Header().Set("Trailer", "X-Sha256")
			f := w.(http.Flusher)
			step := len(stream) / soakChunks
			for i := range soakChunks {
				if _, err := w.Write(stream[i*step : (i+1)*step]); err != nil {
					return
				}
				f.Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(60 * time.Millisecond):
				}
			}
			w.Header().Set("X-Sha256", sums["stream"])
		case "/ws":
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			c.SetReadLimit(1 << 20)
			ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
			defer cancel()
			for {
				typ, b, err := c.Read(ctx)
				if err != nil {
					return
				}
				if err := c.Write(ctx, typ, b); err != nil {
					return
				}
			}
		default:
			http.NotFound(w, r)
		}
	}))

	// The gateway's pool connections are told apart from everyone else's by application_name.
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	app := "soak_" + hex.EncodeToString(rb[:])
	u, err := url.Parse(pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	db, err := sql.Open("postgres", pgtest.BaseDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	pool := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name=$1", app).Scan(&n); err != nil {
			t.Fatalf("count pool connections: %v", err)
		}
		return n
	}

	g := startGateway(t, gatewayOptions{DSN: u.String(),
		Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0", "HOP_SERVER_PPROF=true",
			// A small idle limit, so that connections left checked out (a leak) exceed what the pool may
			// legitimately keep after a burst.
			"HOP_DB_MAX_IDLE_CONNS=" + strconv.Itoa(soakIdleConns)}})
	metrics := tnMetricsAddr(t, g)
	key := g.register(domain)
	agents := make([]*process, 0, 3)
	for range 3 {
		agents = append(agents, g.startAgent(domain, key, target.URL))
	}

	h1, h2 := g.httpClient(false), g.httpClient(true)
	wsClient := g.httpClient(false)
	clients := []*http.Client{h1, h2}
	closeIdle := func() {
		for _, c := range []*http.Client{h1, h2, wsClient} {
			c.CloseIdleConnections()
		}
	}

	// one exchange of kind over c; reason is "" on success. A completed response that is not
	// byte-exact is reported through corrupt, never as a mere failure.
	var corrupt atomic.Int64
	bad := func(format string, args ...any) string {
		if corrupt.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
		return "corrupt"
	}
	one := func(ctx context.Context, c *http.Client, kind string, i int) string {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if kind == "ws" {
			conn, _, err := websocket.Dial(ctx, g.url(domain, "/ws"), &websocket.DialOptions{HTTPClient: wsClient})
			if err != nil {
				return "ws-dial"
			}
			defer conn.CloseNow()
			conn.SetReadLimit(1 << 20)
			for m := range 8 {
				msg := big[(i*7919+m*101)%soakBig:]
				msg = msg[:min(len(msg), 1+(i*31+m*977)%(64<<10))]
				if err := conn.Write(ctx, websocket.MessageBinary, msg); err != nil {
					return "ws-write"
				}
				typ, b, err := conn.Read(ctx)
				if err != nil {
					return "ws-read"
				}
				if typ != websocket.MessageBinary || !bytes.Equal(b, msg) {
					return bad("ws message %d of %d: got %d bytes type %v, want %d exact", m, i, len(b), typ, len(msg))
				}
			}
			if err := conn.Close(websocket.StatusNormalClosure, ""); err != nil {
				return "ws-close"
			}
			return ""
		}
		var req *http.Request
		if kind == "upload" {
			var body io.Reader = bytes.NewReader(upload)
			if i%2 == 0 {
				body = gwHideLength{body}
			}
			req, _ = http.NewRequestWithContext(ctx, http.MethodPost, g.url(domain, "/upload"), body)
		} else {
			req, _ = http.NewRequestWithContext(ctx, http.MethodGet, g.url(domain, "/"+kind), nil)
		}
		res, err := c.Do(req)
		if err != nil {
			return "transport"
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			_, _ = io.Copy(io.Discard, res.Body)
			return "status-" + strconv.Itoa(res.StatusCode)
		}
		if kind == "upload" {
			b, err := io.ReadAll(res.Body)
			if err != nil {
				return "body"
			}
			if want := fmt.Sprintf("%s %d", uploadSum, soakBig); string(b) != want {
				return bad("upload %d (%s): target got %q, want %q", i, res.Proto, b, want)
			}
			return ""
		}
		sum, n, err := tnHash(res.Body)
		if err != nil {
			return "body"
		}
		want, wantLen := sums[kind], int64(soakBig)
		if kind == "small" {
			wantLen = soakSmall
		}
		if sum != want || n != wantLen {
			return bad("%s %d (%s) completed with %d bytes sha256 %s, want %d bytes %s", kind, i, res.Proto, n, sum, wantLen, want)
		}
		if kind == "stream" && res.Trailer.Get("X-Sha256") != want {
			return bad("stream %d (%s) completed with trailer %q, want %q", i, res.Proto, res.Trailer.Get("X-Sha256"), want)
		}
		if kind != "stream" && res.Header.Get("X-Sha256") != want {
			return bad("%s %d: header sha256 %q, want %q", kind, i, res.Header.Get("X-Sha256"), want)
		}
		return ""
	}

	// Warm up every path, then take the baseline with no visitor connection open.
	pprof.Do(context.Background(), pprof.Labels("soak", "client"), func(ctx context.Context) {
		for i, kind := range soakKinds {
			for _, c := range clients {
				if r := one(ctx, c, kind, i); r != "" {
					t.Fatalf("warm-up %s: %s", kind, r)
				}
			}
		}
	})
	closeIdle()
	waitFor(t, 10*time.Second, "client goroutines after warm-up", func() bool { return soakClientGoroutines() == 0 })
	type usage struct{ goroutines, fds, heap, pool float64 }
	measure := func() usage {
		res, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + metrics + "/debug/pprof/heap?gc=1")
		if err != nil {
			t.Fatalf("force gc: %v", err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return usage{tnMetric(t, metrics, "go_goroutines"), tnMetric(t, metrics, "process_open_fds"),
			tnMetric(t, metrics, "go_memstats_heap_inuse_bytes"), float64(pool())}
	}
	// Visitor connections close asynchronously after CloseIdleConnections; the 3 agents' tunnels stay.
	settle := func() {
		g.hop.CloseIdleConnections()
		deadline := time.Now().Add(10 * time.Second)
		for tnMetric(t, metrics, "hopgate_connections_open") > 3 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	settle()
	base := measure()

	// Chaos: kill a random agent every 3-5 s and start a replacement; once, kill them all for 1 s.
	ctx, stop := context.WithTimeout(t.Context(), soakLoad)
	defer stop()
	var kills atomic.Int64
	startAgent := func() *process {
		hp, err := g.hop.StartAgent(hoptest.AgentOptions{BinDir: binDir, Log: logFile(t, "hopgate-client"),
			Domain: domain, Key: key, Target: target.URL})
		if err != nil {
			t.Errorf("start agent: %v", err)
			return nil
		}
		p := watch(t, hp)
		deadline := time.Now().Add(20 * time.Second)
		for len(lines(p, "tunnel up")) == 0 {
			if p.exited() || time.Now().After(deadline) {
				t.Errorf("replacement agent not up (exited %v):\n%s", p.exited(), p.logs.String())
				return p
			}
			time.Sleep(50 * time.Millisecond)
		}
		return p
	}
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		for round := 0; ; round++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(3000+mrand.IntN(2000)) * time.Millisecond):
			}
			if round == 2 {
				for _, p := range agents {
					if p != nil {
						p.hp.Kill()
						kills.Add(1)
					}
				}
				time.Sleep(time.Second)
				for i := range agents {
					agents[i] = startAgent()
				}
				continue
			}
			i := mrand.IntN(len(agents))
			if agents[i] != nil {
				agents[i].hp.Kill()
				kills.Add(1)
			}
			agents[i] = startAgent()
		}
	}()

	tally := &soakTally{ok: map[string]int{}, bad: map[string]int{}}
	var sent atomic.Int64
	var wg sync.WaitGroup
	pprof.Do(ctx, pprof.Labels("soak", "client"), func(ctx context.Context) {
		for w := range soakWorkers {
			wg.Go(func() {
				c := clients[w%2]
				for i := w; ctx.Err() == nil && sent.Add(1) <= soakMaxReqs; i += soakWorkers {
					kind := soakKinds[i%len(soakKinds)]
					r := one(ctx, c, kind, i)
					if r != "" && ctx.Err() != nil && r != "corrupt" {
						return // cut off by the end of the run, not by the gateway
					}
					tally.add(kind, r)
				}
			})
		}
	})
	wg.Wait()
	stop()
	<-chaosDone
	loadEnd := time.Now()

	var summary strings.Builder
	for _, k := range soakKinds {
		fmt.Fprintf(&summary, " %s=%d", k, tally.ok[k])
	}
	fmt.Fprintf(&summary, "; failed:")
	for k, n := range tally.bad {
		fmt.Fprintf(&summary, " %s=%d", k, n)
	}
	t.Logf("soak: %d requests, %d agent kills; completed:%s", min(sent.Load(), soakMaxReqs), kills.Load(), summary.String())
	for _, k := range soakKinds {
		if tally.ok[k] < 10 {
			t.Errorf("only %d %s exchanges completed: the gateway did not serve through the chaos", tally.ok[k], k)
		}
	}

	tnWaitAgents(t, g, domain, 3, 30*time.Second)
	closeIdle()
	settle()
	waitFor(t, 15*time.Second, "client goroutines back to 0", func() bool { return soakClientGoroutines() == 0 })
	var now usage
	ok := func() bool {
		now = measure()
		return now.goroutines <= base.goroutines+10 && now.fds <= base.fds+10 &&
			now.heap <= max(2*base.heap, base.heap+32<<20) && now.pool <= max(base.pool, soakIdleConns+1) // +1: the change-feed listener
	}
	deadline := time.Now().Add(20 * time.Second)
	for !ok() && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("baseline %+v, after %+v (settled %s after the load; test %s)", base, now,
		time.Since(loadEnd).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if !ok() {
		t.Errorf("gateway resources not back to baseline: %+v, baseline %+v\n%s", now, base, soakGoroutineDump(t, metrics))
	}
}

// soakGoroutineDump is the gateway's goroutine profile (for a leak's report), first lines only.
func soakGoroutineDump(t testing.TB, metrics string) string {
	res, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + metrics + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	var out strings.Builder
	sc := bufio.NewScanner(res.Body)
	for n := 0; sc.Scan() && n < 80; n++ {
		out.WriteString(sc.Text() + "\n")
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("goroutine dump: %v", err)
	}
	return out.String()
}
