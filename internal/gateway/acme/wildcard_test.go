package acme

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/challenge/dns01"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
)

// challProvider is a lego DNS provider that publishes records on pebble-challtestsrv.
type challProvider struct{ c *pebbletest.ChallTestSrv }

func (p challProvider) Present(domain, _, keyAuth string) error {
	info := dns01.GetChallengeInfo(domain, keyAuth)
	return p.c.SetTXT(info.EffectiveFQDN, info.Value)
}

func (p challProvider) CleanUp(domain, _, keyAuth string) error {
	return p.c.ClearTXT(dns01.GetChallengeInfo(domain, keyAuth).EffectiveFQDN)
}

func (challProvider) Timeout() (time.Duration, time.Duration) {
	return 20 * time.Second, 200 * time.Millisecond
}

// TestWildcardDNS01: a wildcard name is ordered with DNS-01 (Pebble validating through
// pebble-challtestsrv), its certificate is served for any SNI one label under it and for no other
// name, an exact name keeps its own certificate; without a DNS provider the order fails saying so.
func TestWildcardDNS01(t *testing.T) {
	t.Parallel()
	const wild = "*.wild.example.test"
	g := startGateway(t)
	chall := pebbleBin.StartChallTestSrv(t)
	p := startPebble(t, pebbleConfig{httpPort: port(g.httpAddr), tlsPort: port(g.tlsAddr), dnsServer: chall.DNSAddr})
	m, _ := newManager(t, p, t.TempDir(), func(o *Options) {
		o.DNSProvider = challProvider{chall}
		o.DNSResolvers = []string{chall.DNSAddr}
	})
	g.setManager(m)
	m.Manage(context.Background(), "*.Wild.Example.test", "exact.wild.example.test")
	run(t, m)
	st := waitState(t, m, wild, StateValid, 30*time.Second)
	waitState(t, m, "exact.wild.example.test", StateValid, 30*time.Second)

	leaf := handshake(t, g.tlsAddr, "x.wild.example.test", "x.wild.example.test", p.root)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != wild || !leaf.NotAfter.Equal(st.NotAfter) {
		t.Fatalf("x.wild.example.test served %v (not after %v), want the wildcard's", leaf.DNSNames, leaf.NotAfter)
	}
	if exact := handshake(t, g.tlsAddr, "exact.wild.example.test", "exact.wild.example.test", p.root); exact.DNSNames[0] != "exact.wild.example.test" {
		t.Fatalf("the exact name got %v, want its own certificate", exact.DNSNames)
	}
	// No default certificate is set, so a name the wildcard does not cover gets none.
	for _, name := range []string{"a.b.wild.example.test", "wild.example.test"} {
		if c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: name}); err == nil {
			t.Errorf("%s served %v; a wildcard covers exactly one label", name, c.Leaf.DNSNames)
		}
	}

	bare, _ := newManager(t, p, t.TempDir(), nil)
	bare.Manage(context.Background(), wild)
	run(t, bare)
	st = waitState(t, bare, wild, StateFailed, 30*time.Second)
	if !strings.Contains(st.LastError, "HOP_ACME_DNS_PROVIDER") {
		t.Fatalf("last error %q does not name the setting", st.LastError)
	}
}
