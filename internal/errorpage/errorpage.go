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
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"

	errorpages "github.com/hopgate/hopgate/errors"
)

// AssetsPrefix is where the pages' CSS and logo are served on every host.
const AssetsPrefix = "/__hopgate_assets__/"

type text struct{ Title, Message, TitleKo, MessageKo string }

var texts = map[int]text{
	400: {"Bad request", "The request could not be understood.", "잘못된 요청", "요청을 이해할 수 없습니다."},
	401: {"Unauthorized", "Valid credentials are required.", "인증 필요", "올바른 인증 정보가 필요합니다."},
	403: {"Forbidden", "You are not allowed to do this.", "접근 거부", "이 작업을 수행할 권한이 없습니다."},
	404: {"Not found", "This gateway does not serve the requested name or path.", "찾을 수 없음", "이 게이트웨이는 요청한 도메인이나 경로를 제공하지 않습니다."},
	405: {"Method not allowed", "This method is not allowed here.", "허용되지 않는 메서드", "이 메서드는 여기서 허용되지 않습니다."},
	413: {"Request too large", "The request body is larger than allowed.", "요청이 너무 큼", "요청 본문이 허용된 크기보다 큽니다."},
	421: {"Misdirected request", "This connection cannot serve the requested name.", "잘못 전달된 요청", "이 연결은 요청한 도메인을 제공할 수 없습니다."},
	429: {"Too many requests", "Slow down and try again shortly.", "요청이 너무 많음", "잠시 후 다시 시도해 주세요."},
	431: {"Headers too large", "The request headers are larger than allowed.", "헤더가 너무 큼", "요청 헤더가 허용된 크기보다 큽니다."},
	500: {"Internal error", "The gateway failed to handle the request.", "내부 오류", "게이트웨이가 요청을 처리하지 못했습니다."},
	502: {"Bad gateway", "The service behind this domain did not answer properly.", "잘못된 게이트웨이", "이 도메인 뒤의 서비스가 올바르게 응답하지 않았습니다."},
	503: {"Service unavailable", "The service for this domain is not connected right now.", "서비스를 사용할 수 없음", "이 도메인의 서비스가 현재 연결되어 있지 않습니다."},
	504: {"Gateway timeout", "The service behind this domain took too long to answer.", "게이트웨이 시간 초과", "이 도메인 뒤의 서비스가 너무 오래 응답하지 않았습니다."},
}

// Writer renders error responses.
type Writer struct {
	tmpl   *template.Template
	assets http.Handler
	// The stylesheet and logo are inlined so that a page shown on a tenant's domain needs nothing
	// from that domain: a request for an asset there would go to the tenant's service.
	css  template.CSS
	logo template.URL
}

// New loads the embedded page and assets, or the ones in pagesDir / assetsDir when those are set.
func New(pagesDir, assetsDir string) (*Writer, error) {
	var pages fs.FS = errorpages.Templates
	if pagesDir != "" {
		pages = os.DirFS(pagesDir)
	} else {
		pages, _ = fs.Sub(pages, "templates")
	}
	tmpl, err := template.ParseFS(pages, "error.html")
	if err != nil {
		return nil, fmt.Errorf("load error page template: %w", err)
	}
	var assets fs.FS
	if assetsDir != "" {
		assets = os.DirFS(assetsDir)
	} else {
		assets, _ = fs.Sub(errorpages.Assets, "assets")
	}
	css, err := fs.ReadFile(assets, "style.css")
	if err != nil {
		return nil, fmt.Errorf("load error page stylesheet: %w", err)
	}
	logo, err := fs.ReadFile(assets, "logo.svg")
	if err != nil {
		return nil, fmt.Errorf("load error page logo: %w", err)
	}
	return &Writer{
		tmpl:   tmpl,
		assets: http.StripPrefix(AssetsPrefix, http.FileServerFS(assets)),
		css:    template.CSS(css),
		logo:   template.URL("data:image/svg+xml;base64," + base64.StdEncoding.EncodeToString(logo)),
	}, nil
}

// Assets serves the pages' CSS and images.
func (wr *Writer) Assets() http.Handler { return wr.assets }

// Write sends code with msg (the detail shown to API clients; pages show the standard wording).
func (wr *Writer) Write(w http.ResponseWriter, r *http.Request, code int, msg string) {
	t, ok := texts[code]
	if !ok {
		t = text{Title: http.StatusText(code), Message: http.StatusText(code), TitleKo: http.StatusText(code), MessageKo: http.StatusText(code)}
	}
	if msg == "" {
		msg = t.Message
	}
	h := w.Header()
	// A transient 502 or 503 must not stick in a browser or CDN cache.
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	h.Set("X-Content-Type-Options", "nosniff")
	switch negotiate(r.Header.Get("Accept")) {
	case "json":
		h.Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]any{"success": false, "error": msg, "status": code})
	case "html":
		var buf bytes.Buffer
		data := struct {
			text
			Code      int
			RequestID string
			CSS       template.CSS
			Logo      template.URL
		}{t, code, r.Header.Get("X-Request-Id"), wr.css, wr.logo}
		if err := wr.tmpl.Execute(&buf, data); err != nil {
			h.Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(code)
			_, _ = fmt.Fprintf(w, "%d %s\n", code, t.Title)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(buf.Len()))
		w.WriteHeader(code)
		_, _ = w.Write(buf.Bytes())
	default:
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		_, _ = fmt.Fprintf(w, "%d %s: %s\n", code, t.Title, msg)
	}
}

// negotiate picks json, html or text from an Accept header, honouring order but not q-values
// beyond q=0: enough for browsers (text/html first) and API clients (application/json).
func negotiate(accept string) string {
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || params["q"] == "0" {
			continue
		}
		switch {
		case mt == "application/json" || strings.HasSuffix(mt, "+json"):
			return "json"
		case mt == "text/html" || mt == "application/xhtml+xml":
			return "html"
		}
	}
	return "text"
}
