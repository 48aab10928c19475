package errors

import (
	"io/fs"
	"strings"
	"testing"
)

// The pages are inlined into responses on tenants' domains, so the embedded files must all be there
// and must not pull anything from elsewhere.
func TestEmbedded(t *testing.T) {
	tests := []struct {
		fsys fs.FS
		name string
		want []string
	}{
		{Templates, "templates/error.html", []string{"{{.Code}}", "{{.Title}}", "{{.TitleKo}}", "{{.CSS}}", "{{.Logo}}"}},
		{Assets, "assets/style.css", []string{"prefers-color-scheme: dark"}},
		{Assets, "assets/logo.svg", []string{"<svg"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := fs.ReadFile(tc.fsys, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("lacks %q", w)
				}
			}
			// The SVG namespace is a name, not a fetch; anything else with a scheme is.
			s = strings.ReplaceAll(s, `xmlns="http://www.w3.org/2000/svg"`, "")
			for _, bad := range []string{"http://", "https://", "@import", "url("} {
				if strings.Contains(s, bad) {
					t.Errorf("refers to another resource: contains %q", bad)
				}
			}
		})
	}
}
