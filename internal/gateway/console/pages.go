package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/inspect"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

// pageNames are the templates beside layout.html, one per page.
var pageNames = []string{"sign-in", "sign-in-problem", "continue", "overview", "domains", "agents", "certificates", "inspect", "entry", "audit", "problem"}

func parsePages() map[string]*template.Template {
	out := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		t := template.New("layout.html").Funcs(template.FuncMap{
			// Replaced per render with the page's language; here so that parsing knows the names.
			"t":      func(string) string { return "" },
			"tf":     func(string, ...any) string { return "" },
			"bytes":  func(v any) string { return formatBytes(toFloat(v)) },
			"points": svgPoints,
			"ms":     func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) },
			"when":   when,
		})
		out[name] = template.Must(t.ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return out
}

// when shows a time in UTC, or a dash for none (a certificate not issued yet).
func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int:
		return float64(n)
	case int64:
		return float64(n)
	case float64:
		return n
	}
	return 0
}

// view is what every page's template gets.
type view struct {
	Lang, Page, CSRF string
	// Path is the page's own GET path: the language switch comes back to it, and after a form's
	// POST the script puts it in the address bar and refreshes from it (the POST path answers 405).
	Path string
	// Notice and Problem are text keys or API messages, shown above the page's content.
	Notice, Problem string
	// Refresh, when set, sends the browser on to this page of the console (a same-site navigation).
	Refresh string
	Data    any
}

// render writes a page. A template error after the header is written cannot change the status;
// the tests render every page, so that none can happen in production.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, page string, s *session, data map[string]any) {
	lang := language(r)
	v := view{Lang: lang, Page: page, Data: data, Path: r.URL.RequestURI()}
	if r.Method != http.MethodGet {
		v.Path = pagePath(page, data)
	}
	if s != nil {
		v.CSRF = s.csrf
	}
	if p, ok := data["Problem"].(string); ok {
		v.Problem = p
	}
	if n, ok := data["Notice"].(string); ok {
		v.Notice = n
	}
	if to, ok := data["Refresh"].(string); ok {
		v.Refresh = to
	}
	t, err := c.pages[page].Clone()
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	t.Funcs(template.FuncMap{
		"t":  func(key string) string { return text(lang, key) },
		"tf": func(key string, args ...any) string { return fmt.Sprintf(text(lang, key), args...) },
	})
	var buf bytes.Buffer
	if err := t.Execute(&buf, v); err != nil {
		c.o.Logger.ErrorContext(r.Context(), "console page failed", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// pagePath is where a page is read with GET, for a page rendered as the answer to a form.
func pagePath(page string, data map[string]any) string {
	switch page {
	case "inspect", "entry":
		// A replay's answer goes back to the domain's list: the entry it replayed may leave the ring.
		if e, ok := data["E"].(inspect.Entry); ok && e.Domain != "" {
			return Prefix + "inspect?" + url.Values{"domain": {e.Domain}}.Encode()
		}
		if d, ok := data["Domain"].(string); ok && d != "" {
			return Prefix + "inspect?" + url.Values{"domain": {d}}.Encode()
		}
		return Prefix + "inspect"
	case "problem", "continue":
		return Prefix + "overview"
	case "sign-in-problem":
		return Prefix + "sign-in"
	}
	return Prefix + page
}

// refuse answers with a short page: the console's own refusals are for people, not scripts.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	s, _ := c.session(r)
	c.render(w, r, code, "problem", s, map[string]any{"Problem": msg, "Code": code})
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	data := map[string]any{}
	if c.o.Overview != nil {
		sr := c.o.Overview.series(time.Now())
		data["Charts"] = []Chart{
			chart(text(language(r), "requests"), sr.RPS, formatRate),
			chart(text(language(r), "errors"), sr.ErrorPct, formatPct),
			chart(text(language(r), "bytes"), sr.BytesPerSec, func(v float64) string { return formatBytes(v) + "/s" }),
		}
		data["Totals"] = sr.Now
	}
	var list domainList
	if a := c.api(r, s, http.MethodGet, "domains", nil, nil); a.decode(&list) == nil {
		agents := 0
		for _, d := range list.Domains {
			agents += d.Agents
		}
		data["Domains"], data["Agents"] = len(list.Domains), agents
	}
	if c.o.Inspector != nil {
		data["Inspected"] = c.o.Inspector.Enabled()
	}
	c.render(w, r, http.StatusOK, "overview", s, data)
}

type domainRow struct {
	Domain    string `json:"domain"`
	Memo      string `json:"memo"`
	CreatedAt string `json:"created_at"`
	Agents    int    `json:"agents"`
	Mode      string `json:"mode"`
	TCPPort   int    `json:"tcp_port"`
	Policy    string `json:"-"`
}

type domainList struct {
	Domains []domainRow `json:"domains"`
}

// policySummary says in a few words who may visit.
func policySummary(p policy.Shown) string {
	var parts []string
	if n := len(p.IPAllow); n > 0 {
		parts = append(parts, fmt.Sprintf("IP allow %d", n))
	}
	if n := len(p.IPDeny); n > 0 {
		parts = append(parts, fmt.Sprintf("IP deny %d", n))
	}
	if n := len(p.BasicAuth); n > 0 {
		parts = append(parts, fmt.Sprintf("basic auth %d", n))
	}
	if p.RateLimit != nil {
		parts = append(parts, fmt.Sprintf("%g req/s", p.RateLimit.RPS))
	}
	if p.OIDC != nil {
		parts = append(parts, "SSO "+p.OIDC.Issuer)
	}
	if p.MaxBodyBytes > 0 {
		parts = append(parts, fmt.Sprintf("body ≤ %d B", p.MaxBodyBytes))
	}
	return strings.Join(parts, ", ")
}

func (c *Console) domains(w http.ResponseWriter, r *http.Request, s *session) {
	c.domainsPage(w, r, s, http.StatusOK, map[string]any{})
}

func (c *Console) domainsPage(w http.ResponseWriter, r *http.Request, s *session, code int, data map[string]any) {
	var list domainList
	if a := c.api(r, s, http.MethodGet, "domains", nil, nil); a.decode(&list) != nil {
		data["Problem"] = a.message()
	}
	q := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("q")))
	rows := list.Domains[:0]
	for _, d := range list.Domains {
		if q != "" && !strings.Contains(d.Domain, q) && !strings.Contains(strings.ToLower(d.Memo), q) {
			continue
		}
		var p struct {
			Policy policy.Shown `json:"policy"`
		}
		if c.api(r, s, http.MethodGet, "domains/policy", url.Values{"domain": {d.Domain}}, nil).decode(&p) == nil {
			d.Policy = policySummary(p.Policy)
		}
		rows = append(rows, d)
	}
	data["Rows"], data["Query"] = rows, q
	c.render(w, r, code, "domains", s, data)
}

// change calls the admin API for a form and shows the domains page with the outcome. The answer
// page is rendered, not redirected to, where it shows a key: a key must never sit in a URL.
func (c *Console) change(w http.ResponseWriter, r *http.Request, s *session, path string, body map[string]string) {
	a := c.api(r, s, http.MethodPost, path, nil, body)
	data := map[string]any{}
	if !a.ok() {
		c.domainsPage(w, r, s, a.code, map[string]any{"Problem": a.message()})
		return
	}
	var k struct {
		Domain string `json:"domain"`
		Key    string `json:"client_api_key"`
	}
	_ = a.decode(&k)
	if k.Key != "" {
		data["Key"], data["KeyDomain"] = k.Key, k.Domain
	} else {
		data["Notice"] = "done"
	}
	c.domainsPage(w, r, s, http.StatusOK, data)
}

func (c *Console) register(w http.ResponseWriter, r *http.Request, s *session) {
	c.change(w, r, s, "domains/register", map[string]string{"domain": r.PostFormValue("domain"), "memo": r.PostFormValue("memo")})
}

func (c *Console) rotate(w http.ResponseWriter, r *http.Request, s *session) {
	c.change(w, r, s, "domains/rotate-key", map[string]string{"domain": r.PostFormValue("domain")})
}

// unregister needs no client key: the operator signed in with the admin key, and the API asks
// for the client key only when one is given.
func (c *Console) unregister(w http.ResponseWriter, r *http.Request, s *session) {
	c.change(w, r, s, "domains/unregister", map[string]string{"domain": r.PostFormValue("domain")})
}

func (c *Console) memo(w http.ResponseWriter, r *http.Request, s *session) {
	c.change(w, r, s, "domains/memo", map[string]string{"domain": r.PostFormValue("domain"), "memo": r.PostFormValue("memo")})
}

func (c *Console) agents(w http.ResponseWriter, r *http.Request, s *session) {
	c.agentsPage(w, r, s, http.StatusOK, map[string]any{})
}

func (c *Console) agentsPage(w http.ResponseWriter, r *http.Request, s *session, code int, data map[string]any) {
	var list struct {
		Agents []admin.AgentInfo `json:"agents"`
	}
	if a := c.api(r, s, http.MethodGet, "agents", nil, nil); a.decode(&list) != nil {
		data["Problem"] = a.message()
	}
	slices.SortFunc(list.Agents, func(a, b admin.AgentInfo) int { return strings.Compare(a.Domain+" "+a.ID, b.Domain+" "+b.ID) })
	data["Rows"] = list.Agents
	c.render(w, r, code, "agents", s, data)
}

func (c *Console) disconnect(w http.ResponseWriter, r *http.Request, s *session) {
	a := c.api(r, s, http.MethodPost, "agents/disconnect", nil, map[string]string{"domain": r.PostFormValue("domain"), "session": r.PostFormValue("session")})
	if !a.ok() {
		c.agentsPage(w, r, s, a.code, map[string]any{"Problem": a.message()})
		return
	}
	c.agentsPage(w, r, s, http.StatusOK, map[string]any{"Notice": "done"})
}

func (c *Console) certificates(w http.ResponseWriter, r *http.Request, s *session) {
	var list struct {
		ACME         bool                    `json:"acme"`
		Certificates []admin.CertificateInfo `json:"certificates"`
	}
	data := map[string]any{}
	if a := c.api(r, s, http.MethodGet, "certificates", nil, nil); a.decode(&list) != nil {
		data["Problem"] = a.message()
	}
	data["Rows"], data["ACME"] = list.Certificates, list.ACME
	c.render(w, r, http.StatusOK, "certificates", s, data)
}

func (c *Console) audit(w http.ResponseWriter, r *http.Request, s *session) {
	q := url.Values{"limit": {"100"}}
	if b := r.URL.Query().Get("before"); b != "" {
		if _, err := strconv.ParseInt(b, 10, 64); err == nil {
			q.Set("before", b)
		}
	}
	var list struct {
		Entries []admin.AuditEntryJSON `json:"entries"`
	}
	data := map[string]any{}
	if a := c.api(r, s, http.MethodGet, "audit", q, nil); a.decode(&list) != nil {
		data["Problem"] = a.message()
	}
	var verify struct {
		Intact   bool `json:"intact"`
		Rows     int  `json:"rows"`
		Problems []struct {
			ID     int64  `json:"id"`
			Reason string `json:"reason"`
		} `json:"problems"`
	}
	if c.api(r, s, http.MethodGet, "audit/verify", nil, nil).decode(&verify) == nil {
		data["Verify"] = verify
	}
	data["Rows"] = list.Entries
	if n := len(list.Entries); n == 100 {
		data["Older"] = list.Entries[n-1].ID
	}
	c.render(w, r, http.StatusOK, "audit", s, data)
}
