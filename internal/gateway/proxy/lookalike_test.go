package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/httpwire"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// seenByAgent is what the agent side of the tunnel received for one request.
type seenByAgent struct {
	header        http.Header
	trailerNames  []string
	trailers      http.Header
	body          string
	headerEntries []string // header names exactly as they crossed the tunnel
}

// recordingAgent answers every stream 200 after reading the request to its end, and hands what
// crossed the tunnel to got.
func recordingAgent(got chan<- seenByAgent) func(*tunnel.Stream) {
	return func(st *tunnel.Stream) {
		defer st.Close()
		h := st.Request()
		s := seenByAgent{header: httpwire.FromWire(h.Headers), trailerNames: h.TrailerNames}
		for _, f := range h.Headers {
			s.headerEntries = append(s.headerEntries, f.Name)
		}
		if !h.EndStream {
			b, _ := io.ReadAll(st)
			s.body = string(b)
			s.trailers = httpwire.FromWire(st.Trailers())
		}
		got <- s
		_ = st.SendResponse(&tunnelv1.ResponseHead{Status: 200, EndStream: true})
	}
}

// forged are header names a target may take for the gateway's identity headers: the names
// themselves in any case, and with '_' for '-' (CGI, WSGI, Rack and PHP fold both to one variable).
var forged = []string{"X-HopGate-User", "x-hopgate-email", "X_HopGate_Email", "x-hopgate_user", "X_HOPGATE_USER", "x-HoPgAtE-eMaIl"}

// TestIdentityLookalikes: no identity header a visitor sends reaches the agent, as a header in any
// case or with underscores, or as a trailer (declared or not); the identity Access sets does, once;
// names that only start the same way pass.
func TestIdentityLookalikes(t *testing.T) {
	leakCheck(t)
	got := make(chan seenByAgent, 4)
	agent := recordingAgent(got)
	f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){agent, agent, agent}, access: accessFunc(
		func(_ http.ResponseWriter, r *http.Request, _ string, _ netip.Addr) error {
			r.Header.Set(access.HeaderUser, "ops")
			return nil
		})})
	checkIdentity := func(t *testing.T, name string, h http.Header, wantUser bool) {
		t.Helper()
		for k, v := range h {
			if identityName(k) && !(wantUser && k == access.HeaderUser && len(v) == 1 && v[0] == "ops") {
				t.Errorf("%s: the agent received %s: %q", name, k, v)
			}
		}
		if wantUser && h.Get(access.HeaderUser) != "ops" {
			t.Errorf("%s: the agent did not receive the identity Access set: %v", name, h)
		}
	}

	t.Run("headers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, f.url+"/", nil)
		req.Host = "app.test"
		for _, name := range forged {
			// Straight into the map: Header.Set would canonicalise, and the point is the raw forms.
			req.Header[name] = []string{"forged"}
		}
		req.Header.Set("X-HopGate-Username", "kept")
		req.Header.Set("X-HopGate-Replay", "kept")
		send(t, req)
		s := <-got
		checkIdentity(t, "header", s.header, true)
		for _, name := range s.headerEntries {
			if identityName(name) && name != access.HeaderUser {
				t.Errorf("the tunnel carried header %q", name)
			}
		}
		if s.header.Get("X-HopGate-Username") != "kept" || s.header.Get("X-HopGate-Replay") != "kept" {
			t.Errorf("headers that only look alike were dropped: %v", s.header)
		}
	})

	t.Run("declared trailers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, f.url+"/", strings.NewReader("hello"))
		req.Host = "app.test"
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Checksum": {"abc"}}
		for _, name := range forged {
			req.Trailer[name] = []string{"forged"}
		}
		send(t, req)
		s := <-got
		if s.body != "hello" || s.trailers.Get("X-Checksum") != "abc" {
			t.Fatalf("body %q, trailers %v: the request did not arrive whole", s.body, s.trailers)
		}
		checkIdentity(t, "trailer", s.trailers, false)
		for _, name := range s.trailerNames {
			if identityName(name) {
				t.Errorf("the tunnel announced trailer %q", name)
			}
		}
		checkIdentity(t, "header", s.header, true)
	})

	t.Run("undeclared trailers", func(t *testing.T) {
		// Raw HTTP/1.1, since a Go client sends only declared trailers; net/http keeps the others too.
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(f.url, "http://"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(conn, "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
			"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-HopGate-Email: forged@example.com\r\nX_HopGate_User: root\r\nx-hopgate_email: x@example.com\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d", res.StatusCode)
		}
		s := <-got
		if s.body != "hello" || s.trailers.Get("X-Checksum") != "abc" {
			t.Fatalf("body %q, trailers %v: the request did not arrive whole", s.body, s.trailers)
		}
		checkIdentity(t, "trailer", s.trailers, false)
	})
}

func send(t *testing.T, req *http.Request) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
}

// TestIdentityName: the names the gateway treats as its identity headers, and near misses.
func TestIdentityName(t *testing.T) {
	for _, name := range forged {
		if !identityName(name) {
			t.Errorf("identityName(%q) = false", name)
		}
	}
	for _, name := range []string{"X-HopGate-Users", "X-HopGate-Mail", "X-Hopgate-Replay", "X-Forwarded-User", "X.HopGate.User", "X-HopGate-User ", "", "X-Hopgate-Emai1"} {
		if identityName(name) {
			t.Errorf("identityName(%q) = true", name)
		}
	}
	// withoutIdentity copies: the map is the HTTP server's.
	tr := http.Header{"X-Checksum": {"abc"}}
	if got := withoutIdentity(tr); len(got) != 1 {
		t.Errorf("withoutIdentity(%v) = %v", tr, got)
	}
	tr["X_hopgate_email"] = []string{"forged"}
	if got := withoutIdentity(tr); len(got) != 1 || got.Get("X-Checksum") != "abc" || len(tr) != 2 {
		t.Errorf("withoutIdentity = %v, the original now %v", got, tr)
	}
}
