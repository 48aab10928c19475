// Package tunnel is the wire shared by the gateway and the agent: many logical streams over one
// OpenTunnel call, with per-stream credit, pings and GoAway, and the codec that carries their frames.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Frame is the unit both ends exchange.
type Frame = tunnelv1.TunnelFrame

// FrameConn is one OpenTunnel call seen from either end: grpc's client and server streams both fit.
type FrameConn interface {
	Send(*Frame) error
	Recv() (*Frame, error)
}

// Flow-control and framing constants. Both ends announce their initial window in Hello/Accepted,
// so these are defaults, not protocol constants.
const (
	// ChunkSize is the largest Data payload a stream sends. Every chunk costs a few goroutine
	// hand-offs on each end (reader, session, grpc's writer), which cost more than its bytes below
	// about 100 KiB; a bigger one would hold other streams' frames back for longer (128 KiB is
	// about 0.3 ms at 400 MB/s). Measured on a 1 GiB download, with the non-clearing pool: 32 →
	// 128 KiB took CPU per GB from 4.2 to 3.8 CPU-seconds (both ends).
	ChunkSize = 128 << 10
	// DefaultInitialWindow is the credit a new stream starts with in each direction.
	DefaultInitialWindow = 256 << 10
	// DefaultMaxWindow caps how far a stream's receive window grows: the memory bound per stream.
	DefaultMaxWindow = 4 << 20
	// missedPings is how many ping intervals may pass without a pong before the tunnel is dead.
	missedPings = 3
	// dataQueue bounds how many data frames wait for the sender; writers block (back-pressure) when full.
	// Two whole chunks (256 KiB) per busy tunnel: eight measured no faster (1 GiB both ways, four
	// alternations: 353 vs 340 and 332 vs 343 CPU ticks per GB), and a gateway holds one such queue
	// per tunnel its visitors upload through.
	dataQueue = 2
	// controlQueue bounds control frames; they are small and the sender prefers them.
	controlQueue = 256
)

// CapInlineBody: the server reads ResponseHead.body, a small response's whole body sent with its head.
const CapInlineBody = "inline-body"

// CapHealth: the server reads Health frames, the agent's state of its local targets per path prefix.
// An agent sends them only to a server that announced it (an older server would drop them unread, but
// not sending keeps its logs and its bytes clean).
const CapHealth = "health"

// CapRawStreams: the agent serves raw streams (RequestHead.mode TCP or TLS passthrough). The gateway
// opens none to an agent that did not announce it: an older agent would take one for an HTTP request.
const CapRawStreams = "raw-streams"

// InlineBodyMax is the largest body an agent sends with its response head. A head travels on the
// control queue, ahead of bulk data, so this stays small.
const InlineBodyMax = 16 << 10

var (
	// ErrSessionClosed is returned for work on a session that has ended.
	ErrSessionClosed = errors.New("tunnel session closed")
	// ErrGoingAway is returned by OpenStream once either end has sent GoAway.
	ErrGoingAway = errors.New("tunnel session is draining")
	// ErrPeerClosed means the peer ended the call.
	ErrPeerClosed = errors.New("tunnel peer closed the connection")
	// ErrTooManyStreams is returned by OpenStream when the session carries MaxStreams streams.
	ErrTooManyStreams = errors.New("tunnel carries its maximum number of streams")
	// ErrTunnelDead means the peer stopped answering pings.
	ErrTunnelDead = errors.New("tunnel peer stopped answering pings")
)

// Config sets up a Session.
type Config struct {
	// Accept is called in its own goroutine for every stream the peer opens (agent side).
	// Nil means the peer may not open streams (server side).
	Accept func(*Stream)
	// LocalWindow is the initial credit this end grants each stream; PeerWindow the credit the peer grants.
	LocalWindow, PeerWindow uint32
	// MaxWindow caps the receive window growth of a stream.
	MaxWindow uint32
	// MaxStreams caps concurrent streams (opened or accepted); 0 means no cap.
	MaxStreams int
	// PingInterval is how often this end pings; 0 disables pings from this end.
	PingInterval time.Duration
	// OnGoAway is called once when the peer sends GoAway.
	OnGoAway func(reason string)
	// OnHealth is called in the receiving loop for every Health frame the peer sends (server side); it
	// must not block. Nil drops them.
	OnHealth func(*tunnelv1.Health)
	// PeerCapabilities are what the peer announced it understands (CapInlineBody, …).
	PeerCapabilities []string
	// CountBody, when set, is told the size of every body payload sent (sent true) or received.
	CountBody func(sent bool, n int)
	Logger    *slog.Logger
}

// outFrame is a frame waiting for the sender: f, or a Data frame of stream id carrying (*buf)[:n],
// a pooled chunk the sender gives back (or hands to the connection) once it is sent. closeSend
// instead half-closes the call once everything queued before it is sent.
type outFrame struct {
	f         *Frame
	id        uint64
	buf       *[]byte
	n         int
	closeSend bool
}

// Session multiplexes logical streams over one FrameConn. One goroutine owns Send; the receiving
// loop never blocks on a stream, because a stream never receives more than the credit it granted.
type Session struct {
	conn FrameConn
	// pooled is conn when it carries Data payloads in pooled chunks (WrapGRPC), else nil.
	pooled pooledConn
	cfg    Config
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelCauseFunc

	// ctrl carries bare frames: control frames never hold a pooled buffer or a half-close, and a
	// pointer per slot keeps the queue a quarter of outFrame's size on every idle tunnel.
	ctrl chan *Frame
	data chan outFrame

	// openMu keeps stream ids and their heads in the same order on the wire: the agent refuses an id
	// lower than one it has seen.
	openMu   sync.Mutex
	mu       sync.Mutex
	streams  map[uint64]*Stream
	nextID   uint64
	goingAwy bool

	active atomic.Int64
	// queued counts frames handed to the sender and not yet through conn.Send: a stream stops being
	// active once its last frame is queued, and a drain must also wait for the queue to empty.
	queued     atomic.Int64
	sendClosed bool         // owned by the sender goroutine
	lastPong   atomic.Int64 // unix nano of the last frame heard from the peer
	pinger     atomic.Pointer[time.Timer]
	pingNonce  atomic.Uint64
	wg         sync.WaitGroup
}

// NewSession wraps conn. Call Run to start it.
func NewSession(conn FrameConn, cfg Config) *Session {
	if cfg.LocalWindow == 0 {
		cfg.LocalWindow = DefaultInitialWindow
	}
	if cfg.PeerWindow == 0 {
		cfg.PeerWindow = DefaultInitialWindow
	}
	if cfg.MaxWindow < cfg.LocalWindow {
		cfg.MaxWindow = max(DefaultMaxWindow, cfg.LocalWindow)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Session{
		conn:    conn,
		cfg:     cfg,
		log:     cfg.Logger,
		ctrl:    make(chan *Frame, controlQueue),
		data:    make(chan outFrame, dataQueue),
		streams: make(map[uint64]*Stream),
	}
	s.pooled, _ = conn.(pooledConn)
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.lastPong.Store(time.Now().UnixNano())
	return s
}

// Run serves the session until the connection fails, ctx ends or Close is called, then resets every
// open stream and waits for the streams it accepted. It returns the cause.
//
// Most tunnels sit idle, and a parked goroutine costs its stack (the largest part of an idle tunnel's
// memory on the gateway): Run's own goroutine is the sender, pings run from a timer, and only the
// receiver has a goroutine of its own.
func (s *Session) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.cancel(context.Cause(ctx)) })
	defer stop()

	if s.cfg.PingInterval > 0 {
		// Stored before it can fire: ping re-arms the timer it finds here.
		t := time.AfterFunc(math.MaxInt64, s.ping)
		s.pinger.Store(t)
		t.Reset(s.cfg.PingInterval)
	}
	// The receiver is not waited for: it returns once the call ends, which the caller ends next.
	go func() { s.cancel(s.recvLoop()) }()
	s.sendLoop()
	if t := s.pinger.Load(); t != nil {
		t.Stop()
	}

	err := context.Cause(s.ctx)
	s.resetAll(err)
	s.wg.Wait()
	return err
}

// OnDone calls f in its own goroutine once the session has ended; stop cancels that (false when f
// already started). It spares a goroutine that would only wait on Done.
func (s *Session) OnDone(f func()) (stop func() bool) { return context.AfterFunc(s.ctx, f) }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.ctx.Done() }

// Err is why the session ended, or nil while it runs.
func (s *Session) Err() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return context.Cause(s.ctx)
}

// Close ends the session at once; open streams see err.
func (s *Session) Close(err error) {
	if err == nil {
		err = ErrSessionClosed
	}
	s.cancel(err)
}

// LastHeard is when the last frame (of any kind, pongs included) came from the peer.
func (s *Session) LastHeard() time.Time { return time.Unix(0, s.lastPong.Load()) }

// ActiveStreams is the number of streams open now: the load measure for picking an agent.
func (s *Session) ActiveStreams() int { return int(s.active.Load()) }

// GoAway tells the peer that this end takes no new streams; streams in flight go on.
func (s *Session) GoAway(reason string) {
	s.mu.Lock()
	s.goingAwy = true
	s.mu.Unlock()
	_ = s.sendControl(&Frame{Kind: &tunnelv1.TunnelFrame_Goaway{Goaway: &tunnelv1.GoAway{Reason: reason}}})
}

// PeerHas reports whether the peer announced capability c.
func (s *Session) PeerHas(c string) bool { return slices.Contains(s.cfg.PeerCapabilities, c) }

// SendHealth queues a Health frame (agent side), waiting for room in the control queue until ctx ends.
func (s *Session) SendHealth(ctx context.Context, h *tunnelv1.Health) error {
	return s.sendControlCtx(ctx, &Frame{Kind: &tunnelv1.TunnelFrame_Health{Health: h}})
}

// Draining reports whether GoAway was sent or received.
func (s *Session) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.goingAwy
}

// Wait blocks until no stream is open and every queued frame has been sent, or ctx ends.
func (s *Session) Wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.ActiveStreams() > 0 || s.queued.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		}
	}
	return nil
}

// OpenStream starts a stream by sending head. Only the server opens streams.
func (s *Session) OpenStream(ctx context.Context, head *tunnelv1.RequestHead) (*Stream, error) {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return nil, s.closedErr()
	}
	if s.goingAwy {
		s.mu.Unlock()
		return nil, ErrGoingAway
	}
	if s.cfg.MaxStreams > 0 && len(s.streams) >= s.cfg.MaxStreams {
		s.mu.Unlock()
		return nil, ErrTooManyStreams
	}
	s.nextID++
	st := newStream(s, s.nextID)
	st.sendEnded = false
	s.streams[st.id] = st
	s.mu.Unlock()
	s.active.Add(1)

	if err := s.sendControlCtx(ctx, &Frame{StreamId: st.id, Kind: &tunnelv1.TunnelFrame_RequestHead{RequestHead: head}}); err != nil {
		st.abort(err)
		return nil, err
	}
	if head.EndStream {
		st.markSendEnded()
	}
	return st, nil
}

func (s *Session) closedErr() error {
	if err := context.Cause(s.ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	return ErrSessionClosed
}

// sendControl queues a control frame; control frames overtake data frames.
func (s *Session) sendControl(f *Frame) error { return s.sendControlCtx(context.Background(), f) }

func (s *Session) sendControlCtx(ctx context.Context, f *Frame) error {
	return enqueue(s, ctx, s.ctrl, f)
}

// sendData queues a data or end frame behind earlier data frames.
func (s *Session) sendData(ctx context.Context, of outFrame) error {
	return enqueue(s, ctx, s.data, of)
}

// enqueue hands v to the sender through q, counting it as queued until the sender has sent it.
func enqueue[T any](s *Session, ctx context.Context, q chan<- T, v T) error {
	s.queued.Add(1)
	select {
	case q <- v:
		return nil
	case <-s.ctx.Done():
		s.queued.Add(-1)
		return s.closedErr()
	case <-ctx.Done():
		s.queued.Add(-1)
		return ctx.Err()
	}
}

// CloseSend half-closes the call after every frame queued so far, which tells the peer, in order,
// that nothing more will come; frames queued later are discarded.
func (s *Session) CloseSend() {
	_ = s.sendData(context.Background(), outFrame{closeSend: true})
}

func (s *Session) sendLoop() {
	for {
		// Control frames first: window updates and heads must not wait behind bulk data.
		select {
		case f := <-s.ctrl:
			if !s.write(outFrame{f: f}) {
				return
			}
			continue
		default:
		}
		select {
		case f := <-s.ctrl:
			if !s.write(outFrame{f: f}) {
				return
			}
		case of := <-s.data:
			// A stream queues its head on ctrl before its data: drain ctrl so the head goes first.
			if !s.drainControl() || !s.write(of) {
				return
			}
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Session) drainControl() bool {
	for {
		select {
		case f := <-s.ctrl:
			if !s.write(outFrame{f: f}) {
				return false
			}
		default:
			return true
		}
	}
}

func (s *Session) write(of outFrame) bool {
	defer s.queued.Add(-1)
	var err error
	switch {
	case s.sendClosed:
	case of.closeSend:
		s.sendClosed = true
		if cs, ok := s.conn.(interface{ CloseSend() error }); ok {
			err = cs.CloseSend()
		}
	case of.buf != nil && s.pooled != nil:
		s.countBody(true, of.n)
		err = s.pooled.sendPooled(of.id, of.buf, of.n)
		of.buf = nil // the connection owns it now
	case of.buf != nil:
		s.countBody(true, of.n)
		err = s.conn.Send(&Frame{StreamId: of.id, Kind: &tunnelv1.TunnelFrame_Data{Data: &tunnelv1.Data{Payload: (*of.buf)[:of.n]}}})
	default:
		if h := of.f.GetResponseHead(); h != nil {
			s.countBody(true, len(h.Body))
		}
		err = s.conn.Send(of.f)
	}
	if of.buf != nil {
		putChunk(of.buf)
	}
	if err != nil {
		s.cancel(fmt.Errorf("send frame: %w", err))
		return false
	}
	return true
}

// ping runs from the pinger timer: one ping, then the next one interval later. The check does not
// depend on the sender, so a Send blocked on a frozen peer still ends the session.
func (s *Session) ping() {
	if s.ctx.Err() != nil {
		return
	}
	if time.Since(time.Unix(0, s.lastPong.Load())) > missedPings*s.cfg.PingInterval {
		s.cancel(ErrTunnelDead)
		return
	}
	nonce := s.pingNonce.Add(1)
	if s.sendControl(&Frame{Kind: &tunnelv1.TunnelFrame_Ping{Ping: &tunnelv1.Ping{Nonce: nonce}}}) != nil {
		return
	}
	s.pinger.Load().Reset(s.cfg.PingInterval)
}

func (s *Session) countBody(sent bool, n int) {
	if s.cfg.CountBody != nil && n > 0 {
		s.cfg.CountBody(sent, n)
	}
}

func (s *Session) recv() (*Frame, *[]byte, error) {
	if s.pooled != nil {
		return s.pooled.recvPooled()
	}
	f, err := s.conn.Recv()
	return f, nil, err
}

func (s *Session) recvLoop() error {
	for {
		f, chunk, err := s.recv()
		if err == io.EOF {
			// Not wrapped: a stream cut short by the call's end must never read as a clean io.EOF.
			return ErrPeerClosed
		}
		if err != nil {
			return fmt.Errorf("receive frame: %w", err)
		}
		// Any frame proves the peer alive; a busy tunnel needs no pong to stay up.
		s.lastPong.Store(time.Now().UnixNano())
		if err := s.dispatch(f, chunk); err != nil {
			return err
		}
	}
}

// dispatch hands f on; chunk, when not nil, holds f's Data payload and goes with it.
func (s *Session) dispatch(f *Frame, chunk *[]byte) error {
	switch k := f.Kind.(type) {
	case *tunnelv1.TunnelFrame_Ping:
		// Never block the receiving loop for a pong: if the control queue is full, the frames ahead of
		// it prove us alive just as well.
		s.queued.Add(1)
		select {
		case s.ctrl <- &Frame{Kind: &tunnelv1.TunnelFrame_Pong{Pong: &tunnelv1.Pong{Nonce: k.Ping.Nonce}}}:
		default:
			s.queued.Add(-1)
		}
		return nil
	case *tunnelv1.TunnelFrame_Pong:
		return nil
	case *tunnelv1.TunnelFrame_Goaway:
		s.mu.Lock()
		first := !s.goingAwy
		s.goingAwy = true
		s.mu.Unlock()
		if first && s.cfg.OnGoAway != nil {
			s.cfg.OnGoAway(k.Goaway.Reason)
		}
		return nil
	case *tunnelv1.TunnelFrame_Health:
		if s.cfg.OnHealth != nil {
			s.cfg.OnHealth(k.Health)
		}
		return nil
	case *tunnelv1.TunnelFrame_RequestHead:
		s.acceptStream(f.StreamId, k.RequestHead)
		return nil
	}
	st := s.stream(f.StreamId)
	if st == nil {
		// Frames for a stream that already ended cross a reset in flight: harmless, dropped by design.
		putChunk(chunk)
		return nil
	}
	switch k := f.Kind.(type) {
	case *tunnelv1.TunnelFrame_ResponseHead:
		st.deliverResponse(k.ResponseHead)
	case *tunnelv1.TunnelFrame_Data:
		s.countBody(false, len(k.Data.Payload))
		st.deliverData(k.Data.Payload, chunk)
	case *tunnelv1.TunnelFrame_End:
		st.deliverEnd(k.End.Trailers)
	case *tunnelv1.TunnelFrame_Reset_:
		st.deliverReset(k.Reset_.Reason, k.Reset_.Message)
	case *tunnelv1.TunnelFrame_WindowUpdate:
		st.addCredit(int64(k.WindowUpdate.Increment))
	default:
		return fmt.Errorf("unexpected frame %T on stream %d", f.Kind, f.StreamId)
	}
	return nil
}

func (s *Session) acceptStream(id uint64, head *tunnelv1.RequestHead) {
	s.mu.Lock()
	full := s.cfg.MaxStreams > 0 && len(s.streams) >= s.cfg.MaxStreams
	if s.ctx.Err() != nil || s.cfg.Accept == nil || s.goingAwy || full || s.streams[id] != nil || id <= s.nextID {
		s.mu.Unlock()
		_ = s.sendControl(resetFrame(id, tunnelv1.ResetReason_RESET_REASON_REFUSED, "stream refused"))
		return
	}
	s.nextID = id
	st := newStream(s, id)
	st.request = head
	if head.EndStream {
		st.recvEnded = true
	}
	s.streams[id] = st
	// Added under mu: Run cancels, then resets every stream under mu, then waits; a stream accepted
	// before that reset is counted before the wait starts.
	s.wg.Add(1)
	s.mu.Unlock()
	s.active.Add(1)
	go func() {
		defer s.wg.Done()
		s.cfg.Accept(st)
	}()
}

func (s *Session) stream(id uint64) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

func (s *Session) forget(id uint64) {
	s.mu.Lock()
	_, ok := s.streams[id]
	delete(s.streams, id)
	s.mu.Unlock()
	if ok {
		s.active.Add(-1)
	}
}

func (s *Session) resetAll(cause error) {
	s.mu.Lock()
	all := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		all = append(all, st)
	}
	s.mu.Unlock()
	for _, st := range all {
		st.abort(fmt.Errorf("%w: %w", ErrSessionClosed, cause))
	}
}

// RecvContext receives one frame, giving up when ctx ends. Recv has no deadline of its own: the
// goroutine left behind then ends when the call does, which the caller ends next.
func RecvContext(ctx context.Context, conn FrameConn) (*Frame, error) {
	type result struct {
		f   *Frame
		err error
	}
	ch := make(chan result, 1)
	go func() {
		f, err := conn.Recv()
		ch <- result{f, err}
	}()
	select {
	case r := <-ch:
		return r.f, r.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func resetFrame(id uint64, reason tunnelv1.ResetReason, msg string) *Frame {
	return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_Reset_{Reset_: &tunnelv1.Reset{Reason: reason, Message: msg}}}
}
