package tunnel

import (
	"errors"
	"sync"
)

// Agent is one connected agent's tunnel as the server sees it.
type Agent struct {
	Domain  string
	AgentID string
	Session *Session
}

// Hub is the server's table of live tunnels by domain. Several agents may serve one domain; new
// streams go to the least-loaded one that is not draining.
type Hub struct {
	mu     sync.RWMutex
	agents map[string][]*Agent
	total  int
	// onChange, if set, is told the number of live tunnels after each change (metrics).
	onChange func(total int)
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
				break
			}
		}
	}
	if limit > 0 && len(list) >= limit {
		if replaced != nil {
			// Put it back: the replacement did not happen.
			list = append(list, replaced)
			h.total++
		}
		h.agents[a.Domain] = list
		h.mu.Unlock()
		return nil, ErrTooManyAgents
	}
	h.agents[a.Domain] = append(list, a)
	h.total++
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
		if len(list) == 0 {
			delete(h.agents, a.Domain)
		} else {
			h.agents[a.Domain] = list
		}
	}
	total := h.total
	h.mu.Unlock()
	if found {
		h.changed(total)
	}
}

func (h *Hub) changed(total int) {
	if h.onChange != nil {
		h.onChange(total)
	}
}

// Pick returns the least-loaded live agent of domain, or nil when none is connected.
func (h *Hub) Pick(domain string) *Agent {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var best *Agent
	bestLoad := 0
	for _, a := range h.agents[domain] {
		if a.Session.Err() != nil || a.Session.Draining() {
			continue
		}
		if load := a.Session.ActiveStreams(); best == nil || load < bestLoad {
			best, bestLoad = a, load
		}
	}
	return best
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
