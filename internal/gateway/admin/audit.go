package admin

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// Auditor keeps the audit log (*registry.Store implements it).
type Auditor interface {
	AppendAudit(ctx context.Context, e registry.AuditEntry) (registry.AuditEntry, error)
	Audit(ctx context.Context, limit int, before int64) ([]registry.AuditEntry, error)
	VerifyAudit(ctx context.Context) (rows int, problems []registry.AuditProblem, err error)
}

// WithAudit records every change made through the API (who, from where, what, when, result) in a.
func WithAudit(a Auditor) Option {
	return func(h *handler) { h.audit = a }
}

// auditTimeout bounds the write of an entry: the action is done and answered by then, and a slow
// store must not hold the handler for long.
const auditTimeout = 5 * time.Second

// ClientHeader names the tool a call comes from ("cli"; the console calls in-process and says so
// with AsActor). It only describes the caller in the audit log: the admin key is what authorises.
const ClientHeader = "X-HopGate-Client"

type actorKey struct{}

// AsActor marks calls made on behalf of someone other than a bearer of the admin key as such (the
// console's signed-in operator), for the audit log.
func AsActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actor(r *http.Request) string {
	if a, ok := r.Context().Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	if c := r.Header.Get(ClientHeader); c != "" {
		return "admin-key (" + oneWord(c) + ")"
	}
	return "admin-key"
}

// oneWord keeps a client's self-description short and printable.
func oneWord(s string) string {
	s, _, _ = strings.Cut(s, " ")
	s = strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e {
			return -1
		}
		return r
	}, s)
	return s[:min(len(s), 32)]
}

type noteKey struct{}

// auditNote is what a handler learns of its request that the entry needs: the domain.
type auditNote struct{ target string }

// noteTarget records the domain a request acts on, for its audit entry.
func noteTarget(r *http.Request, name string) {
	if n, ok := r.Context().Value(noteKey{}).(*auditNote); ok {
		n.target = name
	}
}

// statusRecorder remembers the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// audited serves a change and appends its entry. Refused changes are recorded too: a run of 403s on
// rotate-key is what an operator reading the log wants to see.
func (h *handler) audited(w http.ResponseWriter, r *http.Request, serve func(http.ResponseWriter, *http.Request)) {
	note := &auditNote{}
	r = r.WithContext(context.WithValue(r.Context(), noteKey{}, note))
	rec := &statusRecorder{ResponseWriter: w}
	serve(rec, r)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	remote, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		remote = r.RemoteAddr
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
	defer cancel()
	_, err = h.audit.AppendAudit(ctx, registry.AuditEntry{
		Actor:  actor(r),
		Remote: remote,
		Action: strings.TrimPrefix(r.URL.Path, Prefix),
		Target: note.target,
		Result: strconv.Itoa(rec.code) + " " + http.StatusText(rec.code),
	})
	if err != nil {
		h.log.ErrorContext(ctx, "audit entry not written", "action", strings.TrimPrefix(r.URL.Path, Prefix), "error", err)
	}
}

// AuditEntryJSON is one entry as the API shows it.
type AuditEntryJSON struct {
	ID       int64  `json:"id"`
	At       string `json:"at"`
	Actor    string `json:"actor"`
	Remote   string `json:"remote"`
	Action   string `json:"action"`
	Target   string `json:"target"`
	Result   string `json:"result"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// ShowAudit is the API's form of an entry.
func ShowAudit(e registry.AuditEntry) AuditEntryJSON {
	return AuditEntryJSON{e.ID, e.At.UTC().Format(time.RFC3339Nano), e.Actor, e.Remote, e.Action, e.Target, e.Result, e.PrevHash, e.Hash}
}

// listAudit answers GET audit?limit=N&before=ID: entries newest first, a page at a time.
func (h *handler) listAudit(w http.ResponseWriter, r *http.Request) {
	if h.audit == nil {
		writeError(w, http.StatusNotFound, "the audit log is not kept by this gateway")
		return
	}
	q := r.URL.Query()
	limit, before := 100, int64(0)
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > registry.MaxAuditPage {
			writeError(w, http.StatusBadRequest, "limit must be a number from 1 to "+strconv.Itoa(registry.MaxAuditPage))
			return
		}
		limit = n
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "before must be an entry id (a positive number)")
			return
		}
		before = n
	}
	es, err := h.audit.Audit(r.Context(), limit, before)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]AuditEntryJSON, len(es))
	for i, e := range es {
		out[i] = ShowAudit(e)
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool             `json:"success"`
		Entries []AuditEntryJSON `json:"entries"`
	}{true, out})
}

// verifyAudit answers GET audit/verify: the whole chain checked. A broken chain is still a 200: the
// check ran, and its answer is "intact": false with the rows at fault.
func (h *handler) verifyAudit(w http.ResponseWriter, r *http.Request) {
	if h.audit == nil {
		writeError(w, http.StatusNotFound, "the audit log is not kept by this gateway")
		return
	}
	rows, problems, err := h.audit.VerifyAudit(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if problems == nil {
		problems = []registry.AuditProblem{}
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success  bool                    `json:"success"`
		Intact   bool                    `json:"intact"`
		Rows     int                     `json:"rows"`
		Problems []registry.AuditProblem `json:"problems"`
	}{true, len(problems) == 0, rows, problems})
}
