package migrations_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Up must not leave migrate's goroutines or connections behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
