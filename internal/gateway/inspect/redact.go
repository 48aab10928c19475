package inspect

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// minSecret is the shortest value scrubbed from bodies and other fields. Shorter ones would shred
// unrelated text ("1", "ab") while protecting nothing worth a guess; the header or parameter that
// held them is redacted by name regardless of length.
const minSecret = 4

// paramSeparators is built once: a Replacer builds its tables on first use, some 6 KB, which per
// query parameter was most of the inspector's cost per request.
var paramSeparators = strings.NewReplacer("-", "", "_", "", ".", "")

// sensitiveParam reports whether a query parameter carries a credential. Names are compared with
// case, "-", "_" and "." ignored, so "Access-Token", "access_token" and "accessToken" all match.
func sensitiveParam(name string) bool {
	n := paramSeparators.Replace(strings.ToLower(name))
	switch n {
	case "apikey", "key", "token", "accesstoken", "password", "passwd", "pwd", "secret", "auth", "sig", "signature":
		return true
	}
	for _, suf := range []string{"token", "secret", "password", "apikey", "signature"} {
		if strings.HasSuffix(n, suf) {
			return true
		}
	}
	return false
}

// secrets gathers the literal credential values of one exchange. They live only while the entry is
// built; the ring never sees them.
type secrets struct {
	vals []string
}

func (s *secrets) add(v string) {
	v = strings.TrimSpace(v)
	if len(v) < minSecret || v == Redacted {
		return
	}
	s.vals = append(s.vals, v)
	// The same value echoed in a URL or a form is usually escaped.
	if q := url.QueryEscape(v); q != v {
		s.vals = append(s.vals, q)
	}
	if p := url.PathEscape(v); p != v {
		s.vals = append(s.vals, p)
	}
}

// addHeaderValue adds a value and the parts of it that are secrets on their own: the credentials
// after an auth scheme, a Basic password, each cookie value.
func (s *secrets) addHeaderValue(name, v string) {
	s.add(v)
	switch strings.ToLower(name) {
	case "cookie":
		for _, c := range strings.Split(v, ";") {
			if _, val, ok := strings.Cut(c, "="); ok {
				s.add(strings.Trim(strings.TrimSpace(val), `"`))
			}
		}
	case "set-cookie":
		first, _, _ := strings.Cut(v, ";")
		if _, val, ok := strings.Cut(first, "="); ok {
			s.add(strings.Trim(strings.TrimSpace(val), `"`))
		}
	default:
		scheme, cred, ok := strings.Cut(strings.TrimSpace(v), " ")
		if !ok {
			return
		}
		cred = strings.TrimSpace(cred)
		s.add(cred)
		if strings.EqualFold(scheme, "basic") {
			if dec, err := base64.StdEncoding.DecodeString(cred); err == nil {
				s.add(string(dec))
				if _, pass, ok := strings.Cut(string(dec), ":"); ok {
					s.add(pass)
				}
			}
		}
	}
}

// sorted orders longer values first, so that a whole "Bearer xyz" is replaced before its "xyz".
func (s *secrets) sorted() []string {
	v := slices.Clone(s.vals)
	slices.SortFunc(v, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(v)
}

func scrubString(s string, sec []string) string {
	for _, v := range sec {
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, Redacted)
		}
	}
	return s
}

// scrubBytes returns a right-sized copy of b without any secret. When b was cut at the capture
// limit, a secret may have been cut too; its leading part at the end is dropped as well.
func scrubBytes(b []byte, sec []string, truncated bool) []byte {
	if b == nil {
		return nil
	}
	out := append(make([]byte, 0, len(b)), b...)
	for _, v := range sec {
		if bytes.Contains(out, []byte(v)) {
			out = bytes.ReplaceAll(out, []byte(v), []byte(Redacted))
		}
	}
	if truncated {
		for _, v := range sec {
			for k := min(len(v)-1, len(out)); k >= minSecret; k-- {
				if bytes.HasSuffix(out, []byte(v[:k])) {
					out = out[:len(out)-k]
					break
				}
			}
		}
	}
	return slices.Clip(out)
}

// redactQuery replaces the values of credential parameters, keeping the rest of the raw query as
// sent (order and escaping), and feeds the values to sec.
func redactQuery(raw string, sec *secrets) string {
	if raw == "" {
		return raw
	}
	parts := strings.Split(raw, "&")
	for k, p := range parts {
		name, val, _ := strings.Cut(p, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if !sensitiveParam(name) {
			continue
		}
		sec.add(val)
		if u, err := url.QueryUnescape(val); err == nil {
			sec.add(u)
		}
		parts[k] = p[:len(p)-len(val)]
		if !strings.Contains(parts[k], "=") {
			parts[k] += "="
		}
		parts[k] += Redacted
	}
	return strings.Join(parts, "&")
}

func (i *Inspector) redactedHeader(name string) bool { return i.redact[strings.ToLower(name)] }

// redactedResponseHeader is the same list plus Set-Cookie: a response may issue a credential (a
// session, a fresh key) that the request never carried.
func (i *Inspector) redactedResponseHeader(name string) bool {
	return strings.EqualFold(name, "Set-Cookie") || i.redactedHeader(name)
}

// sanitize redacts e in place and returns the secrets it found, which the caller must not keep. The
// request and response headers passed in are snapshots taken for e (Header.Clone), which e keeps
// after redacting them.
func (i *Inspector) sanitize(e *Entry, reqHeader, respHeader http.Header) []string {
	var sec secrets
	for k, vs := range reqHeader {
		if i.redactedHeader(k) {
			for _, v := range vs {
				sec.addHeaderValue(k, v)
			}
		}
	}
	for k, vs := range respHeader {
		if i.redactedResponseHeader(k) {
			for _, v := range vs {
				sec.addHeaderValue(k, v)
			}
		}
	}
	e.Query = redactQuery(e.Query, &sec)
	list := sec.sorted()

	e.RequestHeader = redactOwnHeader(reqHeader, list, i.redactedHeader)
	e.ResponseHeader = redactOwnHeader(respHeader, list, i.redactedResponseHeader)
	e.Query = scrubString(e.Query, list)
	e.Path = scrubString(e.Path, list)
	e.RequestBody = scrubBytes(e.RequestBody, list, e.RequestTruncated)
	e.ResponseBody = scrubBytes(e.ResponseBody, list, e.ResponseTruncated)
	return list
}

// redactHeader returns a copy of h in which named headers keep their count of values but not the
// values, and every other value is scrubbed of the secrets (a Referer or Location may repeat them).
func (i *Inspector) redactHeader(h http.Header, sec []string, named func(string) bool) http.Header {
	return redactOwnHeader(h.Clone(), sec, named)
}

// redactOwnHeader is redactHeader on a copy the caller owns (Header.Clone copies the value slices
// too), changed in place: the entry keeps the snapshot instead of a second copy.
func redactOwnHeader(h http.Header, sec []string, named func(string) bool) http.Header {
	for k, vs := range h {
		redactAll := named(k)
		for j, v := range vs {
			if redactAll {
				vs[j] = Redacted
			} else {
				vs[j] = scrubString(v, sec)
			}
		}
	}
	return h
}
