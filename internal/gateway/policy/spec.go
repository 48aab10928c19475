// Package policy is a domain's access policy as the admin API takes it and the registry stores it:
// who may visit (IP allow and deny lists, basic-auth users, single sign-on with OIDC) and how often
// (a rate limit per visitor address). Enforcing it is package access's job; this package only parses,
// validates and keeps secrets out of what is shown.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Spec is a domain's policy. Every part is optional; the zero Spec lets everyone through and is the
// same as no policy.
type Spec struct {
	IPAllow   []string    `json:"ip_allow,omitempty"`
	IPDeny    []string    `json:"ip_deny,omitempty"`
	BasicAuth []BasicUser `json:"basic_auth,omitempty"`
	RateLimit *RateLimit  `json:"rate_limit,omitempty"`
	OIDC      *OIDC       `json:"oidc,omitempty"`
	// MaxBodyBytes caps a request body to the domain (0: only the gateway's HOP_SERVER_MAX_BODY_BYTES,
	// if any; the lower of the two applies).
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
}

// BasicUser is one basic-auth user. The admin API takes Password; the registry keeps only
// PasswordHash (bcrypt), which HashPasswords fills in and which is never shown.
type BasicUser struct {
	User         string `json:"user"`
	Password     string `json:"password,omitempty"`
	PasswordHash string `json:"password_hash,omitempty"`
}

// RateLimit allows RPS requests per second per visitor address, with bursts of up to Burst.
type RateLimit struct {
	RPS   float64 `json:"rps"`
	Burst int     `json:"burst"`
}

// OIDC signs visitors in with an OpenID provider (authorization code flow with PKCE). A visitor is let
// through when their verified e-mail is in AllowedEmails, or its domain in AllowedDomains, or one of
// their GroupsClaim values in AllowedGroups; with all three empty, any account of the provider is.
type OIDC struct {
	Issuer         string   `json:"issuer"`
	ClientID       string   `json:"client_id"`
	ClientSecret   string   `json:"client_secret,omitempty"`
	AllowedEmails  []string `json:"allowed_emails,omitempty"`
	AllowedDomains []string `json:"allowed_domains,omitempty"`
	AllowedGroups  []string `json:"allowed_groups,omitempty"`
	// GroupsClaim names the ID token claim that holds the groups; "groups" when empty.
	GroupsClaim string `json:"groups_claim,omitempty"`
}

// Limits on what a policy may hold: a policy is read on every request of its domain and kept in
// memory, so its size is bounded like every other input.
const (
	MaxBytes      = 64 << 10 // the JSON document
	MaxEntries    = 1000     // each list
	MaxUsers      = 100
	maxFieldBytes = 1024 // a user, password, URL, id or secret
	// bcrypt reads only the first 72 bytes of a password: longer ones would silently match on
	// their prefix, so they are refused instead.
	maxPasswordBytes = 72
	// MaxBodyLimit is the largest max_body_bytes (1 TiB): anything above is no limit in practice and
	// more likely a unit mistake.
	MaxBodyLimit = 1 << 40
)

// FieldError is a policy refused because of one field, named as in the JSON (e.g. "ip_deny[2]").
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ErrInvalid is wrapped by every error of Parse and Validate.
var ErrInvalid = errors.New("invalid policy")

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrInvalid, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

// Parse reads a policy document strictly (see Decode) and validates it.
func Parse(data []byte) (Spec, error) {
	var s Spec
	if err := Decode(data, &s); err != nil {
		return Spec{}, err
	}
	return s, s.Validate()
}

// Decode reads a policy document into v (a Spec, or a struct embedding one) strictly: unknown
// fields, trailing data and documents over MaxBytes are refused, with errors wrapping ErrInvalid.
// It does not validate: the admin API fills in stored secrets first.
func Decode(data []byte, v any) error {
	if len(data) > MaxBytes {
		return invalid("policy", "larger than %d bytes", MaxBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("policy", "data after the JSON object")
	}
	return nil
}

// Validate checks every field and returns the first problem as a *FieldError (wrapped in ErrInvalid).
// A basic-auth user needs a Password or a PasswordHash.
func (s Spec) Validate() error {
	for name, list := range map[string][]string{"ip_allow": s.IPAllow, "ip_deny": s.IPDeny} {
		if len(list) > MaxEntries {
			return invalid(name, "more than %d entries", MaxEntries)
		}
		for i, v := range list {
			if _, err := ParsePrefix(v); err != nil {
				return invalid(fmt.Sprintf("%s[%d]", name, i), "%q is not an IP address or CIDR", v)
			}
		}
	}
	if len(s.BasicAuth) > MaxUsers {
		return invalid("basic_auth", "more than %d users", MaxUsers)
	}
	seen := map[string]bool{}
	for i, u := range s.BasicAuth {
		f := fmt.Sprintf("basic_auth[%d]", i)
		switch {
		case u.User == "":
			return invalid(f+".user", "empty")
		case len(u.User) > maxFieldBytes || strings.ContainsAny(u.User, ":\x00\r\n"):
			return invalid(f+".user", "too long or holds ':' or a control character")
		case seen[u.User]:
			return invalid(f+".user", "%q appears twice", u.User)
		case u.Password == "" && u.PasswordHash == "":
			return invalid(f+".password", "empty")
		case len(u.Password) > maxPasswordBytes:
			return invalid(f+".password", "longer than %d bytes", maxPasswordBytes)
		case u.Password == "" && !isBcrypt(u.PasswordHash):
			return invalid(f+".password_hash", "not a bcrypt hash")
		}
		seen[u.User] = true
	}
	if r := s.RateLimit; r != nil {
		if !(r.RPS > 0) || r.RPS > 1e6 {
			return invalid("rate_limit.rps", "must be above 0 and at most 1000000")
		}
		if r.Burst < 1 || r.Burst > 1e6 {
			return invalid("rate_limit.burst", "must be between 1 and 1000000")
		}
	}
	if o := s.OIDC; o != nil {
		if err := o.validate(); err != nil {
			return err
		}
	}
	if s.MaxBodyBytes < 0 || s.MaxBodyBytes > MaxBodyLimit {
		return invalid("max_body_bytes", "must be between 0 (no limit) and %d", int64(MaxBodyLimit))
	}
	return nil
}

func (o *OIDC) validate() error {
	if o.Issuer == "" || len(o.Issuer) > maxFieldBytes || !strings.HasPrefix(o.Issuer, "https://") && !strings.HasPrefix(o.Issuer, "http://") {
		return invalid("oidc.issuer", "must be the provider's https:// URL")
	}
	if o.ClientID == "" || len(o.ClientID) > maxFieldBytes {
		return invalid("oidc.client_id", "empty or too long")
	}
	if len(o.ClientSecret) > maxFieldBytes {
		return invalid("oidc.client_secret", "too long")
	}
	if len(o.GroupsClaim) > maxFieldBytes {
		return invalid("oidc.groups_claim", "too long")
	}
	for name, list := range map[string][]string{
		"oidc.allowed_emails": o.AllowedEmails, "oidc.allowed_domains": o.AllowedDomains, "oidc.allowed_groups": o.AllowedGroups,
	} {
		if len(list) > MaxEntries {
			return invalid(name, "more than %d entries", MaxEntries)
		}
		for i, v := range list {
			if v == "" || len(v) > maxFieldBytes {
				return invalid(fmt.Sprintf("%s[%d]", name, i), "empty or too long")
			}
		}
	}
	return nil
}

// ParsePrefix reads an IP address (a single-address prefix) or a CIDR, IPv4 or IPv6. An IPv4-mapped
// IPv6 address is read as the IPv4 address it maps, as visitors' addresses are.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), nil
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// IsZero reports whether the policy lets everyone through unchecked.
func (s Spec) IsZero() bool {
	return len(s.IPAllow) == 0 && len(s.IPDeny) == 0 && len(s.BasicAuth) == 0 && s.RateLimit == nil && s.OIDC == nil &&
		s.MaxBodyBytes == 0
}

// HashPasswords replaces every plain Password with its bcrypt hash, for storing.
func (s *Spec) HashPasswords() error {
	for i := range s.BasicAuth {
		u := &s.BasicAuth[i]
		if u.Password == "" {
			continue
		}
		h, err := bcrypt.GenerateFromPassword([]byte(u.Password), bcrypt.DefaultCost)
		if err != nil {
			return fmt.Errorf("hash the password of %q: %w", u.User, err)
		}
		u.PasswordHash, u.Password = string(h), ""
	}
	return nil
}

// Shown is the policy as the admin API returns it: no password, no hash, no client secret (secrets are
// write-only); ClientSecretSet tells whether one is stored.
type Shown struct {
	IPAllow   []string    `json:"ip_allow,omitempty"`
	IPDeny    []string    `json:"ip_deny,omitempty"`
	BasicAuth []ShownUser `json:"basic_auth,omitempty"`
	RateLimit *RateLimit  `json:"rate_limit,omitempty"`
	OIDC      *ShownOIDC  `json:"oidc,omitempty"`
	// MaxBodyBytes is not a secret, and is shown as set.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
}

// ShownUser is a basic-auth user without its password.
type ShownUser struct {
	User string `json:"user"`
}

// ShownOIDC is the OIDC part without its client secret.
type ShownOIDC struct {
	Issuer          string   `json:"issuer"`
	ClientID        string   `json:"client_id"`
	ClientSecretSet bool     `json:"client_secret_set"`
	AllowedEmails   []string `json:"allowed_emails,omitempty"`
	AllowedDomains  []string `json:"allowed_domains,omitempty"`
	AllowedGroups   []string `json:"allowed_groups,omitempty"`
	GroupsClaim     string   `json:"groups_claim,omitempty"`
}

// Show returns the policy without its secrets.
func (s Spec) Show() Shown {
	out := Shown{IPAllow: s.IPAllow, IPDeny: s.IPDeny, RateLimit: s.RateLimit, MaxBodyBytes: s.MaxBodyBytes}
	for _, u := range s.BasicAuth {
		out.BasicAuth = append(out.BasicAuth, ShownUser{User: u.User})
	}
	if o := s.OIDC; o != nil {
		out.OIDC = &ShownOIDC{
			Issuer: o.Issuer, ClientID: o.ClientID, ClientSecretSet: o.ClientSecret != "",
			AllowedEmails: o.AllowedEmails, AllowedDomains: o.AllowedDomains, AllowedGroups: o.AllowedGroups,
			GroupsClaim: o.GroupsClaim,
		}
	}
	return out
}

func isBcrypt(h string) bool {
	_, err := bcrypt.Cost([]byte(h))
	return err == nil
}
