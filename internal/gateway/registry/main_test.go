package registry

import (
	"testing"

	"go.uber.org/goleak"
)

// Every store, connection pool and server a test opens must be closed by its end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
