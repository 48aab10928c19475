package apikey

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestGenerate(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	for range 100 {
		plain, hash, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(plain, Prefix) {
			t.Fatalf("key %q lacks prefix %q", plain, Prefix)
		}
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(plain, Prefix))
		if err != nil || len(raw) != 32 {
			t.Fatalf("key %q: body is not 32 bytes of unpadded base64url (%v)", plain, err)
		}
		if !WellFormed(plain) {
			t.Fatalf("WellFormed(%q) = false", plain)
		}
		if len(hash) != 64 || strings.Contains(hash, plain) {
			t.Fatalf("hash %q is not a 64-char hex digest", hash)
		}
		if hash != Hash(plain) {
			t.Fatal("Generate's hash differs from Hash(plain)")
		}
		if seen[plain] {
			t.Fatalf("duplicate key %q", plain)
		}
		seen[plain] = true
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	plain, hash, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		plain string
		hash  string
		want  bool
	}{
		{"right key", plain, hash, true},
		{"upper-case stored hash", plain, strings.ToUpper(hash), true},
		{"other key", other, hash, false},
		{"empty key", "", hash, false},
		{"truncated key", plain[:len(plain)-1], hash, false},
		{"empty hash", plain, "", false},
		{"truncated hash", plain, hash[:63], false},
		{"dummy hash", plain, DummyHash, false},
		{"hash as key", hash, hash, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Verify(tc.plain, tc.hash); got != tc.want {
				t.Fatalf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHashKnownValue(t *testing.T) {
	t.Parallel()
	// SHA-256("abc"), FIPS 180-2 test vector.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := Hash("abc"); got != want {
		t.Fatalf("Hash(abc) = %s, want %s", got, want)
	}
}

func TestWellFormed(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "hopgate_", "hopgate_abc", "other_" + strings.Repeat("A", 43), "hopgate_" + strings.Repeat("A", 43) + "="} {
		if WellFormed(s) {
			t.Errorf("WellFormed(%q) = true", s)
		}
	}
}
