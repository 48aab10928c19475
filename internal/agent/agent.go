// Package agent keeps an agent's tunnel to the gateway up: it dials, says hello, serves streams and
// reconnects with jittered exponential backoff until it is told to stop or the gateway refuses it.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jpillora/backoff"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// ErrRefused means the gateway will not take this agent (unknown domain, wrong key): retrying cannot help.
var ErrRefused = errors.New("gateway refused the tunnel")

// Options describe the agent.
type Options struct {
	ServerAddr string
	Domain     string
	APIKey     string
	AgentID    string
	Version    string
	// Target is only shown in logs.
	Target string
	TLS    *tls.Config
	// PingInterval is how often the agent pings; the tunnel is dead after three silent intervals.
	PingInterval time.Duration
	// DrainTimeout bounds how long a stop waits for streams in flight.
	DrainTimeout time.Duration
	// Serve handles one stream (a request from a visitor).
	Serve func(*tunnel.Stream)
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 1 s and 60 s).
	MinBackoff, MaxBackoff time.Duration
	// HealthyAfter is how long a tunnel must stay up for the backoff to start over (default 30 s).
	HealthyAfter time.Duration
	// OnUp is called each time a tunnel is accepted.
	OnUp   func(publicURL string)
	Logger *slog.Logger
}

// Run keeps the tunnel up until ctx ends (then drains and returns nil) or the gateway refuses the
// agent (returns an error wrapping ErrRefused).
func Run(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.HealthyAfter <= 0 {
		o.HealthyAfter = 30 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	// Full jitter between the floor and the exponential step spreads a fleet's reconnects after an outage.
	b := &backoff.Backoff{Min: o.MinBackoff, Max: o.MaxBackoff, Factor: 2, Jitter: true}
	for {
		start := time.Now()
		up, err := runOnce(ctx, o)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRefused) {
			return err
		}
		if up && time.Since(start) >= o.HealthyAfter {
			b.Reset()
		}
		delay := b.Duration()
		if errors.Is(err, tunnel.ErrGoingAway) {
			// The gateway is draining for a restart: come back quickly, not after a long backoff.
			b.Reset()
			delay = b.Duration()
		}
		o.Logger.Warn("tunnel down, reconnecting", "reason", err, "retry_in", delay.Round(time.Millisecond), "attempt", int(b.Attempt()))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// runOnce dials, authenticates and serves one tunnel. up reports whether the gateway accepted it.
func runOnce(ctx context.Context, o Options) (up bool, err error) {
	conn, err := grpc.NewClient(o.ServerAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(o.TLS)),
	)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", o.ServerAddr, err)
	}
	defer conn.Close()

	// The call lives on its own context so that a stop can drain streams before the call ends.
	callCtx, cancelCall := context.WithCancel(context.Background())
	defer cancelCall()
	stream, err := tunnelv1.NewTunnelServiceClient(conn).OpenTunnel(callCtx)
	if err != nil {
		return false, classify(err)
	}
	hello := &tunnelv1.Hello{
		Domain:        o.Domain,
		ApiKey:        o.APIKey,
		AgentId:       o.AgentID,
		Version:       o.Version,
		InitialWindow: tunnel.DefaultInitialWindow,
	}
	if err := stream.Send(&tunnelv1.TunnelFrame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: hello}}); err != nil {
		return false, classify(err)
	}
	first, err := recvWithContext(ctx, stream)
	if err != nil {
		return false, classify(err)
	}
	acc := first.GetAccepted()
	if acc == nil {
		return false, fmt.Errorf("gateway answered hello with %T", first.Kind)
	}

	goAway := make(chan struct{})
	sess := tunnel.NewSession(stream, tunnel.Config{
		Accept:       o.Serve,
		LocalWindow:  tunnel.DefaultInitialWindow,
		PeerWindow:   acc.InitialWindow,
		PingInterval: o.PingInterval,
		OnGoAway:     func(string) { close(goAway) },
		Logger:       o.Logger,
	})
	o.Logger.Info("tunnel up", "url", acc.PublicUrl, "target", o.Target, "server", o.ServerAddr, "session", acc.SessionId)
	if o.OnUp != nil {
		o.OnUp(acc.PublicUrl)
	}

	runErr := make(chan error, 1)
	go func() { runErr <- sess.Run(callCtx) }()
	go func() {
		// A dead session (missed pings) must end the call: a Send blocked on a frozen gateway only
		// returns when the call's context ends.
		<-sess.Done()
		cancelCall()
	}()
	select {
	case err := <-runErr:
		return true, classify(err)
	case <-goAway:
		// Finish what is in flight, then reconnect (to the restarted or another gateway).
		drain(sess, runErr, o.DrainTimeout)
		return true, tunnel.ErrGoingAway
	case <-ctx.Done():
		sess.GoAway("agent shutting down")
		drain(sess, runErr, o.DrainTimeout)
		return true, nil
	}
}

// drain lets the streams in flight finish and their last frames go out, then half-closes the call
// and waits for the gateway to end it: cancelling the call instead could drop frames still buffered
// in gRPC. The whole drain is bounded by timeout.
func drain(sess *tunnel.Session, runErr <-chan error, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = sess.Wait(ctx)
	sess.CloseSend()
	select {
	case <-runErr:
		return
	case <-ctx.Done():
	}
	sess.Close(tunnel.ErrGoingAway)
	<-runErr
}

func recvWithContext(ctx context.Context, stream tunnel.FrameConn) (*tunnelv1.TunnelFrame, error) {
	type result struct {
		f   *tunnelv1.TunnelFrame
		err error
	}
	ch := make(chan result, 1)
	go func() {
		f, err := stream.Recv()
		ch <- result{f, err}
	}()
	select {
	case r := <-ch:
		return r.f, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// classify marks the answers that retrying cannot change.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var st interface{ GRPCStatus() *status.Status }
	if errors.As(err, &st) {
		switch st.GRPCStatus().Code() {
		case codes.Unauthenticated, codes.PermissionDenied:
			return fmt.Errorf("%w: %s", ErrRefused, st.GRPCStatus().Message())
		}
	}
	return err
}
