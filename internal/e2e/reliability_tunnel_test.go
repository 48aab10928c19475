package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/config"
)

// rlTimeout bounds each visitor request of these tests: far above every deadline they wait for, so
// a request that hangs is reported as such rather than as the gateway's timeout.
const rlTimeout = 30 * time.Second

// rlResult is how one visitor request ended.
type rlResult struct {
	code int
	body string
	err  error
}

// rlSend sends one request from a goroutine and reports how it ended on the returned channel.
func rlSend(c *http.Client, method, url string, hdr http.Header, body string) <-chan rlResult {
	rc := make(chan rlResult, 1)
	go func() {
		var b io.Reader
		if body != "" {
			b = strings.NewReader(body)
		}
		ctx, cancel := context.WithTimeout(context.Background(), rlTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, url, b)
		if err != nil {
			rc <- rlResult{err: err}
			return
		}
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		res, err := c.Do(req)
		if err != nil {
			rc <- rlResult{err: err}
			return
		}
		defer res.Body.Close()
		rb, err := io.ReadAll(res.Body)
		rc <- rlResult{code: res.StatusCode, body: string(rb), err: err}
	}()
	return rc
}

// rlArrival is one request reaching a local target: its test id and which agent's target took it.
type rlArrival struct {
	id    string
	agent int
}

// rlLedger counts, across the targets of all agents of a domain, how often each request id reached
// a target: the side effect a duplicate would repeat.
type rlLedger struct {
	mu      sync.Mutex
	seen    map[string]int
	arrived chan rlArrival
	// release unblocks the handlers waiting for it; closed at cleanup at the latest.
	release    chan struct{}
	releaseAll func()
}

func rlNewLedger(t testing.TB) *rlLedger {
	l := &rlLedger{seen: map[string]int{}, arrived: make(chan rlArrival, 16), release: make(chan struct{})}
	var once sync.Once
	l.releaseAll = func() { once.Do(func() { close(l.release) }) }
	t.Cleanup(l.releaseAll)
	return l
}

func (l *rlLedger) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[id]
}

// target is agent n's local service: a request with X-Test-Block waits until released (or until its
// agent's connection goes); any other answers at once with the agent's number.
func (l *rlLedger) target(t testing.TB, n int) string {
	// Released before the target closes: a handler that has not read the body is not told when its
	// connection goes.
	defer t.Cleanup(l.releaseAll)
	return tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Test-Id")
		l.mu.Lock()
		l.seen[id]++
		l.mu.Unlock()
		if r.Header.Get("X-Test-Block") == "" {
			_, _ = io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "agent %d", n)
			return
		}
		select {
		case l.arrived <- rlArrival{id, n}:
		default:
			// Nobody is waiting: the test has already failed or moved on.
		}
		select {
		case <-l.release:
		case <-r.Context().Done():
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "agent %d did %s %s", n, r.Method, body)
	}).URL
}

// TestReliabilityAgentDiesBeforeHeaders: the agent is SIGKILLed while its target holds the request
// and no response header has been sent: the visitor gets the gateway's 502 page at once (not a hang
// until the header timeout, not a 200, not a dropped connection), the dead tunnel is released, and
// the next request is a clean 503.
func TestReliabilityAgentDiesBeforeHeaders(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	for _, tc := range []struct {
		name   string
		h2     bool
		method string
		body   string
	}{
		{"h1 GET", false, http.MethodGet, ""},
		{"h2 GET", true, http.MethodGet, ""},
		{"h2 POST", true, http.MethodPost, "order=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := g.forTest(t)
			domain := strings.ToLower(strings.ReplaceAll(tc.name, " ", "-")) + ".dies.test"
			l := rlNewLedger(t)
			agent := g.startAgent(domain, g.register(domain), l.target(t, 1))

			id := "dies-" + domain
			hdr := http.Header{"X-Test-Id": {id}, "X-Test-Block": {"1"}, "Accept": {"text/html"}}
			start := time.Now()
			rc := rlSend(g.httpClient(tc.h2), tc.method, g.url(domain, "/hold"), hdr, tc.body)
			select {
			case <-l.arrived:
			case r := <-rc:
				t.Fatalf("request ended before reaching the target: %d %q %v", r.code, r.body, r.err)
			case <-time.After(20 * time.Second):
				t.Fatal("request never reached the target")
			}
			agent.signal(syscall.SIGKILL)
			agent.wait(t, 10*time.Second)
			var r rlResult
			select {
			case r = <-rc:
			case <-time.After(rlTimeout):
				t.Fatal("visitor got no answer after the agent died")
			}
			el := time.Since(start)
			if r.err != nil {
				t.Fatalf("visitor got a transport error instead of a 502 page: %v", r.err)
			}
			if r.code != http.StatusBadGateway {
				t.Fatalf("visitor got %d %q, want 502", r.code, r.body)
			}
			if !strings.Contains(r.body, "502") || !strings.Contains(strings.ToLower(r.body), "<html") {
				t.Errorf("502 answer is not the gateway's error page: %q", r.body)
			}
			if strings.Contains(r.body, "agent 1") {
				t.Errorf("502 page carries the target's answer: %q", r.body)
			}
			t.Logf("502 after %s", el.Round(time.Millisecond))
			if n := l.count(id); n != 1 {
				t.Errorf("target saw the request %d times, want 1", n)
			}
			tnWaitAgents(t, g, domain, 0, 10*time.Second)
			if code, body := tnGet(t, g.httpClient(tc.h2), g.url(domain, "/after")); code != http.StatusServiceUnavailable {
				t.Errorf("after the agent died: %d %q, want 503", code, body)
			}
		})
	}
}

// TestReliabilityPostNeverTwice: with two agents on a domain, the agent holding a POST (its target
// is working on it, no response yet) goes away: by SIGKILL, or by SIGTERM, whose drain gives up
// before the target answers or sees the answer out. The target sees the POST exactly once, and the
// visitor gets the answer or a 502, never a second delivery through the other agent (which is there
// and serving, so a retry could have happened). A GET that a draining agent has not taken may move
// to the other agent: while an agent drains under a stream of GETs, every one succeeds.
func TestReliabilityPostNeverTwice(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		// drain is the holding agent's --shutdown-timeout.
		drain time.Duration
		// answer lets the target respond once the agent has started draining.
		answer bool
		want   int
	}{
		{"SIGKILL", syscall.SIGKILL, 30 * time.Second, false, http.StatusBadGateway},
		{"SIGTERM drain times out", syscall.SIGTERM, time.Second, false, http.StatusBadGateway},
		{"SIGTERM answered while draining", syscall.SIGTERM, 30 * time.Second, true, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := g.forTest(t)
			domain := strings.ToLower(strings.ReplaceAll(tc.name, " ", "-")) + ".once.test"
			key := g.register(domain)
			l := rlNewLedger(t)
			drain := "--shutdown-timeout=" + tc.drain.String()
			agents := map[int]*process{
				1: g.startAgent(domain, key, l.target(t, 1), drain),
				2: g.startAgent(domain, key, l.target(t, 2), drain),
			}

			id := "post-" + domain
			hdr := http.Header{"X-Test-Id": {id}, "X-Test-Block": {"1"}}
			rc := rlSend(g.httpClient(true), http.MethodPost, g.url(domain, "/orders"), hdr, "order=42")
			var holder rlArrival
			select {
			case holder = <-l.arrived:
			case r := <-rc:
				t.Fatalf("POST ended before reaching a target: %d %q %v", r.code, r.body, r.err)
			case <-time.After(20 * time.Second):
				t.Fatal("POST never reached a target")
			}
			survivor := 3 - holder.agent
			agents[holder.agent].signal(tc.sig)
			if tc.answer {
				// The agent drains once it has the signal; the target answers only then.
				waitFor(t, 10*time.Second, "the agent to start draining", func() bool {
					return len(lines(agents[holder.agent], "shutting down"))+len(lines(agents[holder.agent], "drain")) > 0
				})
				l.releaseAll()
			}
			var r rlResult
			for done := false; !done; {
				select {
				case a := <-l.arrived:
					t.Fatalf("the POST reached a target a second time, through agent %d (first through agent %d)", a.agent, holder.agent)
				case r = <-rc:
					done = true
				case <-time.After(rlTimeout):
					t.Fatal("visitor got no answer after the holding agent went away")
				}
			}
			agents[holder.agent].wait(t, 15*time.Second)
			if r.err != nil {
				t.Fatalf("visitor got a transport error: %v", r.err)
			}
			if r.code != tc.want {
				t.Errorf("visitor got %d %q, want %d", r.code, r.body, tc.want)
			}
			if tc.answer && r.body != fmt.Sprintf("agent %d did POST order=42", holder.agent) {
				t.Errorf("visitor got %q, want the holding agent's answer", r.body)
			}
			if n := l.count(id); n != 1 {
				t.Fatalf("target saw the POST %d times, want exactly 1", n)
			}
			// The survivor serves: a retry had somewhere to go, and did not happen.
			tnWaitAgents(t, g, domain, 1, 10*time.Second)
			if code, body := tnGet(t, g.httpClient(true), g.url(domain, "/next")); code != http.StatusOK || body != fmt.Sprintf("agent %d", survivor) {
				t.Errorf("next request: %d %q, want 200 from agent %d", code, body, survivor)
			}
			if n := l.count(id); n != 1 {
				t.Errorf("target saw the POST %d times in the end, want exactly 1", n)
			}
		})
	}

	t.Run("GET moves off a draining agent", func(t *testing.T) {
		t.Parallel()
		g := g.forTest(t)
		const domain = "drain-get.once.test"
		key := g.register(domain)
		l := rlNewLedger(t)
		a1 := g.startAgent(domain, key, l.target(t, 1))
		g.startAgent(domain, key, l.target(t, 2))

		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var sent atomic.Int64
		failures := make(chan string, 4)
		c := g.httpClient(true)
		for w := range 4 {
			wg.Go(func() {
				// Bounded: at most 500 requests per worker, and the test cancels once the agent is gone.
				for i := 0; i < 500 && ctx.Err() == nil; i++ {
					rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
					code, body, err := tnTry(rctx, c, g.url(domain, "/get?w="+strconv.Itoa(w)))
					rcancel()
					if ctx.Err() != nil {
						return
					}
					sent.Add(1)
					if err != nil || code != http.StatusOK || !strings.HasPrefix(body, "agent ") {
						failures <- fmt.Sprintf("GET %d of worker %d: %d %q %v", i, w, code, body, err)
						return
					}
				}
			})
		}
		waitFor(t, 10*time.Second, "GETs to flow", func() bool { return sent.Load() > 20 })
		a1.signal(syscall.SIGTERM)
		if code := a1.wait(t, 15*time.Second); code != 0 {
			t.Errorf("draining agent exited %d, want 0", code)
		}
		tnWaitAgents(t, g, domain, 1, 10*time.Second)
		// A few more on the survivor alone, then stop.
		after := sent.Load()
		waitFor(t, 10*time.Second, "GETs on the survivor", func() bool { return sent.Load() > after+20 || len(failures) > 0 })
		cancel()
		wg.Wait()
		close(failures)
		for f := range failures {
			t.Errorf("while an agent drained: %s", f)
		}
		t.Logf("%d GETs, none failed while agent 1 drained", sent.Load())
	})
}

// rlRelay is a TCP relay from a loopback listener to upstream that can go silent: freeze stops it
// copying on every connection it holds and on the ones it accepts until thaw, without closing any
// socket (no FIN, no RST), as a NAT or firewall that drops a flow's state does. Connections frozen
// stay so; after thaw new connections are copied normally.
type rlRelay struct {
	ln       net.Listener
	upstream string
	accepted atomic.Int64
	done     chan struct{}
	wg       sync.WaitGroup

	mu     sync.Mutex
	frozen bool
	// stall is closed by freeze: the pipes of the connections accepted before it stop.
	stall chan struct{}
	conns []net.Conn
}

func rlStartRelay(t testing.TB, upstream string) *rlRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rlRelay{ln: ln, upstream: upstream, done: make(chan struct{}), stall: make(chan struct{})}
	r.wg.Go(r.accept)
	t.Cleanup(func() {
		close(r.done)
		ln.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *rlRelay) addr() string { return r.ln.Addr().String() }

func (r *rlRelay) freeze() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.frozen {
		r.frozen = true
		close(r.stall)
	}
}

func (r *rlRelay) thaw() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen {
		r.frozen = false
		r.stall = make(chan struct{})
	}
}

// hold keeps c until the relay closes; false when it is closing already.
func (r *rlRelay) hold(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.done:
		c.Close()
		return false
	default:
	}
	r.conns = append(r.conns, c)
	return true
}

func (r *rlRelay) accept() {
	for {
		down, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.accepted.Add(1)
		if !r.hold(down) {
			return
		}
		r.mu.Lock()
		frozen, stall := r.frozen, r.stall
		r.mu.Unlock()
		if frozen {
			// Accepted and then ignored: the handshake gets no answer and no error.
			continue
		}
		up, err := net.DialTimeout("tcp", r.upstream, 5*time.Second)
		if err != nil {
			down.Close()
			continue
		}
		if !r.hold(up) {
			return
		}
		r.wg.Go(func() { r.pipe(up, down, stall) })
		r.wg.Go(func() { r.pipe(down, up, stall) })
	}
}

// pipe copies src to dst until an error (then closes both, as a relay passes an end on) or until
// stall is closed: then it neither reads nor writes again and leaves both sockets open.
func (r *rlRelay) pipe(dst, src net.Conn, stall <-chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		select {
		case <-stall:
			<-r.done
			return
		default:
		}
		n, err := src.Read(buf)
		select {
		case <-stall:
			// What was read after the freeze is dropped, as the silent path would.
			<-r.done
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			select {
			case <-stall:
				<-r.done
			default:
				src.Close()
				dst.Close()
			}
			return
		}
	}
}

// TestReliabilityHalfOpenTunnel: the path between agent and gateway goes silent with both sockets
// open (a relay stops copying, no FIN, no RST). The gateway drops the tunnel within its missed-pong
// deadline, the agent notices by its own pings and reconnects, and once the path carries new
// connections again the tunnel comes back through it and requests succeed.
func TestReliabilityHalfOpenTunnel(t *testing.T) {
	t.Parallel()
	const serverPing, clientPing = time.Second, time.Second
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_TUNNEL_PING_INTERVAL=" + serverPing.String()}})
	const domain = "halfopen.reliability.test"
	key := g.register(domain)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "through") })
	relay := rlStartRelay(t, g.addr)

	agent := startProcess(t, "hopgate-client", []string{
		"--server-addr", relay.addr(),
		"--domain", domain,
		"--local-target", target.URL,
		"--ca-file", g.caFile,
		"--log-format", "json",
		"--ping-interval", clientPing.String(),
	}, []string{"HOP_CLIENT_API_KEY=" + key})
	waitFor(t, 20*time.Second, "agent tunnel up through the relay", func() bool {
		if agent.exited() {
			t.Fatalf("hopgate-client exited early:\n%s", agent.logs.String())
		}
		return len(lines(agent, "tunnel up")) == 1 && g.agents(domain) == 1
	})
	if relay.accepted.Load() == 0 {
		t.Fatal("the tunnel did not go through the relay")
	}
	if code, body := tnGet(t, g.httpClient(true), g.url(domain, "/")); code != http.StatusOK || body != "through" {
		t.Fatalf("before the freeze: %d %q", code, body)
	}

	relay.freeze()
	start := time.Now()
	// The gateway's check runs each interval and fires once more than TunnelMissedPongs intervals
	// passed without a pong; one more interval and a margin for a loaded machine.
	bound := time.Duration(config.TunnelMissedPongs+2)*serverPing + 3*time.Second
	el := tnWaitAgents(t, g, domain, 0, bound)
	t.Logf("gateway dropped the silent tunnel %s after the freeze (ping %s, bound %s)", el.Round(time.Millisecond), serverPing, bound)
	if el < time.Duration(config.TunnelMissedPongs-1)*serverPing {
		t.Errorf("tunnel dropped after %s, before %d pings could have been missed: not the ping deadline", el, config.TunnelMissedPongs)
	}
	if code, body := tnGet(t, g.httpClient(true), g.url(domain, "/")); code != http.StatusServiceUnavailable {
		t.Errorf("with the path silent: %d %q, want 503", code, body)
	}

	// The relay passes on nothing, not even the gateway's close: only the agent's own pings tell it.
	clientBound := time.Duration(config.TunnelMissedPongs+2)*clientPing + 3*time.Second
	waitFor(t, clientBound-time.Since(start)+time.Second, "the agent to notice the silent tunnel", func() bool {
		for _, l := range lines(agent, "tunnel down") {
			if strings.Contains(l, "stopped answering pings") {
				return true
			}
		}
		return false
	})
	t.Logf("agent noticed %s after the freeze", time.Since(start).Round(time.Millisecond))

	relay.thaw()
	thawed, acceptedAtThaw := time.Now(), relay.accepted.Load()
	waitFor(t, 90*time.Second, "the tunnel back through the relay", func() bool {
		if agent.exited() {
			t.Fatalf("hopgate-client exited:\n%s", agent.logs.String())
		}
		return len(lines(agent, "tunnel up")) == 2 && g.agents(domain) == 1
	})
	t.Logf("tunnel back %s after the path recovered", time.Since(thawed).Round(time.Millisecond))
	if relay.accepted.Load() == acceptedAtThaw {
		t.Error("the new tunnel did not come through a new relay connection")
	}
	if code, body := tnGet(t, g.httpClient(true), g.url(domain, "/")); code != http.StatusOK || body != "through" {
		t.Errorf("after the tunnel came back: %d %q", code, body)
	}
	if agent.exited() {
		t.Error("agent exited")
	}
}
