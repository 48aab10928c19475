package gateway

import (
	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/proxy"
	"github.com/hopgate/hopgate/internal/gateway/tunnelsvc"
)

// PickPath makes hubAgents a proxy.PathAgents: requests skip agents whose target for the path is down.
func (h hubAgents) PickPath(domain, path string) (proxy.Agent, bool) {
	a, down := h.hub.PickFor(domain, path)
	return agentOrNil(a), down
}

// RepickPath moves a refused request to another agent, by target health as PickPath.
func (h hubAgents) RepickPath(domain, path string, failed proxy.Agent) (proxy.Agent, bool) {
	a, down := h.hub.RepickFor(domain, path, failed.(*tunnelsvc.Agent))
	return agentOrNil(a), down
}

// agentHealth adapts the hub to the admin API's per-agent detail of a domain's status.
func agentHealth(hub *tunnelsvc.Hub) func(domain string) []admin.AgentHealth {
	return func(domain string) []admin.AgentHealth {
		agents := hub.Agents(domain)
		out := make([]admin.AgentHealth, 0, len(agents))
		for _, a := range agents {
			down := a.Down()
			if down == nil {
				down = []string{}
			}
			out = append(out, admin.AgentHealth{ID: a.AgentID, Healthy: len(down) == 0, Down: down})
		}
		return out
	}
}

// agentDirectory is the admin API's list of this gateway's tunnels.
type agentDirectory struct{ hub *tunnelsvc.Hub }

func (d agentDirectory) List() []admin.AgentInfo {
	agents := d.hub.All()
	out := make([]admin.AgentInfo, 0, len(agents))
	for _, a := range agents {
		in, sent := a.Bytes()
		down := a.Down()
		out = append(out, admin.AgentInfo{
			Domain: a.Domain, ID: a.AgentID, Session: a.SessionID, Version: a.Version, RemoteAddr: a.RemoteAddr,
			ConnectedAt: a.ConnectedAt, Streams: a.Session.ActiveStreams(), BytesIn: in, BytesOut: sent,
			LastPing: a.Session.LastHeard(), Healthy: len(down) == 0, Down: down,
		})
	}
	return out
}

func (d agentDirectory) CloseSession(domain, session string) bool {
	return d.hub.CloseSession(domain, session)
}
