// Package tunneltest runs both ends of a tunnel in memory, for the tests of the packages built on it
// (the hub, the proxy): real sessions and streams, with channels instead of a gRPC call.
package tunneltest

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hopgate/hopgate/internal/tunnel"
)

// conn is one end of an in-memory tunnel call. Frames are cloned on the way, as a real connection
// would serialize them, so a sender may reuse what it sent (pooled body chunks).
type conn struct {
	in   <-chan *tunnel.Frame
	out  chan<- *tunnel.Frame
	done <-chan struct{}
}

func (c *conn) Send(f *tunnel.Frame) error {
	select {
	case c.out <- proto.Clone(f).(*tunnel.Frame):
		return nil
	case <-c.done:
		return io.EOF
	}
}

func (c *conn) Recv() (*tunnel.Frame, error) {
	select {
	case f := <-c.in:
		return f, nil
	case <-c.done:
		return nil, io.EOF
	}
}

// Pair is both ends of one in-memory tunnel.
type Pair struct {
	// Server opens streams; Agent serves them with the accept func given to NewPair.
	Server, Agent *tunnel.Session
	// ServerDone receives the result of the server session's Run (and keeps it for later reads).
	ServerDone chan error
}

// NewPair runs a server session and an agent session (whose streams run accept; nil refuses them, as
// a draining agent does) until the test ends.
func NewPair(t testing.TB, accept func(*tunnel.Stream)) *Pair {
	t.Helper()
	a, b := make(chan *tunnel.Frame, 64), make(chan *tunnel.Frame, 64)
	done := make(chan struct{})
	p := &Pair{
		Server: tunnel.NewSession(&conn{in: a, out: b, done: done}, tunnel.Config{
			LocalWindow: tunnel.DefaultInitialWindow, PeerWindow: tunnel.DefaultInitialWindow}),
		Agent: tunnel.NewSession(&conn{in: b, out: a, done: done}, tunnel.Config{
			Accept: accept, LocalWindow: tunnel.DefaultInitialWindow, PeerWindow: tunnel.DefaultInitialWindow}),
		ServerDone: make(chan error, 1),
	}
	agentDone := make(chan error, 1)
	go func() { p.ServerDone <- p.Server.Run(context.Background()) }()
	go func() { agentDone <- p.Agent.Run(context.Background()) }()
	t.Cleanup(func() {
		p.Server.Close(nil)
		p.Agent.Close(nil)
		close(done)
		for _, ch := range []chan error{p.ServerDone, agentDone} {
			select {
			case err := <-ch:
				ch <- err
			case <-time.After(5 * time.Second):
				t.Errorf("a session of the in-memory tunnel did not end")
			}
		}
	})
	return p
}
