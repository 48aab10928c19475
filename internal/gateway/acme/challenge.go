package acme

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/challenge/http01"
	"github.com/go-acme/lego/v4/challenge/tlsalpn01"

	"github.com/hopgate/hopgate/internal/gateway/hostname"
)

// ALPNProto is the ALPN protocol of TLS-ALPN-01 validation (RFC 8737). The HTTPS listener's
// tls.Config must list it in NextProtos, and its http.Server should map it in TLSNextProto to a
// function that returns at once (the validator only looks at the certificate).
const ALPNProto = tlsalpn01.ACMETLS1Protocol

// http01Provider keeps HTTP-01 key authorizations in memory, and in a shared Storage for the other
// gateways; HTTPHandler serves them.
type http01Provider struct{ m *Manager }

func (p *http01Provider) Present(domain, token, keyAuth string) error {
	p.m.chMu.Lock()
	p.m.httpTokens[token] = keyAuth
	p.m.presented[domain] = challenge.HTTP01
	p.m.chMu.Unlock()
	if err := p.m.publish(httpTokenKey(token), []byte(keyAuth)); err != nil {
		return fmt.Errorf("publish http-01 challenge for %s: %w", domain, err)
	}
	return nil
}

func (p *http01Provider) CleanUp(_, token, _ string) error {
	p.m.chMu.Lock()
	delete(p.m.httpTokens, token)
	p.m.chMu.Unlock()
	p.m.unpublish(httpTokenKey(token))
	return nil
}

// tlsALPNProvider keeps TLS-ALPN-01 certificates in memory, and in a shared Storage for the other
// gateways; GetCertificate serves them.
type tlsALPNProvider struct{ m *Manager }

func (p *tlsALPNProvider) Present(domain, _, keyAuth string) error {
	certPEM, keyPEM, err := tlsalpn01.ChallengeBlocks(domain, keyAuth)
	if err != nil {
		return fmt.Errorf("tls-alpn-01 certificate for %s: %w", domain, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls-alpn-01 certificate for %s: %w", domain, err)
	}
	p.m.chMu.Lock()
	p.m.alpnCerts[domain] = &cert
	p.m.presented[domain] = challenge.TLSALPN01
	p.m.chMu.Unlock()
	if err := p.m.publish(alpnCertKey(domain), append(certPEM, keyPEM...)); err != nil {
		return fmt.Errorf("publish tls-alpn-01 challenge for %s: %w", domain, err)
	}
	return nil
}

func (p *tlsALPNProvider) CleanUp(domain, _, _ string) error {
	p.m.chMu.Lock()
	delete(p.m.alpnCerts, domain)
	p.m.chMu.Unlock()
	p.m.unpublish(alpnCertKey(domain))
	return nil
}

// dnsProvider is Options.DNSProvider, recording which wildcard orders got as far as publishing
// their record (see obtainWildcard).
type dnsProvider struct {
	m *Manager
	p challenge.Provider
}

// Present gets the name the authorization is for: the wildcard's base name ("apps.example.com" for
// "*.apps.example.com"), which is where the _acme-challenge record goes.
func (p *dnsProvider) Present(domain, token, keyAuth string) error {
	p.m.setPresented(hostname.WildcardPrefix+domain, challenge.DNS01)
	return p.p.Present(domain, token, keyAuth)
}

func (p *dnsProvider) CleanUp(domain, token, keyAuth string) error {
	return p.p.CleanUp(domain, token, keyAuth)
}

// Timeout keeps the provider's own propagation timeout and polling interval (lego asks for them
// through this optional interface, which wrapping would otherwise hide).
func (p *dnsProvider) Timeout() (timeout, interval time.Duration) {
	if t, ok := p.p.(challenge.ProviderTimeout); ok {
		return t.Timeout()
	}
	return dns01.DefaultPropagationTimeout, dns01.DefaultPollingInterval
}

// HTTPHandler answers HTTP-01 challenges (/.well-known/acme-challenge/<token>) from memory, or for
// a managed name from a shared Storage (an order run by another gateway), and passes every other
// request to fallback (404 when fallback is nil).
func (m *Manager) HTTPHandler(fallback http.Handler) http.Handler {
	if fallback == nil {
		fallback = http.NotFoundHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.URL.Path, http01.ChallengePath(""))
		if ok && token != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			m.chMu.Lock()
			keyAuth, found := m.httpTokens[token]
			m.chMu.Unlock()
			if !found {
				keyAuth, found = m.sharedKeyAuth(r.Context(), requestHost(r), token)
			}
			if found {
				w.Header().Set("Content-Type", "text/plain")
				_, _ = w.Write([]byte(keyAuth))
				return
			}
		}
		fallback.ServeHTTP(w, r)
	})
}

func (m *Manager) challengeCert(name string) (*tls.Certificate, error) {
	m.chMu.Lock()
	c := m.alpnCerts[name]
	m.chMu.Unlock()
	if c != nil {
		return c, nil
	}
	if c, ok := m.sharedChallengeCert(name); ok {
		return c, nil
	}
	return nil, fmt.Errorf("acme: no tls-alpn-01 challenge pending for %q", name)
}

// requestHost is the canonical name of r's Host (port dropped); "" if it is no valid name.
func requestHost(r *http.Request) string {
	name, err := hostname.Canonical(r.Host)
	if err != nil {
		return ""
	}
	return name
}
