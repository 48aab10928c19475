package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// TestRawService: a --local-target tcp:// service becomes a raw rule that relays to the target, and
// needs no HTTP proxy; an HTTP request for its hostname gets the agent's 404.
func TestRawService(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	cfg, err := config.LoadClient([]string{"--server-addr", "gw.example.com", "--domain", "db.example.com",
		"--api-key", "k", "--local-target", "tcp://" + ln.Addr().String()}, func(string) (string, bool) { return "", false }, "")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if len(a.proxies) != 0 {
		t.Errorf("%d HTTP proxies for a tcp:// service", len(a.proxies))
	}
	p := tunneltest.NewPair(t, a.serve)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	st, err := p.Server.OpenStream(ctx, &tunnelv1.RequestHead{Host: "db.example.com", Mode: tunnelv1.StreamMode_STREAM_MODE_TCP})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if head, err := st.AwaitResponse(ctx); err != nil || head.Status != 200 {
		t.Fatalf("raw stream: %v, %v", head, err)
	}
	if _, err := io.WriteString(st, "hello"); err != nil {
		t.Fatal(err)
	}
	_ = st.CloseWrite(nil)
	if b, err := io.ReadAll(st); err != nil || string(b) != "hello" {
		t.Errorf("echo %q, %v", b, err)
	}

	web, err := p.Server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "GET", Scheme: "https", Host: "db.example.com", Path: "/", EndStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	if head, err := web.AwaitResponse(ctx); err != nil || head.Status != 404 {
		t.Errorf("HTTP request to a tcp:// service: %v, %v; want 404", head, err)
	}
}
