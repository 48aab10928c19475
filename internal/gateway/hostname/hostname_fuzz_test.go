package hostname

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// FuzzCanonical checks the properties routing and the registry rely on. When Canonical accepts a
// name, the result is a fixed point (registering the canonical form of a name finds the same row),
// lowercase ASCII, at most 253 characters, without a trailing dot, of at least two labels of 1-63
// letters, digits and inner hyphens, with a non-numeric last label, and not an IP address. Errors
// wrap ErrInvalid. FromHost agrees with Canonical. ASCII case, one trailing dot and a port do not
// change the answer, so "Example.COM.:8443" routes like "example.com".
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{
		"example.com",
		"Example.COM.",
		"  gate.example.com:8443 ",
		"münchen.de",
		"xn--mnchen-3ya.de",
		"ＥＸＡＭＰＬＥ．ｃｏｍ",
		"faß.de",
		"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.example.com",
		"1.2.3.4",
		"[::1]:80",
		"::1",
		"0x7f.1",
		"localhost",
		"-bad-.example.com",
		"xn--.example.com",
		"xn--zz.example.com",
		"a..b.com",
		"a.com:",
		"a.com:99999999999999999999",
		"under_score.example.com",
		strings.Repeat("a", 63) + ".com",
		strings.Repeat("a.", 126) + "com",
		"\u200d.example.com",
		"١٢٣.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := Canonical(in)
		if fh := FromHost(in); fh != got {
			t.Errorf("FromHost(%q) = %q, Canonical = %q, %v", in, fh, got, err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Canonical(%q) error %v does not wrap ErrInvalid", in, err)
			}
			if got != "" {
				t.Errorf("Canonical(%q) = %q with error %v", in, got, err)
			}
		} else {
			checkCanonical(t, in, got)
		}

		// Equivalent spellings give the same answer: ASCII upper case, a trailing dot, a port.
		trimmed := strings.TrimSpace(in)
		if trimmed != in || in == "" {
			return
		}
		same := func(variant string) {
			v, verr := Canonical(variant)
			if v != got || (verr == nil) != (err == nil) {
				t.Errorf("Canonical(%q) = %q, %v; Canonical(%q) = %q, %v", variant, v, verr, in, got, err)
			}
		}
		same(asciiUpper(in))
		if !strings.ContainsAny(in, ":[]") && !strings.HasSuffix(in, ".") {
			same(in + ".")
			same(in + ":443")
			same(in + ".:8443")
		}
	})
}

func checkCanonical(t *testing.T, in, got string) {
	t.Helper()
	if again, err := Canonical(got); err != nil || again != got {
		t.Errorf("Canonical(%q) = %q, but Canonical(%q) = %q, %v: not idempotent", in, got, got, again, err)
	}
	if len(got) > maxName || got == "" {
		t.Errorf("Canonical(%q) = %q: %d characters", in, got, len(got))
	}
	if strings.HasSuffix(got, ".") {
		t.Errorf("Canonical(%q) = %q ends with a dot", in, got)
	}
	if _, err := netip.ParseAddr(got); err == nil {
		t.Errorf("Canonical(%q) = %q is an IP address", in, got)
	}
	labels := strings.Split(got, ".")
	if len(labels) < 2 {
		t.Errorf("Canonical(%q) = %q has a single label", in, got)
	}
	for _, l := range labels {
		if l == "" || len(l) > maxLabel || l[0] == '-' || l[len(l)-1] == '-' {
			t.Errorf("Canonical(%q) = %q has the bad label %q", in, got, l)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				t.Errorf("Canonical(%q) = %q: label %q has %q", in, got, l, c)
			}
		}
	}
	if allDigits(labels[len(labels)-1]) {
		t.Errorf("Canonical(%q) = %q has a numeric top-level label", in, got)
	}
}

// asciiUpper upper-cases ASCII letters only, byte by byte: other bytes, even invalid UTF-8, stay.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// FuzzCanonicalDomain checks what registration relies on: an accepted name is a fixed point; a
// wildcard is "*." and a name Canonical accepts as it is, with no other star; anything else is what
// Canonical says. For every host name, the one wildcard that may cover it is itself registrable.
func FuzzCanonicalDomain(f *testing.F) {
	for _, s := range []string{"*.apps.example.com", "*.Example.COM.", "*.com", "*", "*.", "a.*.example.com",
		"*.*.example.com", "*x.example.com", "*.münchen.de", "*.1.2.3.4", " *.a.b:443 ", "x.apps.example.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := CanonicalDomain(in)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("CanonicalDomain(%q): error %v does not wrap ErrInvalid", in, err)
			}
		} else {
			if again, err := CanonicalDomain(got); err != nil || again != got {
				t.Fatalf("CanonicalDomain(%q) = %q, then %q, %v: not a fixed point", in, got, again, err)
			}
			if IsWildcard(got) {
				base := WildcardBase(got)
				if c, err := Canonical(base); err != nil || c != base || strings.Contains(base, "*") || len(got) > maxName {
					t.Fatalf("CanonicalDomain(%q) = %q: base %q is not a canonical host name", in, got, base)
				}
			} else if c, err := Canonical(in); err != nil || c != got {
				t.Fatalf("CanonicalDomain(%q) = %q, Canonical = %q, %v", in, got, c, err)
			}
		}
		if host, err := Canonical(in); err == nil {
			if w := WildcardOf(host); w != "" {
				if c, err := CanonicalDomain(w); err != nil || c != w {
					t.Fatalf("WildcardOf(%q) = %q, which CanonicalDomain makes %q, %v", host, w, c, err)
				}
			}
		}
	})
}
