package sso

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
)

// A cookie value is base64url(version ‖ nonce ‖ AES-256-GCM ciphertext and tag). The AES key is
// derived from the gateway's session key with HKDF, its info naming the cookie kind and the domain,
// so a session cookie never opens as a flow cookie, nor a cookie of one domain on another, and
// rotating the session key ends every cookie at once.
const (
	cookieVersion = 1
	// maxCookieValue bounds what open decodes: browsers keep at most about 4 KiB per cookie, so
	// anything longer was not made here.
	maxCookieValue = 4000
	// minSessionKey refuses a short key from a misconfigured store rather than deriving weak keys.
	minSessionKey = 32
)

var errBadCookie = errors.New("cookie is malformed, tampered with or made under another key")

// codec seals and opens the values of one kind of cookie for one domain.
type codec struct {
	aead cipher.AEAD
}

func newCodec(sessionKey []byte, domain, kind string) (*codec, error) {
	if len(sessionKey) < minSessionKey {
		return nil, fmt.Errorf("session key is %d bytes, want at least %d", len(sessionKey), minSessionKey)
	}
	// The NUL separators keep ("a", "b.c") and ("a.b", "c") apart.
	info := "hopgate sso cookie v1\x00" + kind + "\x00" + domain
	key, err := hkdf.Key(sha256.New, sessionKey, nil, info, 32)
	if err != nil {
		return nil, fmt.Errorf("derive cookie key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &codec{aead: aead}, nil
}

// seal encrypts and authenticates plaintext under a fresh random nonce.
func (c *codec) seal(plaintext []byte) string {
	n := c.aead.NonceSize()
	buf := make([]byte, 1+n, 1+n+len(plaintext)+c.aead.Overhead())
	buf[0] = cookieVersion
	// crypto/rand.Read never fails (it crashes the program instead), so there is no error to handle.
	_, _ = rand.Read(buf[1 : 1+n])
	out := c.aead.Seal(buf, buf[1:1+n], plaintext, buf[:1])
	return base64.RawURLEncoding.EncodeToString(out)
}

// open returns the plaintext of a value made by seal with the same key, domain and kind, and
// errBadCookie for anything else.
func (c *codec) open(value string) ([]byte, error) {
	if len(value) > maxCookieValue {
		return nil, errBadCookie
	}
	raw, err := base64.RawURLEncoding.DecodeString(value)
	n := c.aead.NonceSize()
	if err != nil || len(raw) < 1+n+c.aead.Overhead() || raw[0] != cookieVersion {
		return nil, errBadCookie
	}
	plain, err := c.aead.Open(nil, raw[1:1+n], raw[1+n:], raw[:1])
	if err != nil {
		return nil, errBadCookie
	}
	return plain, nil
}
