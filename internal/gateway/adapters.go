package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/cluster"
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
	// loggedIn, when set, hears the key id each accepted login used (the cluster's resync compares it
	// with the store's).
	loggedIn func(domain, keyID string)
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
	if a.loggedIn != nil {
		a.loggedIn(d.Name, d.KeyID)
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

// hubTunnels adapts the hub to the cluster: this gateway's live agents per domain.
type hubTunnels struct{ hub *tunnelsvc.Hub }

func (h hubTunnels) Counts() map[string]int {
	out := map[string]int{}
	for _, a := range h.hub.All() {
		out[a.Domain]++
	}
	return out
}

func (h hubTunnels) CloseDomain(domain string) { h.hub.CloseDomain(domain) }

// clusterAgents is the admin API's view of the agents when gateways share the store: this gateway's
// live ones plus the other gateways' as of their last heartbeat. Closing is local: the change feed
// closes the others'.
type clusterAgents struct {
	hub     *tunnelsvc.Hub
	cluster *cluster.Cluster
}

func (c clusterAgents) AgentCount(domain string) int {
	return c.hub.AgentCount(domain) + c.cluster.RemoteAgents(domain)
}

func (c clusterAgents) CloseDomain(domain string) { c.hub.CloseDomain(domain) }

// Gateways is the number of live gateways on the store, this one included.
func (c clusterAgents) Gateways() int { return c.cluster.Gateways() }

// publishing is the registry as the admin API writes it when gateways share the store: every
// successful change is also published on the change feed, for the other gateways to apply within a
// second. A change that could not be published is not undone: the others' periodic resync (and
// their caches' own expiry) apply it later.
type publishing struct {
	*registry.Store
	cluster *cluster.Cluster
	log     *slog.Logger
}

func (p publishing) publish(ctx context.Context, kind, domain string) {
	if err := p.cluster.Publish(ctx, kind, domain); err != nil {
		p.log.WarnContext(ctx, "change not published; the other gateways apply it at their next resync", "event", kind, "domain", domain, "err", err)
	}
}

func (p publishing) Register(ctx context.Context, name, memo string) (registry.Domain, string, error) {
	d, key, err := p.Store.Register(ctx, name, memo)
	if err == nil {
		p.publish(ctx, cluster.Register, d.Name)
	}
	return d, key, err
}

func (p publishing) RegisterMode(ctx context.Context, name, memo string, m registry.Mode) (registry.Domain, string, error) {
	d, key, err := p.Store.RegisterMode(ctx, name, memo, m)
	if err == nil {
		p.publish(ctx, cluster.Register, d.Name)
	}
	return d, key, err
}

func (p publishing) SetMode(ctx context.Context, name string, m registry.Mode) (registry.Domain, error) {
	d, err := p.Store.SetMode(ctx, name, m)
	if err == nil {
		p.publish(ctx, cluster.Mode, d.Name)
	}
	return d, err
}

// Unregister is called with the canonical name (the admin API checks it first).
func (p publishing) Unregister(ctx context.Context, name, key string) error {
	err := p.Store.Unregister(ctx, name, key)
	if err == nil {
		p.publish(ctx, cluster.Unregister, name)
	}
	return err
}

func (p publishing) RotateKey(ctx context.Context, name string) (string, error) {
	key, err := p.Store.RotateKey(ctx, name)
	if err == nil {
		p.publish(ctx, cluster.RotateKey, name)
	}
	return key, err
}

func (p publishing) SetPolicy(ctx context.Context, name string, s policy.Spec) (policy.Spec, error) {
	stored, err := p.Store.SetPolicy(ctx, name, s)
	if err == nil {
		p.publish(ctx, cluster.Policy, name)
	}
	return stored, err
}

func (p publishing) RotateSessionKey(ctx context.Context) error {
	err := p.Store.RotateSessionKey(ctx)
	if err == nil {
		p.publish(ctx, cluster.SessionKey, "")
	}
	return err
}
