package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestTunnelRoundTrip: method, path, raw query, repeated headers, Host and body reach the target; the
// gateway sets X-Forwarded-* itself; the target's repeated response headers reach the visitor.
func TestTunnelRoundTrip(t *testing.T) {
	t.Parallel()
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Add("Set-Cookie", "a=1; Path=/")
		w.Header().Add("Set-Cookie", "b=2; Path=/")
		w.Header().Set("X-Target", "yes")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "uri": r.RequestURI, "host": r.Host,
			"multi": r.Header.Values("X-Multi"), "custom": r.Header.Get("X-Custom"),
			"xff": r.Header.Values("X-Forwarded-For"), "xfp": r.Header.Get("X-Forwarded-Proto"),
			"xfh": r.Header.Get("X-Forwarded-Host"), "ctype": r.Header.Get("Content-Type"),
			"body": string(body), "len": r.ContentLength,
		})
	})
	g := startGateway(t, gatewayOptions{})
	const domain = "rt.tunnel.test"
	g.startAgent(domain, g.register(domain), target.URL)

	const uri = "/some/p%20ath/x%2Fy?q=a+b&q=%26c&empty=&k=v%3Dw"
	for _, h2 := range []bool{false, true} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(fmt.Sprintf("h2=%v/%s", h2, method), func(t *testing.T) {
				var body io.Reader
				payload := ""
				if method == http.MethodPost {
					payload = strings.Repeat("posted body ", 1000)
					body = strings.NewReader(payload)
				}
				req, _ := http.NewRequest(method, g.url(domain, uri), body)
				req.Header.Add("X-Multi", "one")
				req.Header.Add("X-Multi", "two")
				req.Header.Set("X-Custom", "custom value")
				req.Header.Set("X-Forwarded-For", "6.6.6.6")
				req.Header.Set("X-Forwarded-Host", "evil.example")
				req.Header.Set("X-Forwarded-Proto", "gopher")
				if payload != "" {
					req.Header.Set("Content-Type", "text/plain")
				}
				res, err := g.httpClient(h2).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				var got struct {
					Method, URI, Host, Custom, XFP, XFH, Ctype, Body string
					Multi, XFF                                       []string
					Len                                              int64
				}
				if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
					t.Fatal(err)
				}
				if res.StatusCode != http.StatusOK {
					t.Fatalf("status %d", res.StatusCode)
				}
				if wantMajor := map[bool]int{false: 1, true: 2}[h2]; res.ProtoMajor != wantMajor {
					t.Errorf("visitor spoke HTTP/%d, want %d", res.ProtoMajor, wantMajor)
				}
				_, port, _ := strings.Cut(g.addr, ":")
				wantHost := domain + ":" + port
				checks := []struct {
					name      string
					got, want any
				}{
					{"method", got.Method, method},
					{"request URI", got.URI, uri},
					{"Host", got.Host, wantHost},
					{"X-Multi", strings.Join(got.Multi, "|"), "one|two"},
					{"X-Custom", got.Custom, "custom value"},
					{"X-Forwarded-For", strings.Join(got.XFF, "|"), "127.0.0.1"},
					{"X-Forwarded-Proto", got.XFP, "https"},
					{"X-Forwarded-Host", got.XFH, wantHost},
					{"body", got.Body, payload},
					{"Set-Cookie", strings.Join(res.Header.Values("Set-Cookie"), "|"), "a=1; Path=/|b=2; Path=/"},
					{"X-Target", res.Header.Get("X-Target"), "yes"},
				}
				if payload != "" {
					checks = append(checks, struct {
						name      string
						got, want any
					}{"Content-Type", got.Ctype, "text/plain"})
				}
				for _, c := range checks {
					if c.got != c.want {
						t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
					}
				}
			})
		}
	}
}

// TestTunnelBulkTransfer moves 100 MiB each way through one tunnel, compares sha256 on both ends and
// checks that the gateway's memory stays bounded. It runs alone (not parallel) so the figures mean something.
func TestTunnelBulkTransfer(t *testing.T) {
	const size = 100 << 20
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/download":
			w.Header().Set("Content-Type", "application/octet-stream")
			if r.URL.Query().Get("chunked") == "" {
				w.Header().Set("Content-Length", fmt.Sprint(size))
			}
			_, _ = io.CopyBuffer(w, tnData(1, size), make([]byte, 64<<10))
		case "/upload":
			sum, n, err := tnHash(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%s %d", sum, n)
		}
	})
	g := startGateway(t, gatewayOptions{})
	const domain = "bulk.tunnel.test"
	g.startAgent(domain, g.register(domain), target.URL)
	want, _, _ := tnHash(tnData(1, size))
	direct := &http.Client{Timeout: 60 * time.Second}

	download := func(t *testing.T, c *http.Client, url string) float64 {
		start := time.Now()
		res, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		sum, n, err := tnHash(res.Body)
		el := time.Since(start)
		if err != nil || res.StatusCode != http.StatusOK || n != size || sum != want {
			t.Fatalf("download: status %d, %d bytes, err %v, sha256 %s, want %s", res.StatusCode, n, err, sum, want)
		}
		return float64(size) / (1 << 20) / el.Seconds()
	}
	upload := func(t *testing.T, c *http.Client, url string, chunked bool) float64 {
		h := sha256.New()
		body := io.TeeReader(tnData(2, size), h)
		req, _ := http.NewRequest(http.MethodPost, url, io.NopCloser(body))
		if !chunked {
			req.ContentLength = size
		}
		start := time.Now()
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		got, _ := io.ReadAll(res.Body)
		el := time.Since(start)
		if wantAns := fmt.Sprintf("%s %d", hex.EncodeToString(h.Sum(nil)), size); res.StatusCode != http.StatusOK || string(got) != wantAns {
			t.Fatalf("upload: status %d, target saw %q, want %q", res.StatusCode, got, wantAns)
		}
		return float64(size) / (1 << 20) / el.Seconds()
	}

	t.Run("download", func(t *testing.T) {
		d := download(t, direct, target.URL+"/download")
		h1 := download(t, g.httpClient(false), g.url(domain, "/download"))
		h2 := download(t, g.httpClient(true), g.url(domain, "/download?chunked=1"))
		t.Logf("100 MiB download: direct %.0f MB/s, tunnel (HTTP/1.1 visitor) %.0f MB/s, tunnel (HTTP/2 visitor, no length) %.0f MB/s", d, h1, h2)
	})
	t.Run("upload", func(t *testing.T) {
		d := upload(t, direct, target.URL+"/upload", false)
		h1 := upload(t, g.httpClient(false), g.url(domain, "/upload"), false)
		h2 := upload(t, g.httpClient(true), g.url(domain, "/upload"), true)
		t.Logf("100 MiB upload: direct %.0f MB/s, tunnel (HTTP/1.1 visitor) %.0f MB/s, tunnel (HTTP/2 visitor, chunked) %.0f MB/s", d, h1, h2)
	})
	hwm := tnVmHWM(t, g.pid())
	t.Logf("gateway peak RSS (VmHWM) after 600 MiB through it: %.1f MiB", float64(hwm)/(1<<20))
	if hwm > 200<<20 {
		t.Errorf("gateway peak RSS %.1f MiB, want < 200 MiB: bodies are buffered", float64(hwm)/(1<<20))
	}
}

// TestTunnelConcurrentRequests: 200 requests at once on one tunnel, each with its own body and answer.
func TestTunnelConcurrentRequests(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int64
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		time.Sleep(500 * time.Millisecond) // keep them all in flight together
		sum := sha256.Sum256(body)
		fmt.Fprintf(w, "%s %s %x", r.URL.Query().Get("id"), r.Header.Get("X-Id"), sum)
	})
	g := startGateway(t, gatewayOptions{})
	const domain = "conc.tunnel.test"
	g.startAgent(domain, g.register(domain), target.URL)

	clients := []*http.Client{g.httpClient(false), g.httpClient(true)}
	const n = 200
	errs := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			body := bytes.Repeat([]byte(fmt.Sprintf("request %d;", i)), 1+i*37)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.url(domain, fmt.Sprintf("/echo?id=%d", i)), bytes.NewReader(body))
			req.Header.Set("X-Id", fmt.Sprintf("h%d", i))
			res, err := clients[i%2].Do(req)
			if err != nil {
				errs <- fmt.Errorf("request %d: %w", i, err)
				return
			}
			defer res.Body.Close()
			got, err := io.ReadAll(res.Body)
			want := fmt.Sprintf("%d h%d %x", i, i, sha256.Sum256(body))
			if err != nil || res.StatusCode != http.StatusOK || string(got) != want {
				errs <- fmt.Errorf("request %d: status %d, err %v, got %q, want %q", i, res.StatusCode, err, got, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		failed++
		if failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d requests failed", failed, n)
	}
	el := time.Since(start)
	t.Logf("%d concurrent requests in %s, at most %d at the target together", n, el.Round(time.Millisecond), peak.Load())
	if peak.Load() < n/5 {
		t.Errorf("only %d requests reached the target together: the tunnel serialises requests", peak.Load())
	}
}

// TestTunnelSlowVisitorDoesNotStallOthers: visitors reading a large response at 1 KiB/s hold their own
// streams only; small requests on the same tunnel keep their latency. Not parallel: it measures latency.
func TestTunnelSlowVisitorDoesNotStallOthers(t *testing.T) {
	const big = 64 << 20
	var bigWritten atomic.Int64
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" {
			_, _ = io.WriteString(w, "pong")
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(big))
		buf := make([]byte, 32<<10)
		src := tnData(3, big)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				bigWritten.Add(int64(n))
			}
			if err != nil {
				return
			}
		}
	})
	g := startGateway(t, gatewayOptions{})
	const domain = "slow.tunnel.test"
	g.startAgent(domain, g.register(domain), target.URL)
	fast := g.httpClient(true)
	url := g.url(domain, "/ping")

	// Warm up, then measure the unloaded latency.
	if _, err := tnLatencies(fast, url, 50); err != nil {
		t.Fatal(err)
	}
	unloaded, err := tnLatencies(fast, url, 50)
	if err != nil {
		t.Fatal(err)
	}

	// Four slow visitors: two on HTTP/1.1, two sharing an HTTP/2 connection with nothing else.
	const slow = 4
	slowH2 := g.httpClient(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var slowRead atomic.Int64
	slowErr := make(chan error, slow)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range slow {
		c := slowH2
		if i < 2 {
			c = g.httpClient(false)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url(domain, fmt.Sprintf("/big?i=%d", i)), nil)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer res.Body.Close()
			buf := make([]byte, 1<<10)
			for {
				n, err := io.ReadFull(res.Body, buf)
				slowRead.Add(int64(n))
				if err != nil {
					if ctx.Err() == nil {
						slowErr <- fmt.Errorf("slow visitor %d: %w", i, err)
					}
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		})
	}
	// Let the slow streams fill every buffer between the target and the visitors.
	var last int64
	waitFor(t, 10*time.Second, "the slow responses to stall", func() bool {
		time.Sleep(200 * time.Millisecond)
		now := bigWritten.Load()
		stalled := now == last && now > 0
		last = now
		return stalled
	})
	loaded, err := tnLatencies(fast, url, 50)
	if err != nil {
		t.Fatal(err)
	}
	loaded2, err := tnLatencies(fast, url, 50)
	if err != nil {
		t.Fatal(err)
	}
	loaded = append(loaded, loaded2...)
	p99u, p99l := tnPercentile(unloaded, 0.99), tnPercentile(loaded, 0.99)
	t.Logf("small GETs (50 at once): p99 %s unloaded, %s with %d visitors at 1 KiB/s (target wrote %.1f MiB of %d×%d MiB, visitors read %d KiB)",
		p99u.Round(time.Millisecond), p99l.Round(time.Millisecond), slow, float64(bigWritten.Load())/(1<<20), slow, big>>20, slowRead.Load()>>10)
	if p99l > 500*time.Millisecond && p99l > 5*p99u+50*time.Millisecond {
		t.Errorf("p99 of small GETs with slow visitors is %s (unloaded %s): a slow visitor stalls the tunnel", p99l, p99u)
	}
	select {
	case err := <-slowErr:
		t.Errorf("a slow visitor was cut off: %v", err)
	default:
	}
	if bigWritten.Load() >= slow*big {
		t.Errorf("the target wrote all %d bytes to visitors reading 1 KiB/s: the gateway buffers whole responses", bigWritten.Load())
	}
}

// TestTunnelVisitorCancelReachesTarget: a visitor that gives up cancels the request at the target within 1 s.
func TestTunnelVisitorCancelReachesTarget(t *testing.T) {
	t.Parallel()
	type arrival struct {
		id   string
		done <-chan struct{}
	}
	arrived := make(chan arrival, 4)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		// An HTTP/1 server notices a closed connection only while it reads: consume the body meanwhile,
		// as a real service would.
		bodyDone := make(chan struct{})
		go func() {
			defer close(bodyDone)
			_, _ = io.Copy(io.Discard, r.Body)
		}()
		arrived <- arrival{r.URL.Query().Get("id"), r.Context().Done()}
		select {
		case <-r.Context().Done():
		case <-time.After(15 * time.Second):
		}
		<-bodyDone
	})
	g := startGateway(t, gatewayOptions{})
	const domain = "cancel.tunnel.test"
	g.startAgent(domain, g.register(domain), target.URL)

	for _, h2 := range []bool{false, true} {
		for _, post := range []bool{false, true} {
			name := fmt.Sprintf("h2=%v/post=%v", h2, post)
			t.Run(name, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var body io.Reader
				method := http.MethodGet
				pr, pw := io.Pipe()
				defer pw.Close()
				if post {
					// A body still streaming when the visitor leaves.
					go func() { _, _ = pw.Write([]byte("partial body")) }()
					body, method = pr, http.MethodPost
				}
				req, _ := http.NewRequestWithContext(ctx, method, g.url(domain, "/wait?id="+name), body)
				errc := make(chan error, 1)
				go func() {
					res, err := g.httpClient(h2).Do(req)
					if err == nil {
						b, rerr := io.ReadAll(res.Body)
						res.Body.Close()
						err = fmt.Errorf("got a response: %d %v %q (body read: %v)", res.StatusCode, res.Header, b, rerr)
					}
					errc <- err
				}()
				var a arrival
				select {
				case a = <-arrived:
				case <-time.After(10 * time.Second):
					t.Fatal("request never reached the target")
				}
				if a.id != name {
					t.Fatalf("target got request %q, want %q", a.id, name)
				}
				start := time.Now()
				cancel()
				select {
				case <-a.done:
					t.Logf("target saw the cancel after %s", time.Since(start).Round(time.Millisecond))
				case <-time.After(time.Second):
					t.Fatal("the target's request context was not cancelled within 1 s of the visitor leaving")
				}
				// The HTTP/1.1 client returns only once its body writer stops reading. What it returns is
				// not asserted: Go's own HTTP/1.1 client, cancelled while its body streams, now and then
				// reports the server's answer to the dead request even without a gateway in between.
				pw.Close()
				select {
				case err := <-errc:
					if !errors.Is(err, context.Canceled) {
						t.Logf("visitor: %v", err)
					}
				case <-time.After(5 * time.Second):
					t.Error("the visitor's request did not return within 5 s of its cancel")
				}
			})
		}
	}
}

// TestTunnelAgentKilledMidResponse: SIGKILL of the agent while a response streams aborts the visitor's
// body (never a clean short body), and the gateway goes on serving others.
func TestTunnelAgentKilledMidResponse(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 8)
	slowTarget := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("len") != "" {
			w.Header().Set("Content-Length", "1000000")
		}
		w.WriteHeader(http.StatusOK)
		started <- struct{}{}
		chunk := bytes.Repeat([]byte("x"), 1000)
		for range 1000 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	other := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "other ok") })
	g := startGateway(t, gatewayOptions{})
	const domain, otherDomain = "kill.tunnel.test", "other.tunnel.test"
	key := g.register(domain)
	g.startAgent(otherDomain, g.register(otherDomain), other.URL)

	for _, tc := range []struct {
		name  string
		h2    bool
		query string
	}{
		{"h1 chunked", false, ""},
		{"h1 content-length", false, "?len=1"},
		{"h2", true, ""},
		{"h2 content-length", true, "?len=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent := g.forTest(t).startAgent(domain, key, slowTarget.URL)
			res, err := g.httpClient(tc.h2).Get(g.url(domain, "/stream"+tc.query))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			<-started
			buf := make([]byte, 5000)
			if _, err := io.ReadFull(res.Body, buf); err != nil {
				t.Fatalf("read the first bytes: %v", err)
			}
			agent.signal(syscall.SIGKILL)
			agent.wait(t, 5*time.Second)
			type result struct {
				n   int64
				err error
			}
			rc := make(chan result, 1)
			go func() {
				n, err := io.Copy(io.Discard, res.Body)
				rc <- result{n, err}
			}()
			select {
			case r := <-rc:
				if r.err == nil {
					t.Fatalf("visitor read a clean end after %d more bytes (of 1000000): a truncated body looks complete", r.n)
				}
				t.Logf("visitor body aborted after %d more bytes: %v", r.n, r.err)
			case <-time.After(10 * time.Second):
				t.Fatal("visitor body neither ended nor failed within 10 s of the agent's death")
			}
			tnWaitAgents(t, g.forTest(t), domain, 0, 5*time.Second)
		})
	}
	if code, _ := tnGet(t, g.httpClient(false), g.url("localhost", "/healthz")); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := tnGet(t, g.httpClient(true), g.url(otherDomain, "/")); code != http.StatusOK || body != "other ok" {
		t.Errorf("other domain: %d %q", code, body)
	}
	if code, _ := tnGet(t, g.httpClient(false), g.url(domain, "/")); code != http.StatusServiceUnavailable {
		t.Errorf("domain whose agent died: %d, want 503", code)
	}
}

// TestTunnelServerRestart: SIGTERM the gateway and start it again on the same address and data: the
// agent reconnects within its backoff and traffic resumes.
func TestTunnelServerRestart(t *testing.T) {
	t.Parallel()
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "alive") })
	g := startGateway(t, gatewayOptions{})
	const domain = "restart.tunnel.test"
	agent := g.startAgent(domain, g.register(domain), target.URL)
	if code, body := tnGet(t, g.httpClient(false), g.url(domain, "/")); code != 200 || body != "alive" {
		t.Fatalf("before restart: %d %q", code, body)
	}

	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 15*time.Second); code != 0 {
		t.Errorf("server exit code after SIGTERM: %d, want 0", code)
	}
	g2 := startGateway(t, gatewayOptions{Addr: g.addr, DataDir: g.dataDir})
	start := time.Now()
	waitFor(t, 10*time.Second, "the agent to reconnect to the restarted server", func() bool {
		if agent.exited() {
			t.Fatalf("agent exited: %s", agent.logs.String())
		}
		return g2.agents(domain) == 1
	})
	t.Logf("agent reconnected %s after the server came back", time.Since(start).Round(time.Millisecond))
	if n := len(lines(agent, "tunnel up")); n != 2 {
		t.Errorf("agent logged %d \"tunnel up\" lines, want 2", n)
	}
	if code, body := tnGet(t, g2.httpClient(true), g2.url(domain, "/")); code != 200 || body != "alive" {
		t.Fatalf("after restart: %d %q", code, body)
	}
}

// TestTunnelNoLeakAfterFaults: 1000 requests, 20 that time out (504) and 10 agent kills with a
// response streaming leave the gateway with the goroutines, file descriptors and heap it had.
func TestTunnelNoLeakAfterFaults(t *testing.T) {
	t.Parallel()
	streaming := make(chan struct{}, 16)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			<-r.Context().Done()
			return
		}
		if r.URL.Path != "/stream" {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "ok %d", len(body))
			return
		}
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		streaming <- struct{}{}
		for range 600 {
			if _, err := io.WriteString(w, "tick\n"); err != nil {
				return
			}
			http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	// GOGC=25: collections often enough that the heap figures below are close to the live heap.
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0",
		"HOP_SERVER_PROXY_TIMEOUT_SECONDS=1", "GOGC=25"}})
	const domain = "leak.tunnel.test"
	key := g.register(domain)
	metrics := tnMetricsAddr(t, g)
	// Admin calls open a connection each (kept until cleanup), so agents are counted through /metrics.
	startAgent := func() *process {
		p := g.startAgentNoWait(domain, key, target.URL)
		waitFor(t, 20*time.Second, "agent tunnel up", func() bool {
			if p.exited() {
				t.Fatalf("agent exited: %s", p.logs.String())
			}
			return tnMetric(t, metrics, "hopgate_tunnels_active") == 1
		})
		return p
	}
	agent := startAgent()
	h1, h2 := g.httpClient(false), g.httpClient(true)
	closeIdle := func() {
		h1.CloseIdleConnections()
		h2.CloseIdleConnections()
	}
	for _, c := range []*http.Client{h1, h2} {
		if code, _ := tnGet(t, c, g.url(domain, "/warm")); code != 200 {
			t.Fatalf("warm-up: %d", code)
		}
	}
	// churn makes the same garbage before each heap reading, so both readings sit at the same
	// point of the collector's cycle.
	churn := func() {
		for i := range 300 {
			c := h1
			if i%2 == 1 {
				c = h2
			}
			if code, _ := tnGet(t, c, g.url(domain, "/churn")); code != 200 {
				t.Fatalf("churn: %d", code)
			}
		}
		closeIdle()
		time.Sleep(500 * time.Millisecond)
	}
	churn()
	base := tnMetric(t, metrics, "go_goroutines")
	baseFDs := tnMetric(t, metrics, "process_open_fds")
	baseHeap := tnMetric(t, metrics, "go_memstats_heap_inuse_bytes")

	const rounds, perRound = 10, 100
	var failed atomic.Int64
	for round := range rounds {
		// One response is streaming when the agent dies.
		streamDone := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _, err := tnTry(ctx, h2, g.url(domain, "/stream"))
			streamDone <- err
		}()
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for i := range perRound {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c := h1
				if i%2 == 1 {
					c = h2
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.url(domain, "/r"), strings.NewReader(strings.Repeat("b", i)))
				res, err := c.Do(req)
				if err != nil {
					failed.Add(1)
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 200 || string(b) != fmt.Sprintf("ok %d", i) {
					failed.Add(1)
				}
			})
		}
		for range 2 {
			wg.Go(func() {
				if code, _ := tnGet(t, h1, g.url(domain, "/hang")); code != http.StatusGatewayTimeout {
					t.Errorf("a target that never answers: %d, want 504", code)
				}
			})
		}
		wg.Wait()
		select {
		case <-streaming:
		case <-time.After(10 * time.Second):
			t.Fatal("the streaming request never reached the target")
		}
		agent.signal(syscall.SIGKILL)
		agent.wait(t, 5*time.Second)
		select {
		case err := <-streamDone:
			if err == nil {
				t.Errorf("round %d: streaming body ended cleanly although its agent was killed", round)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: streaming visitor not released after the agent's death", round)
		}
		waitFor(t, 10*time.Second, "the dead tunnel to go", func() bool { return tnMetric(t, metrics, "hopgate_tunnels_active") == 0 })
		agent = startAgent()
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed", n, rounds*perRound)
	}
	closeIdle()
	var now float64
	deadline := time.Now().Add(15 * time.Second)
	for {
		now = tnMetric(t, metrics, "go_goroutines")
		if now <= base+20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("gateway goroutines: %v before, %v after %d requests and %d agent kills", base, now, rounds*perRound, rounds)
	if now > base+20 {
		t.Errorf("goroutines grew from %v to %v", base, now)
	}
	// The agent's tunnel is one connection before and after; idle visitor connections are closed.
	var fds float64
	waitFor(t, 15*time.Second, "file descriptors back to the baseline", func() bool {
		fds = tnMetric(t, metrics, "process_open_fds")
		return fds <= baseFDs+2
	})
	churn()
	heap := tnMetric(t, metrics, "go_memstats_heap_inuse_bytes")
	t.Logf("gateway file descriptors: %v before, %v after; heap in use %.1f MiB before, %.1f MiB after", baseFDs, fds, baseHeap/(1<<20), heap/(1<<20))
	if heap > 1.5*baseHeap+4<<20 {
		t.Errorf("heap in use grew from %.1f MiB to %.1f MiB", baseHeap/(1<<20), heap/(1<<20))
	}
}

// TestTunnelStatusCodes: 503 without agent, 502 when the target refuses, 504 when it never answers (and
// the tunnel survives), 404 for an unknown domain.
func TestTunnelStatusCodes(t *testing.T) {
	t.Parallel()
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
			return
		}
		_, _ = io.WriteString(w, "fine")
	})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_PROXY_TIMEOUT_SECONDS=1"}})
	g.register("noagent.tunnel.test")
	g.startAgent("refused.tunnel.test", g.register("refused.tunnel.test"), "http://"+tnClosedAddr(t))
	g.startAgent("hang.tunnel.test", g.register("hang.tunnel.test"), target.URL)
	c := g.httpClient(false)

	for _, tc := range []struct {
		name, domain, path string
		want               int
	}{
		{"unknown domain", "unknown.tunnel.test", "/", http.StatusNotFound},
		{"no agent", "noagent.tunnel.test", "/", http.StatusServiceUnavailable},
		{"target refuses", "refused.tunnel.test", "/", http.StatusBadGateway},
		{"no headers in time", "hang.tunnel.test", "/hang", http.StatusGatewayTimeout},
		{"tunnel still up", "hang.tunnel.test", "/", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, _ := tnGet(t, c, g.url(tc.domain, tc.path))
			el := time.Since(start)
			if code != tc.want {
				t.Fatalf("status %d, want %d", code, tc.want)
			}
			if tc.want == http.StatusGatewayTimeout && (el < 900*time.Millisecond || el > 3*time.Second) {
				t.Errorf("504 after %s, want about 1 s (HOP_SERVER_PROXY_TIMEOUT_SECONDS=1)", el)
			}
		})
	}
	if n := g.agents("hang.tunnel.test"); n != 1 {
		t.Errorf("agents after a 504: %d, want 1", n)
	}
}

// TestTunnelSeveralAgents: two agents of one domain share the load; when one dies the other serves.
func TestTunnelSeveralAgents(t *testing.T) {
	t.Parallel()
	named := func(name string) string {
		return tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(200 * time.Millisecond)
			_, _ = io.WriteString(w, name)
		}).URL
	}
	g := startGateway(t, gatewayOptions{})
	const domain = "multi.tunnel.test"
	key := g.register(domain)
	a := g.startAgent(domain, key, named("A"), "--agent-id", "agent-a")
	g.startAgent(domain, key, named("B"), "--agent-id", "agent-b")
	if n := g.agents(domain); n != 2 {
		t.Fatalf("agents: %d, want 2", n)
	}

	spread := func(n int) map[string]int {
		c := g.httpClient(true)
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				code, body, err := tnTry(ctx, c, g.url(domain, fmt.Sprintf("/?i=%d", i)))
				mu.Lock()
				defer mu.Unlock()
				if err != nil || code != 200 {
					seen[fmt.Sprintf("error %d %v", code, err)]++
					return
				}
				seen[body]++
			})
		}
		wg.Wait()
		return seen
	}
	seen := spread(40)
	t.Logf("40 concurrent requests over two agents: %v", seen)
	if seen["A"] < 5 || seen["B"] < 5 || seen["A"]+seen["B"] != 40 {
		t.Errorf("requests not spread over both agents: %v", seen)
	}

	a.signal(syscall.SIGKILL)
	a.wait(t, 5*time.Second)
	tnWaitAgents(t, g, domain, 1, 5*time.Second)
	if seen := spread(20); seen["B"] != 20 {
		t.Errorf("after agent A died: %v, want all 20 from B", seen)
	}
}

// TestTunnelAgentRefusalsAndDrain: refused agents exit 3; a rotated key ends a running agent with 3;
// SIGTERM lets the request in flight finish and exits 0.
func TestTunnelAgentRefusalsAndDrain(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			time.Sleep(time.Second)
		}
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	})
	g := startGateway(t, gatewayOptions{})

	t.Run("wrong key", func(t *testing.T) {
		t.Parallel()
		g := g.forTest(t)
		g.register("wrongkey.tunnel.test")
		p := g.startAgentNoWait("wrongkey.tunnel.test", "not-the-key", target.URL)
		if code := p.wait(t, 15*time.Second); code != 3 {
			t.Errorf("exit code %d, want 3\n%s", code, p.logs.String())
		}
	})
	t.Run("unknown domain", func(t *testing.T) {
		t.Parallel()
		g := g.forTest(t)
		key := g.register("known.tunnel.test")
		p := g.startAgentNoWait("unknown.tunnel.test", key, target.URL)
		if code := p.wait(t, 15*time.Second); code != 3 {
			t.Errorf("exit code %d, want 3\n%s", code, p.logs.String())
		}
	})
	t.Run("rotated key", func(t *testing.T) {
		t.Parallel()
		g := g.forTest(t)
		const domain = "rotate.tunnel.test"
		p := g.startAgent(domain, g.register(domain), target.URL)
		if code, out := g.admin(http.MethodPost, "/api/v1/admin/domains/rotate-key", map[string]string{"domain": domain}); code != 200 {
			t.Fatalf("rotate-key: %d %v", code, out)
		}
		if code := p.wait(t, 10*time.Second); code != 3 {
			t.Errorf("exit code %d, want 3\n%s", code, p.logs.String())
		}
		tnWaitAgents(t, g, domain, 0, 5*time.Second)
	})
	t.Run("SIGTERM drains", func(t *testing.T) {
		t.Parallel()
		g := g.forTest(t)
		const domain = "drain.tunnel.test"
		p := g.startAgent(domain, g.register(domain), target.URL)
		type result struct {
			code int
			body string
			err  error
		}
		rc := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			code, body, err := tnTry(ctx, g.httpClient(true), g.url(domain, "/slow"))
			rc <- result{code, body, err}
		}()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("request never reached the target")
		}
		p.signal(syscall.SIGTERM)
		r := <-rc
		if r.err != nil || r.code != 200 || r.body != "done /slow" {
			t.Errorf("request in flight during SIGTERM: %d %q %v", r.code, r.body, r.err)
		}
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Errorf("exit code %d, want 0\n%s", code, p.logs.String())
		}
	})
}

// TestTunnelDeadAgentDetected: an agent that stops answering (SIGSTOP) is dropped after about three
// ping intervals, whether its tunnel is idle or busy carrying uploads, and reconnects once it runs again.
func TestTunnelDeadAgentDetected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		uploads int
	}{
		{"idle", 0},
		{"busy uploading", 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var sunk atomic.Int64
			target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(tnCounter{&sunk}, r.Body)
				_, _ = io.WriteString(w, "back")
			})
			g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_TUNNEL_PING_INTERVAL=200ms"}})
			const domain = "dead.tunnel.test"
			p := g.startAgent(domain, g.register(domain), target.URL)

			// Uploads keep the gateway sending to the agent when it freezes.
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			uploadDone := make(chan error, tc.uploads)
			up := g.httpClient(true)
			for range tc.uploads {
				wg.Go(func() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.url(domain, "/sink"), io.NopCloser(io.LimitReader(tnZeros{}, 1<<30)))
					res, err := up.Do(req)
					if err == nil {
						_, err = io.Copy(io.Discard, res.Body)
						res.Body.Close()
						if err == nil && res.StatusCode == http.StatusOK {
							err = errors.New("upload completed")
						}
					}
					uploadDone <- err
				})
			}
			if tc.uploads > 0 {
				waitFor(t, 20*time.Second, "uploads to flow", func() bool { return sunk.Load() > 64<<20 })
			}

			p.signal(syscall.SIGSTOP)
			stopped := true
			defer func() {
				if stopped {
					p.signal(syscall.SIGCONT)
				}
			}()
			start := time.Now()
			released := 0
			waitFor(t, 5*time.Second, "uploads to be released", func() bool {
				for {
					select {
					case <-uploadDone:
						released++
						continue
					default:
					}
					return released == tc.uploads
				}
			})
			if tc.uploads > 0 {
				t.Logf("all %d uploads released %s after the freeze", tc.uploads, time.Since(start).Round(time.Millisecond))
			}
			el, dropped := time.Duration(0), false
			for el < 5*time.Second && !dropped {
				time.Sleep(50 * time.Millisecond)
				el, dropped = time.Since(start), g.agents(domain) == 0
			}
			switch {
			case !dropped:
				t.Errorf("frozen agent still counted %s after the freeze (ping interval 200ms): the dead tunnel is never released", el.Round(time.Millisecond))
			case el > 2500*time.Millisecond:
				t.Errorf("frozen agent dropped after %s, want within ~2 s", el)
			default:
				t.Logf("frozen agent dropped after %s (ping interval 200ms)", el.Round(time.Millisecond))
			}
			if code, _ := tnGet(t, g.httpClient(false), g.url(domain, "/")); code != http.StatusServiceUnavailable {
				t.Errorf("with the agent frozen: %d, want 503", code)
			}

			p.signal(syscall.SIGCONT)
			stopped = false
			start = time.Now()
			waitFor(t, 10*time.Second, "the agent to reconnect", func() bool {
				return len(lines(p, "tunnel up")) == 2 && g.agents(domain) == 1
			})
			t.Logf("agent back %s after SIGCONT", time.Since(start).Round(time.Millisecond))
			if code, body := tnGet(t, g.httpClient(true), g.url(domain, "/")); code != 200 || body != "back" {
				t.Errorf("after reconnect: %d %q", code, body)
			}
		})
	}
}

// TestTunnelTargetStallsAfterHeaders: a target that sends its response headers and then nothing holds
// only its own request: the visitor gets the headers at once (no timeout cuts a stream that is merely
// quiet), other requests on the tunnel pass meanwhile, and when the visitor gives up the target's
// request is cancelled and the tunnel stays up.
func TestTunnelTargetStallsAfterHeaders(t *testing.T) {
	t.Parallel()
	stalled := make(chan (<-chan struct{}), 1)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stall" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "first")
		http.NewResponseController(w).Flush()
		stalled <- r.Context().Done()
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	})
	// A 1 s header timeout: a stream past its headers must not be subject to it.
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_PROXY_TIMEOUT_SECONDS=1"}})
	const domain = "stall.tunnel.test"
	g.startAgent(domain, g.register(domain), target.URL)
	c := g.httpClient(true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url(domain, "/stall"), nil)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	first := make([]byte, 5)
	if _, err := io.ReadFull(res.Body, first); err != nil || res.StatusCode != http.StatusOK || string(first) != "first" {
		t.Fatalf("%d %q %v: want 200 and the first bytes at once", res.StatusCode, first, err)
	}
	var targetDone <-chan struct{}
	select {
	case targetDone = <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the target never stalled")
	}
	// Past the header timeout the stream is still open and others pass.
	time.Sleep(1500 * time.Millisecond)
	for i := range 10 {
		if code, body := tnGet(t, c, g.url(domain, "/other")); code != http.StatusOK || body != "ok" {
			t.Fatalf("request %d beside the stalled one: %d %q", i, code, body)
		}
	}
	cancel()
	select {
	case <-targetDone:
	case <-time.After(time.Second):
		t.Fatal("the visitor left but the target's request was not cancelled within 1 s")
	}
	if code, _ := tnGet(t, c, g.url(domain, "/after")); code != http.StatusOK {
		t.Fatalf("tunnel after the stalled request: %d", code)
	}
}
