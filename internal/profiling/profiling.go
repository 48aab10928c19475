// Package profiling mounts Go's runtime profiles (net/http/pprof) on a private listener.
package profiling

import (
	"net/http"
	"net/http/pprof"
)

// Mount serves /debug/pprof/ on mux. It is only ever mounted on the metrics listener, which is
// private (loopback by default): profiles reveal code paths, and a CPU profile costs CPU.
func Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
