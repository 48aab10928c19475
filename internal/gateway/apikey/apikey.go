// Package apikey makes, hashes and checks the client API keys that let an agent open a domain's tunnel.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// Prefix starts every key, so a leaked key is easy to recognise (secret scanners, logs).
const Prefix = "hopgate_"

// keyBytes of entropy: 256 bits.
const keyBytes = 32

// DummyHash is a well-formed hash that no key produces in practice. Verifying against it takes as long
// as a real check, so a lookup of an unknown domain costs the same as one with a wrong key.
var DummyHash = Hash(Prefix + "dummy-key-never-issued")

// Generate returns a new random key and the hash to store in its place. The plain key is shown once
// and never stored.
func Generate() (plain, hash string, err error) {
	b := make([]byte, keyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("apikey: read random: %w", err)
	}
	plain = Prefix + base64.RawURLEncoding.EncodeToString(b)
	return plain, Hash(plain), nil
}

// Hash returns the hex SHA-256 of a key.
//
// A fast hash is the right tool here, unlike for passwords: a key carries 256 bits from crypto/rand,
// so there is no dictionary to try and a brute force is hopeless however cheap each guess is.
// Slow KDFs (bcrypt, argon2) would only cost CPU on every tunnel connect and let anyone who can
// send bad keys load the server.
func Hash(plain string) string {
	sum := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(sum[:])
}

// Verify reports whether plain is the key behind storedHash. The comparison of the two hashes
// takes the same time wherever they differ.
func Verify(plain, storedHash string) bool {
	want := strings.ToLower(storedHash)
	got := Hash(plain)
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// WellFormed reports whether s looks like a key this package generates. Use it to reject garbage
// early; it says nothing about whether the key is valid for any domain.
func WellFormed(s string) bool {
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok {
		return false
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	return err == nil && len(b) == keyBytes
}
