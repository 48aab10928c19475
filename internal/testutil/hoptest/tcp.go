package hoptest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"
)

// Domain modes of the admin API (issue 17).
const (
	ModeHTTP        = "http"
	ModePassthrough = "tls-passthrough"
	ModeTCP         = "tcp"
)

// Registration is the admin API's answer to a register call with a mode.
type Registration struct {
	Domain        string `json:"domain"`
	Key           string `json:"client_api_key"`
	Mode          string `json:"mode"`
	TCPPort       int    `json:"tcp_port"`
	ProxyProtocol string `json:"proxy_protocol"`
}

// RegisterMode registers domain in mode; tcpPort 0 lets the gateway pick a free port of its range,
// proxyProtocol is "", "v1" or "v2". Any answer but 201 is a *StatusError.
func (g *Gateway) RegisterMode(ctx context.Context, domain, mode string, tcpPort int, proxyProtocol string) (Registration, error) {
	const path = "/api/v1/admin/domains/register"
	code, b, err := g.Admin(ctx, http.MethodPost, path, map[string]any{"domain": domain, "memo": "hoptest",
		"mode": mode, "tcp_port": tcpPort, "proxy_protocol": proxyProtocol})
	if err != nil {
		return Registration{}, err
	}
	var out Registration
	if code != http.StatusCreated || json.Unmarshal(b, &out) != nil || out.Key == "" {
		return Registration{}, &StatusError{Method: http.MethodPost, Path: path, Code: code, Body: b}
	}
	return out, nil
}

// PortRangeLow and PortRangeHigh bound the ports FreePortRange hands out: below the kernel's default
// ephemeral range (32768–60999), so that no listener on port 0 and no outgoing connection of another
// test takes one while the gateway is not listening on it yet.
const (
	PortRangeLow  = 20000
	PortRangeHigh = 32000
)

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{} // handed out by this process
)

// FreePortRange returns n consecutive loopback ports that were all free a moment ago and that this
// process has not handed out before: a HOP_SERVER_TCP_PORTS range for one gateway.
func FreePortRange(n int) (low, high int, err error) {
	if n < 1 || n > 256 {
		return 0, 0, fmt.Errorf("hoptest: a range of %d ports", n)
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		low = PortRangeLow + rand.IntN(PortRangeHigh-PortRangeLow-n)
		if rangeFree(low, n) {
			for p := low; p < low+n; p++ {
				portsUsed[p] = true
			}
			return low, low + n - 1, nil
		}
	}
	return 0, 0, errors.New("hoptest: no free range of ports after 100 tries")
}

func rangeFree(low, n int) bool {
	for p := low; p < low+n; p++ {
		if portsUsed[p] {
			return false
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}

// FreeAddr is a loopback address for a listener a test starts later (or never, to be refused): a
// port of FreePortRange, so unlike one the kernel picked for a listener that was closed again, no
// other test's listener or outgoing connection takes it in between.
func FreeAddr(t testing.TB) string {
	t.Helper()
	low, _, err := FreePortRange(1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", low)
}
