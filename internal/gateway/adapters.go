package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/internal/gateway/proxy"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/gateway/tunnelsvc"
)

// The parts define the small interfaces they need; these adapt the registry, the hub and the metrics
// to them.

// authenticator adapts the registry to the tunnel service. On a successful login it also hands the
// domain's policy to the access guard, so that a serving domain's policy is in memory before its
// first visitor and survives a store outage (established tunnels never need the store).
type authenticator struct {
	store *registry.Store
	guard *access.Guard
}

func (a authenticator) Authenticate(ctx context.Context, domain, key string) (string, error) {
	d, err := a.store.Authenticate(ctx, domain, key)
	if err == nil && a.guard != nil {
		if spec, perr := a.store.Policy(ctx, d.Name); perr == nil {
			a.guard.Prime(d.Name, spec)
		}
	}
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidInput):
		return "", fmt.Errorf("%w: %w", tunnelsvc.ErrUnknownDomain, err)
	case errors.Is(err, registry.ErrKeyMismatch):
		return "", fmt.Errorf("%w: %w", tunnelsvc.ErrBadKey, err)
	case err != nil:
		return "", err
	}
	return d.Name, nil
}

// domains adapts the registry to the proxy.
type domains struct{ store *registry.Store }

func (d domains) Registered(ctx context.Context, name string) (bool, error) {
	_, err := d.store.Get(ctx, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidInput):
		return false, nil
	default:
		return false, err
	}
}

// policies adapts the registry to the access guard: an unknown domain has no policy (it is about to
// get a 404 or was just unregistered, which closes its tunnels).
type policies struct{ store *registry.Store }

func (p policies) Policy(ctx context.Context, name string) (policy.Spec, error) {
	s, err := p.store.Policy(ctx, name)
	if errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrInvalidInput) {
		return policy.Spec{}, nil
	}
	return s, err
}

// listenPort is the port of a listen address, 0 when it has none or it is not a number: the public
// port visitors use for the single-sign-on callback URL (behind a port mapping, the mapped port is
// not known here; the listen port is what a direct visitor uses).
func listenPort(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// hubAgents adapts the tunnel service's hub to the proxy.
type hubAgents struct{ hub *tunnelsvc.Hub }

func (h hubAgents) Pick(domain string) proxy.Agent { return agentOrNil(h.hub.Pick(domain)) }

func (h hubAgents) Repick(domain string, failed proxy.Agent) proxy.Agent {
	return agentOrNil(h.hub.Repick(domain, failed.(*tunnelsvc.Agent)))
}

func (h hubAgents) Release(a proxy.Agent) { h.hub.Release(a.(*tunnelsvc.Agent)) }

// agentOrNil keeps a nil *Agent from becoming a non-nil proxy.Agent.
func agentOrNil(a *tunnelsvc.Agent) proxy.Agent {
	if a == nil {
		return nil
	}
	return a
}

// connEvents feeds the listeners' connection events to the metrics.
type connEvents struct{ m *metrics.Metrics }

func (e connEvents) Opened()               { e.m.ConnectionsOpen.Inc() }
func (e connEvents) Closed()               { e.m.ConnectionsOpen.Dec() }
func (e connEvents) Dropped(reason string) { e.m.ConnectionsDropped.WithLabelValues(reason).Inc() }
