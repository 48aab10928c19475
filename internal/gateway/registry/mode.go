package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/hopgate/hopgate/ent"
	"github.com/hopgate/hopgate/ent/domain"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
)

// What a domain carries (Domain.Mode).
const (
	// ModeHTTP: the gateway terminates TLS and reverse-proxies HTTP requests (the default).
	ModeHTTP = "http"
	// ModePassthrough: TLS connections on the HTTPS port whose SNI names the domain go to the agent
	// untouched; the target holds the certificate.
	ModePassthrough = "tls-passthrough"
	// ModeTCP: the connections of the domain's public TCP port go to the agent.
	ModeTCP = "tcp"
)

// ErrPortTaken: another domain holds the TCP port asked for.
var ErrPortTaken = errors.New("TCP port already assigned to another domain")

// Mode is what a domain carries and how.
type Mode struct {
	// Mode is ModeHTTP, ModePassthrough or ModeTCP; "" means ModeHTTP.
	Mode string
	// TCPPort is the public port of a ModeTCP domain, 0 for the others.
	TCPPort int
	// ProxyProtocol is the PROXY protocol version (1 or 2) the agent writes to the target before
	// the visitor's bytes; 0 none. Only for the modes that carry raw connections.
	ProxyProtocol int
}

// check validates m for the domain name and fills in the default mode.
func (m *Mode) check(name string) error {
	bad := func(format string, args ...any) error {
		return &inputError{kind: ErrInvalidInput, cause: fmt.Errorf(format, args...)}
	}
	if m.Mode == "" {
		m.Mode = ModeHTTP
	}
	switch m.Mode {
	case ModeHTTP, ModePassthrough, ModeTCP:
	default:
		return bad("mode %q is not one of %s, %s or %s", m.Mode, ModeHTTP, ModePassthrough, ModeTCP)
	}
	switch {
	case m.Mode == ModeTCP && (m.TCPPort < 1 || m.TCPPort > 65535):
		return bad("tcp_port %d is not a port (1 to 65535)", m.TCPPort)
	case m.Mode != ModeTCP && m.TCPPort != 0:
		return bad("tcp_port is only for mode %s", ModeTCP)
	case m.ProxyProtocol < 0 || m.ProxyProtocol > 2:
		return bad("proxy_protocol %d is not 0 (none), 1 or 2", m.ProxyProtocol)
	case m.Mode == ModeHTTP && m.ProxyProtocol != 0:
		return bad("proxy_protocol is only for modes %s and %s: an HTTP target gets X-Forwarded-For", ModePassthrough, ModeTCP)
	case m.Mode == ModeTCP && hostname.IsWildcard(name):
		return bad("a wildcard domain cannot have mode %s: a TCP port carries no name to tell its hosts apart", ModeTCP)
	}
	return nil
}

// RegisterMode is Register for a domain of any mode. A ModeTCP domain's port must be free in the
// whole database: ErrPortTaken otherwise (ErrExists still means the name).
func (s *Store) RegisterMode(ctx context.Context, name, memo string, m Mode) (Domain, string, error) {
	name, err := canonical(name)
	if err != nil {
		return Domain{}, "", err
	}
	if err := m.check(name); err != nil {
		return Domain{}, "", err
	}
	return s.register(ctx, name, memo, m)
}

// SetMode changes what a registered domain carries and returns it as stored. Moving a domain off
// ModeTCP releases its port. ErrNotFound for an unknown domain, ErrPortTaken for a port another
// domain holds.
func (s *Store) SetMode(ctx context.Context, name string, m Mode) (Domain, error) {
	name, err := canonical(name)
	if err != nil {
		return Domain{}, err
	}
	if err := m.check(name); err != nil {
		return Domain{}, err
	}
	op := "registry: set mode of " + name
	u := s.client.Domain.Update().Where(domain.Name(name)).
		SetMode(m.Mode).
		SetProxyProtocol(m.ProxyProtocol).
		SetUpdatedAt(now())
	if m.Mode == ModeTCP {
		u.SetTCPPort(m.TCPPort)
	} else {
		u.ClearTCPPort()
	}
	n, err := u.Save(ctx)
	if err != nil {
		return Domain{}, classifyPort(op, m, err)
	}
	if n == 0 {
		return Domain{}, fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	return s.Get(ctx, name)
}

// RawDomains returns every domain whose mode is not ModeHTTP, ordered by name.
func (s *Store) RawDomains(ctx context.Context) ([]Domain, error) {
	rows, err := s.client.Domain.Query().Where(domain.ModeNEQ(ModeHTTP)).Order(ent.Asc(domain.FieldName)).All(ctx)
	if err != nil {
		return nil, classify("registry: list raw domains", err)
	}
	out := make([]Domain, len(rows))
	for i, d := range rows {
		out[i] = toDomain(d)
	}
	return out, nil
}

// classifyPort is classify for a write that sets a TCP port: a constraint broken by a valid write is
// the name's or the port's; which one, only a read tells.
func classifyPort(op string, m Mode, err error) error {
	if m.Mode == ModeTCP && ent.IsConstraintError(err) {
		return fmt.Errorf("%s: port %d: %w", op, m.TCPPort, ErrPortTaken)
	}
	return classify(op, err)
}
