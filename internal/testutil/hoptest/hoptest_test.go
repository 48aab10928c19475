package hoptest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseListening(t *testing.T) {
	const line = `{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"hopgate-server listening","https":"127.0.0.1:4431","http":"127.0.0.1:8081","domain":"localhost"}` + "\n"
	cases := []struct {
		name        string
		log         string
		https, http string
		ok          bool
	}{
		{name: "empty", log: ""},
		{name: "both listeners", log: `{"msg":"starting"}` + "\n" + line, https: "127.0.0.1:4431", http: "127.0.0.1:8081", ok: true},
		{name: "plain HTTP off", log: `{"msg":"hopgate-server listening","https":"127.0.0.1:4431","http":"<nil>"}` + "\n",
			https: "127.0.0.1:4431", ok: true},
		{name: "line still being written", log: line[:len(line)/2]},
		{name: "message in another field", log: `{"msg":"request","path":"hopgate-server listening","https":"127.0.0.1:1"}` + "\n"},
		{name: "text log", log: `time=x level=INFO msg="hopgate-server listening" https=127.0.0.1:4431 http=127.0.0.1:8081` + "\n"},
		{name: "after a panic dump and a long line", log: "panic: no\n\tgoroutine 1\n" + `{"msg":"x","v":"` + strings.Repeat("a", 1<<20) + `"}` + "\n" + line,
			https: "127.0.0.1:4431", http: "127.0.0.1:8081", ok: true},
		{name: "the first one counts", log: line + `{"msg":"hopgate-server listening","https":"127.0.0.1:9","http":"127.0.0.1:9"}` + "\n",
			https: "127.0.0.1:4431", http: "127.0.0.1:8081", ok: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			https, http, ok := parseListening(tc.log)
			if https != tc.https || http != tc.http || ok != tc.ok {
				t.Errorf("parseListening = %q, %q, %v; want %q, %q, %v", https, http, ok, tc.https, tc.http, tc.ok)
			}
		})
	}
}

func TestSelfSigned(t *testing.T) {
	dir := t.TempDir()
	c, err := SelfSigned(dir, "target")
	if err != nil {
		t.Fatal(err)
	}
	if c.CertFile != filepath.Join(dir, "target-cert.pem") || c.KeyFile != filepath.Join(dir, "target-key.pem") {
		t.Fatalf("files %s, %s", c.CertFile, c.KeyFile)
	}
	leaf, err := x509.ParseCertificate(c.Cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256 like the gateway's", leaf.PublicKey)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: c.Pool}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: c.Pool}); err == nil {
		t.Error("the certificate verifies for example.com")
	}

	// What a test server loads from the files, a client trusting CertFile accepts.
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(c.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in CertFile")
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	for _, name := range []string{"localhost", "127.0.0.1"} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
			&tls.Config{RootCAs: roots, ServerName: name})
		if err != nil {
			t.Errorf("handshake for %s: %v", name, err)
			continue
		}
		conn.Close()
	}
}

func TestProcess(t *testing.T) {
	t.Setenv("HOP_HOPTEST_MACHINE", "leaked")
	dir := t.TempDir()
	p, err := Start(Command{Path: "/bin/sh", Args: []string{"-c", `echo "out [$HOP_HOPTEST_MACHINE] [$HOP_GIVEN]"; echo err >&2; exit 3`},
		Env: []string{"HOP_GIVEN=given"}, Log: filepath.Join(dir, "sh.log")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := p.Wait(ctx)
	if err != nil || code != 3 {
		t.Fatalf("Wait = %d, %v; want 3", code, err)
	}
	if got := p.Log.String(); got != "out [] [given]\nerr\n" {
		t.Errorf("log %q: want stdout and stderr, the machine's HOP_* dropped and the given one kept", got)
	}
	if got := p.Log.Lines("err"); len(got) != 1 || got[0] != "err" {
		t.Errorf("Lines(err) = %q", got)
	}

	// A child that holds on: Wait gives up, Stop ends it.
	p, err = Start(Command{Path: "/bin/sh", Args: []string{"-c", "exec sleep 30"}, Log: filepath.Join(dir, "sleep.log"), HoldStdin: true})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := p.Wait(short); err == nil || p.Exited() {
		t.Fatalf("Wait on a running child: %v (exited %v)", err, p.Exited())
	}
	start := time.Now()
	p.Stop(5 * time.Second)
	if !p.Exited() || p.ExitCode() != -1 || time.Since(start) > 4*time.Second {
		t.Errorf("after Stop: exited %v, code %d, %s; want killed by SIGTERM at once", p.Exited(), p.ExitCode(), time.Since(start))
	}
	p.Signal(os.Interrupt) // after the exit: nothing happens
}
