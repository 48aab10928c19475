package supervisor

import "testing"

// TestViaProxy: the tunnel's own dialer (with its socket options) is used only when grpc's default
// dialer would not go through an HTTPS proxy, so proxy users keep their proxy.
func TestViaProxy(t *testing.T) {
	for _, tc := range []struct {
		proxy, noProxy, addr string
		want                 bool
	}{
		{"", "", "gw.example.com:443", false},
		{"http://proxy.internal:3128", "", "gw.example.com:443", true},
		{"http://proxy.internal:3128", "example.com", "gw.example.com:443", false},
		{"http://proxy.internal:3128", "", "127.0.0.1:8443", false}, // loopback never goes through a proxy
	} {
		t.Setenv("HTTPS_PROXY", tc.proxy)
		t.Setenv("https_proxy", tc.proxy)
		t.Setenv("NO_PROXY", tc.noProxy)
		t.Setenv("no_proxy", tc.noProxy)
		if got := viaProxy(tc.addr); got != tc.want {
			t.Errorf("HTTPS_PROXY=%q NO_PROXY=%q %s: viaProxy = %v, want %v", tc.proxy, tc.noProxy, tc.addr, got, tc.want)
		}
	}
}
