package inspect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Replay sends e (changed by edit, if any) through h again and returns the result.
//
// Credentials were never stored, so they cannot be replayed: redacted headers and query parameters
// are dropped, not sent as "[redacted]"; an edit may supply them again. The request comes from
// 127.0.0.1:0 and carries ReplayHeader with e's ID.
//
// When h is (or contains) this Inspector's Wrap and the domain is enabled, the replay is recorded
// in the ring like any request and Replay returns that same entry (same ID, ReplayOf set), except
// that its ResponseBody holds up to 1 MiB whether or not the domain keeps bodies: the person who
// asked for the replay wants to see the answer. Otherwise Replay returns an entry built the same
// way that is not stored anywhere.
//
// h runs under ctx; if ctx ends first, Replay returns its error without waiting for h.
func (i *Inspector) Replay(ctx context.Context, h http.Handler, domain string, e Entry, edit *Edit) (Entry, error) {
	domain = normDomain(domain)
	if e.Domain != "" && e.Domain != domain {
		return Entry{}, ErrDomainMismatch
	}
	method, path, query := e.Method, e.Path, dropRedactedParams(e.Query)
	header := i.replayHeader(e.RequestHeader, true)
	var body []byte
	bodyGiven := false
	if edit != nil {
		if edit.Method != "" {
			method = edit.Method
		}
		if edit.Path != "" {
			p, q, hasQuery := strings.Cut(edit.Path, "?")
			path = p
			if hasQuery {
				query = q
			}
		}
		if edit.Header != nil {
			header = i.replayHeader(edit.Header, false)
		}
		if edit.Body != nil {
			body, bodyGiven = []byte(*edit.Body), true
		}
	}
	if !bodyGiven {
		if e.RequestTruncated || (e.RequestBody == nil && e.RequestSize > 0) {
			return Entry{}, ErrBodyNotCaptured
		}
		body = e.RequestBody
	}
	if method == "" {
		method = http.MethodGet
	}
	if !strings.HasPrefix(path, "/") {
		return Entry{}, fmt.Errorf("inspect: replay path %q must start with /", path)
	}
	host := domain
	if strings.HasPrefix(domain, "*.") {
		host = e.Host
		if dot := strings.IndexByte(host, '.'); dot <= 0 || hostOf(host) != host || host[dot+1:] != domain[2:] {
			return Entry{}, fmt.Errorf("inspect: entry host %q is not under %s", e.Host, domain)
		}
	}
	uri := path
	if query != "" {
		uri += "?" + query
	}

	tag := &replayTag{of: e.ID}
	rctx := context.WithValue(ctx, replayKey{}, tag)
	req, err := http.NewRequestWithContext(rctx, method, "http://"+host+uri, bytes.NewReader(body))
	if err != nil {
		return Entry{}, fmt.Errorf("inspect: replay request: %w", err)
	}
	if len(body) == 0 {
		req.Body = http.NoBody
		req.GetBody = nil
	}
	req.ContentLength = int64(len(body))
	req.Host = host
	req.RequestURI = uri
	req.RemoteAddr = "127.0.0.1:0"
	req.Header = header
	req.Header.Set(ReplayHeader, e.ID)

	// The secrets of the request as sent, to scrub the response with when no Wrap did it.
	var sec secrets
	for k, vs := range req.Header {
		if i.redactedHeader(k) {
			for _, v := range vs {
				sec.addHeaderValue(k, v)
			}
		}
	}

	rec := &replayWriter{header: http.Header{}, limit: replayBodyLimit}
	start := i.now()
	done := make(chan error, 1)
	go func() {
		// A panic here would kill the gateway: it is not under net/http's per-connection recover.
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("inspect: replay handler panicked: %v", p)
			}
		}()
		h.ServeHTTP(rec, req)
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			return Entry{}, err
		}
	case <-ctx.Done():
		return Entry{}, errors.Join(errors.New("inspect: replay did not finish"), ctx.Err())
	}

	status, respHeader := rec.status, rec.snapshot
	if status == 0 {
		status, respHeader = 499, rec.header.Clone()
	}
	for k, vs := range respHeader {
		if i.redactedResponseHeader(k) {
			for _, v := range vs {
				sec.addHeaderValue(k, v)
			}
		}
	}
	if tag.entry.ID != "" {
		out := tag.entry
		list := append(tag.secrets, sec.sorted()...)
		out.ResponseTruncated = rec.over
		out.ResponseBody = scrubBytes(rec.buf, (&secrets{vals: list}).sorted(), rec.over)
		if out.ResponseBody == nil {
			out.ResponseBody = []byte{}
		}
		return out, nil
	}

	out := Entry{
		ID:                newID(),
		Domain:            domain,
		Host:              host,
		Time:              start,
		Duration:          i.now().Sub(start),
		Method:            method,
		Path:              path,
		Query:             query,
		Proto:             req.Proto,
		RemoteAddr:        req.RemoteAddr,
		Status:            status,
		RequestBody:       body,
		RequestSize:       int64(len(body)),
		ResponseBody:      rec.buf,
		ResponseSize:      rec.n,
		ResponseTruncated: rec.over,
		ReplayOf:          e.ID,
	}
	if out.ResponseBody == nil {
		out.ResponseBody = []byte{}
	}
	if len(out.RequestBody) > i.bodyLimit {
		out.RequestBody, out.RequestTruncated = out.RequestBody[:i.bodyLimit], true
	}
	out.Query = redactQuery(out.Query, &sec)
	list := sec.sorted()
	out.RequestHeader = i.redactHeader(req.Header, list, i.redactedHeader)
	out.ResponseHeader = i.redactHeader(respHeader, list, i.redactedResponseHeader)
	out.Query = scrubString(out.Query, list)
	out.Path = scrubString(out.Path, list)
	out.RequestBody = scrubBytes(out.RequestBody, list, out.RequestTruncated)
	out.ResponseBody = scrubBytes(out.ResponseBody, list, out.ResponseTruncated)
	return out, nil
}

// replayHeader prepares headers for a replay. From a recorded entry, redacted headers are dropped
// by name; from an edit they are kept, since the user typed them in, but a value still reading
// "[redacted]" (copied from the entry) is dropped either way. Framing and replay markers are
// dropped: they describe the original request, not this one.
func (i *Inspector) replayHeader(h http.Header, recorded bool) http.Header {
	out := make(http.Header, len(h)+1)
	for k, vs := range h {
		ck := http.CanonicalHeaderKey(k)
		switch ck {
		case "Content-Length", "Transfer-Encoding", "Host", http.CanonicalHeaderKey(ReplayHeader):
			continue
		}
		if recorded && i.redactedHeader(ck) {
			continue
		}
		for _, v := range vs {
			if v != Redacted {
				out[ck] = append(out[ck], v)
			}
		}
	}
	return out
}

// dropRedactedParams removes parameters whose value was redacted, rather than sending the marker.
func dropRedactedParams(q string) string {
	if q == "" {
		return q
	}
	parts := strings.Split(q, "&")
	kept := parts[:0]
	for _, p := range parts {
		if _, v, _ := strings.Cut(p, "="); v == Redacted {
			continue
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, "&")
}

// replayWriter is the ResponseWriter of a replay. Only the handler's goroutine touches it until it
// returns, and Replay reads it only after that.
type replayWriter struct {
	header   http.Header
	snapshot http.Header
	status   int
	limit    int
	buf      []byte
	n        int64
	over     bool
}

func (w *replayWriter) Header() http.Header { return w.header }

func (w *replayWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		return
	}
	if w.status == 0 {
		w.status = code
		w.snapshot = w.header.Clone()
	}
}

func (w *replayWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.n += int64(len(p))
	if room := w.limit - len(w.buf); room > 0 {
		w.buf = append(w.buf, p[:min(len(p), room)]...)
	}
	if int64(len(w.buf)) < w.n {
		w.over = true
	}
	return len(p), nil
}

// Flush is a no-op, present so that streaming handlers that require a Flusher still run.
func (w *replayWriter) Flush() {}
