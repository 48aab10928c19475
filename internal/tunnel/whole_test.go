package tunnel

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// countFrames counts the frames an end sends.
type countFrames struct {
	FrameConn
	n atomic.Int64
}

func (c *countFrames) Send(f *Frame) error {
	c.n.Add(1)
	return c.FrameConn.Send(f)
}

// TestWholeResponse: a small response goes as one frame, head and body together, only to a peer that
// announced CapInlineBody; the server end reads it like any response.
func TestWholeResponse(t *testing.T) {
	leakCheck(t)
	body := bytes.Repeat([]byte("w"), 1000)
	for _, announced := range []bool{true, false} {
		var caps []string
		if announced {
			caps = []string{CapInlineBody}
		}
		var could atomic.Bool
		var wrapped *countFrames
		p := newHarness(t, harnessOptions{}).dial(Config{PeerCapabilities: caps, Accept: func(st *Stream) {
			defer st.Close()
			head := &tunnelv1.ResponseHead{Status: 200, ContentLength: int64(len(body))}
			if st.CanSendWholeResponse(len(body)) {
				could.Store(true)
				if err := st.SendWholeResponse(head, body); err != nil {
					t.Errorf("SendWholeResponse: %v", err)
				}
				return
			}
			if st.CanSendWholeResponse(InlineBodyMax+1) || st.SendWholeResponse(head, body) == nil {
				t.Errorf("a whole response was allowed (announced %v)", announced)
			}
			_ = st.SendResponse(head)
			_, _ = st.Write(body)
			_ = st.CloseWrite(nil)
		}}, func(c FrameConn) FrameConn { wrapped = &countFrames{FrameConn: c}; return wrapped })
		ctx := testCtx(t, 10*time.Second)
		st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "GET", Path: "/", EndStream: true})
		if err != nil {
			t.Fatal(err)
		}
		head, err := st.AwaitResponse(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(st)
		if err != nil || head.Status != 200 || !bytes.Equal(got, body) {
			t.Fatalf("announced %v: %d, %d bytes, %v", announced, head.Status, len(got), err)
		}
		_ = st.Close()
		if could.Load() != announced {
			t.Fatalf("CanSendWholeResponse = %v with the capability announced %v", could.Load(), announced)
		}
		want := int64(3) // head, data, end
		if announced {
			want = 1
		}
		if n := wrapped.n.Load(); n != want {
			t.Errorf("announced %v: the agent sent %d frames, want %d", announced, n, want)
		}
	}
}
