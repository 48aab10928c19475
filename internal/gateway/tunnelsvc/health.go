package tunnelsvc

import (
	"slices"
	"strings"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// maxHealthPaths bounds the paths one Health frame may list: an agent has one per service of the
// domain, and a misbehaving one must not make the gateway hold or scan an unbounded list per pick.
const maxHealthPaths = 256

// pathHealth is one service path prefix of an agent and whether its target answers. prefix has no
// trailing slash; "" is the agent's service without a path (it reports "/").
type pathHealth struct {
	prefix string
	up     bool
}

// setHealth replaces a's target health with the state in h (the agent sends its whole state each
// time). It returns how many paths were down before and after, for the gauge.
func (a *Agent) setHealth(h *tunnelv1.Health) (downBefore, downAfter int) {
	paths := h.GetPaths()
	if len(paths) > maxHealthPaths {
		paths = paths[:maxHealthPaths]
	}
	list := make([]pathHealth, 0, len(paths))
	for _, p := range paths {
		if !strings.HasPrefix(p.Path, "/") {
			continue // not a path prefix: ignored rather than guessed at
		}
		list = append(list, pathHealth{prefix: strings.TrimSuffix(p.Path, "/"), up: p.Up})
	}
	// Longest prefix first: the first match of a request path is its service, as in the agent's
	// routing table.
	slices.SortStableFunc(list, func(x, y pathHealth) int { return len(y.prefix) - len(x.prefix) })
	old := a.health.Swap(&list)
	return countDown(old), countDown(&list)
}

func countDown(l *[]pathHealth) int {
	if l == nil {
		return 0
	}
	n := 0
	for _, p := range *l {
		if !p.up {
			n++
		}
	}
	return n
}

// healthyFor reports whether a's target for path is up: its longest matching prefix is up, or it
// never reported (an agent older than the health capability, or one with no matching service,
// which answers its own 404).
func (a *Agent) healthyFor(path string) bool {
	l := a.health.Load()
	if l == nil {
		return true
	}
	for _, p := range *l {
		if under(path, p.prefix) {
			return p.up
		}
	}
	return true
}

// Down lists the path prefixes ("/" for the service without a path) whose target the agent reports
// down, longest first.
func (a *Agent) Down() []string {
	l := a.health.Load()
	if l == nil {
		return nil
	}
	var out []string
	for _, p := range *l {
		if !p.up {
			if p.prefix == "" {
				out = append(out, "/")
			} else {
				out = append(out, p.prefix+"/")
			}
		}
	}
	return out
}

// under reports whether path is prefix or below it, segment by segment (the agent's rule).
func under(path, prefix string) bool {
	if prefix == "" {
		return true
	}
	return path == prefix || (strings.HasPrefix(path, prefix) && path[len(prefix)] == '/')
}
