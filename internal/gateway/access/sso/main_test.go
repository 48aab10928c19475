package sso

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no discovery, key fetch or connection outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
