package pause

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	start := time.Now()
	if err := For(context.Background(), 30*time.Millisecond); err != nil || time.Since(start) < 30*time.Millisecond {
		t.Fatalf("full wait: %v after %s", err, time.Since(start))
	}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start = time.Now()
	if err := For(ctx, time.Hour); !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled wait: %v after %s", err, time.Since(start))
	}
	if err := For(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("zero wait on an ended context: %v", err)
	}
	if err := For(context.Background(), -time.Second); err != nil {
		t.Fatalf("negative wait: %v", err)
	}
}
