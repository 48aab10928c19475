package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/httpwire"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// exchange is one tenant request, in one allocation: the ResponseWriter that records what reaches
// the visitor (status, bytes) and the RoundTripper that carries the request over its agent's stream.
// Its ReverseProxy is a copy of the handler's whose Transport is the exchange, which is how the
// picked agent reaches RoundTrip without a context value.
type exchange struct {
	h         *Handler
	w         http.ResponseWriter
	rp        httputil.ReverseProxy
	body      countingBody
	start     time.Time
	requestID string
	// domain is the canonical Host; site is the registered domain serving it: domain itself, or the
	// wildcard domain covering it ("*.apps.example.com" for "x.apps.example.com").
	domain string
	site   string
	// path is the request's path as it arrived, for picking by target health.
	path string
	// agent carries the request; a refused request moves to another one (Repick).
	agent Agent
	// reason is the outcome's reason word when the request failed.
	reason string
	code   int
	bytes  int64
}

// maxRefusedRetries bounds how often a request a draining agent refused moves to another agent.
const maxRefusedRetries = 2

// RoundTrip carries one request over one tunnel stream of the exchange's agent.
func (x *exchange) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		// Reset before we got here (HTTP/2 rapid reset): the agent never hears of it.
		return nil, err
	}
	upgrade := req.Header.Get("Upgrade") != ""
	hasBody := req.Body != nil && req.Body != http.NoBody
	head := &tunnelv1.RequestHead{
		Method:        req.Method,
		Scheme:        req.URL.Scheme,
		Host:          req.Host,
		Path:          req.URL.RequestURI(),
		Headers:       httpwire.ToWire(req.Header),
		ContentLength: req.ContentLength,
		EndStream:     !hasBody && !upgrade,
		TrailerNames:  httpwire.TrailerNames(withoutIdentity(req.Trailer)),
		RemoteAddr:    req.RemoteAddr,
	}
	st, err := x.agent.OpenStream(ctx, head)
	if err != nil {
		return nil, errors.Join(ErrNoAgent, err)
	}
	// A visitor that goes away resets the stream, which cancels the request at the local target.
	stop := resetOnCancel(ctx, st)
	if hasBody {
		go sendBody(st, req)
	}

	waitCtx, cancel := context.WithTimeoutCause(ctx, x.h.o.HeaderTimeout, ErrHeaderTimeout)
	defer cancel()
	rh, err := st.AwaitResponse(waitCtx)
	for retry := 0; err != nil && retry < maxRefusedRetries && head.EndStream && refused(err); retry++ {
		// An agent that began draining as the head crossed its GoAway refuses the stream before doing
		// anything with it: a request without a body is then safe to send to another agent.
		stop()
		var down bool
		if x.agent, down = x.repick(); x.agent == nil {
			if down {
				return nil, ErrTargetDown
			}
			return nil, ErrNoAgent
		}
		if st, err = x.agent.OpenStream(ctx, head); err != nil {
			return nil, errors.Join(ErrNoAgent, err)
		}
		stop = resetOnCancel(ctx, st)
		rh, err = st.AwaitResponse(waitCtx)
	}
	for err == nil && tunnel.Informational(rh) {
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			// ReverseProxy's trace writes the 1xx to the visitor.
			if terr := trace.Got1xxResponse(int(rh.Status), textproto.MIMEHeader(httpwire.FromWire(rh.Headers))); terr != nil {
				err = terr
				break
			}
		}
		rh, err = st.AwaitResponse(waitCtx)
	}
	if err != nil {
		stop()
		if berr := x.body.failed(); berr != nil && ctx.Err() == nil {
			// sendBody reset the stream because the visitor's body broke or crossed the limit: the
			// visitor's doing, not the agent's.
			st.Close()
			if _, over := errors.AsType[*http.MaxBytesError](berr); over {
				return nil, errors.Join(ErrBodyTooLarge, berr)
			}
			return nil, errors.Join(ErrBadRequestBody, berr)
		}
		if errors.Is(context.Cause(waitCtx), ErrHeaderTimeout) && ctx.Err() == nil {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TIMEOUT, "no response headers in time")
			return nil, ErrHeaderTimeout
		}
		st.Close()
		return nil, errors.Join(ErrUpstream, err)
	}
	header := httpwire.FromWire(rh.Headers)
	if _, marked := header[httpwire.NoRouteHeader]; marked {
		if rh.Status == http.StatusNotFound {
			// The agent's own 404: the visitor gets the gateway's page for it. A target that sends
			// the marker gets the same page and nothing more.
			stop()
			st.Close()
			return nil, ErrNoRoute
		}
		delete(header, httpwire.NoRouteHeader)
	}
	res := &http.Response{
		Status:        http.StatusText(int(rh.Status)),
		StatusCode:    int(rh.Status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		ContentLength: rh.ContentLength,
		Trailer:       httpwire.Announced(rh.TrailerNames),
		Request:       req,
	}
	res.Body = &responseBody{st: st, res: res, stop: stop}
	return res, nil
}

func resetOnCancel(ctx context.Context, st *tunnel.Stream) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		st.Reset(tunnelv1.ResetReason_RESET_REASON_CANCEL, "visitor went away")
	})
}

func refused(err error) bool {
	var reset *tunnel.ResetError
	return errors.As(err, &reset) && reset.Remote && reset.Reason == tunnelv1.ResetReason_RESET_REASON_REFUSED
}

// sendBody streams the visitor's body to the agent, then its trailers.
func sendBody(st *tunnel.Stream, req *http.Request) {
	if _, err := st.ReadFrom(req.Body); err != nil {
		var reset *tunnel.ResetError
		if !errors.As(err, &reset) && !errors.Is(err, tunnel.ErrSessionClosed) {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_CANCEL, "visitor request body failed")
		}
		return
	}
	// The trailers came with the body's end, so only now can the identity look-alikes among them go.
	_ = st.CloseWrite(httpwire.ToWire(withoutIdentity(req.Trailer)))
}

// responseBody reads the agent's response; it is also the writable side of an upgraded connection.
type responseBody struct {
	st   *tunnel.Stream
	res  *http.Response
	stop func() bool
	once sync.Once
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.st.Read(p)
	if err == io.EOF {
		if tr := b.st.Trailers(); len(tr) > 0 {
			if b.res.Trailer == nil {
				b.res.Trailer = make(http.Header, len(tr))
			}
			httpwire.Fill(b.res.Trailer, tr)
		}
	}
	return n, err
}

func (b *responseBody) Write(p []byte) (int, error) { return b.st.Write(p) }

// CloseWrite half-closes an upgraded connection towards the target.
func (b *responseBody) CloseWrite() error { return b.st.CloseWrite(nil) }

func (b *responseBody) Close() error {
	b.once.Do(func() {
		b.stop()
		b.st.Close()
	})
	return nil
}

// The exchange is the visitor's ResponseWriter as ReverseProxy and the error pages see it: it
// remembers the status and counts the body bytes for the access log and the metrics.

func (x *exchange) Header() http.Header { return x.w.Header() }

func (x *exchange) WriteHeader(code int) {
	if x.code == 0 && code >= 200 {
		x.code = code
	}
	x.w.WriteHeader(code)
}

func (x *exchange) Write(p []byte) (int, error) {
	if x.code == 0 {
		x.code = http.StatusOK
	}
	n, err := x.w.Write(p)
	x.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush, Hijack and deadlines of the real writer.
func (x *exchange) Unwrap() http.ResponseWriter { return x.w }

// Flush is needed directly: httputil.ReverseProxy flushes streamed responses through it.
func (x *exchange) Flush() {
	if x.code == 0 {
		x.code = http.StatusOK
	}
	_ = http.NewResponseController(x.w).Flush()
}

// countingBody counts the request body bytes the proxy reads and keeps the first read error, which
// tells a visitor's broken body (400) from an agent's failure (502). Both are read when the handler
// ends or the response fails, possibly while sendBody still reads, hence atomic.
type countingBody struct {
	io.ReadCloser
	n   atomic.Int64
	err atomic.Pointer[error]
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if err != nil && err != io.EOF {
		b.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

// failed is the body's first read error other than EOF, or nil.
func (b *countingBody) failed() error {
	if p := b.err.Load(); p != nil {
		return *p
	}
	return nil
}

// requestID returns the visitor's X-Request-Id if it looks like one, else a new one, and makes sure
// the request carries it to the target.
func requestID(r *http.Request) string {
	id := r.Header.Get("X-Request-Id")
	if !validRequestID(id) {
		var b [12]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
		r.Header.Set("X-Request-Id", id)
	}
	return id
}

// validRequestID accepts up to 128 visible ASCII characters: enough for UUIDs and trace ids, and
// nothing that could break a log line.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}
