package hostname

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	t.Parallel()
	label63 := strings.Repeat("a", 63)
	// 4 × 63 + 3 dots = 255; trim to exactly 253.
	long253 := label63 + "." + label63 + "." + label63 + "." + strings.Repeat("a", 61)
	tests := []struct {
		name string
		in   string
		want string // "" means an error is expected
	}{
		{"plain", "example.com", "example.com"},
		{"subdomain", "app.example.com", "app.example.com"},
		{"uppercase", "App.EXAMPLE.com", "app.example.com"},
		{"spaces", "  example.com\t", "example.com"},
		{"trailing dot", "example.com.", "example.com"},
		{"port", "example.com:443", "example.com"},
		{"port and trailing dot", "Example.com.:8443", "example.com"},
		{"idn", "bücher.example", "xn--bcher-kva.example"},
		{"idn uppercase", "BÜCHER.example", "xn--bcher-kva.example"},
		{"punycode kept", "xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"hangul", "한국.kr", "xn--3e0b707e.kr"},
		{"digits and hyphen", "a-1.b2.example", "a-1.b2.example"},
		{"label 63", label63 + ".com", label63 + ".com"},
		{"name 253", long253, long253},

		{"empty", "", ""},
		{"only spaces", "   ", ""},
		{"only dot", ".", ""},
		{"single label", "localhost", ""},
		{"single label trailing dot", "com.", ""},
		{"two trailing dots", "example.com..", ""},
		{"leading dot", ".example.com", ""},
		{"empty label", "a..example.com", ""},
		{"label 64", strings.Repeat("a", 64) + ".com", ""},
		{"name 254", long253 + "a", ""},
		{"leading hyphen", "-a.example.com", ""},
		{"trailing hyphen", "a-.example.com", ""},
		{"underscore", "a_b.example.com", ""},
		{"space inside", "a b.example.com", ""},
		{"slash", "example.com/path", ""},
		{"scheme", "https://example.com", ""},
		{"userinfo", "user@example.com", ""},
		{"star", "*.example.com", ""},
		{"ipv4", "192.0.2.1", ""},
		{"ipv4 with port", "192.0.2.1:80", ""},
		{"ipv6 bracketed with port", "[::1]:80", ""},
		{"ipv6 bracketed", "[::1]", ""},
		{"ipv6 bare", "::1", ""},
		{"ipv6 full", "2001:db8::1", ""},
		{"numeric tld", "1.2.3", ""},
		{"empty port", "example.com:", ""},
		{"bad port", "example.com:http", ""},
		{"two ports", "example.com:80:80", ""},
		{"bad punycode", "xn--zz-.example", ""},
		{"control char", "exa\x00mple.com", ""},
		{"percent", "exa%41mple.com", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Canonical(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("Canonical(%q) = %q, want error", tc.in, got)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Canonical(%q) error %v does not wrap ErrInvalid", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Canonical(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Canonical(%q) = %q, want %q", tc.in, got, tc.want)
			}
			// Canonical form is a fixed point.
			again, err := Canonical(got)
			if err != nil || again != got {
				t.Fatalf("Canonical(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}

func TestFromHost(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"Example.COM:443", "example.com"},
		{"example.com.", "example.com"},
		{"127.0.0.1:8080", ""},
		{"[::1]:443", ""},
		{"", ""},
		{"bad_host.example", ""},
	}
	for _, tc := range tests {
		if got := FromHost(tc.in); got != tc.want {
			t.Errorf("FromHost(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCanonicalDomain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want string // "" means an error is expected
	}{
		{"plain name", "App.Example.com", "app.example.com"},
		{"wildcard", "*.apps.example.com", "*.apps.example.com"},
		{"wildcard uppercase trailing dot", " *.Apps.Example.COM. ", "*.apps.example.com"},
		{"wildcard over a registrable name", "*.example.com", "*.example.com"},
		{"wildcard idn", "*.bücher.example", "*.xn--bcher-kva.example"},

		{"wildcard over a tld", "*.com", ""},
		{"bare star", "*", ""},
		{"star dot", "*.", ""},
		{"two stars", "*.*.example.com", ""},
		{"star inside", "a.*.example.com", ""},
		{"star at the end", "example.*", ""},
		{"partial label", "a*.example.com", ""},
		{"star label without dot", "*example.com", ""},
		{"wildcard of an ip", "*.192.0.2.1", ""},
		{"wildcard bad label", "*.a_b.example.com", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := CanonicalDomain(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("CanonicalDomain(%q) = %q, want an error", tc.in, got)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("CanonicalDomain(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
	// Hosts and SNI never name the wildcard itself.
	if got, err := Canonical("*.apps.example.com"); err == nil {
		t.Fatalf("Canonical accepted a wildcard: %q", got)
	}
}

func TestWildcardOf(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"x.apps.example.com":   "*.apps.example.com",
		"a.b.apps.example.com": "*.b.apps.example.com", // never *.apps.example.com: one label only
		"apps.example.com":     "*.example.com",
		"example.com":          "", // *.com cannot be registered
		"com":                  "",
		"":                     "",
	} {
		if got := WildcardOf(in); got != want {
			t.Errorf("WildcardOf(%q) = %q, want %q", in, got, want)
		}
	}
}
