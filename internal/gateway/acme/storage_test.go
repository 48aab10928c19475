package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestFileStorage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	s, err := NewFileStorage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "certificates/a.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("load missing: %v, want fs.ErrNotExist", err)
	}
	for _, k := range []string{"certificates/a.crt", "certificates/a.key", "accounts/ca/x/key.pem"} {
		if err := s.Store(ctx, k, []byte("v1 "+k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Store(ctx, "certificates/a.crt", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Load(ctx, "certificates/a.crt"); err != nil || string(b) != "v2" {
		t.Fatalf("load: %q %v", b, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "certificates/a.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "certificates"))
	if len(entries) != 2 {
		t.Errorf("temporary files left: %v", entries)
	}
	if keys, err := s.List(ctx, "certificates", false); err != nil || !slices.Equal(keys, []string{"certificates/a.crt", "certificates/a.key"}) {
		t.Errorf("list: %v %v", keys, err)
	}
	if keys, err := s.List(ctx, "", true); err != nil || len(keys) != 3 {
		t.Errorf("list all: %v %v", keys, err)
	}
	if keys, err := s.List(ctx, "nothing", true); err != nil || len(keys) != 0 {
		t.Errorf("list missing prefix: %v %v", keys, err)
	}
	if err := s.Delete(ctx, "certificates/a.crt"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "certificates/a.crt"); err != nil {
		t.Errorf("delete missing: %v", err)
	}
	for _, bad := range []string{"../x", "/abs", "a/../../b", ""} {
		if err := s.Store(ctx, bad, nil); err == nil {
			t.Errorf("store %q accepted", bad)
		}
	}
}

func TestFileStorageLock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, _ := NewFileStorage(dir)
	b, _ := NewFileStorage(dir) // another gateway on the same directory
	ctx := context.Background()
	if err := a.Lock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	if err := b.Lock(short, "certificates/x"); err == nil {
		t.Fatal("second lock acquired while held")
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "certificates/x") }()
	time.Sleep(50 * time.Millisecond)
	if err := a.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lock not handed over")
	}
	if err := b.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "certificates/x"); err == nil {
		t.Error("unlock of a free lock succeeded")
	}
}

func TestServingWithoutCertificates(t *testing.T) {
	t.Parallel()
	m, err := New(Options{CADir: "https://127.0.0.1:1/dir", CacheDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.stop()
	m.SetDefault("gw.example.test")
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "gw.example.test"}); err == nil {
		t.Error("certificate without any")
	}
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "gw.example.test", SupportedProtos: []string{ALPNProto}}); err == nil {
		t.Error("challenge certificate without a challenge")
	}
	// HTTP-01: a known token is answered, anything else goes to the fallback.
	p := &http01Provider{m: m}
	_ = p.Present("gw.example.test", "tok", "tok.keyauth")
	h := m.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusPermanentRedirect) }))
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/.well-known/acme-challenge/tok", 200, "tok.keyauth"},
		{"/.well-known/acme-challenge/other", 308, ""},
		{"/", 308, ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://gw.example.test"+tc.path, nil))
		if rec.Code != tc.code || (tc.body != "" && rec.Body.String() != tc.body) {
			t.Errorf("%s: %d %q", tc.path, rec.Code, rec.Body.String())
		}
	}
	_ = p.CleanUp("gw.example.test", "tok", "tok.keyauth")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://gw.example.test/.well-known/acme-challenge/tok", nil))
	if rec.Code != 308 {
		t.Errorf("cleaned-up token still answered: %d", rec.Code)
	}
	if st := m.Status("nothing.example.test"); st.State != StateNone {
		t.Errorf("status of unmanaged name: %+v", st)
	}
	m.Manage(context.Background(), "bad name!", "gw.example.test")
	if st := m.Status("GW.example.test."); st.State != StateNone {
		t.Errorf("status before Run: %+v", st)
	}
	m.Unmanage("gw.example.test")
	if len(m.entries) != 0 {
		t.Errorf("entries after Unmanage: %v", m.entries)
	}
}
