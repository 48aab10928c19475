package check_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/agent/check"
	"github.com/hopgate/hopgate/internal/agent/supervisor"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRun covers what can go wrong without a gateway; the whole path with a real gateway is in
// internal/e2e (TestCLCheck).
func TestRun(t *testing.T) {
	// An HTTPS server that speaks HTTP/2 but is not a gateway.
	notGateway := httptest.NewUnstartedServer(http.NotFoundHandler())
	notGateway.EnableHTTP2 = true
	notGateway.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are the point here
	notGateway.StartTLS()
	t.Cleanup(notGateway.Close)
	trusted := x509.NewCertPool()
	trusted.AddCert(notGateway.Certificate())

	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}))
	t.Cleanup(target.Close)
	targetURL, _ := url.Parse(target.URL)

	sock := filepath.Join(t.TempDir(), "t.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	unixSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go func() { _ = unixSrv.Serve(ul) }()
	t.Cleanup(func() { unixSrv.Close() })

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	silent, _ := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	t.Cleanup(func() { silent.Close() })

	addr := strings.TrimPrefix(notGateway.URL, "https://")
	tests := []struct {
		name   string
		server string
		tls    *tls.Config
		target *url.URL
		passed bool
		want   []string
		// timeout per step; the default leaves room for loading the system roots under -race.
		timeout time.Duration
	}{
		{name: "not a gateway", server: addr, tls: &tls.Config{RootCAs: trusted, ServerName: "example.com"}, target: targetURL,
			want: []string{"✓ server " + addr + ": resolves to 127.0.0.1", "certificate trusted",
				"HTTP/2 (the tunnel's compatibility path: hopgate-tunnel/1 not negotiated)",
				"✗ tunnel for app.example.com: the server does not offer the HopGate tunnel service",
				"✓ local target " + target.URL + ": answers GET / with 418 I'm a teapot"}},
		{name: "untrusted", server: addr, tls: &tls.Config{ServerName: "example.com"}, target: targetURL,
			want: []string{"✗ server " + addr + ": certificate not trusted (signed by an unknown authority): use --ca-file",
				"– tunnel for app.example.com: not tried"}},
		{name: "wrong name", server: addr, tls: &tls.Config{RootCAs: trusted, ServerName: "gateway.test"}, target: targetURL,
			want: []string{"certificate not valid for 127.0.0.1", "check the name in --server-addr"}},
		{name: "not TLS", server: strings.TrimPrefix(target.URL, "http://"), tls: &tls.Config{RootCAs: trusted}, target: targetURL,
			want: []string{"does not speak TLS on this port"}},
		{name: "no answer", server: silent.Addr().String(), tls: &tls.Config{RootCAs: trusted}, target: targetURL,
			want: []string{"no answer in time"}, timeout: 500 * time.Millisecond},
		{name: "unix target", server: closed, tls: &tls.Config{}, target: &url.URL{Scheme: "unix", Path: sock},
			want: []string{"✗ server " + closed + ": connection refused", "✓ local target unix://" + sock + ": answers GET / with 200 OK"}},
		{name: "target down", server: closed, tls: &tls.Config{}, target: &url.URL{Scheme: "http", Host: closed},
			want: []string{"✗ local target http://" + closed + ": connection refused: nothing listens there (is the service running"}},
		{name: "tcp target", server: closed, tls: &tls.Config{}, target: &url.URL{Scheme: "tcp", Host: silent.Addr().String()},
			want: []string{"✓ local target tcp://" + silent.Addr().String() + ": accepts a TCP connection"}},
		{name: "tcp target down", server: closed, tls: &tls.Config{}, target: &url.URL{Scheme: "tcp", Host: closed},
			want: []string{"✗ local target tcp://" + closed + ": connection refused: nothing listens there"}},
		{name: "missing socket", server: closed, tls: &tls.Config{}, target: &url.URL{Scheme: "unix", Path: sock + ".gone"},
			want: []string{"no such socket file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.timeout == 0 {
				tc.timeout = 10 * time.Second
			}
			var out bytes.Buffer
			res := check.Run(context.Background(), check.Options{
				Agent:   supervisor.Options{ServerAddr: tc.server, TLS: tc.tls, Domain: "app.example.com", APIKey: "k"},
				Target:  tc.target,
				Timeout: tc.timeout,
			}, &out)
			if res.Passed != tc.passed || res.Refused {
				t.Errorf("result %+v", res)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
