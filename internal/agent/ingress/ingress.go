// Package ingress is the agent's routing table: it picks the service of a tunnel stream by the
// request's hostname and the longest path prefix that matches it (or, for a raw stream, the
// hostname's tcp:// service), and answers 404 (or refuses a raw stream) when none does.
package ingress

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/httpwire"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Rule sends the requests for Hostname under Path to Serve.
type Rule struct {
	// Hostname is canonical (lowercase, no port, no trailing dot).
	Hostname string
	// Path is a prefix matched on whole segments: "/api" matches /api and /api/x but not /apix;
	// "" matches every path. It has no trailing slash.
	Path string
	// Raw marks a rule for raw streams (TCP, TLS passthrough: a tcp:// target). A raw stream
	// matches only raw rules and an HTTP request only the others; Path does not apply to raw rules.
	Raw bool
	// Serve handles a stream of this rule (the local proxy to the rule's target).
	Serve func(*tunnel.Stream)
}

// Table is an immutable routing table; the agent swaps whole tables on a reload, so a stream
// finishes on the rule it was routed by.
type Table struct {
	hosts map[string][]Rule // longest Path first
}

// New builds the table of rules. Rules with the same hostname and path are the caller's error;
// the first one wins.
func New(rules []Rule) *Table {
	t := &Table{hosts: make(map[string][]Rule)}
	for _, r := range rules {
		t.hosts[r.Hostname] = append(t.hosts[r.Hostname], r)
	}
	for _, rs := range t.hosts {
		sort.SliceStable(rs, func(i, j int) bool { return len(rs[i].Path) > len(rs[j].Path) })
	}
	return t
}

// Match returns the HTTP rule for host (as the request sent it: any case, maybe a port) and path
// (the request target: path and maybe a query).
func (t *Table) Match(host, path string) (Rule, bool) {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for _, r := range t.rulesFor(CanonicalHost(host)) {
		if !r.Raw && under(path, r.Path) {
			return r, true
		}
	}
	return Rule{}, false
}

// MatchRaw returns the raw rule for host (a raw stream's service name: the domain or the SNI name).
func (t *Table) MatchRaw(host string) (Rule, bool) {
	for _, r := range t.rulesFor(CanonicalHost(host)) {
		if r.Raw {
			return r, true
		}
	}
	return Rule{}, false
}

// Has tells whether the table has rules for host.
func (t *Table) Has(host string) bool { return len(t.rulesFor(CanonicalHost(host))) > 0 }

// rulesFor returns the rules of host, or of the wildcard one label above it ("*.apps.example.com"
// for x.apps.example.com) when host has none of its own: the gateway sends such names to a
// wildcard domain's agents, and an exact hostname wins there too. Its rules of either kind count:
// a hostname with only HTTP rules does not hand its raw streams to the wildcard's tcp:// target.
func (t *Table) rulesFor(host string) []Rule {
	if rs, ok := t.hosts[host]; ok {
		return rs
	}
	if _, parent, ok := strings.Cut(host, "."); ok {
		return t.hosts["*."+parent]
	}
	return nil
}

// under reports whether path is prefix or below it, segment by segment.
func under(path, prefix string) bool {
	if prefix == "" {
		return true
	}
	return path == prefix || (strings.HasPrefix(path, prefix) && path[len(prefix)] == '/')
}

// CanonicalHost lowercases host and drops its port and trailing dot, as the gateway names domains.
func CanonicalHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// Serve routes st by the table, or answers 404 itself (refuses a raw stream).
func (t *Table) Serve(st *tunnel.Stream) {
	h := st.Request()
	if h.Mode != tunnelv1.StreamMode_STREAM_MODE_UNSPECIFIED {
		if r, ok := t.MatchRaw(h.Host); ok {
			r.Serve(st)
			return
		}
		Refuse(st)
		return
	}
	if r, ok := t.Match(h.Host, h.Path); ok {
		r.Serve(st)
		return
	}
	NotFound(st)
}

// Refuse resets a raw stream no rule takes: it has no status to answer with, and the gateway closes
// the visitor's connection.
func Refuse(st *tunnel.Stream) {
	st.Reset(tunnelv1.ResetReason_RESET_REASON_REFUSED,
		fmt.Sprintf("this agent has no TCP service for %s", CanonicalHost(st.Request().Host)))
}

// notFoundText is the agent's answer when no service matches. A gateway that knows NoRouteHeader
// shows its own 404 page instead; an older one passes this through, so the visitor still learns the
// gateway reached an agent that serves nothing at that name and path.
const notFoundText = "404 not found: this HopGate agent has no service for this hostname and path\n"

// NotFound answers st with 404, as JSON when the visitor asked for JSON, else plain text, marked
// with httpwire.NoRouteHeader.
func NotFound(st *tunnel.Stream) {
	defer st.Close()
	h := st.Request()
	ctype, body := "text/plain; charset=utf-8", []byte(notFoundText)
	if wantsJSON(h.Headers) {
		ctype = "application/json"
		body, _ = json.Marshal(map[string]any{"success": false, "error": strings.TrimSpace(strings.TrimPrefix(notFoundText, "404 "))})
		body = append(body, '\n')
	}
	head := &tunnelv1.ResponseHead{
		Status:        404,
		ContentLength: int64(len(body)),
		Headers: []*tunnelv1.Header{
			{Name: "Content-Type", Values: []string{ctype}},
			{Name: "X-Content-Type-Options", Values: []string{"nosniff"}},
			{Name: httpwire.NoRouteHeader, Values: []string{"1"}},
		},
	}
	if st.CanSendWholeResponse(len(body)) {
		_ = st.SendWholeResponse(head, body)
		return
	}
	if err := st.SendResponse(head); err != nil {
		return
	}
	if _, err := st.Write(body); err != nil {
		return
	}
	_ = st.CloseWrite(nil)
}

func wantsJSON(hs []*tunnelv1.Header) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Name, "Accept") {
			for _, v := range h.Values {
				if strings.Contains(v, "application/json") {
					return true
				}
			}
		}
	}
	return false
}
