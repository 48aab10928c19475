package gateway

import (
	"context"

	"github.com/hopgate/hopgate/internal/gateway/rawedge"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/gateway/tunnelsvc"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// rawRoutes reads the raw edge's routes from the registry: every domain not in HTTP mode.
type rawRoutes struct{ store *registry.Store }

func (r rawRoutes) RawRoutes(ctx context.Context) ([]rawedge.Route, error) {
	ds, err := r.store.RawDomains(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]rawedge.Route, 0, len(ds))
	for _, d := range ds {
		rt := rawedge.Route{Domain: d.Name, Port: d.TCPPort, ProxyProtocol: uint32(d.ProxyProtocol)}
		switch d.Mode.Mode {
		case registry.ModeTCP:
			rt.Mode = tunnelv1.StreamMode_STREAM_MODE_TCP
		case registry.ModePassthrough:
			rt.Mode = tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH
		default:
			continue
		}
		out = append(out, rt)
	}
	return out, nil
}

// rawAgents adapts the hub to the raw edge.
type rawAgents struct{ hub *tunnelsvc.Hub }

// Pick prefers an agent that serves raw streams: an older agent of the domain is passed over for
// the next one (each agent is tried at most once).
func (h rawAgents) Pick(domain string) rawedge.Agent {
	a := h.hub.Pick(domain)
	for tried := 0; a != nil && !(rawAgent{a}).RawStreams() && tried < maxRawPicks; tried++ {
		a = h.hub.Repick(domain, a)
	}
	if a == nil {
		return nil
	}
	return rawAgent{a}
}

// maxRawPicks bounds the agents Pick passes over; a domain holds at most
// HOP_SERVER_MAX_AGENTS_PER_DOMAIN (16 by default).
const maxRawPicks = 16

func (h rawAgents) Release(a rawedge.Agent) { h.hub.Release(a.(rawAgent).Agent) }

// rawAgent is a hub agent that says whether it serves raw streams.
type rawAgent struct{ *tunnelsvc.Agent }

func (a rawAgent) RawStreams() bool { return a.Session.PeerHas(tunnel.CapRawStreams) }
