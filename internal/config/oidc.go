package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"time"
)

// OIDCTimeout bounds one exchange of the gateway with an OpenID provider (discovery, keys, token).
const OIDCTimeout = 10 * time.Second

// OIDCHTTPClient returns the client for every call of the gateway to an OpenID provider: the admin
// API's discovery check and the single-sign-on flow. It trusts the system's roots plus those of
// HOP_SERVER_OIDC_CA_ROOTS, and gives up after OIDCTimeout.
func (s *Server) OIDCHTTPClient() (*http.Client, error) {
	pool, err := RootPool(s.OIDCCARoots)
	if err != nil {
		return nil, fmt.Errorf("HOP_SERVER_OIDC_CA_ROOTS (--oidc-ca-roots): %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	return &http.Client{Transport: tr, Timeout: OIDCTimeout}, nil
}

// RootPool returns the system's roots plus the PEM certificates of file; "" adds none. A file
// without a certificate is an error: trusting nothing extra by mistake would only show later, as
// handshakes that fail.
func RootPool(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		// No system roots on this platform: only the file's are trusted.
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%q is not a readable file: %w", file, pathReason(err))
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%q holds no PEM certificate", file)
	}
	return pool, nil
}

// parsePEMFile checks that a file of roots is readable and holds at least one certificate, so that
// a wrong file stops the gateway at start rather than at the first single sign-on.
func parsePEMFile(s string) (string, error) {
	if _, err := parseReadableFile(s); err != nil {
		return "", err
	}
	data, err := os.ReadFile(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a readable file: %w", s, pathReason(err))
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return "", fmt.Errorf("%q holds no PEM certificate", s)
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return "", fmt.Errorf("%q: a certificate does not parse: %w", s, err)
		}
		return s, nil
	}
}
