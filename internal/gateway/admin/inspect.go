package admin

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/inspect"
	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
)

// WithInspector serves the request inspector: switching it per domain, reading its ring and
// replaying a recorded request through tenants (the gateway's tenant handler, inspector included).
func WithInspector(i *inspect.Inspector, tenants http.Handler) Option {
	return func(h *handler) { h.inspector, h.tenants = i, tenants }
}

// replayTimeout bounds a replay: the agent's answer is awaited by the operator's request.
const replayTimeout = 30 * time.Second

func (h *handler) inspectRoutes() {
	h.routes[Prefix+"inspect"] = route{http.MethodGet: h.inspectState, http.MethodPost: h.inspectSet}
	h.routes[Prefix+"inspect/entries"] = route{http.MethodGet: h.inspectEntries}
	h.routes[Prefix+"inspect/replay"] = route{http.MethodPost: h.inspectReplay}
}

func (h *handler) noInspector(w http.ResponseWriter) bool {
	if h.inspector == nil {
		writeError(w, http.StatusNotFound, "the request inspector is not available on this gateway")
		return true
	}
	return false
}

type inspectDomain struct {
	Domain string `json:"domain"`
	On     bool   `json:"on"`
	Bodies bool   `json:"bodies"`
}

// inspectState answers GET inspect: the domains being inspected on this gateway (the rings are
// in its memory, not shared).
func (h *handler) inspectState(w http.ResponseWriter, r *http.Request) {
	if h.noInspector(w) {
		return
	}
	out := []inspectDomain{}
	for _, d := range h.inspector.Enabled() {
		_, bodies := h.inspector.State(d)
		out = append(out, inspectDomain{d, true, bodies})
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool            `json:"success"`
		Domains []inspectDomain `json:"domains"`
	}{true, out})
}

// inspectSet answers POST inspect {"domain", "on", "bodies"}. Only a registered domain can be
// inspected: a ring for a name nobody serves would only hold 404s.
func (h *handler) inspectSet(w http.ResponseWriter, r *http.Request) {
	if h.noInspector(w) {
		return
	}
	var req inspectDomain
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	if req.On {
		if _, err := h.reg.Get(r.Context(), name); err != nil {
			h.fail(w, r, err)
			return
		}
		h.inspector.Enable(name, req.Bodies)
		h.log.InfoContext(r.Context(), "request inspector on", "domain", name, "bodies", req.Bodies)
	} else {
		h.inspector.Disable(name)
		h.log.InfoContext(r.Context(), "request inspector off", "domain", name)
	}
	on, bodies := h.inspector.State(name)
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool `json:"success"`
		inspectDomain
	}{true, inspectDomain{name, on, bodies}})
}

// inspectEntries answers GET inspect/entries?domain=D: the ring, oldest first, as stored (secrets
// were redacted before they were stored, so this is all there is).
func (h *handler) inspectEntries(w http.ResponseWriter, r *http.Request) {
	if h.noInspector(w) {
		return
	}
	name, ok := canonical(w, r, r.URL.Query().Get("domain"))
	if !ok {
		return
	}
	es := h.inspector.Entries(name)
	if es == nil {
		es = []inspect.Entry{}
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool            `json:"success"`
		Domain  string          `json:"domain"`
		Entries []inspect.Entry `json:"entries"`
	}{true, name, es})
}

type replayRequest struct {
	Domain string              `json:"domain"`
	ID     string              `json:"id"`
	Method string              `json:"method"`
	Path   string              `json:"path"`
	Header map[string][]string `json:"header"`
	Body   *string             `json:"body"`
}

// inspectReplay answers POST inspect/replay: the recorded request sent again through the tunnel,
// with the edits given, and the new exchange.
func (h *handler) inspectReplay(w http.ResponseWriter, r *http.Request) {
	if h.noInspector(w) {
		return
	}
	var req replayRequest
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	e, found := h.inspector.Entry(name, req.ID)
	if !found {
		writeError(w, http.StatusNotFound, "no such entry: it may have left the ring")
		return
	}
	var edit *inspect.Edit
	if req.Method != "" || req.Path != "" || req.Header != nil || req.Body != nil {
		edit = &inspect.Edit{Method: req.Method, Path: req.Path, Body: req.Body}
		if req.Header != nil {
			edit.Header = http.Header(req.Header)
		}
		if edit.Method != "" && !slices.Contains([]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}, edit.Method) {
			writeError(w, http.StatusBadRequest, "method must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
			return
		}
		if edit.Path != "" && edit.Path[0] != '/' {
			// Never an absolute URL: a replay goes to the domain's agent and nowhere else.
			writeError(w, http.StatusBadRequest, "path must start with /")
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), replayTimeout)
	defer cancel()
	out, err := h.inspector.Replay(ctx, h.tenants, name, e, edit)
	switch {
	case errors.Is(err, inspect.ErrBodyNotCaptured):
		writeError(w, http.StatusConflict, "the request's body was not captured in full: give one to replay it")
		return
	case err != nil:
		writeError(w, http.StatusBadGateway, "replay failed: "+err.Error())
		return
	}
	h.log.InfoContext(r.Context(), "request replayed", "domain", name, "entry", req.ID, "status", out.Status)
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool          `json:"success"`
		Entry   inspect.Entry `json:"entry"`
	}{true, out})
}
