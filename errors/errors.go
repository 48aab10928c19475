// Package errors holds the HTML error pages and their assets that hopgate-server embeds.
package errors

import "embed"

// Templates holds templates/error.html, rendered for every error status.
//
//go:embed templates/*.html
var Templates embed.FS

// Assets is served under /__hopgate_assets__/.
//
//go:embed assets
var Assets embed.FS
