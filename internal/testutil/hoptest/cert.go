package hoptest

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/devcert"
)

// Cert is a self-signed certificate for a test's own TLS servers, and its files.
type Cert struct {
	*devcert.CA
	// CertFile also serves as the CA file that trusts it (--local-ca-file, say).
	CertFile, KeyFile string
}

// SelfSigned makes a certificate for localhost, 127.0.0.1 and ::1, valid for a day, and writes it to
// dir as name-cert.pem and name-key.pem. It is the gateway's own development kind (devcert, ECDSA
// P-256), so that a TLS server beside the gateway pays the same handshake costs.
func SelfSigned(dir, name string) (*Cert, error) {
	ca, err := devcert.NewCA("hoptest "+name, []string{"localhost"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	certFile, keyFile, err := ca.WriteFiles(dir, name)
	if err != nil {
		return nil, err
	}
	return &Cert{CA: ca, CertFile: certFile, KeyFile: keyFile}, nil
}

// WriteCertFile writes cert as a PEM file dir/name and returns its path: a CA file for a
// certificate made elsewhere (httptest's, say).
func WriteCertFile(dir, name string, cert *x509.Certificate) (string, error) {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return "", err
	}
	return path, nil
}
