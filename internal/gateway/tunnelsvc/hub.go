package tunnelsvc

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Agent is one connected agent's tunnel as the gateway sees it.
type Agent struct {
	Domain  string
	AgentID string
	// SessionID names this tunnel (an agent's id may be empty, and survives its reconnects).
	SessionID string
	Session   *tunnel.Session
	// Version, RemoteAddr and ConnectedAt describe the agent for the console and the admin API.
	Version     string
	RemoteAddr  string
	ConnectedAt time.Time
	// bytesIn counts body bytes received from the agent (responses, raw streams' replies), bytesOut
	// those sent to it.
	bytesIn, bytesOut atomic.Int64
	// inflight counts the requests picked for this agent and not yet released: the load Pick compares.
	// It is counted from the pick, not from the stream's opening, so that a burst of requests spreads
	// over the agents even before their streams exist.
	inflight atomic.Int64
	// health is the agent's last Health report, longest prefix first; nil until it sends one.
	health atomic.Pointer[[]pathHealth]
	// gone is set, under Hub.mu, when the agent leaves the table: a late report must not count.
	gone bool
}

// ID names the agent in the access log.
func (a *Agent) ID() string { return a.AgentID }

// Bytes returns the body bytes received from the agent and sent to it so far.
func (a *Agent) Bytes() (in, out int64) { return a.bytesIn.Load(), a.bytesOut.Load() }

// CountRequest adds one proxied request's body bytes: in came from the visitor and went to the
// agent, out came back from it. Counted per request rather than per frame, because small bodies
// ride inline in the request and response heads.
func (a *Agent) CountRequest(in, out int64) {
	a.bytesOut.Add(in)
	a.bytesIn.Add(out)
}

// InFlight is the number of requests picked for the agent and not released yet.
func (a *Agent) InFlight() int64 { return a.inflight.Load() }

// OpenStream opens a request's stream on the agent's tunnel.
func (a *Agent) OpenStream(ctx context.Context, head *tunnelv1.RequestHead) (*tunnel.Stream, error) {
	return a.Session.OpenStream(ctx, head)
}

// Hub is the server's table of live tunnels by domain. Several agents may serve one domain; new
// streams go to the least-loaded one that is not draining.
type Hub struct {
	mu     sync.RWMutex
	agents map[string][]*Agent
	total  int
	// onChange, if set, is told the number of live tunnels after each change (metrics).
	onChange func(total int)
	// downPaths counts the path prefixes that live agents report down; onHealth is told it.
	downPaths int
	onHealth  func(down int)
}

// NewHub returns an empty table. onChange may be nil.
func NewHub(onChange func(total int)) *Hub {
	return &Hub{agents: make(map[string][]*Agent), onChange: onChange}
}

// ErrTooManyAgents is returned by Add when the domain already has its maximum of agents.
var ErrTooManyAgents = errors.New("domain has its maximum number of agents")

// Add registers a live agent. An agent that reconnects with the same non-empty id replaces its old
// session in the same step (returned as replaced, for the caller to close), so a flapping agent never
// counts twice. With limit > 0, a domain holding limit other agents refuses the new one.
func (h *Hub) Add(a *Agent, limit int) (replaced *Agent, err error) {
	h.mu.Lock()
	list := h.agents[a.Domain]
	if a.AgentID != "" {
		for i, x := range list {
			if x.AgentID == a.AgentID {
				replaced = x
				list = append(list[:i:i], list[i+1:]...)
				h.total--
				h.forgetLocked(x)
				break
			}
		}
	}
	if limit > 0 && len(list) >= limit {
		if replaced != nil {
			// Put it back: the replacement did not happen.
			list = append(list, replaced)
			h.total++
			replaced.gone = false
			h.downPaths += countDown(replaced.health.Load())
		}
		h.agents[a.Domain] = list
		h.mu.Unlock()
		return nil, ErrTooManyAgents
	}
	h.agents[a.Domain] = append(list, a)
	h.total++
	if replaced != nil {
		h.healthChangedLocked()
	}
	total := h.total
	h.mu.Unlock()
	h.changed(total)
	return replaced, nil
}

// Remove forgets an agent; it is a no-op for one already removed.
func (h *Hub) Remove(a *Agent) {
	h.mu.Lock()
	list := h.agents[a.Domain]
	found := false
	for i, x := range list {
		if x == a {
			list = append(list[:i:i], list[i+1:]...)
			found = true
			break
		}
	}
	if found {
		h.total--
		h.forgetLocked(a)
		if len(list) == 0 {
			delete(h.agents, a.Domain)
		} else {
			h.agents[a.Domain] = list
		}
	}
	if found {
		h.healthChangedLocked()
	}
	total := h.total
	h.mu.Unlock()
	if found {
		h.changed(total)
	}
}

// healthChangedLocked tells onHealth the count. Under mu, unlike onChange, so that two changes
// racing cannot leave the gauge at the older value (a gauge Set never blocks).
func (h *Hub) healthChangedLocked() {
	if h.onHealth != nil {
		h.onHealth(h.downPaths)
	}
}

// forgetLocked takes a leaving agent's down paths out of the count.
func (h *Hub) forgetLocked(a *Agent) {
	a.gone = true
	h.downPaths -= countDown(a.health.Load())
}

func (h *Hub) changed(total int) {
	if h.onChange != nil {
		h.onChange(total)
	}
}

// Pick returns the live, non-draining agent of domain with the fewest requests in flight, and counts
// one more against it until Release; nil when no such agent is connected.
func (h *Hub) Pick(domain string) *Agent { return h.pick(domain, "", false, nil) }

// PickFor is Pick for a request to path: it skips an agent whose target for path is down (its
// longest matching path prefix was reported down) while another agent is healthy for it. When every
// live agent's target for path is down it returns nil and down true.
func (h *Hub) PickFor(domain, path string) (a *Agent, down bool) {
	if a = h.pick(domain, path, true, nil); a != nil {
		return a, false
	}
	return nil, h.anyLive(domain)
}

// Repick releases failed and picks another agent of domain, as Pick does: for a request that failed
// refused before the agent did anything with it (it had begun draining). Nil when there is none.
func (h *Hub) Repick(domain string, failed *Agent) *Agent {
	h.Release(failed)
	return h.pick(domain, "", false, failed)
}

// RepickFor is Repick by target health, as PickFor is Pick.
func (h *Hub) RepickFor(domain, path string, failed *Agent) (a *Agent, down bool) {
	h.Release(failed)
	if a = h.pick(domain, path, true, failed); a != nil {
		return a, false
	}
	return nil, h.anyLiveBut(domain, failed)
}

// Release ends the request Pick or Repick counted against a.
func (h *Hub) Release(a *Agent) { a.inflight.Add(-1) }

func (h *Hub) pick(domain, path string, byHealth bool, not *Agent) *Agent {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var best *Agent
	var bestLoad int64
	for _, a := range h.agents[domain] {
		if a == not || a.Session.Err() != nil || a.Session.Draining() || byHealth && !a.healthyFor(path) {
			continue
		}
		if load := a.inflight.Load(); best == nil || load < bestLoad {
			best, bestLoad = a, load
		}
	}
	if best != nil {
		best.inflight.Add(1)
	}
	return best
}

// anyLive reports whether domain has a live agent that is not draining.
func (h *Hub) anyLive(domain string) bool { return h.anyLiveBut(domain, nil) }

// anyLiveBut is anyLive not counting agent not.
func (h *Hub) anyLiveBut(domain string, not *Agent) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, a := range h.agents[domain] {
		if a != not && a.Session.Err() == nil && !a.Session.Draining() {
			return true
		}
	}
	return false
}

// OnHealth sets a function told the number of path prefixes live agents report down after each
// change (metrics). Call before any agent connects.
func (h *Hub) OnHealth(f func(down int)) { h.onHealth = f }

// ReportHealth records agent a's Health frame.
func (h *Hub) ReportHealth(a *Agent, report *tunnelv1.Health) {
	h.mu.Lock()
	if a.gone {
		h.mu.Unlock()
		return
	}
	before, after := a.setHealth(report)
	h.downPaths += after - before
	if before != after {
		h.healthChangedLocked()
	}
	h.mu.Unlock()
}

// Agents returns a snapshot of domain's live agents.
func (h *Hub) Agents(domain string) []*Agent {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return append([]*Agent(nil), h.agents[domain]...)
}

// AgentCount is the number of agents connected for domain.
func (h *Hub) AgentCount(domain string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.agents[domain])
}

// Total is the number of live tunnels.
func (h *Hub) Total() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.total
}

// CloseDomain ends every tunnel of domain (unregistered, or its key rotated).
func (h *Hub) CloseDomain(domain string) {
	h.mu.RLock()
	list := append([]*Agent(nil), h.agents[domain]...)
	h.mu.RUnlock()
	for _, a := range list {
		a.Session.Close(ErrDomainClosed)
	}
}

// CloseSession ends domain's tunnel with session id; false when no such tunnel is connected here.
// The agent reconnects with its backoff, as after any lost connection: a key rotation is the way
// to keep it out.
func (h *Hub) CloseSession(domain, id string) bool {
	h.mu.RLock()
	var found *Agent
	for _, a := range h.agents[domain] {
		if a.SessionID == id {
			found = a
			break
		}
	}
	h.mu.RUnlock()
	if found == nil {
		return false
	}
	found.Session.Close(ErrDisconnected)
	return true
}

// All returns a snapshot of every live agent.
func (h *Hub) All() []*Agent {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []*Agent
	for _, list := range h.agents {
		out = append(out, list...)
	}
	return out
}
