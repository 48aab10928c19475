package edge_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/edge"
)

// TestRouting sends requests over real TLS and checks which handler each reached, or that none did.
func TestRouting(t *testing.T) {
	leakCheck(t)
	f := start(t, nil)
	tunnelPath := edge.TunnelPathPrefix + "OpenTunnel"
	tests := []struct {
		name        string
		proto       string // "h1" or "h2"
		sni, host   string
		method      string
		path, ctype string
		wantCode    int
		wantHandler string // "" when no handler may see the request
	}{
		{name: "gateway name over h2", proto: "h2", sni: gatewayName, host: gatewayName,
			path: "/healthz", wantCode: 200, wantHandler: "gateway"},
		{name: "gateway name over http/1.1", proto: "h1", sni: gatewayName, host: gatewayName,
			path: "/healthz", wantCode: 200, wantHandler: "gateway"},
		{name: "gateway name with capitals, port and trailing dot", proto: "h1", sni: gatewayName,
			host: "LocalHost.:443", path: "/", wantCode: 200, wantHandler: "gateway"},
		{name: "other name over h2 goes to tenants", proto: "h2", sni: tenantName, host: tenantName,
			path: "/healthz", wantCode: 200, wantHandler: "tenants"},
		{name: "other name over http/1.1 goes to tenants", proto: "h1", sni: tenantName, host: tenantName,
			path: "/a/b", wantCode: 200, wantHandler: "tenants"},
		{name: "gRPC tunnel call on the gateway name", proto: "h2", sni: gatewayName, host: gatewayName,
			method: "POST", path: tunnelPath, ctype: "application/grpc", wantCode: 200, wantHandler: "tunnels"},
		// The prefix is reserved on every host: an agent may reach the gateway under any name.
		{name: "gRPC tunnel call on a tenant name", proto: "h2", sni: tenantName, host: tenantName,
			method: "POST", path: tunnelPath, ctype: "application/grpc+proto", wantCode: 200, wantHandler: "tunnels"},
		{name: "tunnel path without gRPC content type", proto: "h2", sni: tenantName, host: tenantName,
			method: "POST", path: tunnelPath, ctype: "application/json", wantCode: 404},
		{name: "tunnel path over http/1.1 is not gRPC", proto: "h1", sni: tenantName, host: tenantName,
			method: "POST", path: tunnelPath, ctype: "application/grpc", wantCode: 404},
		{name: "tunnel path GET on the gateway name", proto: "h2", sni: gatewayName, host: gatewayName,
			path: tunnelPath, wantCode: 404},
		{name: "Host names the gateway on a tenant's connection", proto: "h2", sni: tenantName, host: gatewayName,
			path: "/healthz", wantCode: 421},
		{name: "Host names a tenant on the gateway's connection", proto: "h1", sni: gatewayName, host: tenantName,
			path: "/", wantCode: 421},
		{name: "Host names another tenant", proto: "h2", sni: tenantName, host: "other.test",
			path: "/", wantCode: 421},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			var body io.Reader
			if method == http.MethodPost {
				body = strings.NewReader("\x00\x00\x00\x00\x00") // an empty gRPC message frame
			}
			req, err := http.NewRequest(method, "https://"+tc.sni+tc.path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tc.host
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := f.client(t, tc.sni, tc.proto).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()

			wantMajor := map[string]int{"h1": 1, "h2": 2}[tc.proto]
			if resp.ProtoMajor != wantMajor {
				t.Errorf("response protocol = %s, want HTTP/%d", resp.Proto, wantMajor)
			}
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantCode, got)
			}
			if h := resp.Header.Get("X-Handler"); h != tc.wantHandler {
				t.Errorf("served by %q, want %q", h, tc.wantHandler)
			}
			hits := f.rec.take()
			if tc.wantHandler == "" {
				if len(hits) != 0 {
					t.Errorf("no handler may see this request, got %+v", hits)
				}
				return
			}
			if len(hits) != 1 {
				t.Fatalf("hits = %+v, want one on %s", hits, tc.wantHandler)
			}
			h := hits[0]
			if h.handler != tc.wantHandler || h.path != tc.path || h.protoMajor != wantMajor {
				t.Errorf("hit = %+v, want %s on %s over HTTP/%d", h, tc.wantHandler, tc.path, wantMajor)
			}
			// The edge terminates TLS itself; handlers must still see that it was there.
			if !h.tls || h.sni != tc.sni {
				t.Errorf("handler saw TLS %v with SNI %q, want TLS with SNI %q", h.tls, h.sni, tc.sni)
			}
		})
	}
}
