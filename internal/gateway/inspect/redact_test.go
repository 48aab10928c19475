package inspect

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// assertNoSecret fails if any secret survives in e: in its JSON (what the dashboard gets) and in the
// raw bodies, which JSON base64-encodes and so would hide from a plain search.
func assertNoSecret(t *testing.T, e Entry, secrets ...string) {
	t.Helper()
	js, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		for where, b := range map[string][]byte{"json": js, "request body": e.RequestBody, "response body": e.ResponseBody} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("secret %q appears in the stored %s", s, where)
			}
		}
	}
}

// TestRedactsCredentials: every built-in and configured credential header, the response's cookie
// and credential query parameters read "[redacted]", and their values are scrubbed from the bodies,
// the other headers and the other parameters, in the ring and in what subscribers get.
func TestRedactsCredentials(t *testing.T) {
	const (
		bearer    = "sekret-bearer-1"
		cookie    = "sekret-cookie-2"
		apiKey    = "sekret-apikey-3"
		custom    = "sekret-custom-4"
		token     = "sekret-token-5"
		qKey      = "sekret-qkey-6"
		password  = "p@ss w/rd-7" // escaped differently in a query, a path and a body
		setCookie = "sekret-setcookie-8"
		xAPIKey   = "sekret-xapikey-9"
		proxyAuth = "sekret-proxy-10"
	)
	all := []string{bearer, cookie, apiKey, custom, token, qKey, password, setCookie, xAPIKey, proxyAuth,
		url.QueryEscape(password), url.PathEscape(password)}
	i := New(Options{RedactHeaders: []string{" x-custom-secret ", ""}})
	i.Enable(dom, true)
	feed, unsub := i.Subscribe(dom)
	defer unsub()

	q := url.Values{"token": {token}, "api_key": {qKey}, "password": {password}, "page": {"2"}}
	r := httptest.NewRequest("POST", "http://"+dom+"/cb?"+q.Encode(), strings.NewReader("echo: "+strings.Join(all, " | ")))
	r.Header.Set("Authorization", "Bearer "+bearer)
	r.Header.Set("Cookie", "sid="+cookie+"; theme=dark")
	r.Header.Set("X-HopGate-Api-Key", apiKey)
	r.Header.Set("X-Api-Key", xAPIKey)
	r.Header.Set("Proxy-Authorization", "Basic "+proxyAuth)
	r.Header["x-custom-secret"] = []string{custom} // not canonical, as some clients/proxies leave it
	r.Header.Set("Referer", "https://elsewhere/?t="+token+"&k="+custom)
	r.Header.Set("X-Plain", "visible")
	h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Authorization") != "Bearer "+bearer {
			t.Error("the inner handler must still get the real credentials")
		}
		w.Header().Add("Set-Cookie", "session="+setCookie+"; Path=/; HttpOnly")
		w.Header().Set("Location", "/next?c="+cookie)
		_, _ = w.Write(b)
		_, _ = io.WriteString(w, " "+setCookie)
	}))
	resp := serve(h, r)
	if !strings.Contains(resp.Body.String(), bearer) {
		t.Fatal("the client's response was scrubbed; only the stored copy should be")
	}
	e := onlyEntry(t, i, dom)
	for _, name := range []string{"Authorization", "Cookie", "X-Hopgate-Api-Key", "X-Api-Key", "Proxy-Authorization", "x-custom-secret"} {
		if v := e.RequestHeader[name]; len(v) != 1 || v[0] != Redacted {
			t.Errorf("request header %s = %q, want [%s]", name, v, Redacted)
		}
	}
	if v := e.ResponseHeader["Set-Cookie"]; len(v) != 1 || v[0] != Redacted {
		t.Errorf("Set-Cookie = %q", v)
	}
	if got := e.RequestHeader.Get("X-Plain"); got != "visible" {
		t.Errorf("unrelated header X-Plain = %q", got)
	}
	if got, want := e.RequestHeader.Get("Referer"), "https://elsewhere/?t="+Redacted+"&k="+Redacted; got != want {
		t.Errorf("Referer = %q, want %q", got, want)
	}
	if got, want := e.ResponseHeader.Get("Location"), "/next?c="+Redacted; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	if want := "api_key=" + Redacted + "&page=2&password=" + Redacted + "&token=" + Redacted; e.Query != want {
		t.Errorf("query %q, want %q", e.Query, want)
	}
	if !bytes.HasPrefix(e.RequestBody, []byte("echo: "+Redacted+" | ")) || !bytes.Contains(e.ResponseBody, []byte(Redacted)) {
		t.Errorf("bodies not scrubbed in place: %q / %q", e.RequestBody, e.ResponseBody)
	}
	assertNoSecret(t, e, all...)
	select {
	case pub := <-feed:
		assertNoSecret(t, pub, all...)
	default:
		t.Error("nothing published")
	}
}

// TestRedactBasicAuth: a Basic credential's base64, the decoded pair and the password alone are all
// secrets, since a body may echo any of them.
func TestRedactBasicAuth(t *testing.T) {
	const pass = "hunter2-basic"
	b64 := base64.StdEncoding.EncodeToString([]byte("alice:" + pass))
	i := New(Options{})
	i.Enable(dom, true)
	r := httptest.NewRequest("PUT", "http://"+dom+"/", strings.NewReader(b64+" alice:"+pass+" "+pass))
	r.SetBasicAuth("alice", pass)
	serve(i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })), r)
	e := onlyEntry(t, i, dom)
	if want := strings.Repeat(Redacted+" ", 2) + Redacted; string(e.RequestBody) != want {
		t.Errorf("request body %q, want %q", e.RequestBody, want)
	}
	assertNoSecret(t, e, pass, b64)
}

// TestRedactSecretCutAtLimit: when the capture limit cuts through a secret, the cut-off start of it
// is dropped too, rather than stored as a prefix of the credential.
func TestRedactSecretCutAtLimit(t *testing.T) {
	const secret = "sekret-token-cut-here"
	filler := strings.Repeat("f", 26)
	i := New(Options{BodyLimit: 32})
	i.Enable(dom, true)
	r := httptest.NewRequest("POST", "http://"+dom+"/?access_token="+secret, strings.NewReader(filler+secret))
	serve(i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })), r)
	e := onlyEntry(t, i, dom)
	if !e.RequestTruncated || string(e.RequestBody) != filler || string(e.ResponseBody) != filler {
		t.Fatalf("truncated=%v bodies %q / %q, want %q", e.RequestTruncated, e.RequestBody, e.ResponseBody, filler)
	}
}

// TestSensitiveParamNames: the parameter names treated as credentials, ignoring case and
// separators, and look-alikes that are not.
func TestSensitiveParamNames(t *testing.T) {
	for name, want := range map[string]bool{
		"token": true, "Access-Token": true, "access_token": true, "accessToken": true, "api_key": true,
		"API.KEY": true, "key": true, "password": true, "passwd": true, "pwd": true, "client_secret": true,
		"refresh_token": true, "X-Amz-Signature": true, "sig": true, "auth": true,
		"page": false, "monkey": false, "tokens": false, "keyword": false, "q": false, "signed": false,
	} {
		if got := sensitiveParam(name); got != want {
			t.Errorf("sensitiveParam(%q) = %v, want %v", name, got, want)
		}
	}
	// Raw query keeps order and escaping of the other parameters; an escaped name still matches.
	var sec secrets
	if got, want := redactQuery("b=1&api%5Fkey=s3cr3t&a=%2F&token", &sec), "b=1&api%5Fkey="+Redacted+"&a=%2F&token="+Redacted; got != want {
		t.Errorf("redactQuery = %q, want %q", got, want)
	}
	if got := sec.sorted(); len(got) != 1 || got[0] != "s3cr3t" {
		t.Errorf("secrets %q, want [s3cr3t]", got)
	}
}

// TestShortSecretsNotScrubbed: values shorter than minSecret are redacted by name but not replaced
// throughout the entry, which would shred unrelated text.
func TestShortSecretsNotScrubbed(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, true)
	r := httptest.NewRequest("POST", "http://"+dom+"/?pwd=abc", strings.NewReader("abcdef"))
	serve(i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })), r)
	e := onlyEntry(t, i, dom)
	if e.Query != "pwd="+Redacted || string(e.RequestBody) != "abcdef" {
		t.Fatalf("query %q body %q", e.Query, e.RequestBody)
	}
}

// TestRedactResponseHeaderByName: the built-in API key headers and the configured names are
// redacted in responses too: a response that issues a fresh key in such a header (one the request
// never carried) must not store it.
func TestRedactResponseHeaderByName(t *testing.T) {
	const issued = "freshly-issued-key-42"
	i := New(Options{RedactHeaders: []string{"X-Session-Token"}})
	i.Enable(dom, false)
	serve(i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Session-Token", issued)
		w.Header().Set("X-Api-Key", issued)
		w.WriteHeader(http.StatusOK)
	})), httptest.NewRequest("POST", "http://"+dom+"/login", nil))
	e := onlyEntry(t, i, dom)
	if e.ResponseHeader.Get("X-Session-Token") != Redacted || e.ResponseHeader.Get("X-Api-Key") != Redacted {
		t.Fatalf("response headers %v", e.ResponseHeader)
	}
	assertNoSecret(t, e, issued)
}
