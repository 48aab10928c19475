package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// bodyLimitReader is a request body of n bytes whose length the client cannot know in advance, so
// it goes chunked on HTTP/1.1 and without content-length on HTTP/2.
type bodyLimitReader struct{ r io.Reader }

func (b bodyLimitReader) Read(p []byte) (int, error) { return b.r.Read(p) }

func unsizedBody(n int) io.Reader { return bodyLimitReader{strings.NewReader(strings.Repeat("b", n))} }

// TestReliabilityBodyLimit: HOP_SERVER_MAX_BODY_BYTES caps every domain's request bodies and a
// policy's max_body_bytes caps its domain's, the lower one winning. A Content-Length over the cap is
// answered 413 before the request reaches the agent; a chunked (HTTP/1.1) or unsized (HTTP/2) body
// that crosses it is cut there: the visitor gets 413 and the target's read of the body fails, so
// it never takes a cut body as whole. A body of exactly the cap passes byte for byte.
func TestReliabilityBodyLimit(t *testing.T) {
	t.Parallel()
	const gatewayLimit = 64 << 10
	const (
		plain  = "gateway.body.test" // no policy: the gateway's cap
		capped = "policy.body.test"  // policy under the gateway's cap
		higher = "higher.body.test"  // policy over the gateway's cap: the gateway's wins
	)
	target, g, port := reServe(t, plain, gatewayOptions{Env: []string{
		fmt.Sprintf("HOP_SERVER_MAX_BODY_BYTES=%dKiB", gatewayLimit>>10), "HOP_SERVER_METRICS_LISTEN=127.0.0.1:0",
	}})
	metrics := tnMetricsAddr(t, g)
	for domain, policy := range map[string]string{capped: `{"max_body_bytes": 1000}`, higher: `{"max_body_bytes": 1048576}`} {
		g.startAgent(domain, g.register(domain), target.url)
		setPolicy(t, g, domain, policy)
	}
	refused := 0
	for _, tc := range []struct {
		domain string
		limit  int
	}{{plain, gatewayLimit}, {capped, 1000}, {higher, gatewayLimit}} {
		t.Run(tc.domain, func(t *testing.T) {
			for _, h2 := range []bool{false, true} {
				c := g.httpClient(h2)
				for _, sized := range []bool{true, false} {
					for _, n := range []int{tc.limit, tc.limit + 1} {
						path := fmt.Sprintf("/%s/up/h2=%v/sized=%v/%d", tc.domain, h2, sized, n)
						body := unsizedBody(n)
						if sized {
							body = strings.NewReader(strings.Repeat("b", n))
						}
						res, err := gwDoE(c, http.MethodPost, g.url(tc.domain, path), nil, body)
						hits := target.with(path)
						if n == tc.limit {
							if err != nil || res.code != http.StatusOK || len(hits) != 1 || len(hits[0].Body) != n {
								t.Errorf("%s: a body of exactly the cap: %d %v; the target saw %d requests %.80v", path, res.code, err, len(hits), hits)
							}
							continue
						}
						refused++
						if err != nil || res.code != http.StatusRequestEntityTooLarge {
							t.Errorf("%s: %d %.100q %v, want 413", path, res.code, res.body, err)
						}
						if sized && len(hits) > 0 {
							t.Errorf("%s: the Content-Length said too large, yet the request reached the target: %.80v", path, hits)
						}
						waitFor(t, 10*time.Second, "the target to finish reading any body it got", func() bool {
							for _, h := range target.with(path) {
								if !h.BodyDone {
									return false
								}
							}
							return true
						})
						for _, h := range target.with(path) {
							if !strings.Contains(h.Body, "[read error") || len(h.Body) > tc.limit+len(" [read error: ")+200 {
								t.Errorf("%s: the target read a cut body as whole, or more than the cap: %d bytes %.60q", path, len(h.Body), h.Body)
							}
						}
					}
				}
			}
		})
	}
	// A chunked body cut on a raw connection: the 413 arrives while the client still writes, and a
	// request pipelined after the body must not be read as one.
	t.Run("raw chunked then pipelined", func(t *testing.T) {
		host := net.JoinHostPort(capped, port)
		chunk := strings.Repeat("c", 600)
		raw := "POST /raw/cut HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", len(chunk), chunk, len(chunk), chunk) +
			"GET /raw/after HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
		code, body, err := reRawH1(t, g.forTest(t), capped, raw)
		if err != nil || code != http.StatusRequestEntityTooLarge {
			t.Fatalf("%d %.100q %v, want 413", code, body, err)
		}
		refused++
		if hits := target.with("/raw/after"); len(hits) > 0 {
			t.Errorf("the request after the cut body reached the target: %+v", hits)
		}
	})
	if got := tnMetric(t, metrics, `hopgate_proxy_errors_total{reason="body_too_large"}`); got != float64(refused) {
		t.Errorf(`hopgate_proxy_errors_total{reason="body_too_large"} = %v, want %d`, got, refused)
	}
	abAlive(t, g)
}
