// Package version holds the build's version, set by the Makefile with -ldflags.
package version

// Version is overridden at build time: -ldflags "-X github.com/hopgate/hopgate/internal/version.Version=v1.2.3".
var Version = "dev"
