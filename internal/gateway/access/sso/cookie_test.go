package sso

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func testKey(t testing.TB) []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

func mustCodec(t testing.TB, key []byte, domain, kind string) *codec {
	t.Helper()
	c, err := newCodec(key, domain, kind)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCodec(t *testing.T) {
	key := testKey(t)
	c := mustCodec(t, key, "a.example.test", kindSession)
	plain := []byte(`{"sub":"u-1"}`)
	v := c.seal(plain)
	if got, err := c.open(v); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	if v2 := c.seal(plain); v2 == v {
		t.Error("two seals of the same plaintext are equal: the nonce is not fresh")
	}

	others := map[string]*codec{
		"another domain": mustCodec(t, key, "b.example.test", kindSession),
		"another kind":   mustCodec(t, key, "a.example.test", kindFlow),
		"a rotated key":  mustCodec(t, testKey(t), "a.example.test", kindSession),
	}
	for name, o := range others {
		if _, err := o.open(v); !errors.Is(err, errBadCookie) {
			t.Errorf("%s opened the cookie: %v", name, err)
		}
	}

	raw := []byte(v)
	for _, tc := range []struct{ name, value string }{
		{"empty", ""},
		{"truncated", v[:len(v)-1]},
		{"one character changed", string(append(append([]byte{}, raw[:10]...), append([]byte{raw[10] ^ 1}, raw[11:]...)...))},
		{"not base64", "!!" + v},
		{"too long", strings.Repeat("A", maxCookieValue+1)},
	} {
		if _, err := c.open(tc.value); !errors.Is(err, errBadCookie) {
			t.Errorf("%s: opened (%v)", tc.name, err)
		}
	}

	if _, err := newCodec(key[:16], "a.example.test", kindSession); err == nil {
		t.Error("a 16-byte session key was accepted")
	}
}

// FuzzDecodeCookie checks that no input, however made, opens without the key, that open never
// panics, and that what seal makes always opens to what was sealed.
func FuzzDecodeCookie(f *testing.F) {
	// Seeds sealed under another key: well-formed values that must still fail.
	other := mustCodec(f, testKey(f), "a.example.test", kindSession)
	f.Add(other.seal([]byte(`{"sub":"u-1","usr":"alice","exp":99999999999}`)), []byte("x"))
	f.Add(other.seal(nil), []byte{})
	f.Add("", []byte(`{"st":"s"}`))
	f.Add("AQ", []byte{0})
	f.Add(strings.Repeat("A", 60), bytes.Repeat([]byte{0xff}, 100))

	c := mustCodec(f, testKey(f), "a.example.test", kindSession)
	f.Fuzz(func(t *testing.T, value string, plain []byte) {
		if got, err := c.open(value); err == nil {
			t.Fatalf("opened %q without the key: %q", value, got)
		}
		got, err := c.open(c.seal(plain))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("round trip of %q: %q, %v", plain, got, err)
		}
	})
}
