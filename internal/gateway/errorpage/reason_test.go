package errorpage

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// TestReasonWording: a reason with wording of its own gets it in every form (the page in both
// languages, JSON and text say the same sentence), never its status's generic wording; with any
// other status the reason is ignored. The 503 for a target that is down must not say the agent is
// not connected.
func TestReasonWording(t *testing.T) {
	wr := newWriter(t, "", "")
	write := func(code int, reason, accept string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Accept", accept)
		req.Header.Set("X-Request-Id", "req-42")
		wr.WriteReason(rec, req, code, reason, "")
		return rec
	}
	for reason, own := range map[string]struct {
		code    int
		says    string // the sentence that matters, in the English message
		notSays string // the status's generic wording, wrong for this reason
	}{
		ReasonTargetDown: {503, "is connected to the gateway, but its local service is down", "not connected to the gateway"},
		ReasonNoRoute:    {404, "agent has no service for this hostname and path", "This gateway does not serve"},
	} {
		t.Run(reason, func(t *testing.T) {
			tx := reasonTexts[reason].text
			if reasonTexts[reason].code != own.code || !strings.Contains(tx.Message, own.says) {
				t.Fatalf("reasonTexts[%q] = %+v", reason, reasonTexts[reason])
			}
			for _, s := range []string{tx.Title, tx.Message, tx.Hint, tx.TitleKo, tx.MessageKo, tx.HintKo} {
				if s == "" {
					t.Errorf("a field of %q's wording is empty: %+v", reason, tx)
				}
			}

			page := write(own.code, reason, "text/html")
			body := page.Body.String()
			if page.Code != own.code || !strings.HasPrefix(page.Header().Get("Content-Type"), "text/html") {
				t.Fatalf("page: %d %s", page.Code, page.Header().Get("Content-Type"))
			}
			for _, want := range []string{tx.Title, tx.Message, tx.Hint, tx.TitleKo, tx.MessageKo, tx.HintKo, "req-42"} {
				if !strings.Contains(body, html.EscapeString(want)) {
					t.Errorf("page lacks %q", want)
				}
			}
			if strings.Contains(body, own.notSays) {
				t.Errorf("page says %q", own.notSays)
			}

			var got jsonError
			rec := write(own.code, reason, "application/json")
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if want := (jsonError{Error: tx.Message, Status: own.code, RequestID: "req-42"}); rec.Code != own.code || got != want {
				t.Errorf("JSON = %d %+v, want %+v", rec.Code, got, want)
			}

			text := write(own.code, reason, "*/*")
			if want := strconv.Itoa(own.code) + " " + tx.Title + ": " + tx.Message + "\n"; text.Body.String() != want {
				t.Errorf("text = %q, want %q", text.Body.String(), want)
			}

			// The same reason under another status keeps that status's wording.
			other := write(500, reason, "*/*").Body.String()
			if want := "500 " + texts[500].Title + ": " + texts[500].Message + "\n"; other != want {
				t.Errorf("reason %q with 500 = %q, want %q", reason, other, want)
			}
		})
	}
	// Without a reason (and with one that has no wording) a status keeps its own.
	for _, reason := range []string{"", "no_agent"} {
		if got := write(503, reason, "*/*").Body.String(); !strings.Contains(got, texts[503].Message) {
			t.Errorf("reason %q: %q, want the 503 wording", reason, got)
		}
	}
}

// An operator's page for a status sees the reason, to word its failures apart.
func TestReasonInOverride(t *testing.T) {
	wr := newWriter(t, writeFiles(t, map[string]string{"503.html": `{{.Code}} [{{.Reason}}] {{.Title}}`}), "")
	for reason, want := range map[string]string{
		ReasonTargetDown: "503 [target_down] " + reasonTexts[ReasonTargetDown].Title,
		"no_agent":       "503 [no_agent] " + texts[503].Title,
		"":               "503 [] " + texts[503].Title,
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Accept", "text/html")
		wr.WriteReason(rec, req, 503, reason, "")
		if got := rec.Body.String(); got != want {
			t.Errorf("reason %q: %q, want %q", reason, got, want)
		}
	}
}
