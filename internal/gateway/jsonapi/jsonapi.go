// Package jsonapi writes the JSON answers of the gateway's own endpoints (admin API, health), all with
// the same headers.
package jsonapi

import (
	"encoding/json"
	"net/http"
)

// Write answers v as JSON with code. Such answers carry keys and state that no cache may keep, and
// must never be sniffed as anything else.
func Write(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// An error here means the client is gone; there is nobody left to tell.
	_ = json.NewEncoder(w).Encode(v)
}
