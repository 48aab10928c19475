package edge

import (
	"net"
	"net/http"
	"strings"

	"github.com/hopgate/hopgate/internal/gateway/errorpage"
)

// TunnelPathPrefix is reserved for the tunnel service on every host.
const TunnelPathPrefix = "/hopgate.tunnel.v1.TunnelService/"

// router sends each request on the one port to its handler: an OpenTunnel call to the tunnel
// service, the gateway's own name to its own handler, every other Host to the tenant handler.
type router struct {
	// gatewayDomain is lowercase, without a trailing dot.
	gatewayDomain string
	// tunnels is nil on the plain-HTTP listener, which serves no tunnels and not the gateway's name.
	tunnels http.Handler
	gateway http.Handler
	tenants http.Handler
	errors  *errorpage.Writer
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, TunnelPathPrefix) {
		if rt.tunnels != nil && isGRPC(r) {
			rt.tunnels.ServeHTTP(w, r)
			return
		}
		rt.errors.Write(w, r, http.StatusNotFound, "reserved for the tunnel service")
		return
	}
	host := hostOnly(r.Host)
	if misdirected(r, host) {
		// The connection was opened for another name (HTTP/2 coalescing, or a forged Host): the
		// client must open a connection for this one.
		rt.errors.Write(w, r, http.StatusMisdirectedRequest, "")
		return
	}
	if host == rt.gatewayDomain {
		if rt.tunnels == nil {
			rt.errors.Write(w, r, http.StatusNotFound, "")
			return
		}
		rt.gateway.ServeHTTP(w, r)
		return
	}
	rt.tenants.ServeHTTP(w, r)
}

// misdirected reports whether a TLS request names a host other than the one its connection was
// opened for (SNI). Clients that send no SNI (IP addresses) are not checked.
func misdirected(r *http.Request, host string) bool {
	if r.TLS == nil || r.TLS.ServerName == "" {
		return false
	}
	return !strings.EqualFold(strings.TrimSuffix(r.TLS.ServerName, "."), host)
}

// isGRPC reports whether r is a gRPC call: HTTP/2 with a gRPC content type.
func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// hostOnly lowercases a Host header and strips its port and trailing dot.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}
