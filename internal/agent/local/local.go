// Package local is the agent's end of the proxy: it serves each tunnel stream as an HTTP request to the
// local target (http, https, h2c for gRPC, or a unix socket), streaming both ways.
package local

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/httpwire"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Options configures the agent end of the proxy.
type Options struct {
	// TLSConfig is used for https targets; nil means system roots.
	TLSConfig *tls.Config
	Logger    *slog.Logger
}

// Proxy serves tunnel streams by sending each as an HTTP request to the local target.
type Proxy struct {
	target *url.URL
	// transport speaks HTTP/1.1 (or h2 by ALPN to https targets); h2c speaks HTTP/2 without TLS, which
	// gRPC needs from a plain local target.
	transport *http.Transport
	h2c       *http.Transport
	// h1 takes the requests without a body to a plain HTTP target; nil for https targets.
	h1  *h1Client
	log *slog.Logger
}

// New builds the agent's proxy to target: an http or https URL (optionally with a base path)
// or unix:///path.sock.
func New(target *url.URL, opts Options) *Proxy {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if target.Scheme == "unix" {
		socket := target.Path
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		}
		// Requests are written as http://localhost/...; the Host header is the visitor's anyway.
		target = &url.URL{Scheme: "http", Host: "localhost"}
	}
	newTransport := func() *http.Transport {
		return &http.Transport{
			DialContext: dial,
			// Keep many warm connections: every tunneled request would otherwise pay a dial.
			MaxIdleConns:          1024,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
			// A backstop only: the gateway resets a stream whose headers take longer than its
			// HOP_SERVER_PROXY_TIMEOUT_SECONDS, which cancels the request here first.
			ResponseHeaderTimeout: 10 * time.Minute,
			TLSClientConfig:       opts.TLSConfig,
			ForceAttemptHTTP2:     true,
			// The visitor's Accept-Encoding passes through untouched; the agent must not add gzip and
			// then decompress behind the visitor's back.
			DisableCompression: true,
			WriteBufferSize:    64 << 10,
			ReadBufferSize:     64 << 10,
		}
	}
	h2c := newTransport()
	h2c.Protocols = new(http.Protocols)
	h2c.Protocols.SetUnencryptedHTTP2(true)
	p := &Proxy{target: target, transport: newTransport(), h2c: h2c, log: opts.Logger}
	if target.Scheme == "http" {
		addr := target.Host
		if target.Port() == "" {
			addr = net.JoinHostPort(target.Hostname(), "80")
		}
		p.h1 = &h1Client{dial: dial, addr: addr, maxIdle: 256, idleTimeout: 90 * time.Second, now: time.Now}
	}
	return p
}

// Close drops idle connections to the target.
func (l *Proxy) Close() {
	l.transport.CloseIdleConnections()
	l.h2c.CloseIdleConnections()
	if l.h1 != nil {
		l.h1.Close()
	}
}

// transportFor picks h2c for gRPC to a plain target (gRPC cannot run over HTTP/1.1), the direct
// HTTP/1.1 client for a GET, HEAD, OPTIONS or TRACE without a body or upgrade to a plain target,
// and http.Transport for the rest.
func (l *Proxy) transportFor(req *http.Request, bodiless bool) http.RoundTripper {
	if l.target.Scheme == "http" && strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") {
		return l.h2c
	}
	if bodiless && l.h1 != nil && replayable(req.Method) {
		return l.h1
	}
	return l.transport
}

// ServeStream proxies one stream to the local target and streams the response back.
func (l *Proxy) ServeStream(st *tunnel.Stream) {
	defer st.Close()
	h := st.Request()
	req, err := l.newRequest(st, h)
	if err != nil {
		st.Reset(tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR, err.Error())
		return
	}
	res, err := l.transportFor(req, h.EndStream && !hasUpgrade(h.Headers)).RoundTrip(req)
	if err != nil {
		if st.Context().Err() == nil {
			l.log.Warn("local target failed", "stream", st.ID(), "err", err)
		}
		st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "local target: "+err.Error())
		return
	}
	defer res.Body.Close()
	head := &tunnelv1.ResponseHead{
		Status:        uint32(res.StatusCode),
		Headers:       httpwire.ToWire(res.Header),
		ContentLength: res.ContentLength,
		TrailerNames:  httpwire.TrailerNames(res.Trailer),
		EndStream:     res.Body == http.NoBody,
	}
	if sent, readErr := sendWhole(st, head, res); sent {
		if readErr != nil {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, "local target body: "+readErr.Error())
		}
		return
	}
	if err := st.SendResponse(head); err != nil {
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		l.relayUpgraded(st, res)
		return
	}
	if head.EndStream {
		return
	}
	if _, err := st.ReadFrom(res.Body); err != nil {
		var reset *tunnel.ResetError
		if !errors.As(err, &reset) && !errors.Is(err, tunnel.ErrSessionClosed) {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, "local target body: "+err.Error())
		}
		return
	}
	_ = st.CloseWrite(httpwire.ToWire(res.Trailer))
}

// sendWhole sends a small response of known length as one frame, head and body together, when the
// gateway takes that. sent false means nothing was sent and the caller streams the response;
// readErr is the target's body failing (a failed send needs nothing more: the stream is gone).
func sendWhole(st *tunnel.Stream, head *tunnelv1.ResponseHead, res *http.Response) (sent bool, readErr error) {
	n := res.ContentLength
	if head.EndStream || n <= 0 || res.StatusCode < 200 || len(res.Trailer) > 0 || !st.CanSendWholeResponse(int(n)) {
		return false, nil
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(res.Body, body); err != nil {
		return true, err
	}
	_ = st.SendWholeResponse(head, body)
	return true, nil
}

func (l *Proxy) newRequest(st *tunnel.Stream, h *tunnelv1.RequestHead) (*http.Request, error) {
	ref, err := url.ParseRequestURI(h.Path)
	if err != nil {
		return nil, err
	}
	u := *l.target
	u.Path, u.RawPath = joinPath(l.target, ref)
	u.RawQuery = ref.RawQuery
	upgrade := hasUpgrade(h.Headers)
	// Informational responses (103 Early Hints, 102) go to the visitor as they come. 100 Continue is
	// not forwarded: the gateway answers the visitor's Expect itself when it starts reading the body.
	ctx := httptrace.WithClientTrace(st.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, header textproto.MIMEHeader) error {
			if code == http.StatusContinue {
				return nil
			}
			return st.SendResponse(&tunnelv1.ResponseHead{Status: uint32(code), Headers: httpwire.ToWire(http.Header(header))})
		},
	})
	// No URL string: NewRequest would parse what u.String() had just printed. It still checks the
	// method.
	req, err := http.NewRequestWithContext(ctx, h.Method, "", nil)
	if err != nil {
		return nil, err
	}
	req.URL, req.Host = &u, h.Host
	req.Header = httpwire.FromWire(h.Headers)
	req.Body = http.NoBody
	if !h.EndStream && !upgrade {
		req.Body = io.NopCloser(&requestBody{st: st, req: req})
		req.ContentLength = h.ContentLength
		req.Trailer = httpwire.Announced(h.TrailerNames)
	}
	return req, nil
}

// relayUpgraded copies both ways once the target switched protocols (WebSocket and the like).
func (l *Proxy) relayUpgraded(st *tunnel.Stream, res *http.Response) {
	conn, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, "upgraded body is not writable")
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(conn, st)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = conn.Close()
		}
	}()
	if _, err := st.ReadFrom(conn); err == nil {
		_ = st.CloseWrite(nil)
	}
	_ = conn.Close()
	<-done
}

// joinPath prefixes the request path with the target's base path.
func joinPath(target, ref *url.URL) (path, rawPath string) {
	base := strings.TrimSuffix(target.Path, "/")
	if base == "" {
		return ref.Path, ref.RawPath
	}
	if ref.RawPath == "" {
		return base + ref.Path, ""
	}
	return base + ref.Path, strings.TrimSuffix(target.EscapedPath(), "/") + ref.RawPath
}

func hasUpgrade(hs []*tunnelv1.Header) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Name, "Upgrade") && len(h.Values) > 0 {
			return true
		}
	}
	return false
}

// requestBody is the visitor's body as the local target reads it; trailers land in req.Trailer at EOF,
// where the Transport looks for them.
type requestBody struct {
	st  *tunnel.Stream
	req *http.Request
}

func (b *requestBody) Read(p []byte) (int, error) {
	n, err := b.st.Read(p)
	if err == io.EOF && b.req != nil {
		if tr := b.st.Trailers(); len(tr) > 0 {
			if b.req.Trailer == nil {
				b.req.Trailer = make(http.Header, len(tr))
			}
			httpwire.Fill(b.req.Trailer, tr)
		}
	}
	return n, err
}
