package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/inspect"
)

// sseHeartbeat keeps the live view's connection open through idle-closing proxies and lets the
// handler notice a session that ended.
const sseHeartbeat = 15 * time.Second

func (c *Console) inspect(w http.ResponseWriter, r *http.Request, s *session) {
	c.inspectPage(w, r, s, http.StatusOK, map[string]any{})
}

func (c *Console) inspectPage(w http.ResponseWriter, r *http.Request, s *session, code int, data map[string]any) {
	if c.o.Inspector == nil {
		data["Problem"] = "the request inspector is not available on this gateway"
		c.render(w, r, code, "inspect", s, data)
		return
	}
	domain := r.URL.Query().Get("domain")
	if domain == "" {
		domain = r.PostFormValue("domain")
	}
	if d, err := hostname.CanonicalDomain(domain); err == nil {
		domain = d
	} else {
		domain = ""
	}
	enabled := c.o.Inspector.Enabled()
	if domain == "" && len(enabled) > 0 {
		domain = enabled[0]
	}
	data["Enabled"], data["Domain"] = enabled, domain
	if domain != "" {
		on, bodies := c.o.Inspector.State(domain)
		data["On"], data["Bodies"] = on, bodies
		es := c.o.Inspector.Entries(domain)
		slices.Reverse(es) // newest first
		data["Entries"] = es
	}
	c.render(w, r, code, "inspect", s, data)
}

func (c *Console) inspectToggle(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{"domain": r.PostFormValue("domain"), "on": r.PostFormValue("on") == "1", "bodies": r.PostFormValue("bodies") == "1"}
	a := c.api(r, s, http.MethodPost, "inspect", nil, body)
	if !a.ok() {
		c.inspectPage(w, r, s, a.code, map[string]any{"Problem": a.message()})
		return
	}
	c.inspectPage(w, r, s, http.StatusOK, map[string]any{"Notice": "done"})
}

func (c *Console) inspectEntry(w http.ResponseWriter, r *http.Request, s *session) {
	if c.o.Inspector == nil {
		c.refuse(w, r, http.StatusNotFound, "the request inspector is not available on this gateway")
		return
	}
	e, ok := c.o.Inspector.Entry(r.URL.Query().Get("domain"), r.URL.Query().Get("id"))
	if !ok {
		c.refuse(w, r, http.StatusNotFound, "no such entry: it may have left the ring")
		return
	}
	c.render(w, r, http.StatusOK, "entry", s, map[string]any{"E": e, "Headers": headerText(e.RequestHeader)})
}

// inspectReplay sends a recorded request again through the admin API's replay, with the form's
// edits, and shows the new exchange beside the old.
func (c *Console) inspectReplay(w http.ResponseWriter, r *http.Request, s *session) {
	domain, id := r.PostFormValue("domain"), r.PostFormValue("id")
	body := map[string]any{"domain": domain, "id": id}
	if m := strings.TrimSpace(r.PostFormValue("method")); m != "" {
		body["method"] = m
	}
	if p := strings.TrimSpace(r.PostFormValue("path")); p != "" {
		body["path"] = p
	}
	if h := strings.TrimSpace(r.PostFormValue("header")); h != "" {
		hdr, err := parseHeaderText(h)
		if err != nil {
			c.refuse(w, r, http.StatusBadRequest, err.Error())
			return
		}
		body["header"] = hdr
	}
	if r.PostFormValue("edit_body") == "1" {
		body["body"] = r.PostFormValue("body")
	}
	a := c.api(r, s, http.MethodPost, "inspect/replay", nil, body)
	var out struct {
		Entry inspect.Entry `json:"entry"`
	}
	if err := a.decode(&out); err != nil {
		c.refuse(w, r, a.code, a.message())
		return
	}
	old, _ := c.o.Inspector.Entry(domain, id)
	c.render(w, r, http.StatusOK, "entry", s, map[string]any{"E": old, "New": out.Entry, "Headers": headerText(old.RequestHeader)})
}

// headerText is a header block as the replay form edits it.
func headerText(h http.Header) string {
	var b strings.Builder
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	return b.String()
}

func parseHeaderText(s string) (http.Header, error) {
	h := http.Header{}
	for i, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("header line %d is not \"Name: value\"", i+1)
		}
		h.Add(textproto.CanonicalMIMEHeaderKey(k), strings.TrimSpace(v))
	}
	return h, nil
}

// liveEntry is what the live view gets of each request: the table row, no headers or bodies.
type liveEntry struct {
	ID       string `json:"id"`
	Time     string `json:"time"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Status   int    `json:"status"`
	Duration string `json:"duration"`
	Size     string `json:"size"`
	Replay   bool   `json:"replay"`
}

// inspectEvents streams a domain's new entries as server-sent events until the visitor leaves or
// the session ends.
func (c *Console) inspectEvents(w http.ResponseWriter, r *http.Request, s *session) {
	if c.o.Inspector == nil {
		c.refuse(w, r, http.StatusNotFound, "the request inspector is not available on this gateway")
		return
	}
	domain, err := hostname.CanonicalDomain(r.URL.Query().Get("domain"))
	if err != nil {
		c.refuse(w, r, http.StatusBadRequest, "domain: "+err.Error())
		return
	}
	rc := http.NewResponseController(w)
	feed, stop := c.o.Inspector.Subscribe(domain)
	defer stop()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": live\n\n")
	if rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(sseHeartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			if _, ok := c.session(r); !ok {
				return
			}
			if _, err := fmt.Fprint(w, ": beat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case e, ok := <-feed:
			if !ok {
				return
			}
			b, _ := json.Marshal(liveEntry{ID: e.ID, Time: e.Time.UTC().Format("15:04:05"), Method: e.Method, Path: e.Path,
				Status: e.Status, Duration: fmt.Sprintf("%.1f ms", float64(e.Duration.Microseconds())/1000),
				Size: formatBytes(float64(e.ResponseSize)), Replay: e.ReplayOf != ""})
			if _, err := fmt.Fprintf(w, "event: entry\ndata: %s\n\n", b); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}
