package acme

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"sync/atomic"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
)

// account is the ACME account (registration.User for lego).
type account struct {
	Email        string                 `json:"email"`
	Registration *registration.Resource `json:"registration"`
	key          crypto.PrivateKey
}

func (a *account) GetEmail() string                        { return a.Email }
func (a *account) GetRegistration() *registration.Resource { return a.Registration }
func (a *account) GetPrivateKey() crypto.PrivateKey        { return a.key }

// clients are lego clients sharing one account: both challenges offered, or exactly one of them
// (for the retry with the other challenge after a failed order).
type clients struct {
	both     *lego.Client
	http01   *lego.Client
	tlsALPN  *lego.Client
	dns01    *lego.Client // nil without Options.DNSProvider
	noARI    atomic.Bool  // set once the CA answered that it has no renewalInfo endpoint
	accountK string       // storage lock and key prefix of the account
}

// accountPrefix is "accounts/<ca-host>/<email>": one account per CA and contact.
func accountPrefix(caDir, email string) string {
	host := caDir
	if u, err := url.Parse(caDir); err == nil && u.Host != "" {
		host = u.Host
	}
	if email == "" {
		email = "default"
	}
	return path.Join("accounts", safeFileName(host), safeFileName(email))
}

// legoClients returns the lego clients, loading or creating (and registering) the account on first
// use. The account key and registration are kept in storage and reused across restarts.
func (m *Manager) legoClients(ctx context.Context) (*clients, error) {
	m.clientMu.Lock()
	defer m.clientMu.Unlock()
	if m.clients != nil {
		return m.clients, nil
	}
	prefix := accountPrefix(m.opts.CADir, m.opts.Email)
	if err := m.storage.Lock(ctx, prefix); err != nil {
		return nil, err
	}
	defer func() {
		if err := m.storage.Unlock(context.WithoutCancel(ctx), prefix); err != nil {
			m.log.Warn("acme: unlock account", "err", err)
		}
	}()

	acct, err := m.loadAccount(ctx, prefix)
	if err != nil {
		return nil, err
	}
	if acct.Registration == nil {
		c, err := m.newLegoClient(acct, challenge.HTTP01, challenge.TLSALPN01)
		if err != nil {
			return nil, err
		}
		reg, err := c.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
		if err != nil {
			return nil, fmt.Errorf("register ACME account at %s: %w", m.opts.CADir, err)
		}
		acct.Registration = reg
		b, err := json.MarshalIndent(acct, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode ACME account: %w", err)
		}
		if err := m.storage.Store(ctx, prefix+"/account.json", b); err != nil {
			return nil, err
		}
		m.log.Info("acme: registered account", "ca", m.opts.CADir, "account", reg.URI)
	}
	cl := &clients{accountK: prefix}
	if cl.both, err = m.newLegoClient(acct, challenge.HTTP01, challenge.TLSALPN01); err != nil {
		return nil, err
	}
	if cl.http01, err = m.newLegoClient(acct, challenge.HTTP01); err != nil {
		return nil, err
	}
	if cl.tlsALPN, err = m.newLegoClient(acct, challenge.TLSALPN01); err != nil {
		return nil, err
	}
	if m.opts.DNSProvider != nil {
		if cl.dns01, err = m.newLegoClient(acct, challenge.DNS01); err != nil {
			return nil, err
		}
	}
	m.clients = cl
	return cl, nil
}

// forgetAccount drops the cached clients and the stored registration (not the key), for a CA that
// no longer knows the account; the next attempt registers the same key again.
func (m *Manager) forgetAccount(ctx context.Context) {
	m.clientMu.Lock()
	defer m.clientMu.Unlock()
	m.clients = nil
	prefix := accountPrefix(m.opts.CADir, m.opts.Email)
	if err := m.storage.Delete(ctx, prefix+"/account.json"); err != nil {
		m.log.Warn("acme: forget account", "err", err)
	}
}

func (m *Manager) loadAccount(ctx context.Context, prefix string) (*account, error) {
	acct := &account{Email: m.opts.Email}
	keyPEM, err := m.storage.Load(ctx, prefix+"/key.pem")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		key, err := certcrypto.GeneratePrivateKey(certcrypto.EC256)
		if err != nil {
			return nil, fmt.Errorf("generate ACME account key: %w", err)
		}
		if err := m.storage.Store(ctx, prefix+"/key.pem", certcrypto.PEMEncode(key)); err != nil {
			return nil, err
		}
		// A new key has no registration, whatever an old account.json says.
		if err := m.storage.Delete(ctx, prefix+"/account.json"); err != nil {
			return nil, err
		}
		acct.key = key
		return acct, nil
	case err != nil:
		return nil, err
	}
	if acct.key, err = certcrypto.ParsePEMPrivateKey(keyPEM); err != nil {
		return nil, fmt.Errorf("parse ACME account key %s/key.pem: %w", prefix, err)
	}
	b, err := m.storage.Load(ctx, prefix+"/account.json")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return acct, nil
	case err != nil:
		return nil, err
	}
	var stored account
	if err := json.Unmarshal(b, &stored); err != nil {
		return nil, fmt.Errorf("parse ACME account %s/account.json: %w", prefix, err)
	}
	if stored.Registration != nil && stored.Registration.URI != "" {
		acct.Registration = stored.Registration
	}
	return acct, nil
}

func (m *Manager) newLegoClient(acct *account, challenges ...challenge.Type) (*lego.Client, error) {
	cfg := lego.NewConfig(acct)
	cfg.CADirURL = m.opts.CADir
	cfg.HTTPClient = m.httpClient
	cfg.UserAgent = "hopgate"
	cfg.Certificate.KeyType = certcrypto.EC256
	c, err := lego.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("ACME client for %s: %w", m.opts.CADir, err)
	}
	for _, ch := range challenges {
		switch ch {
		case challenge.HTTP01:
			err = c.Challenge.SetHTTP01Provider(&http01Provider{m: m})
		case challenge.TLSALPN01:
			err = c.Challenge.SetTLSALPN01Provider(&tlsALPNProvider{m: m})
		case challenge.DNS01:
			var opts []dns01.ChallengeOption
			if len(m.opts.DNSResolvers) > 0 {
				// The servers named are the ones that count: the zone's authoritative servers, found
				// through public DNS, may not even exist for a test or split-horizon zone.
				opts = append(opts, dns01.AddRecursiveNameservers(m.opts.DNSResolvers),
					dns01.DisableAuthoritativeNssPropagationRequirement())
			}
			err = c.Challenge.SetDNS01Provider(&dnsProvider{m: m, p: m.opts.DNSProvider}, opts...)
		}
		if err != nil {
			return nil, fmt.Errorf("ACME challenge provider %s: %w", ch, err)
		}
	}
	return c, nil
}
