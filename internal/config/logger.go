package config

import (
	"io"
	"log/slog"
)

// NewLogger returns a logger writing to w at level and above, as JSON lines
// for format "json" and as key=value text for "text" (anything else is JSON:
// the loaders only produce these two).
func NewLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
