// Package httpwire maps HTTP header maps to the tunnel's wire headers and back, the same way on the
// gateway (a visitor's request, the target's response) and on the agent.
package httpwire

import (
	"net/http"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// ToWire keeps every value of every field, in order (Set-Cookie stays as many fields as it came).
func ToWire(h http.Header) []*tunnelv1.Header {
	if len(h) == 0 {
		return nil
	}
	// One allocation for all the fields instead of one each: a request has ten or so.
	fields := make([]tunnelv1.Header, len(h))
	out := make([]*tunnelv1.Header, 0, len(h))
	for name, values := range h {
		f := &fields[len(out)]
		f.Name, f.Values = name, values
		out = append(out, f)
	}
	return out
}

// FromWire rebuilds a header map; names are canonicalised because HTTP/2 peers send them lowercase.
func FromWire(hs []*tunnelv1.Header) http.Header {
	h := make(http.Header, len(hs))
	// Every value goes into one backing array, as net/textproto does for a parsed header; each
	// field's slice is capped at its end, so an append to one (a repeated name here, or later by the
	// caller) moves it instead of overwriting its neighbour.
	n := 0
	for _, f := range hs {
		n += len(f.Values)
	}
	strs := make([]string, n)
	for _, f := range hs {
		name := http.CanonicalHeaderKey(f.Name)
		if prev, ok := h[name]; ok {
			h[name] = append(prev, f.Values...)
			continue
		}
		k := copy(strs, f.Values)
		h[name] = strs[:k:k]
		strs = strs[k:]
	}
	return h
}

// Fill copies wire fields into an existing map: trailers must land in the map the HTTP stack holds.
func Fill(dst http.Header, hs []*tunnelv1.Header) {
	for _, f := range hs {
		name := http.CanonicalHeaderKey(f.Name)
		dst[name] = append(dst[name][:0], f.Values...)
	}
}

// TrailerNames lists the trailer names a message announces before its body.
func TrailerNames(t http.Header) []string {
	if len(t) == 0 {
		return nil
	}
	names := make([]string, 0, len(t))
	for k := range t {
		names = append(names, k)
	}
	return names
}

// Announced is the trailer map of announced names, values to come after the body.
func Announced(names []string) http.Header {
	if len(names) == 0 {
		return nil
	}
	t := make(http.Header, len(names))
	for _, n := range names {
		t[http.CanonicalHeaderKey(n)] = nil
	}
	return t
}

// NoRouteHeader marks an agent's own 404 for a request none of its services matches. The gateway
// removes it and answers with its own 404 page instead (reason no_route); a gateway that predates
// it passes the agent's plain 404 through. A target that sends it only gets that same page.
const NoRouteHeader = "X-Hopgate-No-Route"
