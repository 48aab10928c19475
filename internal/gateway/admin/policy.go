package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

// DiscoveryTimeout bounds the fetch of an OpenID provider's discovery document when a policy with
// single sign-on is set: the admin call waits for it.
const DiscoveryTimeout = 5 * time.Second

// MaxDiscoveryBytes bounds a discovery document; real ones are a few kilobytes.
const MaxDiscoveryBytes = 1 << 20

// policyResponse is the answer of GET and PUT: the policy without its secrets.
type policyResponse struct {
	Success bool         `json:"success"`
	Domain  string       `json:"domain"`
	Policy  policy.Shown `json:"policy"`
}

func (h *handler) getPolicy(w http.ResponseWriter, r *http.Request) {
	name, ok := canonical(w, r, r.URL.Query().Get("domain"))
	if !ok {
		return
	}
	spec, err := h.reg.Policy(r.Context(), name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.Write(w, http.StatusOK, policyResponse{true, name, spec.Show()})
}

// putPolicy replaces a domain's policy with the document in the body; {} removes it.
func (h *handler) putPolicy(w http.ResponseWriter, r *http.Request) {
	name, ok := canonical(w, r, r.URL.Query().Get("domain"))
	if !ok {
		return
	}
	body, ok := readBody(w, r, policy.MaxBytes)
	if !ok {
		return
	}
	if len(bytes.TrimSpace(body)) == 0 {
		writeError(w, http.StatusBadRequest, "request body must be the policy as a JSON object ({} removes it)")
		return
	}
	spec, err := parsePolicy(body)
	if err != nil {
		writeInvalid(w, err)
		return
	}
	if spec.OIDC != nil {
		// An unknown domain is a 404 whatever its document says, and costs no request to the provider.
		if _, err := h.reg.Get(r.Context(), name); err != nil {
			h.fail(w, r, err)
			return
		}
		if err := h.checkIssuer(r.Context(), spec.OIDC.Issuer); err != nil {
			writeInvalid(w, err)
			return
		}
	}
	stored, err := h.reg.SetPolicy(r.Context(), name, spec)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.policyChanged(name)
	if stored.IsZero() {
		h.log.InfoContext(r.Context(), "access policy removed", "domain", name)
	} else {
		// What the policy holds, never its secrets nor the user names.
		h.log.InfoContext(r.Context(), "access policy set", "domain", name,
			"ip_allow", len(stored.IPAllow), "ip_deny", len(stored.IPDeny), "basic_auth_users", len(stored.BasicAuth),
			"rate_limit", stored.RateLimit != nil, "oidc", stored.OIDC != nil, "max_body_bytes", stored.MaxBodyBytes)
	}
	jsonapi.Write(w, http.StatusOK, policyResponse{true, name, stored.Show()})
}

// parsePolicy reads a PUT body as policy.Parse does (strictly: unknown fields, trailing data and
// oversized documents are refused) and validates it, except for what only the stored policy settles:
// a basic-auth user sent without a password keeps the stored one (secrets are write-only, so what GET
// shows has none), which policy.Parse would refuse. The registry validates the merged policy again
// and refuses such a user if it has no stored password.
//
// So that what GET shows can be sent back as it is, "client_secret_set" of the OIDC part is taken
// and ignored: whether the stored secret is kept depends on issuer and client id alone.
func parsePolicy(body []byte) (policy.Spec, error) {
	// null would decode to the zero Spec and remove the policy. An oversized body is policy.Decode's
	// to refuse, first, as before any other check.
	if b := bytes.TrimSpace(body); len(body) <= policy.MaxBytes && (len(b) == 0 || b[0] != '{') {
		return policy.Spec{}, fmt.Errorf("%w: %w", policy.ErrInvalid, &policy.FieldError{Field: "policy", Reason: "not a JSON object"})
	}
	var doc struct {
		policy.Spec
		// Shadows Spec.OIDC in JSON.
		OIDC *struct {
			policy.OIDC
			ClientSecretSet *bool `json:"client_secret_set"`
		} `json:"oidc"`
	}
	if err := policy.Decode(body, &doc); err != nil {
		return policy.Spec{}, err
	}
	spec := doc.Spec
	if doc.OIDC != nil {
		o := doc.OIDC.OIDC
		spec.OIDC = &o
	}
	check := spec
	check.BasicAuth = slices.Clone(spec.BasicAuth)
	for i := range check.BasicAuth {
		if u := &check.BasicAuth[i]; u.Password == "" && u.PasswordHash == "" {
			u.PasswordHash = placeholderHash()
		}
	}
	if err := check.Validate(); err != nil {
		return policy.Spec{}, err
	}
	return spec, nil
}

// placeholderHash stands in for a stored password while the rest of a document is validated.
var placeholderHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte("placeholder"), bcrypt.MinCost)
	if err != nil {
		panic(err) // only for a password over 72 bytes
	}
	return string(h)
})

// checkIssuer fetches the provider's discovery document as OpenID Connect Discovery 1.0 §4 says
// (issuer without trailing slash + /.well-known/openid-configuration) and requires its "issuer" to
// be the configured one exactly (§4.3), as the sign-in flow will: a policy that could never sign
// anyone in is refused now rather than found out by the first visitor.
func (h *handler) checkIssuer(ctx context.Context, issuer string) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: %w", policy.ErrInvalid, &policy.FieldError{Field: "oidc.issuer", Reason: fmt.Sprintf(format, args...)})
	}
	ctx, cancel := context.WithTimeout(ctx, DiscoveryTimeout)
	defer cancel()
	wellKnown := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, wellKnown, nil)
	if err != nil {
		return refuse("not a URL: %v", err)
	}
	req.Header.Set("Accept", "application/json")
	res, err := h.oidc.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return refuse("no discovery document from %s within %s", wellKnown, DiscoveryTimeout)
		}
		return refuse("cannot fetch the discovery document: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return refuse("%s answered %s, not the discovery document", wellKnown, res.Status)
	}
	doc, err := io.ReadAll(io.LimitReader(res.Body, MaxDiscoveryBytes+1))
	if err != nil {
		return refuse("reading the discovery document from %s: %v", wellKnown, err)
	}
	if len(doc) > MaxDiscoveryBytes {
		return refuse("the discovery document at %s is larger than %d bytes", wellKnown, MaxDiscoveryBytes)
	}
	var meta struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(doc, &meta); err != nil {
		return refuse("%s did not answer a JSON discovery document: %v", wellKnown, err)
	}
	if meta.Issuer != issuer {
		return refuse("the discovery document at %s names the issuer %q, not %q (they must be equal, trailing slash included)", wellKnown, meta.Issuer, issuer)
	}
	return nil
}

// rotateSessionKey ends every single-sign-on session at once. The body is empty or {}.
func (h *handler) rotateSessionKey(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, MaxBodyBytes)
	if !ok {
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		var none struct{}
		if err := dec.Decode(&none); err != nil {
			writeError(w, http.StatusBadRequest, "malformed request body (empty or {} expected): "+err.Error())
			return
		}
		if dec.Decode(&none) != io.EOF {
			writeError(w, http.StatusBadRequest, "unexpected data after the JSON object")
			return
		}
	}
	if err := h.reg.RotateSessionKey(r.Context()); err != nil {
		h.fail(w, r, err)
		return
	}
	h.sessionKeyRotate()
	h.log.InfoContext(r.Context(), "single-sign-on session key rotated: every session ends")
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool `json:"success"`
		Rotated bool `json:"rotated"`
	}{true, true})
}

// readBody reads the whole body, answering 413 past limit. It reports false after writing the error.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	tooLarge := fmt.Sprintf("request body too large (at most %d bytes)", limit)
	if r.ContentLength > limit {
		writeError(w, http.StatusRequestEntityTooLarge, tooLarge)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, tooLarge)
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, "cannot read the request body")
		return nil, false
	}
	return body, true
}
