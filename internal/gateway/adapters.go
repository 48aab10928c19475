package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/gateway/proxy"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/gateway/tunnelsvc"
)

// The parts define the small interfaces they need; these adapt the registry, the hub and the metrics
// to them.

// authenticator adapts the registry to the tunnel service.
type authenticator struct{ store *registry.Store }

func (a authenticator) Authenticate(ctx context.Context, domain, key string) (string, error) {
	d, err := a.store.Authenticate(ctx, domain, key)
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
