package tunnel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"

	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// auditedPair is a tunnel whose both ends check the peer's flow control on the wire.
func auditedPair(t *testing.T, agent Config) (*tunnelPair, *creditAuditor, *creditAuditor) {
	t.Helper()
	h := newHarness(t, harnessOptions{wrapServer: func(c FrameConn) FrameConn { return newCreditAuditor(c, 0) }})
	p := h.dial(agent, func(c FrameConn) FrameConn { return newCreditAuditor(c, agent.LocalWindow) })
	sa, aa := p.serverConn.(*creditAuditor), p.agentConn.(*creditAuditor)
	t.Cleanup(func() {
		sa.check(t, "server")
		aa.check(t, "agent")
	})
	return p, sa, aa
}

func TestRoundTrip(t *testing.T) {
	leakCheck(t)
	p, _, _ := auditedPair(t, Config{Accept: echoAgent(t)})

	tests := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"one chunk", ChunkSize},
		{"chunk plus one", ChunkSize + 1},
		{"past the initial window", DefaultInitialWindow + 7},
		{"10 MiB", 10 << 20},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 10*time.Second)
			body := payload(uint64(i), tc.size)
			st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{
				Method:        "POST",
				Scheme:        "https",
				Host:          "app.example.test",
				Path:          "/upload?x=1",
				Headers:       []*tunnelv1.Header{header("content-type", "application/octet-stream")},
				ContentLength: int64(tc.size),
				EndStream:     tc.size == 0,
				RemoteAddr:    "192.0.2.1:4242",
			})
			if err != nil {
				t.Fatalf("OpenStream: %v", err)
			}
			t.Cleanup(func() { _ = st.Close() })
			if tc.size > 0 {
				if n, err := st.Write(body); err != nil || n != len(body) {
					t.Fatalf("Write: %d of %d bytes, %v", n, len(body), err)
				}
				if err := st.CloseWrite([]*tunnelv1.Header{header("x-request-trailer", "yes")}); err != nil {
					t.Fatalf("CloseWrite: %v", err)
				}
				if _, err := st.Write([]byte("late")); err == nil {
					t.Errorf("Write after CloseWrite succeeded")
				}
			}
			resp, err := st.AwaitResponse(ctx)
			if err != nil {
				t.Fatalf("AwaitResponse: %v", err)
			}
			if resp.Status != 200 || resp.ContentLength != int64(tc.size) {
				t.Errorf("response head: status %d, content length %d; want 200, %d", resp.Status, resp.ContentLength, tc.size)
			}
			want := sum(body)
			if got := headerValue(resp.Headers, "x-request-sha256"); got != want {
				t.Errorf("agent saw request body %s, sent %s", got, want)
			}
			h := sha256.New()
			n, err := io.Copy(h, st)
			if err != nil {
				t.Fatalf("reading response body: %v", err)
			}
			if n != int64(tc.size) || hex.EncodeToString(h.Sum(nil)) != want {
				t.Errorf("response body: %d bytes, sha256 %x; want %d bytes, %s", n, h.Sum(nil), tc.size, want)
			}
			tr := st.Trailers()
			if got := headerValue(tr, "x-body-sha256"); got != want {
				t.Errorf("trailer x-body-sha256 = %q, want %q", got, want)
			}
			wantReqTrailer := "yes"
			if tc.size == 0 {
				wantReqTrailer = "" // the request ended with its head: no trailers to echo.
			}
			if got := headerValue(tr, "x-request-trailer"); got != wantReqTrailer {
				t.Errorf("echoed request trailer = %q, want %q", got, wantReqTrailer)
			}
			if _, err := st.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("Read after the end = %v, want io.EOF", err)
			}
			select {
			case <-st.Context().Done():
			case <-time.After(time.Second):
				t.Errorf("stream context still live after both directions ended")
			}
			poll.Until(t, 2*time.Second, "streams to be forgotten on both ends", func() bool {
				return p.server.ActiveStreams() == 0 && p.agent.ActiveStreams() == 0
			})
		})
	}
}

// TestFlowControlHeadOfLine checks that a stream whose reader stalls holds at most its window while
// another stream of the same session moves 5 MiB.
func TestFlowControlHeadOfLine(t *testing.T) {
	leakCheck(t)
	const (
		stalledSize = 1 << 20
		piece       = 4 << 10
		bulkSize    = 5 << 20
	)
	stalledBody, bulkBody := payload(1, stalledSize), payload(2, bulkSize)

	// writeCounted writes body in pieces, counting what Write accepted.
	writeCounted := func(st *Stream, body []byte, written *atomic.Int64) error {
		for off := 0; off < len(body); off += piece {
			if _, err := st.Write(body[off : off+piece]); err != nil {
				return err
			}
			written.Add(piece)
		}
		return st.CloseWrite(nil)
	}

	tests := []struct {
		name string
		// stallAgent: the agent does not read the stalled request; otherwise the server does not read
		// the stalled response.
		stallAgent bool
	}{
		{"server to agent", true},
		{"agent to server", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var written atomic.Int64
			release := make(chan struct{})
			agentStalled := make(chan *Stream, 1)
			routes := map[string]func(*Stream){
				"/stalled": func(st *Stream) {
					defer func() { _ = st.Close() }()
					agentStalled <- st
					if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
						t.Errorf("stalled: send response: %v", err)
						return
					}
					if tc.stallAgent {
						<-release
						got, err := io.ReadAll(st)
						if err != nil || !bytes.Equal(got, stalledBody) {
							t.Errorf("stalled: agent read %d bytes (%v), want the %d sent", len(got), err, stalledSize)
						}
						if err := st.CloseWrite(nil); err != nil {
							t.Errorf("stalled: close write: %v", err)
						}
						return
					}
					if err := writeCounted(st, stalledBody, &written); err != nil {
						t.Errorf("stalled: agent write: %v", err)
					}
				},
				"/bulk": func(st *Stream) {
					defer func() { _ = st.Close() }()
					if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
						t.Errorf("bulk: send response: %v", err)
						return
					}
					if _, err := st.Write(bulkBody); err != nil {
						t.Errorf("bulk: write: %v", err)
						return
					}
					if err := st.CloseWrite(nil); err != nil {
						t.Errorf("bulk: close write: %v", err)
					}
				},
			}
			p, _, _ := auditedPair(t, Config{Accept: routeAgent(t, routes)})
			ctx := testCtx(t, 20*time.Second)

			stalled, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "PUT", Path: "/stalled", ContentLength: -1, EndStream: !tc.stallAgent})
			if err != nil {
				t.Fatalf("OpenStream: %v", err)
			}
			t.Cleanup(func() { _ = stalled.Close() })
			serverWrote := make(chan error, 1)
			if tc.stallAgent {
				go func() { serverWrote <- writeCounted(stalled, stalledBody, &written) }()
			}
			agentSide := <-agentStalled
			poll.Until(t, 5*time.Second, "the stalled writer to use up its window", func() bool {
				return written.Load() >= DefaultInitialWindow
			})

			start := time.Now()
			bulk, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "GET", Path: "/bulk", EndStream: true})
			if err != nil {
				t.Fatalf("OpenStream bulk: %v", err)
			}
			t.Cleanup(func() { _ = bulk.Close() })
			if _, err := bulk.AwaitResponse(ctx); err != nil {
				t.Fatalf("bulk AwaitResponse: %v", err)
			}
			got, err := io.ReadAll(bulk)
			if err != nil || !bytes.Equal(got, bulkBody) {
				t.Fatalf("bulk body: %d bytes (%v), want the %d sent", len(got), err, bulkSize)
			}
			elapsed := time.Since(start)
			t.Logf("5 MiB beside a stalled stream in %v", elapsed)
			if elapsed > 10*time.Second {
				t.Errorf("bulk transfer took %v beside a stalled stream", elapsed)
			}

			// The stalled writer has been blocked all along, at exactly the window.
			if got := written.Load(); got != DefaultInitialWindow {
				t.Errorf("stalled writer got %d bytes through, want its window %d", got, DefaultInitialWindow)
			}
			receiver := stalled
			if tc.stallAgent {
				receiver = agentSide
			}
			receiver.mu.Lock()
			buffered, window := receiver.buffered, receiver.window
			receiver.mu.Unlock()
			if buffered > window || window != DefaultInitialWindow {
				t.Errorf("stalled receiver buffers %d bytes in a window of %d; want at most %d", buffered, window, DefaultInitialWindow)
			}

			// Once read, the stalled stream completes.
			if tc.stallAgent {
				close(release)
				if err := <-serverWrote; err != nil {
					t.Fatalf("stalled: server write: %v", err)
				}
				if _, err := io.ReadAll(stalled); err != nil {
					t.Fatalf("stalled: server read of the empty response: %v", err)
				}
			} else {
				got, err := io.ReadAll(stalled)
				if err != nil || !bytes.Equal(got, stalledBody) {
					t.Fatalf("stalled: server read %d bytes (%v), want the %d sent", len(got), err, stalledSize)
				}
			}
			if got := written.Load(); got != stalledSize {
				t.Errorf("stalled writer finished at %d bytes, want %d", got, stalledSize)
			}
			poll.Until(t, 2*time.Second, "streams to end", func() bool {
				return p.server.ActiveStreams() == 0 && p.agent.ActiveStreams() == 0
			})
		})
	}
}

// TestWindowGrowth checks that a reader that keeps up lets the window grow to full speed, and that the
// sender never overruns the credit it was given (the auditors on both ends see every frame).
func TestWindowGrowth(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name     string
		toServer bool
		size     int64
	}{
		{"agent to server", true, 64 << 20},
		{"server to agent", false, 32 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.size
			var seed [32]byte
			seed[0] = 7
			// source yields the same size bytes each time it is made, without holding them in memory.
			source := func() io.Reader { return io.LimitReader(rand.NewChaCha8(seed), size) }
			wantH := sha256.New()
			_, _ = io.Copy(wantH, source())
			want := hex.EncodeToString(wantH.Sum(nil))

			// readAll drains st into a hash as fast as it can.
			readAll := func(st *Stream) (string, int64, error) {
				h := sha256.New()
				n, err := io.CopyBuffer(h, st, make([]byte, 256<<10))
				return hex.EncodeToString(h.Sum(nil)), n, err
			}
			agentSide := make(chan *Stream, 1)
			agent := func(st *Stream) {
				defer func() { _ = st.Close() }()
				agentSide <- st
				if !tc.toServer {
					got, n, err := readAll(st)
					if err != nil || got != want {
						t.Errorf("agent read %d bytes (%v), sha256 %s; want %d bytes, %s", n, err, got, size, want)
					}
				}
				if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200, EndStream: !tc.toServer}); err != nil {
					t.Errorf("agent: send response: %v", err)
					return
				}
				if tc.toServer {
					if _, err := st.ReadFrom(source()); err != nil {
						t.Errorf("agent: write body: %v", err)
						return
					}
					if err := st.CloseWrite(nil); err != nil {
						t.Errorf("agent: close write: %v", err)
					}
				}
			}
			p, sa, aa := auditedPair(t, Config{Accept: agent})
			ctx := testCtx(t, 30*time.Second)

			start := time.Now()
			st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/big", ContentLength: size, EndStream: tc.toServer})
			if err != nil {
				t.Fatalf("OpenStream: %v", err)
			}
			t.Cleanup(func() { _ = st.Close() })
			receiver := st
			if !tc.toServer {
				if _, err := st.ReadFrom(source()); err != nil {
					t.Fatalf("server write body: %v", err)
				}
				if err := st.CloseWrite(nil); err != nil {
					t.Fatalf("server close write: %v", err)
				}
				receiver = <-agentSide
			}
			if _, err := st.AwaitResponse(ctx); err != nil {
				t.Fatalf("AwaitResponse: %v", err)
			}
			if tc.toServer {
				got, n, err := readAll(st)
				if err != nil || got != want {
					t.Fatalf("server read %d bytes (%v), sha256 %s; want %d bytes, %s", n, err, got, size, want)
				}
			} else if _, err := io.ReadAll(st); err != nil {
				t.Fatalf("server read of the empty response: %v", err)
			}
			elapsed := time.Since(start)
			t.Logf("%d MiB in %v (%.0f MiB/s)", size>>20, elapsed, float64(size>>20)/elapsed.Seconds())
			if elapsed > 15*time.Second {
				t.Errorf("%d MiB took %v", size>>20, elapsed)
			}

			receiver.mu.Lock()
			window := receiver.window
			receiver.mu.Unlock()
			if window <= DefaultInitialWindow || window > DefaultMaxWindow {
				t.Errorf("receive window ended at %d; want it grown past %d and at most %d", window, DefaultInitialWindow, DefaultMaxWindow)
			}
			// At most one frame per ChunkSize: the grown window is used in full chunks.
			audit := aa
			if tc.toServer {
				audit = sa
			}
			audit.mu.Lock()
			frames := audit.dataFrames
			audit.mu.Unlock()
			if n := int64(frames); n < size/ChunkSize || n > size/ChunkSize*5/4 {
				t.Errorf("%d MiB came in %d data frames; want about %d", size>>20, frames, size/ChunkSize)
			}
		})
	}
}

func TestReset(t *testing.T) {
	leakCheck(t)
	type agentResult struct {
		ctxDone  time.Time
		readErr  error
		writeErr error
	}
	resetSeen := make(chan agentResult, 1)
	agentClosed := make(chan struct{}, 1)
	resetBody := payload(3, 200<<10) // less than the window: all of it may sit unread at the server.
	routes := map[string]func(*Stream){
		// Waits for the server's reset, reading.
		"/wait-for-reset": func(st *Stream) {
			readErr := make(chan error, 1)
			go func() {
				_, err := io.ReadAll(st)
				readErr <- err
			}()
			<-st.Context().Done()
			done := time.Now()
			err := <-readErr
			_, werr := st.Write([]byte("x"))
			resetSeen <- agentResult{ctxDone: done, readErr: err, writeErr: werr}
		},
		"/unreachable": func(st *Stream) {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "dial tcp 127.0.0.1:1: connection refused")
		},
		"/aborted": func(st *Stream) {
			if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
				t.Errorf("aborted: %v", err)
			}
			if _, err := st.Write(resetBody[:1000]); err != nil {
				t.Errorf("aborted: %v", err)
			}
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, "target hung up")
		},
		// Sends a whole response, then closes the stream while the request body is still open.
		"/close-after-end": func(st *Stream) {
			if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
				t.Errorf("close-after-end: %v", err)
			}
			if _, err := st.Write(resetBody); err != nil {
				t.Errorf("close-after-end: %v", err)
			}
			if err := st.CloseWrite([]*tunnelv1.Header{header("x-done", "1")}); err != nil {
				t.Errorf("close-after-end: %v", err)
			}
			if err := st.Close(); err != nil {
				t.Errorf("close-after-end: Close: %v", err)
			}
			agentClosed <- struct{}{}
		},
	}
	p, _, _ := auditedPair(t, Config{Accept: routeAgent(t, routes)})

	open := func(t *testing.T, path string) *Stream {
		t.Helper()
		st, err := p.server.OpenStream(testCtx(t, 5*time.Second), &tunnelv1.RequestHead{Method: "POST", Path: path, ContentLength: -1})
		if err != nil {
			t.Fatalf("OpenStream: %v", err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	wantReset := func(t *testing.T, what string, err error, reason tunnelv1.ResetReason, remote bool) {
		t.Helper()
		re, ok := asReset(err)
		if !ok {
			t.Fatalf("%s: %v (%T), want a *ResetError", what, err, err)
		}
		if re.Reason != reason || re.Remote != remote {
			t.Errorf("%s: reset %v remote=%v, want %v remote=%v", what, re.Reason, re.Remote, reason, remote)
		}
	}

	t.Run("server reset reaches the agent", func(t *testing.T) {
		st := open(t, "/wait-for-reset")
		if _, err := st.Write([]byte("partial body")); err != nil {
			t.Fatalf("Write: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // let the agent start reading
		start := time.Now()
		st.Reset(tunnelv1.ResetReason_RESET_REASON_CANCEL, "visitor went away")
		var r agentResult
		select {
		case r = <-resetSeen:
		case <-time.After(2 * time.Second):
			t.Fatalf("agent never saw the reset")
		}
		if after := r.ctxDone.Sub(start); after > 100*time.Millisecond {
			t.Errorf("agent stream context ended %v after the reset, want within 100ms", after)
		}
		wantReset(t, "agent Read", r.readErr, tunnelv1.ResetReason_RESET_REASON_CANCEL, true)
		wantReset(t, "agent Write", r.writeErr, tunnelv1.ResetReason_RESET_REASON_CANCEL, true)
		if re, _ := asReset(r.readErr); re != nil && re.Message != "visitor went away" {
			t.Errorf("reset message %q did not cross", re.Message)
		}
		// The end that reset sees its own reset, marked local.
		_, err := st.Read(make([]byte, 1))
		wantReset(t, "server Read", err, tunnelv1.ResetReason_RESET_REASON_CANCEL, false)
		_, err = st.Write([]byte("x"))
		wantReset(t, "server Write", err, tunnelv1.ResetReason_RESET_REASON_CANCEL, false)
		if _, err := st.AwaitResponse(testCtx(t, time.Second)); err == nil {
			t.Errorf("AwaitResponse on a reset stream succeeded")
		}
	})

	t.Run("agent reset before the head", func(t *testing.T) {
		st := open(t, "/unreachable")
		_, err := st.AwaitResponse(testCtx(t, 2*time.Second))
		wantReset(t, "AwaitResponse", err, tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, true)
		if re, _ := asReset(err); re != nil && re.Message != "dial tcp 127.0.0.1:1: connection refused" {
			t.Errorf("reset message = %q", re.Message)
		}
		_, err = st.Read(make([]byte, 1))
		wantReset(t, "Read", err, tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, true)
	})

	t.Run("agent reset after the head cuts the body short", func(t *testing.T) {
		st := open(t, "/aborted")
		if _, err := st.AwaitResponse(testCtx(t, 2*time.Second)); err != nil {
			t.Fatalf("AwaitResponse: %v", err)
		}
		// Whatever part of the body arrives, the read must not look complete.
		_, err := io.ReadAll(st)
		wantReset(t, "ReadAll", err, tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, true)
	})

	t.Run("close after end keeps the response whole", func(t *testing.T) {
		st := open(t, "/close-after-end")
		<-agentClosed
		// The agent's reset follows its End: once the server forgot the stream, it has seen both, and
		// everything is still there to read.
		poll.Until(t, 2*time.Second, "the agent's reset to arrive", func() bool { return p.server.ActiveStreams() == 0 })
		if _, err := st.AwaitResponse(testCtx(t, time.Second)); err != nil {
			t.Fatalf("AwaitResponse: %v", err)
		}
		got, err := io.ReadAll(st)
		if err != nil || !bytes.Equal(got, resetBody) {
			t.Fatalf("read %d bytes (%v), want all %d sent before the reset", len(got), err, len(resetBody))
		}
		if v := headerValue(st.Trailers(), "x-done"); v != "1" {
			t.Errorf("trailers lost: %v", st.Trailers())
		}
		// The request direction, still open, was cut off.
		_, err = st.Write([]byte("more request"))
		wantReset(t, "Write", err, tunnelv1.ResetReason_RESET_REASON_CANCEL, true)
	})

	t.Run("reset is idempotent", func(t *testing.T) {
		st := open(t, "/unreachable")
		if _, err := st.AwaitResponse(testCtx(t, 2*time.Second)); err == nil {
			t.Fatalf("AwaitResponse succeeded")
		}
		st.Reset(tunnelv1.ResetReason_RESET_REASON_CANCEL, "again")
		_ = st.Close()
		_, err := st.Read(make([]byte, 1))
		wantReset(t, "Read", err, tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, true)
	})

	poll.Until(t, 2*time.Second, "all streams to be gone", func() bool {
		return p.server.ActiveStreams() == 0 && p.agent.ActiveStreams() == 0
	})
}

// TestResetReasons checks that every reason crosses the wire as sent, in both directions.
func TestResetReasons(t *testing.T) {
	leakCheck(t)
	reasons := []tunnelv1.ResetReason{
		tunnelv1.ResetReason_RESET_REASON_UNSPECIFIED,
		tunnelv1.ResetReason_RESET_REASON_CANCEL,
		tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE,
		tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED,
		tunnelv1.ResetReason_RESET_REASON_REFUSED,
		tunnelv1.ResetReason_RESET_REASON_TIMEOUT,
	}
	agentErr := make(chan error, 1)
	p := newHarness(t, harnessOptions{}).dial(Config{Accept: func(st *Stream) {
		if st.Request().Method == "AGENT-RESETS" {
			st.Reset(tunnelv1.ResetReason(st.Request().ContentLength), st.Request().Path)
			return
		}
		_, err := io.ReadAll(st)
		agentErr <- err
	}}, nil)
	for _, reason := range reasons {
		for _, agentResets := range []bool{true, false} {
			name := fmt.Sprintf("%v by agent=%v", reason, agentResets)
			t.Run(name, func(t *testing.T) {
				ctx := testCtx(t, 2*time.Second)
				method := "SERVER-RESETS"
				if agentResets {
					method = "AGENT-RESETS"
				}
				st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: method, Path: name, ContentLength: int64(reason)})
				if err != nil {
					t.Fatalf("OpenStream: %v", err)
				}
				if agentResets {
					_, err = st.AwaitResponse(ctx)
				} else {
					st.Reset(reason, name)
					select {
					case err = <-agentErr:
					case <-ctx.Done():
						t.Fatalf("agent never saw the reset")
					}
				}
				re, ok := asReset(err)
				if !ok || re.Reason != reason || re.Message != name || !re.Remote {
					t.Fatalf("got %v, want a remote reset %v %q", err, reason, name)
				}
			})
		}
	}
}

// TestConcurrentStreams runs 200 streams at once on one session, each with its own payload.
func TestConcurrentStreams(t *testing.T) {
	leakCheck(t)
	const streams = 200
	p, _, _ := auditedPair(t, Config{Accept: echoAgent(t)})
	ctx := testCtx(t, 20*time.Second)

	// OpenStream is serialized here: opened in parallel, heads can reach the agent out of order and be
	// refused (see TestConcurrentOpenStream in known_bugs_test.go).
	var openMu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				// Sizes cover empty, sub-chunk, multi-chunk and past-the-window bodies.
				size := (i * 7919) % (40 << 10)
				switch {
				case i%50 == 0:
					size = 0
				case i%10 == 0:
					size = DefaultInitialWindow + i
				}
				body := payload(uint64(1000+i), size)
				openMu.Lock()
				st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: fmt.Sprintf("/s/%d", i), ContentLength: int64(size), EndStream: size == 0})
				openMu.Unlock()
				if err != nil {
					return fmt.Errorf("stream %d: open: %w", i, err)
				}
				defer func() { _ = st.Close() }()
				if size > 0 {
					if _, err := st.Write(body); err != nil {
						return fmt.Errorf("stream %d: write: %w", i, err)
					}
					if err := st.CloseWrite(nil); err != nil {
						return fmt.Errorf("stream %d: close write: %w", i, err)
					}
				}
				resp, err := st.AwaitResponse(ctx)
				if err != nil {
					return fmt.Errorf("stream %d: await response: %w", i, err)
				}
				if got := headerValue(resp.Headers, "x-stream-id"); got != fmt.Sprint(st.ID()) {
					return fmt.Errorf("stream %d: response for stream %s on stream %d", i, got, st.ID())
				}
				got, err := io.ReadAll(st)
				if err != nil {
					return fmt.Errorf("stream %d: read: %w", i, err)
				}
				if !bytes.Equal(got, body) {
					return fmt.Errorf("stream %d: body of %d bytes differs from the %d sent", i, len(got), size)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	poll.Until(t, 2*time.Second, "all streams to end", func() bool {
		return p.server.ActiveStreams() == 0 && p.agent.ActiveStreams() == 0
	})
}
