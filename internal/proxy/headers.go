// Package proxy maps HTTP requests onto tunnel streams: the server end turns a visitor's request into
// a stream, and the agent end turns a stream into a request to the local target.
package proxy

import (
	"net/http"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// toWire keeps every value of every field, in order (Set-Cookie stays as many fields as it came).
func toWire(h http.Header) []*tunnelv1.Header {
	if len(h) == 0 {
		return nil
	}
	out := make([]*tunnelv1.Header, 0, len(h))
	for name, values := range h {
		out = append(out, &tunnelv1.Header{Name: name, Values: values})
	}
	return out
}

// fromWire rebuilds a header map; names are canonicalised because HTTP/2 peers send them lowercase.
func fromWire(hs []*tunnelv1.Header) http.Header {
	h := make(http.Header, len(hs))
	for _, f := range hs {
		name := http.CanonicalHeaderKey(f.Name)
		h[name] = append(h[name], f.Values...)
	}
	return h
}

// fillWire copies wire fields into an existing map: trailers must land in the map the HTTP stack holds.
func fillWire(dst http.Header, hs []*tunnelv1.Header) {
	for _, f := range hs {
		name := http.CanonicalHeaderKey(f.Name)
		dst[name] = append(dst[name][:0], f.Values...)
	}
}

func trailerNames(t http.Header) []string {
	if len(t) == 0 {
		return nil
	}
	names := make([]string, 0, len(t))
	for k := range t {
		names = append(names, k)
	}
	return names
}

func announced(names []string) http.Header {
	if len(names) == 0 {
		return nil
	}
	t := make(http.Header, len(names))
	for _, n := range names {
		t[http.CanonicalHeaderKey(n)] = nil
	}
	return t
}
