package h1guard

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// feedAll runs the parser over raw in pieces of at most step bytes and returns the heads it saw.
func feedAll(raw string, step int) []Head {
	var heads []Head
	p := parser{emit: func(h Head) { heads = append(heads, h) }}
	for len(raw) > 0 {
		k := min(step, len(raw))
		p.feed([]byte(raw[:k]))
		raw = raw[k:]
	}
	return heads
}

const (
	getReq      = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	postCL      = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nGET /no HTTP"
	postChunk   = "POST /c?q=1 HTTP/1.1\r\nHost: x\r\ntransfer-encoding: Chunked\r\n\r\n5;ext=1\r\nGET /\r\n1b\r\nPOST /no HTTP/1.1\r\nX: y\r\n\r\n\r\n0\r\nTrailer: t\r\n\r\n"
	ambiguous   = "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	http10TE    = "POST /e HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
	leadingCRLF = "\r\n\r\nGET /f HTTP/1.1\r\nHost: x\r\n\r\n"
)

func TestParserHeads(t *testing.T) {
	raw := getReq + postCL + postChunk + http10TE + leadingCRLF + ambiguous + getReq
	want := []Head{
		{Method: "GET", Target: "/a"},
		{Method: "POST", Target: "/b"},
		{Method: "POST", Target: "/c?q=1"},
		{Method: "POST", Target: "/e"},
		{Method: "GET", Target: "/f"},
		{Method: "POST", Target: "/d", Ambiguous: true},
		// after an ambiguous head the connection is closed: nothing more is read
	}
	for _, step := range []int{1, 2, 3, 7, 64, len(raw)} {
		if got := feedAll(raw, step); !reflect.DeepEqual(got, want) {
			t.Errorf("step %d:\n got %+v\nwant %+v", step, got, want)
		}
	}
}

func TestParserGivesUp(t *testing.T) {
	for name, raw := range map[string]string{
		"upgrade":          "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n" + ambiguous,
		"connect":          "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n" + ambiguous,
		"unknown coding":   "POST /g HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" + ambiguous,
		"two codings":      "POST /g HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + ambiguous,
		"bad length":       "POST /g HTTP/1.1\r\nContent-Length: +6\r\n\r\n" + ambiguous,
		"two lengths":      "POST /g HTTP/1.1\r\nContent-Length: 6\r\nContent-Length: 6\r\n\r\n" + ambiguous,
		"bad chunk size":   "POST /g HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + ambiguous,
		"not a request":    "\x16\x03\x01 hello\r\n" + ambiguous,
		"huge header line": "GET /g HTTP/1.1\r\nX: " + strings.Repeat("a", maxLine) + "\r\n\r\n" + ambiguous,
	} {
		t.Run(name, func(t *testing.T) {
			for _, h := range feedAll(raw, 1000) {
				if h.Ambiguous {
					t.Fatalf("the guard kept parsing after it should have stopped: %+v", h)
				}
			}
		})
	}
}

// TestGuardFollowsNetHTTP is the guard's real check: net/http serves a pipelined mix of framings on
// one guarded connection, and every handler must find its own head (the two parsers stayed in step)
// and only the ambiguous request is flagged.
func TestGuardFollowsNetHTTP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{
		ConnContext:       ConnContext,
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			g, ok := FromContext(r.Context())
			verdict := "unguarded"
			if ok {
				h, found := g.Take(r.Method, r.RequestURI)
				verdict = fmt.Sprintf("%s %s found=%v ambiguous=%v", r.Method, r.RequestURI, found, h.Ambiguous)
			}
			mu.Lock()
			seen = append(seen, verdict)
			mu.Unlock()
		}),
	}
	go func() { _ = srv.Serve(guardListener{ln}) }()
	t.Cleanup(func() { srv.Close() })

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	raw := getReq + postCL + postChunk + "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" +
		http10TE + leadingCRLF + ambiguous
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for range 7 {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %v: %v", seen, err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	want := []string{
		"GET /a found=true ambiguous=false",
		"POST /b found=true ambiguous=false",
		"POST /c?q=1 found=true ambiguous=false",
		"POST /e found=true ambiguous=false",
		"GET /f found=true ambiguous=false",
		"POST /d found=true ambiguous=true",
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(seen, want) {
		t.Fatalf("handlers saw\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
}

type guardListener struct{ net.Listener }

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}

// FuzzParser: any input, cut anywhere, gives the same heads and never panics.
func FuzzParser(f *testing.F) {
	for _, s := range []string{getReq, postCL, postChunk, ambiguous, http10TE, leadingCRLF, getReq + postChunk + ambiguous} {
		f.Add(s, uint8(1))
	}
	f.Fuzz(func(t *testing.T, raw string, step uint8) {
		whole := feedAll(raw, len(raw)+1)
		if cut := feedAll(raw, int(step)+1); !reflect.DeepEqual(whole, cut) {
			t.Fatalf("cut every %d bytes: %+v, whole: %+v", int(step)+1, cut, whole)
		}
	})
}
