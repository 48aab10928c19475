package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// target is one way of reaching the origin: direct, through the reverse proxy, or through HopGate.
type target struct {
	Name  string
	base  string      // scheme://host the URLs carry
	host  string      // Host header when it differs from base ("" = from base)
	dial  string      // the address actually dialled
	tls   *tls.Config // nil for plain HTTP
	proto string      // "h1", "h2" (TLS) or "h2c" (prior knowledge)
	// header is sent with every request (a policy's credentials).
	header http.Header
}

// client returns a client for this target that keeps up to conns connections. Every request it sends
// is bounded by timeout.
func (t target) client(conns int, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	var tlsConf *tls.Config
	if t.tls != nil {
		// Each transport gets its own copy: setting up HTTP/2 adds "h2" to the config's NextProtos in
		// place, and a shared config would then offer h2 on the HTTP/1.1-only clients too.
		tlsConf = t.tls.Clone()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, t.dial)
		},
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        2*conns + 16,
		MaxIdleConnsPerHost: conns + 8,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
		Protocols:           new(http.Protocols),
		WriteBufferSize:     64 * kib,
		ReadBufferSize:      64 * kib,
	}
	switch t.proto {
	case "h2":
		tr.Protocols.SetHTTP2(true)
	case "h2c":
		tr.Protocols.SetUnencryptedHTTP2(true)
	default:
		tr.Protocols.SetHTTP1(true)
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

func closeClient(c *http.Client) { c.CloseIdleConnections() }

func (t target) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, t.base+path, body)
	if err != nil {
		return nil, err
	}
	if t.host != "" {
		req.Host = t.host
	}
	for k, v := range t.header {
		req.Header[k] = v
	}
	return req, nil
}

// getSmall fetches /small and checks that it is a whole 100-byte 200.
func getSmall(ctx context.Context, c *http.Client, t target) error {
	req, err := t.request(ctx, http.MethodGet, "/small", nil)
	if err != nil {
		return err
	}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || n != int64(len(smallBody)) {
		return fmt.Errorf("GET /small: status %d, %d bytes", res.StatusCode, n)
	}
	return nil
}

// sample is what a load loop measured.
type sample struct {
	Requests int64 `json:"requests"` // completed successfully inside the window
	// Completed counts every successful request, warm-up and the window's edges included: what the
	// processes' CPU time over the whole loop was spent on.
	Completed int64         `json:"completed"`
	Errors    int64         `json:"errors"`
	Dropped   int64         `json:"dropped,omitempty"` // open loop: not sent because too many were in flight
	Window    time.Duration `json:"window"`
	FirstErr  string        `json:"first_error,omitempty"`
	lat       []time.Duration
}

func (s *sample) rps() float64 { return float64(s.Requests) / s.Window.Seconds() }

// quantile of the successful requests' latencies; lat must be sorted.
func (s *sample) quantile(q float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	i := int(q * float64(len(s.lat)-1))
	return s.lat[i]
}

type errCounter struct {
	n     atomic.Int64
	once  sync.Once
	first string
}

func (e *errCounter) add(err error) {
	e.n.Add(1)
	e.once.Do(func() { e.first = err.Error() })
}

// closedLoop runs conns workers that each send the next request as soon as the previous one is done.
// Requests that start during warmup or end after the window are not counted.
func closedLoop(ctx context.Context, conns int, warmup, window time.Duration, do func(context.Context) error) sample {
	start := time.Now()
	from, end := start.Add(warmup), start.Add(warmup+window)
	ctx, cancel := context.WithDeadline(ctx, end.Add(15*time.Second))
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		all  []time.Duration
		ok   atomic.Int64
		done atomic.Int64
		errs errCounter
	)
	for range conns {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				err := do(ctx)
				t1 := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						errs.add(err)
					}
					time.Sleep(time.Millisecond) // a failing target must not turn into a busy loop
					continue
				}
				done.Add(1)
				if t0.Before(from) || t1.After(end) {
					continue
				}
				lat = append(lat, t1.Sub(t0))
			}
			ok.Add(int64(len(lat)))
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(all)
	return sample{Requests: ok.Load(), Completed: done.Load(), Errors: errs.n.Load(), FirstErr: errs.first, Window: window, lat: all}
}

// openLoop sends rate requests per second for window, each on schedule whether or not earlier ones
// have finished; latency counts from the scheduled time, so a stall shows up in full (no coordinated
// omission). At most maxInflight run at once; beyond that a request is dropped and counted.
func openLoop(ctx context.Context, rate int, window time.Duration, maxInflight int, do func(ctx context.Context, i int) error) sample {
	n := int(float64(rate) * window.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, n)
	done := make([]bool, n)
	sem := make(chan struct{}, maxInflight)
	var (
		wg      sync.WaitGroup
		errs    errCounter
		dropped int64
	)
	start := time.Now().Add(5 * time.Millisecond)
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		default:
			dropped++
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := do(ctx, i); err != nil {
				errs.add(err)
				return
			}
			lat[i] = time.Since(at)
			done[i] = true
		})
	}
	wg.Wait()
	var got []time.Duration
	for i := range n {
		if done[i] {
			got = append(got, lat[i])
		}
	}
	slices.Sort(got)
	return sample{Requests: int64(len(got)), Errors: errs.n.Load(), Dropped: dropped, FirstErr: errs.first, Window: window, lat: got}
}

// discard counts what it is given; unlike io.Discard it has no ReadFrom, so the copy buffer is ours.
type discard struct{ n int64 }

func (d *discard) Write(p []byte) (int, error) {
	d.n += int64(len(p))
	return len(p), nil
}

// download fetches /bytes/size and returns how many body bytes arrived.
func download(ctx context.Context, c *http.Client, t target, size int64, buf []byte) (int64, error) {
	req, err := t.request(ctx, http.MethodGet, "/bytes/"+strconv.FormatInt(size, 10), nil)
	if err != nil {
		return 0, err
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /bytes/%d: status %d", size, res.StatusCode)
	}
	var d discard
	_, err = io.CopyBuffer(&d, res.Body, buf)
	if err == nil && d.n != size {
		err = fmt.Errorf("GET /bytes/%d: got %d bytes", size, d.n)
	}
	return d.n, err
}

// patternReader yields size bytes of the repeating pattern: an upload body without allocation.
type patternReader struct {
	left int64
	off  int
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := 0
	for n < len(p) {
		k := copy(p[n:], pattern[r.off:])
		n += k
		r.off = (r.off + k) % len(pattern)
	}
	r.left -= int64(n)
	return n, nil
}

// upload posts size bytes to /upload and checks the origin saw them all.
func upload(ctx context.Context, c *http.Client, t target, size int64) (int64, error) {
	req, err := t.request(ctx, http.MethodPost, "/upload", &patternReader{left: size})
	if err != nil {
		return 0, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	res, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var out struct {
		Bytes int64 `json:"bytes"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, kib)).Decode(&out); err != nil || res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("POST /upload: status %d (%v)", res.StatusCode, err)
	}
	if out.Bytes != size {
		return out.Bytes, fmt.Errorf("POST /upload: origin saw %d of %d bytes", out.Bytes, size)
	}
	return size, nil
}

// firstEvent opens /sse and returns how long the first event took and whether all events arrived:
// a proxy that buffers the stream shows up as a first event as late as the last.
func firstEvent(ctx context.Context, c *http.Client, t target, events int, interval time.Duration) (first, total time.Duration, err error) {
	req, err := t.request(ctx, http.MethodGet, fmt.Sprintf("/sse?n=%d&interval=%s", events, interval), nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	res, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	buf := make([]byte, 4*kib)
	seen := 0
	var data []byte
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if seen == 0 {
				first = time.Since(start)
			}
			data = append(data, buf[:n]...)
			seen++
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return first, time.Since(start), rerr
		}
	}
	total = time.Since(start)
	if got := countEvents(data); got != events {
		return first, total, fmt.Errorf("SSE: %d events, want %d", got, events)
	}
	return first, total, nil
}

func countEvents(b []byte) int {
	n := 0
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\n' && b[i+1] == '\n' {
			n++
		}
	}
	return n
}
