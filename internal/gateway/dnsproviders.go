package gateway

import (
	"fmt"
	"slices"
	"strings"

	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/providers/dns/cloudflare"
	"github.com/go-acme/lego/v4/providers/dns/desec"
	"github.com/go-acme/lego/v4/providers/dns/digitalocean"
	"github.com/go-acme/lego/v4/providers/dns/duckdns"
	"github.com/go-acme/lego/v4/providers/dns/exec"
	"github.com/go-acme/lego/v4/providers/dns/gandiv5"
	"github.com/go-acme/lego/v4/providers/dns/hetzner"
	"github.com/go-acme/lego/v4/providers/dns/httpreq"
	"github.com/go-acme/lego/v4/providers/dns/linode"
	"github.com/go-acme/lego/v4/providers/dns/namecheap"
	"github.com/go-acme/lego/v4/providers/dns/ovh"
	"github.com/go-acme/lego/v4/providers/dns/porkbun"
	"github.com/go-acme/lego/v4/providers/dns/rfc2136"
	"github.com/go-acme/lego/v4/providers/dns/route53"
)

// dnsProviders are the lego DNS providers HOP_ACME_DNS_PROVIDER can name, for wildcard certificates
// (DNS-01). lego's own factory (providers/dns) links all of its 150-odd providers and their cloud
// SDKs: it took hopgate-server from 41 to 106 MB and started SDK goroutines at init. This list holds
// the common self-hosting DNS hosts plus the three generic ways to reach any other: rfc2136 (DNS
// UPDATE: BIND, Knot, PowerDNS), httpreq (a small HTTP endpoint of your own) and exec (a script).
var dnsProviders = map[string]func() (challenge.Provider, error){
	"cloudflare":   func() (challenge.Provider, error) { return cloudflare.NewDNSProvider() },
	"desec":        func() (challenge.Provider, error) { return desec.NewDNSProvider() },
	"digitalocean": func() (challenge.Provider, error) { return digitalocean.NewDNSProvider() },
	"duckdns":      func() (challenge.Provider, error) { return duckdns.NewDNSProvider() },
	"exec":         func() (challenge.Provider, error) { return exec.NewDNSProvider() },
	"gandiv5":      func() (challenge.Provider, error) { return gandiv5.NewDNSProvider() },
	"hetzner":      func() (challenge.Provider, error) { return hetzner.NewDNSProvider() },
	"httpreq":      func() (challenge.Provider, error) { return httpreq.NewDNSProvider() },
	"linode":       func() (challenge.Provider, error) { return linode.NewDNSProvider() },
	"namecheap":    func() (challenge.Provider, error) { return namecheap.NewDNSProvider() },
	"ovh":          func() (challenge.Provider, error) { return ovh.NewDNSProvider() },
	"porkbun":      func() (challenge.Provider, error) { return porkbun.NewDNSProvider() },
	"rfc2136":      func() (challenge.Provider, error) { return rfc2136.NewDNSProvider() },
	"route53":      func() (challenge.Provider, error) { return route53.NewDNSProvider() },
}

// newDNSProvider builds the named provider, which reads its own variables (e.g.
// CLOUDFLARE_DNS_API_TOKEN) and says which one is missing.
func newDNSProvider(name string) (challenge.Provider, error) {
	build, ok := dnsProviders[name]
	if !ok {
		names := make([]string, 0, len(dnsProviders))
		for n := range dnsProviders {
			names = append(names, n)
		}
		slices.Sort(names)
		return nil, fmt.Errorf("unknown DNS provider (known: %s)", strings.Join(names, ", "))
	}
	return build()
}
