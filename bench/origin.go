package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// smallBody is the S1/S2/S6/S7 response: exactly 100 bytes.
var smallBody = func() []byte {
	b := make([]byte, 100)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	b[len(b)-1] = '\n'
	return b
}()

// pattern is the repeating buffer sized downloads are streamed from: no allocation per request.
var pattern = func() []byte {
	b := make([]byte, 256*kib)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}()

// maxDownload bounds /bytes/N so that a typo cannot ask for an endless response.
const maxDownload = 1 << 40

// originHandler is the target behind every path: a small response, sized downloads, an upload sink
// and server-sent events.
func originHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "100")
		_, _ = w.Write(smallBody)
	})
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil || n < 0 || n > maxDownload {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(pattern)))
			if _, err := w.Write(pattern[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 256*kib)
		var n int64
		for {
			k, err := r.Body.Read(buf)
			n += int64(k)
			if err == io.EOF {
				break
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{"bytes": n})
	})
	mux.HandleFunc("GET /sse", func(w http.ResponseWriter, r *http.Request) {
		count, _ := strconv.Atoi(r.URL.Query().Get("n"))
		if count <= 0 || count > 1000 {
			count = 5
		}
		interval, err := time.ParseDuration(r.URL.Query().Get("interval"))
		if err != nil || interval <= 0 || interval > 10*time.Second {
			interval = 20 * time.Millisecond
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := range count {
			if _, err := fmt.Fprintf(w, "id: %d\ndata: %d %d\n\n", i, i, time.Now().UnixNano()); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			if i == count-1 {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	return mux
}

// serveOrigin serves the origin over HTTP/1.1 and prior-knowledge h2c (for S6) on one port, and its
// raw TCP service (S11, S12; see serveRawTCP) on another.
func serveOrigin(ctx context.Context) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	rawLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer rawLn.Close()
	go serveRawTCP(rawLn)
	srv := &http.Server{Handler: originHandler(), ReadHeaderTimeout: 10 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	fmt.Printf("ADDR http=%s tcp=%s\n", ln.Addr(), rawLn.Addr())
	return serveUntil(ctx, srv, func() error { return srv.Serve(ln) })
}

// serveRawTCP is the origin of the TCP scenarios, a line protocol on persistent connections, like a
// database's: "SMALL\n" is answered with the 100 bytes of /small, "BYTES n\n" with n bytes, and
// "UPLOAD n\n" reads n bytes and answers "OK\n". It ends when ln is closed (the role's exit).
func serveRawTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if err := rawSession(c); !errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "raw tcp:", err)
			}
		}()
	}
}

// rawSession serves one connection until it fails or the client closes it (io.EOF).
func rawSession(c net.Conn) error {
	br := bufio.NewReaderSize(c, 64*kib)
	buf := make([]byte, 256*kib)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		n, _ := strconv.ParseInt(arg, 10, 64)
		switch {
		case cmd == "SMALL":
			if _, err := c.Write(smallBody); err != nil {
				return err
			}
		case cmd == "BYTES" && n >= 0 && n <= maxDownload:
			for n > 0 {
				k := min(n, int64(len(pattern)))
				if _, err := c.Write(pattern[:k]); err != nil {
					return err
				}
				n -= k
			}
		case cmd == "UPLOAD" && n >= 0:
			if _, err := io.CopyBuffer(io.Discard, io.LimitReader(br, n), buf); err != nil {
				return err
			}
			if _, err := io.WriteString(c, "OK\n"); err != nil {
				return err
			}
		default:
			return fmt.Errorf("bad command %q", line)
		}
	}
}

// serveReverseProxy is the baseline without a tunnel: the standard library's reverse proxy, on a plain
// listener (like-for-like with direct) and a TLS one (HTTP/1.1 and h2, for S6).
func serveReverseProxy(ctx context.Context, origin, certFile, keyFile string) error {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return fmt.Errorf("bad -origin %q", origin)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load -cert/-key: %w", err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	plain := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	secure := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	fmt.Printf("ADDR http=%s tls=%s\n", plainLn.Addr(), tlsLn.Addr())
	errs := make(chan error, 1)
	go func() { errs <- secure.ServeTLS(tlsLn, "", "") }()
	err = serveUntil(ctx, plain, func() error { return plain.Serve(plainLn) })
	_ = secure.Close()
	if e := <-errs; err == nil && !errors.Is(e, http.ErrServerClosed) {
		err = e
	}
	return err
}

func serveUntil(ctx context.Context, srv *http.Server, serve func() error) error {
	errs := make(chan error, 1)
	go func() { errs <- serve() }()
	select {
	case <-ctx.Done():
		_ = srv.Close()
		<-errs
		return nil
	case err := <-errs:
		return err
	}
}

// runRole runs a helper process until its parent goes away (stdin reaches EOF) or a signal arrives,
// so that a crashed harness never leaves an origin behind.
func runRole(serve func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		cancel()
	}()
	if err := serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench role:", err)
		os.Exit(1)
	}
}
