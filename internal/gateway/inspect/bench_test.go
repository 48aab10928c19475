package inspect

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkWrap is the inspector's own cost per small request, recorded (with bodies) and not: the
// bench's S14 measures the same through a whole gateway.
func BenchmarkWrap(b *testing.B) {
	body := make([]byte, 100)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", "100")
		_, _ = w.Write(body)
	})
	for _, c := range []struct {
		name         string
		wrap, enable bool
	}{{"bare", false, false}, {"off", true, false}, {"recorded", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			i := New(Options{})
			// Another domain on: the table is not empty, so the off path does its lookup.
			i.Enable("other.example.com", true)
			if c.enable {
				i.Enable("app.example.com", true)
			}
			var wrapped http.Handler = h
			if c.wrap {
				wrapped = i.Wrap(h)
			}
			req := httptest.NewRequest(http.MethodGet, "https://app.example.com/small?x=1", nil)
			req.Header.Set("User-Agent", "bench/1.0")
			req.Header.Set("Accept", "*/*")
			req.Header.Set("X-Forwarded-For", "127.0.0.1")
			w := &discard{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				wrapped.ServeHTTP(w, req)
			}
		})
	}
}

type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}
