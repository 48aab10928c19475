package console

import (
	"errors"
	"net/http"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// Single sign-on for operators: the gateway's own name is an SSO-protected site whose only page is
// the console's sign-in. The access package's SSO runs the code flow (PKCE, state, nonce, the
// allowed accounts) and leaves its own encrypted cookie; the console turns a verified identity into
// one of its sessions, so that everything after sign-in is the same as with the admin key.

// CallbackPath is where the provider sends the operator back (the redirect URI to register there).
const CallbackPath = "/.hopgate/callback"

const ssoSignInPath = Prefix + "sign-in/sso"

// ssoSignIn starts the flow, or, coming back from it with a verified identity, opens a session.
func (c *Console) ssoSignIn(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		c.refuse(w, r, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	id, ok := c.o.SSO.Identify(r)
	if !ok {
		c.ssoAnswer(w, r, c.o.SSO.Challenge(w, r))
		return
	}
	who := id.Email
	if who == "" {
		who = id.User
	}
	actor, ok := c.openSession(w, r, "sso "+who)
	if !ok {
		return
	}
	c.record(r, actor, "console/sign-in", "200 OK")
	// A page, not a redirect: this request ends a chain of redirects that began at the provider,
	// another site, and browsers withhold SameSite=Strict cookies from every request of such a chain.
	// The page's own navigation is same-site and carries the new session.
	c.render(w, r, http.StatusOK, "continue", nil, map[string]any{"Refresh": Prefix + "overview", "Who": who})
}

// ssoCallback is the provider's redirect back to the gateway.
func (c *Console) ssoCallback(w http.ResponseWriter, r *http.Request) {
	c.ssoAnswer(w, r, c.o.SSO.Reserved(w, r))
}

// ssoAnswer shows what the SSO step refused; a step that wrote its own answer returns ErrHandled.
func (c *Console) ssoAnswer(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil || errors.Is(err, access.ErrHandled) {
		return
	}
	var d *access.Denial
	if errors.As(err, &d) {
		for k, v := range d.Header {
			w.Header()[k] = v
		}
		if d.Status == http.StatusForbidden {
			// An account outside the allowed set: audited like a wrong key.
			c.record(r, "console", "console/sign-in", "403 Forbidden")
		}
		c.render(w, r, d.Status, "sign-in-problem", nil, map[string]any{"Problem": d.Message, "SSO": true})
		return
	}
	c.o.Logger.ErrorContext(r.Context(), "console single sign-on failed", "err", err)
	c.render(w, r, http.StatusInternalServerError, "sign-in-problem", nil, map[string]any{"Problem": "internal error", "SSO": true})
}

// openSession stores a new session for actor (the admin key, or an SSO identity) and sets its
// cookie; it answers the request itself when the store fails.
func (c *Console) openSession(w http.ResponseWriter, r *http.Request, how string) (actor string, ok bool) {
	id := randomToken()
	now := time.Now()
	cs := registry.ConsoleSession{CSRF: randomToken(), Created: now, Expires: now.Add(c.o.SessionTTL)}
	cs.Actor = "console session " + hashID(id)[:8]
	if how != "" {
		cs.Actor += " (" + how + ")"
	}
	if err := c.o.Sessions.CreateConsoleSession(r.Context(), hashID(id), cs); err != nil {
		c.o.Logger.ErrorContext(r.Context(), "console sign-in: session not stored", "err", err)
		c.signInForm(w, r, http.StatusServiceUnavailable, "store_down")
		return "", false
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", Expires: cs.Expires,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.SetCookie(w, &http.Cookie{Name: preCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return cs.Actor, true
}
