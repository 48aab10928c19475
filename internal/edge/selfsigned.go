package edge

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// SelfSigned returns the development certificate for names (plus localhost and 127.0.0.1), kept in dir
// as cert.pem / key.pem so that agents can trust it with --ca-file across restarts. A stored
// certificate is reused while it covers the names and has more than a day left.
func SelfSigned(dir string, names []string) (cert tls.Certificate, certPath string, err error) {
	certPath = filepath.Join(dir, "cert.pem")
	keyPath := filepath.Join(dir, "key.pem")
	dnsNames := []string{"localhost"}
	for _, n := range names {
		if n != "" && !slices.Contains(dnsNames, n) {
			dnsNames = append(dnsNames, n)
		}
	}
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && covers(c, dnsNames) {
		return c, certPath, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, "", fmt.Errorf("create %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return tls.Certificate{}, "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: dnsNames[len(dnsNames)-1], Organization: []string{"HopGate development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              dnsNames,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := writeAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, "", err
	}
	if err := writeAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, "", err
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPath, err
}

func covers(c tls.Certificate, names []string) bool {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil || time.Until(leaf.NotAfter) < 24*time.Hour {
		return false
	}
	for _, n := range names {
		if leaf.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// DebugIssuer serves the development certificate for the names it covers and, for any other SNI,
// a leaf certificate signed by it on the fly, so that one --ca-file / --cacert trusts every tenant
// name in development. Never used outside debug mode.
type DebugIssuer struct {
	ca   tls.Certificate
	leaf *x509.Certificate
	mu   sync.Mutex
	// cache is bounded: development traffic has few names, and a flood of random SNIs must not grow it.
	cache map[string]*tls.Certificate
}

const debugCacheMax = 1024

// NewDebugIssuer wraps a certificate made by SelfSigned.
func NewDebugIssuer(ca tls.Certificate) (*DebugIssuer, error) {
	leaf, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, err
	}
	return &DebugIssuer{ca: ca, leaf: leaf, cache: make(map[string]*tls.Certificate)}, nil
}

// GetCertificate is for tls.Config.
func (d *DebugIssuer) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name == "" || d.leaf.VerifyHostname(name) == nil {
		return &d.ca, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.cache[name]; ok {
		return c, nil
	}
	c, err := d.issue(name)
	if err != nil {
		return nil, err
	}
	if len(d.cache) >= debugCacheMax {
		clear(d.cache)
	}
	d.cache[name] = c
	return c, nil
}

func (d *DebugIssuer) issue(name string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     d.leaf.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, d.leaf, &key.PublicKey, d.ca.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("issue debug certificate for %s: %w", name, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, d.ca.Certificate[0]}, PrivateKey: key}, nil
}
