// Package site serves the gateway's own name (HOP_SERVER_DOMAIN): liveness, readiness, the admin API
// and the error pages' assets. Nothing there is ever proxied.
package site

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
)

// readyTimeout bounds the store check behind /readyz: a balancer's probe must get an answer.
const readyTimeout = 2 * time.Second

// Options wires the site.
type Options struct {
	// Ready checks what the gateway needs to serve (the store); nil is always ready.
	Ready func(ctx context.Context) error
	// Draining reports a shutdown in progress: /readyz answers 503 "draining" so that a load
	// balancer stops sending before the listeners close; nil never drains.
	Draining func() bool
	// Admin serves /api/v1/admin/; nil answers 404 there (admin API disabled).
	Admin http.Handler
	// Console serves /console/ and its sign-on callback /.hopgate/callback; nil answers 404 there
	// (HOP_SERVER_CONSOLE=false, or no admin key).
	Console http.Handler
	Errors  *errorpage.Writer
	Logger  *slog.Logger
}

// New returns the handler of the gateway's own name.
func New(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &site{o}
}

type site struct{ o Options }

func (s *site) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/healthz":
		jsonapi.Write(w, http.StatusOK, map[string]any{"status": "ok"})
	case p == "/readyz":
		s.ready(w, r)
	case strings.HasPrefix(p, "/api/v1/admin/") || p == "/api/v1/admin":
		if s.o.Admin == nil {
			jsonapi.Write(w, http.StatusNotFound, map[string]any{"success": false, "error": "admin API is disabled"})
			return
		}
		s.o.Admin.ServeHTTP(w, r)
	case (p == "/console" || strings.HasPrefix(p, "/console/") || p == "/.hopgate/callback") && s.o.Console != nil:
		// The callback is the console's single sign-on coming back from the provider.
		s.o.Console.ServeHTTP(w, r)
	case strings.HasPrefix(p, errorpage.AssetsPrefix):
		s.o.Errors.Assets().ServeHTTP(w, r)
	default:
		s.o.Errors.Write(w, r, http.StatusNotFound, "")
	}
}

func (s *site) ready(w http.ResponseWriter, r *http.Request) {
	if s.o.Draining != nil && s.o.Draining() {
		jsonapi.Write(w, http.StatusServiceUnavailable, map[string]any{"status": "draining"})
		return
	}
	if s.o.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := s.o.Ready(ctx); err != nil {
			s.o.Logger.Warn("not ready", "err", err)
			jsonapi.Write(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "error": "store unreachable"})
			return
		}
	}
	jsonapi.Write(w, http.StatusOK, map[string]any{"status": "ok"})
}
