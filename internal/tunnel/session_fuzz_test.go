package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// FuzzSessionFrames plays a hostile or broken peer: the input is a sequence of length-prefixed
// (varint) TunnelFrame messages, fed to a Session in the agent role and, separately, to one in the
// server role. Nothing reads the streams while the frames arrive, so the credit every stream grants is
// exactly fuzzWindow and the outcome of every frame is decided by a small model of the protocol
// (fuzzModel). Checked:
//   - a stream never holds more than the credit it granted: a peer that sends more gets a
//     PROTOCOL_ERROR reset and its buffered data is dropped, never kept;
//   - every frame the session sends while the frames arrive is the one the model expects (REFUSED and
//     PROTOCOL_ERROR resets, pongs), and the session's streams are the model's, with the same bytes;
//   - a reader gets exactly the accepted bytes, then io.EOF only if the peer ended the stream; a stream
//     reset before its end, or cut short by the session's end, never reads as complete (never io.EOF);
//   - the session never sends more data on a stream than the peer credited;
//   - Run returns once the peer hangs up, and no goroutine is left behind.
func FuzzSessionFrames(f *testing.F) {
	for _, seed := range fuzzSessionSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		frames := decodeFrames(in)
		for _, role := range []fuzzRole{roleAgent, roleServer} {
			runSessionFuzz(t, role, frames)
		}
	})
}

const (
	// fuzzWindow is small so that a few frames can exceed a stream's credit.
	fuzzWindow     = 256
	fuzzPeerWindow = 128
	fuzzMaxStreams = 3
	fuzzMaxFrames  = 64
	fuzzWait       = 5 * time.Second
)

type fuzzRole int

const (
	roleAgent  fuzzRole = iota // Accept set: the peer opens streams
	roleServer                 // no Accept: this end opens fuzzServerStreams streams first
)

func (r fuzzRole) String() string {
	if r == roleAgent {
		return "agent"
	}
	return "server"
}

// fuzzServerStreams are the heads the server role opens before the peer's frames arrive (ids 1, 2, 3):
// stream 1 has no request body, so it completes as soon as its response does.
var fuzzServerStreams = []*tunnelv1.RequestHead{
	{Method: "GET", Path: "/1", EndStream: true},
	{Method: "POST", Path: "/2", ContentLength: -1},
	{Method: "POST", Path: "/3", ContentLength: -1},
}

// decodeFrames reads varint-length-prefixed TunnelFrames, skipping those that do not unmarshal.
func decodeFrames(in []byte) []*Frame {
	var frames []*Frame
	for len(in) > 0 && len(frames) < fuzzMaxFrames {
		b, n := protowire.ConsumeBytes(in)
		if n < 0 {
			break
		}
		in = in[n:]
		f := &Frame{}
		if proto.Unmarshal(b, f) != nil {
			continue
		}
		frames = append(frames, f)
	}
	return frames
}

func encodeFrames(frames ...*Frame) []byte {
	var out []byte
	for _, f := range frames {
		b, err := proto.Marshal(f)
		if err != nil {
			panic(err)
		}
		out = protowire.AppendBytes(out, b)
	}
	return out
}

// scriptConn is the peer: Recv hands out the script, then waits for hangup and reports io.EOF; Send
// records a copy of every frame (the session reuses data buffers once Send returns).
type scriptConn struct {
	script []*Frame
	next   int
	start  chan struct{} // closed when the peer may start talking
	fed    chan struct{} // closed when Recv is called after the last frame: all were dispatched
	once   sync.Once
	hangup chan struct{}

	mu   sync.Mutex
	sent []*Frame
}

func (c *scriptConn) Recv() (*Frame, error) {
	if c.next == 0 {
		<-c.start
	}
	if c.next < len(c.script) {
		f := c.script[c.next]
		c.next++
		return f, nil
	}
	c.once.Do(func() { close(c.fed) })
	<-c.hangup
	return nil, io.EOF
}

func (c *scriptConn) Send(f *Frame) error {
	c.mu.Lock()
	c.sent = append(c.sent, proto.Clone(f).(*Frame))
	c.mu.Unlock()
	return nil
}

func (c *scriptConn) sentFrames() []*Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Frame(nil), c.sent...)
}

// readResult is what one reader of a stream saw.
type readResult struct {
	id    uint64
	body  []byte
	err   error
	heads []uint32 // statuses AwaitResponse returned (server role)
}

func runSessionFuzz(t *testing.T, role fuzzRole, frames []*Frame) {
	t.Helper()
	leaks := goleak.IgnoreCurrent()
	conn := &scriptConn{script: frames, start: make(chan struct{}), fed: make(chan struct{}), hangup: make(chan struct{})}
	release := make(chan struct{})
	results := make(chan readResult, fuzzMaxFrames+len(fuzzServerStreams))
	var readers sync.WaitGroup
	var accepted sync.Map // id -> true, for streams Accept was called with

	cfg := Config{LocalWindow: fuzzWindow, PeerWindow: fuzzPeerWindow}
	if role == roleAgent {
		cfg.MaxStreams = fuzzMaxStreams
		cfg.Accept = func(st *Stream) {
			accepted.Store(st.ID(), true)
			<-release
			body, err := io.ReadAll(st)
			results <- readResult{id: st.ID(), body: body, err: err}
			if err != nil {
				_ = st.Close()
				return
			}
			// Echo: exercises the send side against the peer's (fuzzed) credit.
			if st.SendResponse(&tunnelv1.ResponseHead{Status: 200, ContentLength: int64(len(body))}) == nil {
				if _, err := st.Write(body); err == nil {
					_ = st.CloseWrite(nil)
				}
			}
			_ = st.Close()
		}
	}
	sess := NewSession(conn, cfg)
	runDone := make(chan error, 1)
	go func() { runDone <- sess.Run(context.Background()) }()

	var opened []*Stream
	if role == roleServer {
		for _, h := range fuzzServerStreams {
			st, err := sess.OpenStream(context.Background(), proto.Clone(h).(*tunnelv1.RequestHead))
			if err != nil {
				t.Fatalf("server: OpenStream: %v", err)
			}
			opened = append(opened, st)
		}
	}
	// The session's own frames (the heads just opened) are not the peer's doing.
	waitQueued(t, sess)
	base := len(conn.sentFrames())
	m := newFuzzModel(role)
	m.run(frames)
	close(conn.start)

	select {
	case <-conn.fed:
		if m.terminated {
			t.Fatalf("%s: session read past frame %d, which must end it (%s)", role, m.termFrame, m.termWhy)
		}
	case <-sess.Done():
		if !m.terminated {
			t.Fatalf("%s: session ended while the peer's frames arrived: %v", role, sess.Err())
		}
	case <-time.After(fuzzWait):
		t.Fatalf("%s: session did not take the peer's frames", role)
	}

	if !m.terminated {
		waitQueued(t, sess)
		m.checkSession(t, sess)
	}
	m.checkSent(t, conn.sentFrames()[base:])

	// Let the readers go: the agent's handlers, and one reader per stream on the server.
	if role == roleServer {
		for _, st := range opened {
			readers.Add(1)
			go func() {
				defer readers.Done()
				r := readResult{id: st.ID()}
				if ms := m.streams[st.ID()]; ms.hasFinal {
					ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
					for range len(ms.info) + 1 {
						h, err := st.AwaitResponse(ctx)
						if err != nil {
							r.heads = append(r.heads, 0)
							break
						}
						r.heads = append(r.heads, h.Status)
					}
					cancel()
				}
				r.body, r.err = io.ReadAll(st)
				results <- r
				_ = st.Close()
			}()
		}
	}
	close(release)

	// A stream whose fate is sealed (ended or reset) reads to its end without the peer's help.
	got := make(map[uint64]readResult)
	sealed := m.sealed()
	deadline := time.After(fuzzWait)
	for len(sealed) > 0 {
		select {
		case r := <-results:
			got[r.id] = r
			delete(sealed, r.id)
		case <-deadline:
			t.Fatalf("%s: readers of streams %v never finished", role, keys(sealed))
		}
	}

	close(conn.hangup)
	select {
	case err := <-runDone:
		if err == nil {
			t.Errorf("%s: Run returned nil after the peer hung up", role)
		}
	case <-time.After(fuzzWait):
		t.Fatalf("%s: Run did not return after the peer hung up", role)
	}
	readers.Wait()
	close(results)
	for r := range results {
		got[r.id] = r
	}
	if n := sess.ActiveStreams(); n != 0 {
		t.Errorf("%s: ActiveStreams = %d after Run returned", role, n)
	}

	accepted.Range(func(k, _ any) bool {
		if ms := m.streams[k.(uint64)]; ms == nil || !ms.accepted {
			t.Errorf("%s: stream %d was accepted; the model refused it", role, k)
		}
		return true
	})
	for id, ms := range m.streams {
		r, ok := got[id]
		if !ok {
			t.Errorf("%s: stream %d was never read", role, id)
			continue
		}
		ms.checkRead(t, role, r)
	}
	m.checkOutgoingCredit(t, conn.sentFrames())

	if err := goleak.Find(leaks); err != nil {
		t.Fatalf("%s: goroutines left behind: %v", role, err)
	}
}

func waitQueued(t *testing.T, s *Session) {
	t.Helper()
	deadline := time.Now().Add(fuzzWait)
	for s.queued.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the session never sent its queued frames")
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func keys[V any](m map[uint64]V) []uint64 {
	var out []uint64
	for k := range m {
		out = append(out, k)
	}
	return out
}

// fuzzModel is what the session must do with each frame while nothing reads its streams.
type fuzzModel struct {
	role      fuzzRole
	streams   map[uint64]*modelStream
	nextID    uint64
	goingAway bool
	// expected frames from the session, pongs aside, in order; pings those pongs may answer.
	want  []*Frame
	pings []uint64
	// terminated: the frame at termFrame ends the session (a frame kind that has no place on a stream).
	terminated bool
	termFrame  int
	termWhy    string
}

type modelStream struct {
	id        uint64
	accepted  bool // opened by the peer (agent role) or by this end (server role)
	live      bool // still in the session's table
	data      []byte
	ended     bool
	sendEnded bool
	// resetErr is set when the stream was aborted before its end: its data is gone.
	resetErr *ResetError
	hasFinal bool
	final    uint32
	info     []uint32
	credit   int64 // the send credit the peer gave
}

func newFuzzModel(role fuzzRole) *fuzzModel {
	m := &fuzzModel{role: role, streams: make(map[uint64]*modelStream)}
	if role == roleServer {
		for i, h := range fuzzServerStreams {
			id := uint64(i + 1)
			m.streams[id] = &modelStream{id: id, accepted: true, live: true, sendEnded: h.EndStream, credit: fuzzPeerWindow}
			m.nextID = id
		}
	}
	return m
}

func (m *fuzzModel) live() int {
	n := 0
	for _, s := range m.streams {
		if s.live {
			n++
		}
	}
	return n
}

func (m *fuzzModel) run(frames []*Frame) {
	for i, f := range frames {
		m.step(i, f)
		if m.terminated {
			return
		}
	}
}

func (m *fuzzModel) step(i int, f *Frame) {
	switch k := f.Kind.(type) {
	case *tunnelv1.TunnelFrame_Ping:
		m.pings = append(m.pings, k.Ping.Nonce)
		return
	case *tunnelv1.TunnelFrame_Pong:
		return
	case *tunnelv1.TunnelFrame_Goaway:
		m.goingAway = true
		return
	case *tunnelv1.TunnelFrame_RequestHead:
		id := f.StreamId
		existing := m.streams[id]
		if m.role == roleServer || m.goingAway || m.live() >= fuzzMaxStreams || (existing != nil && existing.live) || id <= m.nextID {
			m.want = append(m.want, resetFrame(id, tunnelv1.ResetReason_RESET_REASON_REFUSED, ""))
			return
		}
		m.nextID = id
		m.streams[id] = &modelStream{id: id, accepted: true, live: true, ended: k.RequestHead.EndStream, credit: fuzzPeerWindow}
		return
	}
	st := m.streams[f.StreamId]
	if st == nil || !st.live {
		return // frames for a stream that is gone (or never was) are dropped
	}
	switch k := f.Kind.(type) {
	case *tunnelv1.TunnelFrame_ResponseHead:
		switch {
		case st.ended:
			m.protocolError(st) // a head after the end
		case len(k.ResponseHead.Body) > 0 && (!k.ResponseHead.EndStream || Informational(k.ResponseHead)):
			m.protocolError(st) // an inline body must end the stream
		case Informational(k.ResponseHead):
			if len(st.info) < maxInformational {
				st.info = append(st.info, k.ResponseHead.Status)
			}
		case st.hasFinal:
			m.protocolError(st)
		default:
			st.hasFinal, st.final = true, k.ResponseHead.Status
			if body := k.ResponseHead.Body; len(body) > 0 {
				if len(st.data)+len(body) > fuzzWindow {
					m.protocolError(st)
					return
				}
				st.data = append(st.data, body...)
			}
			if k.ResponseHead.EndStream {
				st.end()
			}
		}
	case *tunnelv1.TunnelFrame_Data:
		if st.ended || len(st.data)+len(k.Data.Payload) > fuzzWindow {
			m.protocolError(st)
			return
		}
		st.data = append(st.data, k.Data.Payload...)
	case *tunnelv1.TunnelFrame_End:
		if st.ended {
			m.protocolError(st) // a second end
			return
		}
		st.end()
	case *tunnelv1.TunnelFrame_Reset_:
		st.abort(&ResetError{Reason: k.Reset_.Reason, Message: k.Reset_.Message, Remote: true})
	case *tunnelv1.TunnelFrame_WindowUpdate:
		st.credit += int64(k.WindowUpdate.Increment)
	default:
		m.terminated, m.termFrame, m.termWhy = true, i, fmt.Sprintf("%T on live stream %d", f.Kind, f.StreamId)
	}
}

func (m *fuzzModel) protocolError(st *modelStream) {
	m.want = append(m.want, resetFrame(st.id, tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR, ""))
	st.abort(&ResetError{Reason: tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR})
}

func (s *modelStream) end() {
	s.ended = true
	if s.sendEnded && len(s.data) == 0 {
		s.live = false // complete in both directions: forgotten without a reset
	}
}

func (s *modelStream) abort(err *ResetError) {
	s.live = false
	if !s.ended {
		s.resetErr = err
		s.data = nil
	}
}

// sealed lists the streams whose reader must finish before the peer hangs up.
func (m *fuzzModel) sealed() map[uint64]bool {
	out := make(map[uint64]bool)
	for id, s := range m.streams {
		if m.terminated || s.ended || s.resetErr != nil {
			out[id] = true
		}
	}
	return out
}

// checkSession compares the session's stream table with the model, after every frame was dispatched.
func (m *fuzzModel) checkSession(t *testing.T, s *Session) {
	t.Helper()
	s.mu.Lock()
	table := make(map[uint64]*Stream, len(s.streams))
	for id, st := range s.streams {
		table[id] = st
	}
	s.mu.Unlock()
	for id, ms := range m.streams {
		st, ok := table[id]
		if ok != ms.live {
			t.Errorf("%s: stream %d in the session's table: %v, model: %v", m.role, id, ok, ms.live)
			continue
		}
		if !ok {
			continue
		}
		st.mu.Lock()
		buffered, unacked, window, ended := st.buffered, st.unacked, st.window, st.recvEnded
		st.mu.Unlock()
		if buffered+unacked > window || window != fuzzWindow {
			t.Errorf("%s: stream %d buffers %d bytes (+%d unacked) against a window of %d; granted %d", m.role, id, buffered, unacked, window, fuzzWindow)
		}
		if buffered != int64(len(ms.data)) || ended != ms.ended {
			t.Errorf("%s: stream %d buffers %d bytes, ended %v; model: %d bytes, ended %v", m.role, id, buffered, ended, len(ms.data), ms.ended)
		}
	}
	for id := range table {
		if ms := m.streams[id]; ms == nil || !ms.live {
			t.Errorf("%s: session holds stream %d, which the model does not", m.role, id)
		}
	}
	if got, want := s.ActiveStreams(), m.live(); got != want {
		t.Errorf("%s: ActiveStreams = %d, model %d", m.role, got, want)
	}
}

// checkSent compares what the session sent while the peer's frames arrived with the model: the same
// resets in the same order (only a prefix if the session ended, as it sends nothing after), and
// pongs answering pings, in order (a pong may be dropped when the control queue is full).
func (m *fuzzModel) checkSent(t *testing.T, sent []*Frame) {
	t.Helper()
	var resets []*Frame
	pings := m.pings
	for _, f := range sent {
		switch k := f.Kind.(type) {
		case *tunnelv1.TunnelFrame_Pong:
			for len(pings) > 0 && pings[0] != k.Pong.Nonce {
				pings = pings[1:]
			}
			if len(pings) == 0 {
				t.Errorf("%s: pong %d answers no ping, or answers out of order", m.role, k.Pong.Nonce)
				continue
			}
			pings = pings[1:]
		case *tunnelv1.TunnelFrame_Reset_:
			resets = append(resets, f)
		default:
			t.Errorf("%s: sent %T on stream %d while no stream was read", m.role, f.Kind, f.StreamId)
		}
	}
	if len(resets) > len(m.want) || (!m.terminated && len(resets) != len(m.want)) {
		t.Errorf("%s: sent %d resets, model %d:\n got %v\nwant %v", m.role, len(resets), len(m.want), describe(resets), describe(m.want))
		return
	}
	for i, f := range resets {
		w := m.want[i]
		if f.StreamId != w.StreamId || f.GetReset_().GetReason() != w.GetReset_().GetReason() {
			t.Errorf("%s: reset %d: got %v, want %v", m.role, i, describe([]*Frame{f}), describe([]*Frame{w}))
		}
	}
}

func describe(fs []*Frame) string {
	var b bytes.Buffer
	for _, f := range fs {
		fmt.Fprintf(&b, "[%d %s] ", f.StreamId, f.GetReset_().GetReason())
	}
	return b.String()
}

// checkRead compares what a reader saw with the model.
func (s *modelStream) checkRead(t *testing.T, role fuzzRole, r readResult) {
	t.Helper()
	switch {
	case s.ended:
		if r.err != nil || !bytes.Equal(r.body, s.data) {
			t.Errorf("%s: stream %d ended with %d bytes; reader got %d bytes and %v", role, s.id, len(s.data), len(r.body), r.err)
		}
	case s.resetErr != nil:
		var re *ResetError
		if len(r.body) != 0 || !errors.As(r.err, &re) || re.Reason != s.resetErr.Reason || re.Remote != s.resetErr.Remote {
			t.Errorf("%s: stream %d was reset (%v); reader got %d bytes and %v", role, s.id, s.resetErr, len(r.body), r.err)
		}
	default:
		// Cut short by the session's end: whatever was read is a prefix, and it must not look complete.
		if r.err == nil || errors.Is(r.err, io.EOF) || !errors.Is(r.err, ErrSessionClosed) {
			t.Errorf("%s: stream %d cut short by the session's end; reader got %v, want ErrSessionClosed, never io.EOF", role, s.id, r.err)
		}
		if !bytes.HasPrefix(s.data, r.body) {
			t.Errorf("%s: stream %d: reader got %q, not a prefix of the %d bytes accepted", role, s.id, r.body, len(s.data))
		}
	}
	if role == roleServer && s.hasFinal {
		want := append(append([]uint32(nil), s.info...), s.final)
		if fmt.Sprint(r.heads) != fmt.Sprint(want) {
			t.Errorf("%s: stream %d: AwaitResponse gave statuses %v, want %v", role, s.id, r.heads, want)
		}
	}
}

// checkOutgoingCredit checks that the session never sent more data on a stream than the peer credited.
func (m *fuzzModel) checkOutgoingCredit(t *testing.T, sent []*Frame) {
	t.Helper()
	total := make(map[uint64]int64)
	for _, f := range sent {
		d, ok := f.Kind.(*tunnelv1.TunnelFrame_Data)
		if !ok {
			continue
		}
		if len(d.Data.Payload) > ChunkSize {
			t.Errorf("%s: stream %d: data frame of %d bytes", m.role, f.StreamId, len(d.Data.Payload))
		}
		total[f.StreamId] += int64(len(d.Data.Payload))
	}
	for id, n := range total {
		ms := m.streams[id]
		if ms == nil {
			t.Errorf("%s: sent data on stream %d, which never existed", m.role, id)
			continue
		}
		if n > ms.credit {
			t.Errorf("%s: stream %d: sent %d bytes against %d credited", m.role, id, n, ms.credit)
		}
	}
}

func fuzzSessionSeeds() [][]byte {
	head := func(id uint64, end bool) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_RequestHead{RequestHead: &tunnelv1.RequestHead{Method: "POST", Path: "/", ContentLength: -1, EndStream: end}}}
	}
	resp := func(id uint64, status uint32, end bool) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_ResponseHead{ResponseHead: &tunnelv1.ResponseHead{Status: status, EndStream: end}}}
	}
	whole := func(id uint64, status uint32, end bool, n int) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_ResponseHead{ResponseHead: &tunnelv1.ResponseHead{Status: status, EndStream: end, Body: bytes.Repeat([]byte{'b'}, n)}}}
	}
	data := func(id uint64, n int) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_Data{Data: &tunnelv1.Data{Payload: bytes.Repeat([]byte{'x'}, n)}}}
	}
	end := func(id uint64) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_End{End: &tunnelv1.End{Trailers: []*tunnelv1.Header{{Name: "x-t", Values: []string{"v"}}}}}}
	}
	reset := func(id uint64) *Frame {
		return resetFrame(id, tunnelv1.ResetReason_RESET_REASON_CANCEL, "bye")
	}
	window := func(id uint64, inc uint32) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_WindowUpdate{WindowUpdate: &tunnelv1.WindowUpdate{Increment: inc}}}
	}
	ping := &Frame{Kind: &tunnelv1.TunnelFrame_Ping{Ping: &tunnelv1.Ping{Nonce: 7}}}
	goaway := &Frame{Kind: &tunnelv1.TunnelFrame_Goaway{Goaway: &tunnelv1.GoAway{Reason: "drain"}}}
	hello := &Frame{StreamId: 2, Kind: &tunnelv1.TunnelFrame_Hello{Hello: &tunnelv1.Hello{Domain: "a.example.com"}}}
	return [][]byte{
		nil,
		[]byte("\x05garbage"),
		// A request with a body and trailers; a response on a server stream.
		encodeFrames(head(1, false), data(1, 5), window(1, 1000), end(1), resp(2, 200, false), data(2, 10), end(2)),
		// More data than the window: PROTOCOL_ERROR, on both roles (ids 1 and 2).
		encodeFrames(head(1, false), head(2, false), data(1, 200), data(1, 57), data(2, fuzzWindow), data(2, 1)),
		// Ids out of order, a duplicate, the stream cap, then GoAway.
		encodeFrames(head(5, true), head(3, true), head(5, true), head(6, false), head(7, false), head(8, false), goaway, head(9, false)),
		// Data after end, reset after end (data kept), reset before end (data dropped), pings.
		encodeFrames(ping, head(1, true), data(1, 1), head(2, false), data(2, 3), end(2), reset(2), head(3, false), data(3, 4), reset(3), ping),
		// Informational heads, a second final head, a head that ends the stream, late data.
		encodeFrames(resp(1, 100, false), resp(1, 103, false), resp(1, 200, true), data(1, 1), resp(2, 200, false), resp(2, 204, false), resp(3, 101, false)),
		// A second end, a head after the end (PROTOCOL_ERROR both), on both roles.
		encodeFrames(head(1, false), data(1, 2), end(1), end(1), resp(2, 200, false), end(2), resp(2, 200, false), head(3, true), resp(3, 103, false)),
		// Inline bodies: a whole response, one over the window, one without end, one on a 1xx.
		encodeFrames(whole(1, 200, true, 7), whole(3, 200, true, fuzzWindow+1), whole(5, 200, false, 3), whole(7, 103, true, 2)),
		// A handshake frame on a live stream ends the session.
		encodeFrames(head(2, false), data(2, 3), hello, data(2, 3)),
	}
}
