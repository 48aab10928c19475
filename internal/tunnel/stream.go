package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// ResetError is how a stream that was reset (by either end) fails.
type ResetError struct {
	Reason  tunnelv1.ResetReason
	Message string
	// Remote is true when the peer sent the reset.
	Remote bool
}

func (e *ResetError) Error() string {
	side := "local"
	if e.Remote {
		side = "peer"
	}
	if e.Message == "" {
		return fmt.Sprintf("stream reset by %s: %s", side, e.Reason)
	}
	return fmt.Sprintf("stream reset by %s: %s: %s", side, e.Reason, e.Message)
}

// maxInformational bounds the 1xx heads queued for one stream.
const maxInformational = 4

// recvBuf is received body bytes not yet read; chunk, when not nil, is the pooled buffer under p,
// given back once p is read.
type recvBuf struct {
	p     []byte
	chunk *[]byte
}

// Stream is one logical stream: a request and its response. Each direction has its own credit, so a
// stream whose reader is slow holds at most its window in memory and never blocks the session.
type Stream struct {
	id      uint64
	s       *Session
	ctx     context.Context
	cancel  context.CancelCauseFunc
	request *tunnelv1.RequestHead
	respCh  chan *tunnelv1.ResponseHead
	// info carries informational (1xx) heads ahead of the final one; final holds a final head that
	// AwaitResponse took while informational ones were still queued. Only the awaiting goroutine uses it.
	info  chan *tunnelv1.ResponseHead
	final *tunnelv1.ResponseHead

	readable chan struct{}
	credited chan struct{}

	mu sync.Mutex
	// Receive direction.
	recvQ     []recvBuf
	buffered  int64
	window    int64
	unacked   int64
	recvEnded bool
	trailers  []*tunnelv1.Header
	recvErr   error
	// Send direction.
	credit    int64
	sendEnded bool
	sendErr   error
	finished  bool
}

func newStream(s *Session, id uint64) *Stream {
	st := &Stream{
		id:       id,
		s:        s,
		respCh:   make(chan *tunnelv1.ResponseHead, 1),
		info:     make(chan *tunnelv1.ResponseHead, maxInformational),
		readable: make(chan struct{}, 1),
		credited: make(chan struct{}, 1),
		window:   int64(s.cfg.LocalWindow),
		credit:   int64(s.cfg.PeerWindow),
	}
	st.ctx, st.cancel = context.WithCancelCause(s.ctx)
	return st
}

// ID is the stream's number within its session.
func (st *Stream) ID() uint64 { return st.id }

// Context ends when the stream is reset or its session ends.
func (st *Stream) Context() context.Context { return st.ctx }

// Request is the head that opened the stream (agent side).
func (st *Stream) Request() *tunnelv1.RequestHead { return st.request }

// AwaitResponse waits for the peer's next response head (server side): informational (1xx, but 101)
// heads first, in order, then the final one.
func (st *Stream) AwaitResponse(ctx context.Context) (*tunnelv1.ResponseHead, error) {
	if h := st.final; h != nil {
		st.final = nil
		return h, nil
	}
	select {
	case h := <-st.info:
		return h, nil
	default:
	}
	select {
	case h := <-st.info:
		return h, nil
	case h := <-st.respCh:
		// Heads arrive in order, so informational ones queued before this final one go first.
		select {
		case i := <-st.info:
			st.final = h
			return i, nil
		default:
			return h, nil
		}
	case <-st.ctx.Done():
		select {
		case h := <-st.respCh:
			return h, nil
		default:
		}
		return nil, context.Cause(st.ctx)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Informational reports whether a response head is a 1xx that another head follows.
func Informational(h *tunnelv1.ResponseHead) bool {
	return h.Status >= 100 && h.Status < 200 && h.Status != 101
}

// SendResponse sends the response head (agent side).
func (st *Stream) SendResponse(head *tunnelv1.ResponseHead) error {
	if err := st.sendable(); err != nil {
		return err
	}
	if err := st.s.sendControlCtx(st.ctx, &Frame{StreamId: st.id, Kind: &tunnelv1.TunnelFrame_ResponseHead{ResponseHead: head}}); err != nil {
		return st.sendFailure(err)
	}
	if head.EndStream {
		st.markSendEnded()
	}
	return nil
}

// CanSendWholeResponse reports whether SendWholeResponse may carry a body of n bytes: the peer
// announced CapInlineBody and n is at most InlineBodyMax.
func (st *Stream) CanSendWholeResponse(n int) bool {
	return n <= InlineBodyMax && slices.Contains(st.s.cfg.PeerCapabilities, CapInlineBody)
}

// SendWholeResponse sends a final response head with its whole body in one frame and ends this
// direction: one frame instead of a head, a Data and an End. Check CanSendWholeResponse first.
func (st *Stream) SendWholeResponse(head *tunnelv1.ResponseHead, body []byte) error {
	if !st.CanSendWholeResponse(len(body)) || Informational(head) {
		return errors.New("tunnel: the peer does not take this response in one frame")
	}
	for got := 0; got < len(body); {
		more, err := st.acquire(len(body) - got)
		if err != nil {
			return err
		}
		got += more
	}
	head.Body, head.EndStream = body, true
	return st.SendResponse(head)
}

// Read reads the peer's body bytes. It returns io.EOF after the peer's End, and the reset error if the
// stream was reset before that: a cut-short body never looks complete.
func (st *Stream) Read(p []byte) (int, error) {
	for {
		st.mu.Lock()
		if st.recvErr != nil {
			err := st.recvErr
			st.mu.Unlock()
			return 0, err
		}
		if st.buffered > 0 {
			n := 0
			for n < len(p) && len(st.recvQ) > 0 {
				head := &st.recvQ[0]
				c := copy(p[n:], head.p)
				n += c
				if c < len(head.p) {
					head.p = head.p[c:]
					continue
				}
				putChunk(head.chunk)
				*head = recvBuf{}
				st.recvQ = st.recvQ[1:]
			}
			st.buffered -= int64(n)
			inc := st.consumed(int64(n))
			st.mu.Unlock()
			if inc > 0 {
				_ = st.s.sendControl(&Frame{StreamId: st.id, Kind: &tunnelv1.TunnelFrame_WindowUpdate{WindowUpdate: &tunnelv1.WindowUpdate{Increment: uint32(inc)}}})
			}
			return n, nil
		}
		if st.recvEnded {
			st.mu.Unlock()
			st.maybeFinish()
			return 0, io.EOF
		}
		st.mu.Unlock()
		select {
		case <-st.readable:
		case <-st.ctx.Done():
			// Normally abort has set recvErr before the context ends; this covers a session that
			// ended without reaching the stream, so a reader can never wait forever.
			st.mu.Lock()
			stuck := st.recvErr == nil && st.buffered == 0 && !st.recvEnded
			st.mu.Unlock()
			if stuck {
				st.abort(fmt.Errorf("%w: %w", ErrSessionClosed, context.Cause(st.ctx)))
			}
		}
	}
}

// consumed accounts for n bytes read and returns the credit to grant back, if it is time to.
// The window doubles while the reader keeps up (little left buffered), so fast streams reach full
// speed and slow ones stay small. Called with st.mu held.
func (st *Stream) consumed(n int64) int64 {
	st.unacked += n
	if st.recvEnded || st.unacked < st.window/2 {
		return 0
	}
	inc := st.unacked
	st.unacked = 0
	if maxW := int64(st.s.cfg.MaxWindow); st.buffered < st.window/4 && st.window < maxW {
		grow := min(st.window, maxW-st.window)
		st.window += grow
		inc += grow
	}
	return inc
}

// Trailers returns the peer's trailers; valid after Read returned io.EOF.
func (st *Stream) Trailers() []*tunnelv1.Header {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.trailers
}

// Write sends p as data, waiting for credit. It copies p, so p may be reused on return.
func (st *Stream) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		n, err := st.acquire(min(len(p)-written, ChunkSize))
		if err != nil {
			return written, err
		}
		buf := buffers.Get(n)
		copy(*buf, p[written:written+n])
		if err := st.sendChunk(buf, n); err != nil {
			return written, err
		}
		written += n
	}
	return written, nil
}

// ReadFrom sends everything r yields until io.EOF, reading straight into pooled frame buffers and
// never reading more than the peer has credited (back-pressure reaches r).
//
// A read holds its buffer while it waits, and an event stream waits most of the time: reads start at
// minReadSize and double while they come back full, up to ChunkSize, and halve when they come back
// small. A bulk body reaches whole chunks after a few reads; an event stream keeps a small buffer.
func (st *Stream) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	size := minReadSize
	for {
		want, err := st.acquire(size)
		if err != nil {
			return total, err
		}
		buf := buffers.Get(want)
		n, rerr := r.Read(*buf)
		if n < want {
			st.refund(int64(want - n))
		}
		// Credit may cut a read short; only the reader's own short reads say the body is slow.
		switch {
		case n == want && want == size:
			size = min(2*size, ChunkSize)
		case n < want && n < size/4:
			size = max(size/2, minReadSize)
		}
		if n > 0 {
			if err := st.sendChunk(buf, n); err != nil {
				return total, err
			}
			total += int64(n)
		} else {
			putChunk(buf)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// minReadSize is where ReadFrom's reads start: the size of a typical small body.
const minReadSize = 16 << 10

// CloseWrite ends this end's direction, sending trailers if any.
func (st *Stream) CloseWrite(trailers []*tunnelv1.Header) error {
	if err := st.sendable(); err != nil {
		return err
	}
	f := &Frame{StreamId: st.id, Kind: &tunnelv1.TunnelFrame_End{End: &tunnelv1.End{Trailers: trailers}}}
	if err := st.s.sendData(st.ctx, outFrame{f: f}); err != nil {
		return st.sendFailure(err)
	}
	st.markSendEnded()
	return nil
}

// Reset aborts the stream in both directions and tells the peer why.
func (st *Stream) Reset(reason tunnelv1.ResetReason, msg string) {
	st.mu.Lock()
	if st.finished {
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	_ = st.s.sendControl(resetFrame(st.id, reason, msg))
	st.abort(&ResetError{Reason: reason, Message: msg})
}

// Close releases the stream: a stream not yet complete in both directions is reset (cancel).
// When this end's direction already ended, the reset is queued behind its data, so the peer still
// reads everything that was sent before it learns that the rest of its own body is unwanted.
func (st *Stream) Close() error {
	st.mu.Lock()
	finished, sendEnded := st.finished, st.sendEnded
	st.mu.Unlock()
	if finished {
		return nil
	}
	if !sendEnded {
		st.Reset(tunnelv1.ResetReason_RESET_REASON_CANCEL, "closed")
		return nil
	}
	f := resetFrame(st.id, tunnelv1.ResetReason_RESET_REASON_CANCEL, "closed")
	_ = st.s.sendData(context.Background(), outFrame{f: f})
	st.abort(&ResetError{Reason: tunnelv1.ResetReason_RESET_REASON_CANCEL, Message: "closed"})
	return nil
}

func (st *Stream) sendChunk(buf *[]byte, n int) error {
	if err := st.s.sendData(st.ctx, outFrame{id: st.id, buf: buf, n: n}); err != nil {
		putChunk(buf)
		return st.sendFailure(err)
	}
	return nil
}

// acquire takes up to want bytes of send credit, waiting until there is some.
func (st *Stream) acquire(want int) (int, error) {
	for {
		st.mu.Lock()
		if st.sendErr != nil {
			err := st.sendErr
			st.mu.Unlock()
			return 0, err
		}
		if st.sendEnded {
			st.mu.Unlock()
			return 0, errors.New("write after CloseWrite")
		}
		if st.credit > 0 {
			n := int(min(int64(want), st.credit))
			st.credit -= int64(n)
			st.mu.Unlock()
			return n, nil
		}
		st.mu.Unlock()
		select {
		case <-st.credited:
		case <-st.ctx.Done():
			return 0, st.sendFailure(context.Cause(st.ctx))
		}
	}
}

func (st *Stream) refund(n int64) {
	st.mu.Lock()
	st.credit += n
	st.mu.Unlock()
}

func (st *Stream) sendable() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.sendErr != nil {
		return st.sendErr
	}
	if st.sendEnded {
		return errors.New("write after CloseWrite")
	}
	return nil
}

// sendFailure prefers the stream's own reset error over a generic context error.
func (st *Stream) sendFailure(err error) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.sendErr != nil {
		return st.sendErr
	}
	return err
}

func (st *Stream) markSendEnded() {
	st.mu.Lock()
	st.sendEnded = true
	st.mu.Unlock()
	st.maybeFinish()
}

// maybeFinish forgets the stream once both directions are complete.
func (st *Stream) maybeFinish() {
	st.mu.Lock()
	done := !st.finished && st.sendEnded && st.recvEnded && st.buffered == 0
	if done {
		st.finished = true
	}
	st.mu.Unlock()
	if done {
		st.s.forget(st.id)
		st.cancel(context.Canceled)
	}
}

// abort fails the stream locally. A direction already complete keeps what it has: a response that
// arrived whole is still read whole even if the stream is reset afterwards.
func (st *Stream) abort(err error) {
	st.mu.Lock()
	if st.finished {
		st.mu.Unlock()
		return
	}
	st.finished = true
	if st.sendErr == nil {
		st.sendErr = err
	}
	if !st.recvEnded && st.recvErr == nil {
		st.recvErr = err
		st.recvQ = nil
		st.buffered = 0
	}
	st.mu.Unlock()
	st.s.forget(st.id)
	st.cancel(err)
	notify(st.readable)
	notify(st.credited)
}

func (st *Stream) deliverResponse(h *tunnelv1.ResponseHead) {
	st.mu.Lock()
	ended, failed := st.recvEnded, st.recvErr != nil
	st.mu.Unlock()
	if failed {
		return
	}
	if ended {
		// A head after the body's end would be read by nobody, or worse, as a new response.
		st.protocolError("response head after end")
		return
	}
	if len(h.Body) > 0 && (!h.EndStream || Informational(h)) {
		st.protocolError("inline body without end of stream")
		return
	}
	if Informational(h) {
		// Informational heads beyond the queue are dropped: HTTP lets a proxy drop 1xx responses,
		// and the receiving loop must not wait for a slow awaiter.
		select {
		case st.info <- h:
		default:
		}
		return
	}
	select {
	case st.respCh <- h:
	default:
		st.protocolError("second response head")
		return
	}
	if h.EndStream {
		if len(h.Body) > 0 {
			st.deliverData(h.Body, nil)
		}
		st.deliverEnd(nil)
	}
}

// deliverData queues p for the reader; chunk, when not nil, is the pooled buffer under p.
func (st *Stream) deliverData(p []byte, chunk *[]byte) {
	st.mu.Lock()
	if st.recvEnded || st.recvErr != nil {
		afterEnd := st.recvErr == nil
		st.mu.Unlock()
		putChunk(chunk)
		if afterEnd {
			st.protocolError("data after end")
		}
		return
	}
	if st.buffered+st.unacked+int64(len(p)) > st.window {
		st.mu.Unlock()
		putChunk(chunk)
		st.protocolError("peer exceeded its flow-control credit")
		return
	}
	st.recvQ = append(st.recvQ, recvBuf{p: p, chunk: chunk})
	st.buffered += int64(len(p))
	st.mu.Unlock()
	notify(st.readable)
}

func (st *Stream) deliverEnd(trailers []*tunnelv1.Header) {
	st.mu.Lock()
	if st.recvEnded || st.recvErr != nil {
		second := st.recvErr == nil
		st.mu.Unlock()
		if second {
			// It would replace trailers already handed on.
			st.protocolError("second end")
		}
		return
	}
	st.recvEnded = true
	st.trailers = trailers
	st.mu.Unlock()
	notify(st.readable)
	st.maybeFinish()
}

func (st *Stream) deliverReset(reason tunnelv1.ResetReason, msg string) {
	st.abort(&ResetError{Reason: reason, Message: msg, Remote: true})
}

func (st *Stream) addCredit(n int64) {
	st.mu.Lock()
	st.credit += n
	st.mu.Unlock()
	notify(st.credited)
}

func (st *Stream) protocolError(msg string) {
	_ = st.s.sendControl(resetFrame(st.id, tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR, msg))
	st.abort(&ResetError{Reason: tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR, Message: msg})
}

// notify wakes a waiter without blocking; a pending wake-up already covers this one.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
