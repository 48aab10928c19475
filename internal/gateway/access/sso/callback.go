package sso

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

func authCodeURL(cfg *oauth2.Config, f flow) string {
	return cfg.AuthCodeURL(f.State, oauth2.S256ChallengeOption(f.Verifier), oidc.Nonce(f.Nonce))
}

// callback finishes a sign-in: it checks the answer against the flow cookie, exchanges the code,
// verifies the ID token and, if the account is allowed, sets the session cookie.
//
// Statuses: 400 when the answer does not belong to a sign-in this browser started (no or expired
// flow cookie, state or nonce mismatch, no code, a code already used); 401 when the provider
// answered with an error (the visitor cancelled, say); 403 for an account outside the allowed set
// or with an unverified e-mail address the policy depends on; 502 when the provider cannot be
// reached or its answer cannot be used; 503 when the session key cannot be read.
func (s *domainSSO) callback(w http.ResponseWriter, r *http.Request) error {
	// The flow cookie is single-use: every answer clears it, so no callback can be replayed.
	clearFlow := http.Header{}
	clearFlow.Add("Set-Cookie", clearCookie(flowCookie).String())
	host, ok := s.host(r)
	if !ok {
		return deny(http.StatusBadRequest, "This host name is not covered by the domain's sign-in.", clearFlow)
	}
	q := r.URL.Query()
	f, err := s.readFlow(r, host, q.Get("state"))
	switch {
	case errors.Is(err, errNoFlow):
		return deny(http.StatusBadRequest, "This sign-in has expired or was started in another browser. Open the page again.", clearFlow)
	case errors.Is(err, errStateMismatch):
		return deny(http.StatusBadRequest, "This sign-in answer does not match the sign-in this browser started. Open the page again.", clearFlow)
	case err != nil:
		return s.fail(r.Context(), http.StatusServiceUnavailable, "Sign-in is unavailable for the moment.", err, clearFlow)
	}
	if e := q.Get("error"); e != "" {
		return deny(http.StatusUnauthorized, fmt.Sprintf("The sign-in provider did not sign you in (%s).", oauthErrorCode(e)), clearFlow)
	}
	code := q.Get("code")
	if code == "" {
		return deny(http.StatusBadRequest, "This sign-in answer carries no code. Open the page again.", clearFlow)
	}
	rem, err := s.disc.get(r.Context())
	if err != nil {
		return s.fail(r.Context(), http.StatusBadGateway, msgUnreachable, err, clearFlow)
	}

	ctx, cancel := context.WithTimeout(r.Context(), discoveryTimeout)
	defer cancel()
	ctx = oidc.ClientContext(ctx, s.client)
	cfg := rem.oauth
	cfg.RedirectURL = s.callbackURL(host)
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(f.Verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			if re.ErrorCode == "invalid_grant" {
				return deny(http.StatusBadRequest, "This sign-in code is invalid or was already used. Open the page again.", clearFlow)
			}
			// Only the status and the error code: the body of a token response may echo what
			// was sent.
			err = fmt.Errorf("token endpoint answered %d %q", re.Response.StatusCode, re.ErrorCode)
		}
		return s.fail(r.Context(), http.StatusBadGateway, msgBadAnswer, fmt.Errorf("exchange the code: %w", err), clearFlow)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return s.fail(r.Context(), http.StatusBadGateway, msgBadAnswer, errors.New("token response without an id_token"), clearFlow)
	}
	idt, err := rem.verifier.Verify(ctx, raw)
	if err != nil {
		return s.fail(r.Context(), http.StatusBadGateway, msgBadAnswer, fmt.Errorf("verify the ID token: %w", err), clearFlow)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(f.Nonce)) != 1 {
		return deny(http.StatusBadRequest, "This sign-in answer does not match the sign-in this browser started. Open the page again.", clearFlow)
	}
	id, err := readIdentity(idt, s.allow.groupsClaim)
	if err != nil {
		return s.fail(r.Context(), http.StatusBadGateway, msgBadAnswer, err, clearFlow)
	}
	if ok, why := s.allow.permits(id); !ok {
		s.log.Info("sso: sign-in refused", "subject", id.subject, "email", id.email, "email_verified", id.emailVerified)
		return deny(http.StatusForbidden, why, clearFlow)
	}

	sess := session{Subject: id.subject, User: id.user, Email: id.verifiedEmail(), Policy: s.policy}
	if sess.User == "" {
		sess.User = id.subject
	}
	if len(sess.Subject) > maxClaim || len(sess.User) > maxClaim || len(sess.Email) > maxClaim {
		return s.fail(r.Context(), http.StatusBadGateway, msgBadAnswer, errors.New("identity claims longer than the session cookie holds"), clearFlow)
	}
	now := s.opts.Now()
	sess.IssuedAt, sess.Expires = now.Unix(), now.Add(s.opts.SessionTTL).Unix()
	sc, err := s.codec(r.Context(), host, kindSession)
	if err != nil {
		return s.fail(r.Context(), http.StatusServiceUnavailable, "Sign-in is unavailable for the moment.", err, clearFlow)
	}
	plain, err := json.Marshal(sess)
	if err != nil {
		return fmt.Errorf("encode the session: %w", err)
	}
	http.SetCookie(w, newCookie(sessionCookie, sc.seal(plain), s.opts.SessionTTL))
	http.SetCookie(w, clearCookie(flowCookie))
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	// Set as is rather than through http.Redirect, which would clean the path the visitor asked for.
	h.Set("Location", f.Return)
	w.WriteHeader(http.StatusFound)
	return access.ErrHandled
}

const (
	msgUnreachable = "The sign-in provider cannot be reached."
	msgBadAnswer   = "The sign-in provider's answer could not be used."
)

// fail is a denial whose cause the visitor is not shown, so it is logged; a visitor who went away
// is no event worth a line.
func (s *domainSSO) fail(ctx context.Context, status int, msg string, cause error, h http.Header) *access.Denial {
	if ctx.Err() == nil {
		s.log.Warn("sso: "+strings.ToLower(strings.TrimSuffix(msg, ".")), "status", status, "error", cause)
	}
	return deny(status, msg, h)
}

var (
	errNoFlow        = errors.New("no valid flow cookie")
	errStateMismatch = errors.New("state does not match the flow cookie")
)

// readFlow returns the flow of the flow cookie whose state is state.
func (s *domainSSO) readFlow(r *http.Request, host, state string) (flow, error) {
	cookies := r.CookiesNamed(flowCookie)
	if len(cookies) == 0 {
		return flow{}, errNoFlow
	}
	c, err := s.codec(r.Context(), host, kindFlow)
	if err != nil {
		return flow{}, err
	}
	now := s.opts.Now().Unix()
	found := errNoFlow
	for _, ck := range cookies {
		plain, err := c.open(ck.Value)
		if err != nil {
			continue
		}
		var f flow
		if json.Unmarshal(plain, &f) != nil || f.Expires <= now || f.State == "" {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(f.State), []byte(state)) == 1 {
			return f, nil
		}
		found = errStateMismatch
	}
	return flow{}, found
}

// oauthErrorCode is the provider's error code if it looks like one (RFC 6749 codes are lower case
// with underscores), so that no provider-chosen text reaches the page.
func oauthErrorCode(e string) string {
	if len(e) > 64 || strings.TrimLeft(e, "abcdefghijklmnopqrstuvwxyz_") != "" {
		return "error"
	}
	return e
}

// identity is what the gateway reads from a verified ID token.
type identity struct {
	subject, user, email string
	emailVerified        bool
	groups               []string
}

// verifiedEmail is what the target is told: an address the provider has not verified could be
// anyone's.
func (id identity) verifiedEmail() string {
	if id.emailVerified {
		return id.email
	}
	return ""
}

func readIdentity(idt *oidc.IDToken, groupsClaim string) (identity, error) {
	var claims map[string]json.RawMessage
	if err := idt.Claims(&claims); err != nil {
		return identity{}, fmt.Errorf("read the ID token's claims: %w", err)
	}
	str := func(name string) string {
		var v string
		_ = json.Unmarshal(claims[name], &v) // absent or not a string: ""
		return v
	}
	id := identity{subject: idt.Subject, user: str("preferred_username"), email: str("email")}
	if id.subject == "" {
		return identity{}, errors.New("ID token without a subject")
	}
	// Some providers send email_verified as the string "true".
	var verified bool
	if json.Unmarshal(claims["email_verified"], &verified) == nil {
		id.emailVerified = verified
	} else {
		id.emailVerified = str("email_verified") == "true"
	}
	// The groups claim is a list of strings, or a single string with some providers.
	if g := claims[groupsClaim]; g != nil {
		var one string
		var many []json.RawMessage
		switch {
		case json.Unmarshal(g, &one) == nil:
			id.groups = []string{one}
		case json.Unmarshal(g, &many) == nil:
			for _, m := range many {
				if json.Unmarshal(m, &one) == nil {
					id.groups = append(id.groups, one)
				}
			}
		}
	}
	return id, nil
}

// allowList is who a policy lets in.
type allowList struct {
	emails, domains, groups map[string]bool // e-mails and domains in lower case
	groupsClaim             string
}

func newAllowList(cfg policy.OIDC) allowList {
	a := allowList{emails: map[string]bool{}, domains: map[string]bool{}, groups: map[string]bool{}, groupsClaim: cfg.GroupsClaim}
	if a.groupsClaim == "" {
		a.groupsClaim = defaultGroupsClaim
	}
	for _, e := range cfg.AllowedEmails {
		a.emails[strings.ToLower(strings.TrimSpace(e))] = true
	}
	for _, d := range cfg.AllowedDomains {
		a.domains[strings.TrimSuffix(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(d)), "@"), ".")] = true
	}
	for _, g := range cfg.AllowedGroups {
		a.groups[g] = true
	}
	return a
}

// permits tells whether id may visit and, if not, why (for the visitor). With no list at all, any
// account of the provider may; otherwise one match in any list is enough. E-mail addresses count
// only when the provider has verified them: anyone can claim an unverified address.
func (a allowList) permits(id identity) (bool, string) {
	if len(a.emails) == 0 && len(a.domains) == 0 && len(a.groups) == 0 {
		return true, ""
	}
	for _, g := range id.groups {
		if a.groups[g] {
			return true, ""
		}
	}
	account := id.email
	if account == "" {
		account = id.user
	}
	if account == "" {
		account = id.subject
	}
	if (len(a.emails) > 0 || len(a.domains) > 0) && id.email != "" {
		if !id.emailVerified {
			return false, fmt.Sprintf("The sign-in provider has not verified the e-mail address %s, so it cannot grant access to this site.", id.email)
		}
		email := strings.ToLower(id.email)
		if a.emails[email] {
			return true, ""
		}
		if at := strings.LastIndexByte(email, '@'); at >= 0 && a.domains[email[at+1:]] {
			return true, ""
		}
	}
	return false, fmt.Sprintf("The account %s may not visit this site.", account)
}
