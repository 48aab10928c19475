package edge_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/edge"

	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// plainClient talks plain HTTP/1.1 and never follows redirects, so the test sees the 308 itself.
func plainClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// TestPlainHTTP checks both modes of the plain-HTTP listener: redirect everything to HTTPS, or (behind
// a balancer that terminates TLS) serve tenants but never the gateway's own name or the tunnels.
func TestPlainHTTP(t *testing.T) {
	leakCheck(t)
	redirect := start(t, func(o *edge.Options) { o.HTTPAddr = "127.0.0.1:0" })
	tenants := start(t, func(o *edge.Options) { o.HTTPAddr = "127.0.0.1:0"; o.PlainTenants = true })
	httpsPort := redirect.srv.HTTPSAddr().(*net.TCPAddr).Port
	tunnelPath := edge.TunnelPathPrefix + "OpenTunnel"

	tests := []struct {
		name         string
		f            *fixture
		host, target string
		ctype        string
		wantCode     int
		wantLocation string
		wantHandler  string
	}{
		{name: "tenant is redirected, path, query and HTTPS port kept", f: redirect, host: tenantName,
			target: "/a/b?x=1&y=%2F", wantCode: 308,
			wantLocation: "https://" + tenantName + ":" + strconv.Itoa(httpsPort) + "/a/b?x=1&y=%2F"},
		{name: "plain port in Host is replaced by the HTTPS port", f: redirect, host: tenantName + ":8080",
			target: "/", wantCode: 308, wantLocation: "https://" + tenantName + ":" + strconv.Itoa(httpsPort) + "/"},
		{name: "gateway name is redirected", f: redirect, host: gatewayName, target: "/healthz", wantCode: 308,
			wantLocation: "https://" + gatewayName + ":" + strconv.Itoa(httpsPort) + "/healthz"},
		{name: "tunnel path is redirected", f: redirect, host: tenantName, target: tunnelPath,
			ctype: "application/grpc", wantCode: 308,
			wantLocation: "https://" + tenantName + ":" + strconv.Itoa(httpsPort) + tunnelPath},
		{name: "PlainTenants serves a tenant", f: tenants, host: tenantName, target: "/a/b?x=1",
			wantCode: 200, wantHandler: "tenants"},
		{name: "PlainTenants never serves the gateway's name", f: tenants, host: gatewayName,
			target: "/healthz", wantCode: 404},
		{name: "PlainTenants serves no tunnels", f: tenants, host: tenantName, target: tunnelPath,
			ctype: "application/grpc", wantCode: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, "http://"+tc.f.srv.HTTPAddr().String()+tc.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tc.host
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := plainClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status = %d %q, want %d", resp.StatusCode, body, tc.wantCode)
			}
			if loc := resp.Header.Get("Location"); loc != tc.wantLocation {
				t.Errorf("Location = %q, want %q", loc, tc.wantLocation)
			}
			hits := tc.f.rec.take()
			if tc.wantHandler == "" {
				if len(hits) != 0 {
					t.Errorf("no handler may see this request, got %+v", hits)
				}
				return
			}
			if len(hits) != 1 || hits[0].handler != tc.wantHandler || hits[0].tls {
				t.Errorf("hits = %+v, want one plain (r.TLS nil) request on %s", hits, tc.wantHandler)
			}
		})
	}
}

// TestRedirectToHTTPS checks the Location the redirect builds from Host and the HTTPS port.
func TestRedirectToHTTPS(t *testing.T) {
	tests := []struct {
		name         string
		port, host   string
		target       string
		wantCode     int
		wantLocation string
	}{
		{name: "port 443 is left out", port: "443", host: "app.test", target: "/x?q=1", wantCode: 308,
			wantLocation: "https://app.test/x?q=1"},
		{name: "unknown port is left out", port: "", host: "app.test:80", target: "/", wantCode: 308,
			wantLocation: "https://app.test/"},
		{name: "other port is kept", port: "8443", host: "app.test", target: "/x", wantCode: 308,
			wantLocation: "https://app.test:8443/x"},
		{name: "Host's own port is replaced", port: "8443", host: "app.test:8080", target: "/", wantCode: 308,
			wantLocation: "https://app.test:8443/"},
		{name: "Host is lowercased, trailing dot dropped", port: "443", host: "App.Test.", target: "/", wantCode: 308,
			wantLocation: "https://app.test/"},
		{name: "IPv6 with port, to 443", port: "443", host: "[::1]:80", target: "/", wantCode: 308,
			wantLocation: "https://[::1]/"},
		{name: "IPv6 with port, to another port", port: "8443", host: "[::1]:80", target: "/", wantCode: 308,
			wantLocation: "https://[::1]:8443/"},
		{name: "escaped path survives", port: "443", host: "app.test", target: "/a%2Fb/c%20d", wantCode: 308,
			wantLocation: "https://app.test/a%2Fb/c%20d"},
		{name: "IPv6 without port, to 443", port: "443", host: "[::1]", target: "/", wantCode: 308,
			wantLocation: "https://[::1]/"},
		{name: "IPv6 without port, to another port", port: "8443", host: "[::1]", target: "/", wantCode: 308,
			wantLocation: "https://[::1]:8443/"},
		{name: "no Host", port: "443", host: "", target: "/", wantCode: 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tc.target, nil)
			req.Host = tc.host
			rr := httptest.NewRecorder()
			edge.RedirectToHTTPS(tc.port).ServeHTTP(rr, req)
			if rr.Code != tc.wantCode {
				t.Fatalf("status = %d, want %d", rr.Code, tc.wantCode)
			}
			if loc := rr.Header().Get("Location"); loc != tc.wantLocation {
				t.Errorf("Location = %q, want %q", loc, tc.wantLocation)
			}
		})
	}
}

// TestShutdown checks the graceful stop: no new connections, the request in flight finishes, Serve
// returns nil, and nothing is left running. At the deadline what is left is closed.
func TestShutdown(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name  string
		proto string
		// release lets the handler finish before the grace period ends; otherwise the grace runs out.
		release bool
		grace   time.Duration
	}{
		{name: "HTTP/1.1 request finishes", proto: "h1", release: true, grace: 5 * time.Second},
		{name: "h2 request finishes", proto: "h2", release: true, grace: 5 * time.Second},
		{name: "HTTP/1.1 request cut at the deadline", proto: "h1", grace: 200 * time.Millisecond},
		{name: "h2 request cut at the deadline", proto: "h2", grace: 200 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			f := start(t, func(o *edge.Options) {
				o.HTTPAddr = "127.0.0.1:0"
				o.Tenants = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					close(entered)
					select {
					case <-release:
						_, _ = io.WriteString(w, "done")
					case <-r.Context().Done(): // the connection was closed under the request
					}
				})
			})
			type result struct {
				code int
				body string
				err  error
			}
			got := make(chan result, 1)
			cl := f.client(t, tenantName, tc.proto)
			go func() {
				resp, err := cl.Get("https://" + tenantName + "/slow")
				if err != nil {
					got <- result{err: err}
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				got <- result{code: resp.StatusCode, body: string(b), err: err}
			}()
			select {
			case <-entered:
			case <-time.After(5 * time.Second):
				t.Fatal("the request did not reach the handler")
			}

			shutdown := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), tc.grace)
				defer cancel()
				shutdown <- f.srv.Shutdown(ctx)
			}()
			for _, a := range []net.Addr{f.srv.HTTPSAddr(), f.srv.HTTPAddr()} {
				poll.Until(t, 2*time.Second, "the listener on "+a.String()+" to close", func() bool {
					c, err := net.DialTimeout("tcp", a.String(), time.Second)
					if err == nil {
						c.Close()
					}
					return err != nil
				})
			}

			if !tc.release {
				select {
				case err := <-shutdown:
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Shutdown past its deadline = %v, want context.DeadlineExceeded", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("Shutdown did not return at its deadline")
				}
				// Well before the client's own 5 s timeout: the server closed the connection.
				select {
				case r := <-got:
					if r.err == nil && r.code == http.StatusOK {
						t.Errorf("the cut request got a whole response: %d %q", r.code, r.body)
					}
				case <-time.After(2 * time.Second):
					t.Fatal("the request's connection was left open past Shutdown's deadline")
				}
			} else {
				// Neither Shutdown nor Serve returns while a request is in flight.
				select {
				case err := <-shutdown:
					t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
				case err := <-f.served:
					t.Fatalf("Serve returned (%v) while a request was in flight", err)
				case <-time.After(100 * time.Millisecond):
				}
				close(release)
				if r := <-got; r.err != nil || r.code != http.StatusOK || r.body != "done" {
					t.Errorf("in-flight request = %d %q %v, want 200 %q", r.code, r.body, r.err, "done")
				}
				if err := <-shutdown; err != nil {
					t.Errorf("Shutdown = %v, want nil", err)
				}
			}
			select {
			case err := <-f.served:
				if err != nil {
					t.Errorf("Serve = %v, want nil after Shutdown", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not return after Shutdown")
			}
		})
	}
}
