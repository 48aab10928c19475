package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/access/sso"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only and on "/":
// no sibling name under the same parent domain can set or read it.
const (
	sessionCookie = "__Host-hopgate_console"
	preCookie     = "__Host-hopgate_console_pre" // the sign-in form's CSRF token, before a session
)

// session is a signed-in operator.
type session struct {
	idHash string
	csrf   string
	actor  string
}

func (s *session) validCSRF(r *http.Request) bool {
	return tokenEqual(r.PostFormValue("csrf"), s.csrf)
}

func tokenEqual(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func hashID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// session returns the request's live session.
func (c *Console) session(r *http.Request) (*session, bool) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || len(ck.Value) != 64 {
		return nil, false
	}
	h := hashID(ck.Value)
	cs, err := c.o.Sessions.ConsoleSession(r.Context(), h)
	if err != nil {
		if !errors.Is(err, registry.ErrNoSession) {
			c.o.Logger.WarnContext(r.Context(), "console session lookup failed", "err", err)
		}
		return nil, false
	}
	return &session{idHash: h, csrf: cs.CSRF, actor: cs.Actor}, true
}

func addrOnly(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// signIn shows the form (GET) or checks the admin key (POST). Failed attempts spend the address's
// budget of failed key checks, shared with the admin API and the tunnels, and are audited.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.session(r); ok && r.Method == http.MethodGet {
		http.Redirect(w, r, Prefix+"overview", http.StatusSeeOther)
		return
	}
	switch r.Method {
	case http.MethodGet:
		c.signInForm(w, r, http.StatusOK, "")
	case http.MethodPost:
		addr := addrOnly(r.RemoteAddr)
		if c.o.Limiter.Blocked(addr) {
			w.Header().Set("Retry-After", "60")
			c.signInForm(w, r, http.StatusTooManyRequests, "sign_in_blocked")
			return
		}
		pre, err := r.Cookie(preCookie)
		if err != nil || !tokenEqual(r.PostFormValue("csrf"), pre.Value) {
			c.signInForm(w, r, http.StatusForbidden, "sign_in_stale")
			return
		}
		if !c.checkKey(r.PostFormValue("key")) {
			c.o.Limiter.Fail(addr)
			c.record(r, "console", "console/sign-in", "401 Unauthorized")
			c.signInForm(w, r, http.StatusUnauthorized, "sign_in_wrong")
			return
		}
		actor, ok := c.openSession(w, r, "")
		if !ok {
			return
		}
		c.record(r, actor, "console/sign-in", "200 OK")
		http.Redirect(w, r, Prefix+"overview", http.StatusSeeOther)
	default:
		w.Header().Set("Allow", "GET, POST")
		c.refuse(w, r, http.StatusMethodNotAllowed, "method not allowed")
	}
}

func (c *Console) signInForm(w http.ResponseWriter, r *http.Request, code int, problem string) {
	token := randomToken()
	http.SetCookie(w, &http.Cookie{Name: preCookie, Value: token, Path: "/", MaxAge: 900,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	c.render(w, r, code, "sign-in", nil, map[string]any{"CSRF": token, "Problem": problem, "SSO": c.o.SSO != nil})
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.o.Sessions.DeleteConsoleSession(r.Context(), s.idHash); err != nil {
		c.refuse(w, r, http.StatusServiceUnavailable, "store unavailable: not signed out")
		return
	}
	c.record(r, s.actor, "console/sign-out", "200 OK")
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	if c.o.SSO != nil {
		// Else "Sign in with SSO" would open a session again at once from the provider's cookie.
		http.SetCookie(w, sso.ClearSession())
	}
	http.Redirect(w, r, Prefix+"sign-in", http.StatusSeeOther)
}

// record appends a console action that is not an admin API call to the audit log.
func (c *Console) record(r *http.Request, actor, action, result string) {
	if c.o.Audit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	if _, err := c.o.Audit.AppendAudit(ctx, registry.AuditEntry{Actor: actor, Remote: addrOnly(r.RemoteAddr), Action: action, Result: result}); err != nil {
		c.o.Logger.ErrorContext(ctx, "audit entry not written", "action", action, "err", err)
	}
}
