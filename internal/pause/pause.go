// Package pause waits for a duration or a context's end, whichever comes first: the one way the
// gateway and the agent sleep between retries, so that every wait ends with a shutdown.
package pause

import (
	"context"
	"time"
)

// For waits d, or until ctx ends; it returns ctx.Err() in that case and nil after a full wait.
// A d of zero or less returns at once (with ctx.Err() if ctx has ended).
func For(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
