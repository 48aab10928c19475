// Package errorpage writes the gateway's own error responses: an HTML page for browsers, JSON for API
// clients and plain text for everything else.
package errorpage

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/hopgate/hopgate/errors"
)

// AssetsPrefix is where the pages' CSS and logo are served on every host.
const AssetsPrefix = "/__hopgate_assets__/"

// maxRequestIDLen bounds the request id echoed into a page; the header may come from the client.
const maxRequestIDLen = 128

// Page is the data every error page template is executed with. errors/README.md documents it for
// operators writing their own pages.
type Page struct {
	Code int
	// Reason is the failure's reason word (as in the access log: "target_down", "no_route", …) when
	// the gateway gave one, else empty; an override page for a status may word its reasons apart.
	Reason                     string
	Title, Message, Hint       string
	TitleKo, MessageKo, HintKo string
	RequestID                  string
	CSS                        template.CSS // errors/assets/style.css, for a <style> element
	Logo                       template.URL // errors/assets/logo.svg as a data: URI, for an <img src>
}

// Writer renders error responses. It is safe for concurrent use.
type Writer struct {
	fallback *template.Template         // error.html: every status without a page of its own
	byCode   map[int]*template.Template // <code>.html from the override directory
	assets   http.Handler
	// The stylesheet and logo are inlined so that a page shown on a tenant's domain needs nothing
	// from that domain: a request for an asset there would go to the tenant's service.
	css  template.CSS
	logo template.URL
}

var codePage = regexp.MustCompile(`^([1-5][0-9][0-9])\.html$`)

// New loads the embedded page and assets. When pagesDir is set, a page in it is used for its status
// (<code>.html) or for all statuses without their own page (error.html); the embedded error.html
// covers the rest. When assetsDir is set, its files replace the embedded ones of the same name.
// Every template is test-rendered, so a broken override fails here, naming its file, rather than on
// the first error a visitor meets.
func New(pagesDir, assetsDir string) (*Writer, error) {
	embeddedPages, err := fs.Sub(errors.Templates, "templates")
	if err != nil {
		return nil, fmt.Errorf("embedded error pages: %w", err)
	}
	embeddedAssets, err := fs.Sub(errors.Assets, "assets")
	if err != nil {
		return nil, fmt.Errorf("embedded error assets: %w", err)
	}

	assets := embeddedAssets
	if assetsDir != "" {
		if err := checkDir(assetsDir); err != nil {
			return nil, fmt.Errorf("error assets directory: %w", err)
		}
		assets = overlay{os.DirFS(assetsDir), embeddedAssets}
	}
	css, err := fs.ReadFile(assets, "style.css")
	if err != nil {
		return nil, fmt.Errorf("load error page stylesheet: %w", err)
	}
	logo, err := fs.ReadFile(assets, "logo.svg")
	if err != nil {
		return nil, fmt.Errorf("load error page logo: %w", err)
	}
	wr := &Writer{
		byCode: map[int]*template.Template{},
		assets: http.StripPrefix(AssetsPrefix, noListing(http.FileServerFS(assets))),
		css:    template.CSS(css),
		logo:   template.URL("data:image/svg+xml;base64," + base64.StdEncoding.EncodeToString(logo)),
	}

	if wr.fallback, err = wr.load(embeddedPages, "error.html", "embedded errors/templates", 0); err != nil {
		return nil, err
	}
	if pagesDir == "" {
		return wr, nil
	}
	if err := checkDir(pagesDir); err != nil {
		return nil, fmt.Errorf("error pages directory: %w", err)
	}
	dir := os.DirFS(pagesDir)
	names, err := fs.Glob(dir, "*.html")
	if err != nil {
		return nil, fmt.Errorf("list error pages in %s: %w", pagesDir, err)
	}
	for _, name := range names {
		switch m := codePage.FindStringSubmatch(name); {
		case name == "error.html":
			if wr.fallback, err = wr.load(dir, name, pagesDir, 0); err != nil {
				return nil, err
			}
		case m != nil:
			code, _ := strconv.Atoi(m[1])
			if wr.byCode[code], err = wr.load(dir, name, pagesDir, code); err != nil {
				return nil, err
			}
		}
	}
	return wr, nil
}

// load parses one page and renders it once with sample data, so that a reference to a field that
// does not exist is caught now. code is the status the page is for, 0 for error.html.
func (wr *Writer) load(dir fs.FS, name, from string, code int) (*template.Template, error) {
	path := filepath.Join(from, name)
	tmpl, err := template.ParseFS(dir, name)
	if err != nil {
		return nil, fmt.Errorf("parse error page %s: %w", path, err)
	}
	if code == 0 {
		code = http.StatusBadGateway
	}
	if err := tmpl.Execute(&bytes.Buffer{}, wr.page(code, "", "sample-request-id")); err != nil {
		return nil, fmt.Errorf("render error page %s: %w", path, err)
	}
	return tmpl, nil
}

func (wr *Writer) page(code int, reason, requestID string) Page {
	t := wordingFor(code, reason)
	return Page{
		Code: code, Reason: reason, Title: t.Title, Message: t.Message, Hint: t.Hint,
		TitleKo: t.TitleKo, MessageKo: t.MessageKo, HintKo: t.HintKo,
		RequestID: requestID, CSS: wr.css, Logo: wr.logo,
	}
}

// Assets serves the pages' CSS and images.
func (wr *Writer) Assets() http.Handler { return wr.assets }

// jsonError is the body API clients get; the field order is the documented one.
type jsonError struct {
	Success bool   `json:"success"`
	Error   string `json:"error"`
	Status  int    `json:"status"`
	// RequestID is the access log's id of the request, for a caller to quote when they ask why.
	RequestID string `json:"request_id,omitempty"`
}

// Write sends code with msg (the detail shown to API clients; pages show the standard wording).
// The whole body is rendered before the status is written, so Content-Length is always exact and a
// HEAD request gets the same headers as a GET.
func (wr *Writer) Write(w http.ResponseWriter, r *http.Request, code int, msg string) {
	wr.WriteReason(w, r, code, "", msg)
}

// WriteReason is Write for a failure with a reason word: a reason with wording of its own for code
// (ReasonNoRoute, ReasonTargetDown) gets it on the page, and, when msg is empty, in the JSON and text
// answers too, so that every form says the same thing.
func (wr *Writer) WriteReason(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	t := wordingFor(code, reason)
	if msg == "" {
		msg = t.Message
	}
	var body []byte
	ctype := "text/plain; charset=utf-8"
	switch negotiate(strings.Join(r.Header.Values("Accept"), ",")) {
	case kindJSON:
		b, err := json.Marshal(jsonError{Success: false, Error: msg, Status: code, RequestID: requestID(w, r)})
		if err != nil { // a struct of a bool, strings and an int always marshals
			panic(err)
		}
		body, ctype = append(b, '\n'), "application/json"
	case kindHTML:
		var buf bytes.Buffer
		if err := wr.template(code).Execute(&buf, wr.page(code, reason, requestID(w, r))); err != nil {
			// New rendered every template once, so this is unexpected; the visitor still gets text.
			slog.Error("render error page", "status", code, "error", err)
			break
		}
		body, ctype = buf.Bytes(), "text/html; charset=utf-8"
	}
	if body == nil {
		body = fmt.Appendf(nil, "%d %s: %s\n", code, t.Title, msg)
	}

	h := w.Header()
	// Headers a failed upstream response may have left describe a body that is not this one.
	for _, k := range []string{"Content-Encoding", "Content-Range", "ETag", "Last-Modified", "Expires"} {
		h.Del(k)
	}
	// A transient 502 or 503 must not stick in a browser or CDN cache.
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Add("Vary", "Accept")
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body) // the client has gone; nothing left to tell it
	}
}

func (wr *Writer) template(code int) *template.Template {
	if t, ok := wr.byCode[code]; ok {
		return t
	}
	return wr.fallback
}

// requestID prefers the id the access log put on the response, then the one on the request.
func requestID(w http.ResponseWriter, r *http.Request) string {
	id := w.Header().Get("X-Request-Id")
	if id == "" {
		id = r.Header.Get("X-Request-Id")
	}
	if len(id) > maxRequestIDLen {
		id = id[:maxRequestIDLen]
	}
	return id
}

type kind int

const (
	kindText kind = iota
	kindJSON
	kindHTML
)

// negotiate picks the response kind from an Accept header: the media type with the highest q-value
// among JSON, HTML and plain text, the earliest on a tie. Wildcards (*/* from curl and fetch, and
// the */*;q=0.8 browsers append) choose nothing, so they fall through to text.
func negotiate(accept string) kind {
	best, bestQ := kindText, 0.0
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if s, ok := params["q"]; ok {
			if q, err = strconv.ParseFloat(s, 64); err != nil {
				continue
			}
		}
		var k kind
		switch {
		case mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"):
			k = kindJSON
		case mt == "text/html" || mt == "application/xhtml+xml":
			k = kindHTML
		case mt == "text/plain":
			k = kindText
		default:
			continue
		}
		if q > bestQ {
			best, bestQ = k, q
		}
	}
	return best
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

// noListing answers 404 for directories: the asset path is public on every host, and there is
// nothing in it worth browsing.
func noListing(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// overlay serves a file from top when it is there and from base otherwise, so an operator can
// replace the logo without copying the stylesheet.
type overlay struct{ top, base fs.FS }

func (o overlay) Open(name string) (fs.File, error) {
	f, err := o.top.Open(name)
	// os.IsNotExist rather than errors.Is: this package's "errors" is the pages' own (errors/), and
	// every fs.FS here (os.DirFS, embed) answers a missing file with a bare *fs.PathError.
	if os.IsNotExist(err) {
		return o.base.Open(name)
	}
	return f, err
}
