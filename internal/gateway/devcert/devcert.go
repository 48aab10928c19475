// Package devcert makes the certificates of development mode and of the tests: a self-signed CA
// certificate that is also the server's, kept on disk so that one --ca-file trusts the gateway across
// restarts, and an Issuer that signs a leaf for any other name on the fly. Never used for a public name
// outside debug mode.
package devcert

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

// Load returns the development certificate for names (plus localhost, 127.0.0.1 and ::1), kept in
// dir as cert.pem / key.pem so that agents can trust it with --ca-file across restarts. A stored
// certificate is reused while it covers the names and has more than a day left.
func Load(dir string, names []string) (cert tls.Certificate, certPath string, err error) {
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
	ca, err := NewCA(dnsNames[len(dnsNames)-1], dnsNames, 365*24*time.Hour)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	if err := writeAtomic(keyPath, ca.KeyPEM, 0o600); err != nil {
		return tls.Certificate{}, "", err
	}
	if err := writeAtomic(certPath, ca.CertPEM, 0o644); err != nil {
		return tls.Certificate{}, "", err
	}
	return ca.Cert, certPath, nil
}

// CA is a self-signed ECDSA P-256 certificate that may also sign others.
type CA struct {
	Cert            tls.Certificate
	CertPEM, KeyPEM []byte
	// Pool trusts Cert.
	Pool *x509.CertPool
}

// NewCA makes a self-signed CA certificate for dnsNames and the loopback addresses, valid for
// lifetime (from an hour ago, against clock skew).
func NewCA(commonName string, dnsNames []string, lifetime time.Duration) (*CA, error) {
	key, serial, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"HopGate development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              dnsNames,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	ca := &CA{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		Pool:    x509.NewCertPool(),
	}
	if ca.Cert, err = tls.X509KeyPair(ca.CertPEM, ca.KeyPEM); err != nil {
		return nil, err
	}
	ca.Pool.AppendCertsFromPEM(ca.CertPEM)
	return ca, nil
}

// WriteFiles writes the certificate and key as PEM files in dir (name-cert.pem, name-key.pem).
func (ca *CA) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, name+"-cert.pem"), filepath.Join(dir, name+"-key.pem")
	if err := writeAtomic(certFile, ca.CertPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := writeAtomic(keyFile, ca.KeyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
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

// Issuer serves the development certificate for the names it covers and, for any other SNI, a leaf
// certificate signed by it on the fly, so that one --ca-file / --cacert trusts every tenant name in
// development. Never used outside debug mode.
type Issuer struct {
	ca   tls.Certificate
	leaf *x509.Certificate
	mu   sync.Mutex
	// cache is bounded: development traffic has few names, and a flood of random SNIs must not grow it.
	cache map[string]*tls.Certificate
}

const debugCacheMax = 1024

// NewIssuer wraps a CA certificate made by Load or NewCA.
func NewIssuer(ca tls.Certificate) (*Issuer, error) {
	leaf, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, err
	}
	return &Issuer{ca: ca, leaf: leaf, cache: make(map[string]*tls.Certificate)}, nil
}

// GetCertificate is for tls.Config.
func (d *Issuer) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
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

// Served is one certificate the Issuer serves: a name of the development certificate, or a leaf it
// signed for a tenant name seen in a handshake.
type Served struct {
	Name     string
	Issuer   string
	NotAfter time.Time
}

// List returns what the Issuer serves, its own names first, then the leaves it signed, by name.
func (d *Issuer) List() []Served {
	var out []Served
	for _, n := range d.leaf.DNSNames {
		out = append(out, Served{Name: n, Issuer: d.leaf.Issuer.CommonName, NotAfter: d.leaf.NotAfter})
	}
	d.mu.Lock()
	names := make([]string, 0, len(d.cache))
	for n := range d.cache {
		names = append(names, n)
	}
	d.mu.Unlock()
	slices.Sort(names)
	for _, n := range names {
		out = append(out, Served{Name: n, Issuer: d.leaf.Subject.CommonName, NotAfter: d.leaf.NotAfter})
	}
	return out
}

func (d *Issuer) issue(name string) (*tls.Certificate, error) {
	key, serial, err := newKey()
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

// newKey makes a P-256 key and a random 126-bit serial number for a new certificate.
func newKey() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, nil, err
	}
	return key, serial, nil
}
