package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/challenge"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway/acme"
	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/devcert"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// certFollowTimeout bounds the registry read and certificate load that follow another gateway's
// change, so a slow database cannot stall the change feed.
const certFollowTimeout = 10 * time.Second

// certSource gives the HTTPS listener its certificates: the development CA in debug mode (never a
// public CA), ACME otherwise.
type certSource struct {
	tls  *tls.Config
	acme *acme.Manager
	// shared is the certificate storage in Postgres, shared with the other gateways; nil with files.
	shared *acme.PGStorage
	// noWildcards is why wildcard domains cannot get a certificate; empty when they can.
	noWildcards string
	// debug signs every name in debug mode; nil otherwise.
	debug *devcert.Issuer
	// own are the gateway's own names (HOP_SERVER_DOMAIN and the proxy domains), managed whatever
	// the registry holds.
	own []string
}

func newCertSource(ctx context.Context, cfg *config.Server, store *registry.Store, m *metrics.Metrics, log *slog.Logger) (*certSource, error) {
	if cfg.Debug {
		cert, path, err := devcert.Load(filepath.Join(cfg.DataDir, "selfsigned"), append([]string{cfg.Domain}, cfg.ProxyDomains...))
		if err != nil {
			return nil, fmt.Errorf("self-signed certificate: %w", err)
		}
		issuer, err := devcert.NewIssuer(cert)
		if err != nil {
			return nil, err
		}
		log.Info("debug mode: self-signed certificate; trust it on agents with --ca-file", "ca_file", path)
		if cfg.ACMEDNSProvider != "" {
			log.Info("debug mode: HOP_ACME_DNS_PROVIDER is not used; the development CA signs wildcard names too")
		}
		return &certSource{tls: &tls.Config{GetCertificate: issuer.GetCertificate}, debug: issuer}, nil
	}

	var (
		dnsProvider  challenge.Provider
		dnsResolvers []string
		noWildcards  string
	)
	if cfg.ACMEDNSProvider != "" {
		p, err := newDNSProvider(cfg.ACMEDNSProvider)
		if err != nil {
			return nil, fmt.Errorf("HOP_ACME_DNS_PROVIDER (--acme-dns-provider) %q: %w", cfg.ACMEDNSProvider, err)
		}
		dnsProvider = p
	} else {
		noWildcards = "HOP_ACME_DNS_PROVIDER is not set, and a wildcard certificate can only be obtained with ACME DNS-01 through a DNS provider"
	}
	if cfg.ACMEDNSResolver != "" {
		dnsResolvers = []string{cfg.ACMEDNSResolver}
	}
	// With Postgres every gateway on the database shares one ACME account, the certificates and the
	// challenges, and orders one name at a time across the cluster; the embedded store keeps files.
	var (
		storage acme.Storage
		shared  *acme.PGStorage
		where   = cfg.ACMECacheDir
	)
	if db, ok := store.SQL(); ok {
		shared = acme.NewPGStorage(db, acme.PGOptions{Holder: cfg.ServerID, Logger: log})
		storage, where = shared, "postgres"
		if err := importCertFiles(ctx, cfg.ACMECacheDir, shared, log); err != nil {
			return nil, fmt.Errorf("certificates: %w", err)
		}
	}
	mgr, err := acme.New(acme.Options{
		CADir:              cfg.ACMECADir,
		Email:              cfg.ACMEEmail,
		CARoots:            cfg.ACMECARoots,
		CacheDir:           cfg.ACMECacheDir,
		Storage:            storage,
		ExpectIPs:          cfg.ACMEExpectIPs,
		Resolver:           resolver(cfg.ACMEDNSResolver),
		DNSProvider:        dnsProvider,
		DNSResolvers:       dnsResolvers,
		RenewCheckInterval: cfg.ACMERenewInterval,
		Logger:             log,
		OnExpiry: func(name string, notAfter time.Time) {
			if notAfter.IsZero() {
				m.CertExpiry.DeleteLabelValues(name)
				return
			}
			m.CertExpiry.WithLabelValues(name).Set(float64(notAfter.Unix()))
		},
		OnOrder: func(_ string, err error) {
			result := "ok"
			if err != nil {
				result = "error"
			}
			m.CertOrders.WithLabelValues(result).Inc()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	mgr.SetDefault(cfg.Domain)
	names := append([]string{cfg.Domain}, cfg.ProxyDomains...)
	domains, err := store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list domains for certificates: %w", err)
	}
	for _, d := range domains {
		// A passthrough name's certificate is its target's, and a TCP port has none.
		if d.Mode.Mode == registry.ModeHTTP {
			names = append(names, d.Name)
		}
	}
	mgr.Manage(ctx, names...)
	log.Info("certificates: ACME", "ca", cfg.ACMECADir, "names", len(names), "cache", where,
		"dns_provider", cfg.ACMEDNSProvider)
	own := append([]string{cfg.Domain}, cfg.ProxyDomains...)
	return &certSource{tls: &tls.Config{GetCertificate: mgr.GetCertificate}, acme: mgr, shared: shared, noWildcards: noWildcards, own: own}, nil
}

// run keeps certificates renewed until ctx ends.
func (c *certSource) run(ctx context.Context) error {
	if c.acme == nil {
		return nil
	}
	if c.shared != nil {
		defer c.shared.Close()
	}
	return c.acme.Run(ctx)
}

// follow makes the managed names match the registry for name after another gateway registered,
// unregistered or changed the mode of it: only HTTP-mode names hold certificates. Managing a name
// another gateway already orders costs nothing here: the shared store's lease lets one gateway
// order, and the others load what it stored.
func (c *certSource) follow(ctx context.Context, store *registry.Store, name string, log *slog.Logger) {
	if c.acme == nil {
		return
	}
	d, err := store.Get(ctx, name)
	switch {
	case err == nil && d.Mode.Mode == registry.ModeHTTP:
		c.acme.Manage(ctx, d.Name)
	case err == nil || errors.Is(err, registry.ErrNotFound):
		if !c.isOwn(name) {
			c.acme.Unmanage(name)
		}
	default:
		log.Warn("certificates: domain lookup failed; the next resync applies the change", "domain", name, "err", err)
	}
}

// followAll makes the managed names match the whole registry (after a resync, when events may
// have been missed).
func (c *certSource) followAll(ctx context.Context, store *registry.Store, log *slog.Logger) {
	if c.acme == nil {
		return
	}
	domains, err := store.List(ctx)
	if err != nil {
		log.Warn("certificates: listing domains failed; the next resync applies the changes", "err", err)
		return
	}
	want := map[string]bool{}
	for _, d := range domains {
		if d.Mode.Mode == registry.ModeHTTP {
			want[d.Name] = true
			c.acme.Manage(ctx, d.Name)
		}
	}
	for _, name := range c.acme.Names() {
		if !want[name] && !c.isOwn(name) {
			c.acme.Unmanage(name)
		}
	}
}

func (c *certSource) isOwn(name string) bool {
	for _, o := range c.own {
		if n, err := hostname.CanonicalDomain(o); err == nil && n == name {
			return true
		}
	}
	return false
}

// importCertFiles copies the account and certificates a gateway kept in files before it shared
// them in Postgres into the database, each key only if the database has none: a gateway moved to
// Postgres, or the first of a cluster, neither registers again nor reorders what it holds.
func importCertFiles(ctx context.Context, dir string, to acme.Storage, log *slog.Logger) error {
	if dir == "" {
		return nil
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	from, err := acme.NewFileStorage(dir)
	if err != nil {
		return err
	}
	keys, err := from.List(ctx, "", true)
	if err != nil {
		return err
	}
	n := 0
	for _, key := range keys {
		if !strings.HasPrefix(key, "accounts/") && !strings.HasPrefix(key, "certificates/") {
			continue
		}
		if _, err := to.Load(ctx, key); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		v, err := from.Load(ctx, key)
		if err != nil {
			return err
		}
		if err := to.Store(ctx, key, v); err != nil {
			return err
		}
		n++
	}
	if n > 0 {
		log.Info("certificates: copied files into the shared store", "dir", dir, "keys", n)
	}
	return nil
}

// adminCerts adapts the manager to the admin API.
type adminCerts struct{ m *acme.Manager }

func (a adminCerts) Manage(ctx context.Context, names ...string) { a.m.Manage(ctx, names...) }
func (a adminCerts) Unmanage(name string)                        { a.m.Unmanage(name) }
func (a adminCerts) Status(name string) any                      { return a.m.Status(name) }

// list is what the console's certificates page shows: the ACME manager's names, or in debug mode
// the development certificate and the leaves it signed.
func (c *certSource) list() (acmeOn bool, out []admin.CertificateInfo) {
	switch {
	case c.acme != nil:
		for _, s := range c.acme.List() {
			out = append(out, admin.CertificateInfo{Name: s.Name, State: s.State, Issuer: s.Issuer,
				NotAfter: s.NotAfter, NextRenewal: s.NextRenewal, LastError: s.LastError})
		}
		return true, out
	case c.debug != nil:
		for _, s := range c.debug.List() {
			out = append(out, admin.CertificateInfo{Name: s.Name, State: "self-signed", Issuer: s.Issuer, NotAfter: s.NotAfter})
		}
	}
	return false, out
}

// resolver returns a lookup through the DNS server at addr, or nil for the system resolver.
func resolver(addr string) func(ctx context.Context, host string) ([]net.IP, error) {
	if addr == "" {
		return nil
	}
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	return func(ctx context.Context, host string) ([]net.IP, error) {
		addrs, err := r.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		ips := make([]net.IP, len(addrs))
		for i, a := range addrs {
			ips[i] = a.IP
		}
		return ips, nil
	}
}
