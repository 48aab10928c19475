package config

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tlsServer starts an HTTPS server with httptest's own certificate and writes that certificate to a
// PEM file, as an operator would for a provider with a private CA.
func tlsServer(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	path := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, path
}

// writeCertPEM writes a real certificate to a PEM file.
func writeCertPEM(t *testing.T) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	raw := srv.Certificate().Raw
	srv.Close()
	path := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOIDCHTTPClient(t *testing.T) {
	srv, roots := tlsServer(t)

	s, err := LoadServer(nil, env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_SERVER_OIDC_CA_ROOTS": roots}.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.OIDCHTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if c.Timeout != OIDCTimeout {
		t.Errorf("timeout %v, want %v", c.Timeout, OIDCTimeout)
	}
	res, err := c.Get(srv.URL)
	if err != nil {
		t.Fatalf("GET with the extra root: %v", err)
	}
	res.Body.Close()

	// Without the setting the provider's private root is not trusted.
	plain, err := (&Server{}).OIDCHTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	defer plain.CloseIdleConnections()
	var unknown x509.UnknownAuthorityError
	if _, err := plain.Get(srv.URL); !errors.As(err, &unknown) {
		t.Fatalf("GET without the extra root: %v, want an unknown-authority error", err)
	}

	// A file that went bad after start is reported naming the setting.
	if err := os.WriteFile(roots, []byte("gone"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OIDCHTTPClient(); err == nil || !strings.Contains(err.Error(), "HOP_SERVER_OIDC_CA_ROOTS (--oidc-ca-roots)") {
		t.Fatalf("OIDCHTTPClient with a spoilt file: %v", err)
	}
	if _, err := RootPool(filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Fatal("RootPool of a missing file succeeded")
	}
}
