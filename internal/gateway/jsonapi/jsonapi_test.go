package jsonapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, http.StatusTeapot, map[string]any{"success": false, "error": "x"})
	if rec.Code != http.StatusTeapot {
		t.Errorf("status %d", rec.Code)
	}
	for k, want := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out["error"] != "x" || out["success"] != false {
		t.Errorf("body %q (%v)", rec.Body.String(), err)
	}
}
