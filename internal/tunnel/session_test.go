package tunnel

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"

	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// TestSessionDeath checks that when the tunnel dies, however it dies, every open stream fails on both
// ends (never a clean io.EOF), both Runs return and nothing is left behind.
func TestSessionDeath(t *testing.T) {
	leakCheck(t)
	errKilled := errors.New("killed by test")
	tests := []struct {
		name string
		kill func(h *harness, p *tunnelPair)
		// serverCause, if set, is what the server's Run and streams must report.
		serverCause error
	}{
		{"client connection closed", func(h *harness, _ *tunnelPair) { _ = h.cc.Close() }, nil},
		{"agent call cancelled", func(_ *harness, p *tunnelPair) { p.endCall() }, nil},
		{"server session closed", func(_ *harness, p *tunnelPair) { p.server.Close(errKilled) }, errKilled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const streams = 5
			agentErrs := make(chan error, streams)
			h := newHarness(t, harnessOptions{})
			p := h.dial(Config{Accept: func(st *Stream) {
				if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
					t.Errorf("agent: %v", err)
				}
				if _, err := st.Write([]byte("partial")); err != nil {
					t.Errorf("agent: %v", err)
				}
				_, err := io.ReadAll(st)
				agentErrs <- err
			}}, nil)
			ctx := testCtx(t, 5*time.Second)
			var open []*Stream
			for range streams {
				st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/", ContentLength: -1})
				if err != nil {
					t.Fatalf("OpenStream: %v", err)
				}
				if _, err := st.Write([]byte("request part")); err != nil {
					t.Fatalf("Write: %v", err)
				}
				if _, err := st.AwaitResponse(ctx); err != nil {
					t.Fatalf("AwaitResponse: %v", err)
				}
				if _, err := io.ReadFull(st, make([]byte, len("partial"))); err != nil {
					t.Fatalf("Read: %v", err)
				}
				open = append(open, st)
			}
			if got := p.server.ActiveStreams(); got != streams {
				t.Fatalf("server ActiveStreams = %d, want %d", got, streams)
			}
			poll.Until(t, time.Second, "agent to count its streams", func() bool { return p.agent.ActiveStreams() == streams })

			tc.kill(h, p)

			serverErr, ok := waitResult(p.serverDone, 2*time.Second)
			if !ok {
				t.Fatalf("server Run did not return")
			}
			if serverErr == nil || (tc.serverCause != nil && !errors.Is(serverErr, tc.serverCause)) {
				t.Errorf("server Run = %v, want an error (cause %v)", serverErr, tc.serverCause)
			}
			agentErr, ok := waitResult(p.agentDone, 2*time.Second)
			if !ok {
				t.Fatalf("agent Run did not return")
			}
			if agentErr == nil {
				t.Errorf("agent Run returned nil")
			}
			for _, st := range open {
				_, err := io.ReadAll(st)
				if err == nil || !errors.Is(err, ErrSessionClosed) {
					t.Errorf("server stream %d: ReadAll = %v, want an error wrapping ErrSessionClosed", st.ID(), err)
				}
				if tc.serverCause != nil && !errors.Is(err, tc.serverCause) {
					t.Errorf("server stream %d: %v does not carry the cause %v", st.ID(), err, tc.serverCause)
				}
				if _, err := st.Write([]byte("x")); err == nil {
					t.Errorf("server stream %d: Write on a dead session succeeded", st.ID())
				}
				if st.Context().Err() == nil {
					t.Errorf("server stream %d: context still live", st.ID())
				}
			}
			for range streams {
				if err := <-agentErrs; err == nil || !errors.Is(err, ErrSessionClosed) {
					t.Errorf("agent stream: ReadAll = %v, want an error wrapping ErrSessionClosed", err)
				}
			}
			if a, s := p.agent.ActiveStreams(), p.server.ActiveStreams(); a != 0 || s != 0 {
				t.Errorf("ActiveStreams after death: agent %d, server %d; want 0", a, s)
			}
			for _, sess := range []*Session{p.server, p.agent} {
				select {
				case <-sess.Done():
				default:
					t.Errorf("Done not closed")
				}
				if sess.Err() == nil {
					t.Errorf("Err() = nil after the session ended")
				}
			}
			if _, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{}); !errors.Is(err, ErrSessionClosed) {
				t.Errorf("OpenStream on a dead session = %v, want ErrSessionClosed", err)
			}
			if err := p.server.Wait(ctx); err != nil {
				t.Errorf("Wait on a dead session = %v", err)
			}
		})
	}
}

// idleConn is a FrameConn with nothing on the wire: Recv waits until it is closed.
type idleConn struct{ closed chan struct{} }

func (c idleConn) Send(*Frame) error { return nil }
func (c idleConn) Recv() (*Frame, error) {
	<-c.closed
	return nil, io.EOF
}

func TestSessionRunEndsWithContext(t *testing.T) {
	leakCheck(t)
	conn := idleConn{closed: make(chan struct{})}
	t.Cleanup(func() { close(conn.closed) })
	sess := NewSession(conn, Config{})
	cause := errors.New("shutting down")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- sess.Run(ctx) }()
	if err := sess.Err(); err != nil {
		t.Fatalf("Err() = %v while running", err)
	}
	cancel(cause)
	select {
	case err := <-done:
		if !errors.Is(err, cause) || !errors.Is(sess.Err(), cause) {
			t.Errorf("Run = %v, Err() = %v; want the context's cause %v", err, sess.Err(), cause)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("Run did not return after its context ended")
	}
}

// TestPing checks keepalive: a peer that answers keeps the tunnel up; a peer that stops reading is
// declared dead within a few intervals.
func TestPing(t *testing.T) {
	leakCheck(t)
	const interval = 50 * time.Millisecond
	tests := []struct {
		name string
		// serverPings: the server pings and the agent may go quiet; otherwise the reverse.
		serverPings bool
		mute        bool
	}{
		{"agent answers server pings", true, false},
		{"server answers agent pings", false, false},
		{"agent stops reading", true, true},
		{"server stops reading", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := harnessOptions{wrapServer: func(c FrameConn) FrameConn { return &swallowConn{FrameConn: c} }}
			agentCfg := Config{Accept: func(*Stream) {}}
			if tc.serverPings {
				opts.server.PingInterval = interval
			} else {
				agentCfg.PingInterval = interval
			}
			p := newHarness(t, opts).dial(agentCfg, func(c FrameConn) FrameConn { return &swallowConn{FrameConn: c} })
			pinger, pingerDone, quiet := p.server, p.serverDone, p.agentConn.(*swallowConn)
			if !tc.serverPings {
				pinger, pingerDone, quiet = p.agent, p.agentDone, p.serverConn.(*swallowConn)
			}
			if !tc.mute {
				if err, ended := waitResult(pingerDone, 10*interval); ended {
					t.Fatalf("tunnel with a live peer ended: %v", err)
				}
				if pinger.Err() != nil {
					t.Fatalf("Err() = %v", pinger.Err())
				}
				return
			}
			time.Sleep(2 * interval) // a few pings answered first
			start := time.Now()
			quiet.mute()
			err, ended := waitResult(pingerDone, 20*interval)
			if !ended {
				t.Fatalf("tunnel to a silent peer still up after %v", 20*interval)
			}
			elapsed := time.Since(start)
			t.Logf("declared dead after %v", elapsed)
			if !errors.Is(err, ErrTunnelDead) {
				t.Errorf("Run = %v, want ErrTunnelDead", err)
			}
			if elapsed < missedPings*interval-interval || elapsed > (missedPings+3)*interval {
				t.Errorf("declared dead after %v, want about %d intervals of %v", elapsed, missedPings+1, interval)
			}
		})
	}
}

// TestGoAway checks draining from either end: no new streams, streams in flight finish, Wait returns
// when they have.
func TestGoAway(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name        string
		serverSends bool
	}{
		{"server sends", true},
		{"agent sends", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			started, finish := make(chan struct{}), make(chan struct{})
			body := payload(9, 600<<10)
			agentGoAway, serverGoAway := make(chan string, 2), make(chan string, 2)
			agent := Config{
				OnGoAway: func(reason string) { agentGoAway <- reason },
				Accept: func(st *Stream) {
					close(started)
					<-finish
					if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
						t.Errorf("agent: %v", err)
					}
					if _, err := st.Write(body); err != nil {
						t.Errorf("agent: %v", err)
					}
					if err := st.CloseWrite(nil); err != nil {
						t.Errorf("agent: %v", err)
					}
				},
			}
			p := newHarness(t, harnessOptions{server: Config{OnGoAway: func(reason string) { serverGoAway <- reason }}}).dial(agent, nil)
			ctx := testCtx(t, 5*time.Second)
			inflight, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "GET", Path: "/slow", EndStream: true})
			if err != nil {
				t.Fatalf("OpenStream: %v", err)
			}
			t.Cleanup(func() { _ = inflight.Close() })
			// A head still on the wire when the agent goes away is refused (REFUSED, safe to retry
			// elsewhere); this stream is in flight only once the agent has it.
			<-started

			sender, heard := p.server, agentGoAway
			if !tc.serverSends {
				sender, heard = p.agent, serverGoAway
			}
			sender.GoAway("maintenance")
			sender.GoAway("maintenance again") // the peer hears of it once
			select {
			case r := <-heard:
				if r != "maintenance" {
					t.Errorf("OnGoAway reason = %q", r)
				}
			case <-ctx.Done():
				t.Fatalf("peer never heard GoAway")
			}
			if !p.server.Draining() || !p.agent.Draining() {
				t.Errorf("Draining: server %v, agent %v; want both", p.server.Draining(), p.agent.Draining())
			}
			if _, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Path: "/new"}); !errors.Is(err, ErrGoingAway) {
				t.Errorf("OpenStream while draining = %v, want ErrGoingAway", err)
			}

			waited := make(chan error, 1)
			go func() { waited <- p.server.Wait(ctx) }()
			select {
			case err := <-waited:
				t.Fatalf("Wait returned %v with a stream in flight", err)
			case <-time.After(100 * time.Millisecond):
			}
			short := testCtx(t, 30*time.Millisecond)
			if err := p.server.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Wait with a short context = %v, want DeadlineExceeded", err)
			}

			close(finish)
			if _, err := inflight.AwaitResponse(ctx); err != nil {
				t.Fatalf("in-flight stream: %v", err)
			}
			got, err := io.ReadAll(inflight)
			if err != nil || len(got) != len(body) {
				t.Fatalf("in-flight stream read %d bytes (%v), want %d", len(got), err, len(body))
			}
			select {
			case err := <-waited:
				if err != nil {
					t.Errorf("Wait = %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("Wait did not return after the last stream ended")
			}
			if p.server.Err() != nil || p.agent.Err() != nil {
				t.Errorf("draining ended the session: server %v, agent %v", p.server.Err(), p.agent.Err())
			}
			select {
			case r := <-heard:
				t.Errorf("OnGoAway called twice (%q)", r)
			default:
			}
		})
	}
}
