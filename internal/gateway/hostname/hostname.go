// Package hostname turns user-supplied domain names and Host headers into one canonical DNS form.
package hostname

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ErrInvalid is wrapped by every error Canonical returns.
var ErrInvalid = errors.New("invalid domain name")

const (
	maxName  = 253
	maxLabel = 63
)

// profile maps Unicode input (IDNA2008, UTS #46 mapping: case folding, width mapping) to ASCII.
// Its own STD3 and length checks are off: validate below gives uniform, specific messages.
var profile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.VerifyDNSLength(false),
)

// Canonical returns the canonical form of a DNS name: trimmed, without port or trailing dot,
// lowercase, internationalised labels in punycode (xn--). It rejects IP addresses, single-label
// names and anything that is not an RFC 1123 host name; the error wraps ErrInvalid.
func Canonical(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalid)
	}
	if strings.HasPrefix(s, "[") {
		return "", fmt.Errorf("%w: %q is an IP address, not a DNS name", ErrInvalid, s)
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port, err := net.SplitHostPort(s)
		if err != nil || port == "" || strings.Contains(host, ":") {
			return "", fmt.Errorf("%w: %q is not a host name", ErrInvalid, s)
		}
		if !allDigits(port) {
			return "", fmt.Errorf("%w: bad port in %q", ErrInvalid, s)
		}
		s = host
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalid)
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return "", fmt.Errorf("%w: %q is an IP address, not a DNS name", ErrInvalid, s)
	}
	// IDNA maps invalid UTF-8 to U+FFFD and would return a name that Canonical itself then refuses.
	if !utf8.ValidString(s) {
		return "", fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalid, s)
	}
	ascii, err := profile.ToASCII(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalid, s, err)
	}
	ascii = strings.ToLower(ascii)
	if err := validate(ascii); err != nil {
		return "", err
	}
	return ascii, nil
}

// FromHost returns the canonical name of a request's Host header, or "" if it is not a valid DNS name.
// It is meant for routing, where an invalid Host simply matches nothing.
func FromHost(hostHeader string) string {
	name, err := Canonical(hostHeader)
	if err != nil {
		return ""
	}
	return name
}

func validate(name string) error {
	if len(name) > maxName {
		return fmt.Errorf("%w: %d characters, at most %d allowed", ErrInvalid, len(name), maxName)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return fmt.Errorf("%w: %q has a single label; a fully qualified name is required", ErrInvalid, name)
	}
	for _, l := range labels {
		switch {
		case l == "":
			return fmt.Errorf("%w: %q has an empty label", ErrInvalid, name)
		case len(l) > maxLabel:
			return fmt.Errorf("%w: label %q is longer than %d characters", ErrInvalid, l, maxLabel)
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Errorf("%w: label %q starts or ends with a hyphen", ErrInvalid, l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%w: label %q contains %q", ErrInvalid, l, c)
			}
		}
	}
	// A dotted all-numeric name such as 1.2.3.4 was caught as an IP; a numeric TLD would still be
	// read as one by many resolvers and browsers (e.g. 1.2.3 or 0x7f.1), so it is refused too.
	if allDigits(labels[len(labels)-1]) {
		return fmt.Errorf("%w: %q has a numeric top-level label", ErrInvalid, name)
	}
	return nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// WildcardPrefix starts a wildcard domain: "*.apps.example.com" stands for every name exactly one
// label under apps.example.com, as a TLS wildcard certificate matches (RFC 6125 §6.4.3).
const WildcardPrefix = "*."

// CanonicalDomain is Canonical for a name that may be registered: a host name, or one leading "*."
// label followed by a host name of at least two labels ("*.com" is refused: a wildcard over a whole
// top-level domain is no tenant's). A "*" anywhere else is refused. Host headers and SNI go through
// Canonical, never this, so a visitor cannot name the wildcard itself.
func CanonicalDomain(s string) (string, error) {
	t := strings.TrimSpace(s)
	rest, wild := strings.CutPrefix(t, WildcardPrefix)
	if strings.Contains(rest, "*") {
		return "", fmt.Errorf("%w: %q: a wildcard is only allowed as the whole first label", ErrInvalid, t)
	}
	if !wild {
		return Canonical(s)
	}
	base, err := Canonical(rest)
	if err != nil {
		return "", fmt.Errorf("wildcard %q: %w", t, err)
	}
	if len(WildcardPrefix)+len(base) > maxName {
		return "", fmt.Errorf("%w: %d characters, at most %d allowed", ErrInvalid, len(WildcardPrefix)+len(base), maxName)
	}
	return WildcardPrefix + base, nil
}

// IsWildcard reports whether a canonical domain is a wildcard ("*.apps.example.com").
func IsWildcard(domain string) bool { return strings.HasPrefix(domain, WildcardPrefix) }

// WildcardBase is the name a wildcard domain stands under ("apps.example.com"); domain itself when it
// is not a wildcard.
func WildcardBase(domain string) string { return strings.TrimPrefix(domain, WildcardPrefix) }

// WildcardOf returns the wildcard domain that covers a canonical host name: "*." and the name without
// its first label ("x.apps.example.com" → "*.apps.example.com"), or "" when what is left would be a
// single label (no wildcard domain can be registered there). Only this one candidate is tried:
// like a TLS wildcard, "*.apps.example.com" does not cover "a.b.apps.example.com" or
// "apps.example.com". It allocates, so callers use it only after the exact name found nothing.
func WildcardOf(name string) string {
	i := strings.IndexByte(name, '.')
	if i <= 0 || strings.IndexByte(name[i+1:], '.') < 0 {
		return ""
	}
	return WildcardPrefix + name[i+1:]
}
