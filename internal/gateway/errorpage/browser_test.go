//go:build linux

package errorpage

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"
)

// TestBrowser renders every page in Debian's headless chromium, in light and dark colour schemes,
// and checks what a visitor would see: the screenshot's background follows the scheme, and the DOM
// shows the status and both the English and the Korean title. It runs when HOP_BROWSER_TESTS=1
// (make browser-test, which installs chromium).
// Screenshots go to HOP_SCREENSHOT_DIR, or a temporary directory, for a human to look at.
func TestBrowser(t *testing.T) {
	bin := chromium(t)
	if out, err := exec.Command("fc-list", ":lang=ko", "family").Output(); err == nil && len(bytes.TrimSpace(out)) == 0 {
		msg := "no Korean font installed (apt-get install fonts-noto-cjk): the Korean text renders as boxes"
		if os.Getenv("HOP_BROWSER_TESTS") == "1" {
			t.Fatal(msg)
		}
		t.Log(msg)
	}
	dir := os.Getenv("HOP_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)

	base := serve(t, newWriter(t, "", ""))
	// Each chromium is a handful of processes; more than one per CPU only makes them time out.
	slots := make(chan struct{}, max(1, min(4, runtime.NumCPU())))
	for _, code := range codes {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			slots <- struct{}{}
			defer func() { <-slots }()
			url := fmt.Sprintf("%s/%d", base, code)

			for _, scheme := range []struct {
				name  string
				flags []string
				dark  bool
			}{
				{"light", nil, false},
				// --force-dark-mode makes chromium report a dark OS theme; the blink setting
				// (0 is dark) sets prefers-color-scheme directly. Both work in chromium 156; the
				// pixel check below says whether they still do.
				{"dark", []string{"--force-dark-mode", "--blink-settings=preferredColorScheme=0"}, true},
			} {
				file := filepath.Join(dir, fmt.Sprintf("%d-%s.png", code, scheme.name))
				// One run both saves the screenshot and prints the DOM: chromium's start-up is
				// most of the test's time.
				args := append(scheme.flags, "--screenshot="+file, "--dump-dom", url)
				checkDOM(t, code, runChromium(t, bin, args...))
				checkScreenshot(t, file, scheme.dark)
			}
		})
	}
}

// chromium returns the browser to use, or skips the test. The test runs only when asked for
// (make browser-test, which CI runs after make test): rendering 26 pages takes a minute or two,
// which make test's budget cannot spare.
func chromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("HOP_BROWSER_TESTS") != "1" {
		t.Skip("browser test runs with HOP_BROWSER_TESTS=1 (make browser-test)")
	}
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("HOP_BROWSER_TESTS=1 but chromium is not on PATH: run make browser-test")
	}
	return bin
}

// runChromium runs one headless chromium and returns its stdout. The browser is given its own
// profile and process group, so that nothing it starts outlives the test.
func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	profile, err := os.MkdirTemp("", "hopgate-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(profile)
	cmd := exec.CommandContext(ctx, bin, append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--hide-scrollbars", "--user-data-dir=" + profile, "--window-size=900,700",
	}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers (crashpad) left behind; ESRCH if none
	}
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, lastLines(stderr.String(), 15))
	}
	return stdout.Bytes()
}

func checkDOM(t *testing.T, code int, dom []byte) {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(dom))
	if err != nil {
		t.Fatalf("parse DOM: %v", err)
	}
	seen := map[string]string{}
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		key := n.Data
		for _, a := range n.Attr {
			if a.Key == "class" && a.Val == "code" {
				key = ".code"
			}
		}
		if _, ok := seen[key]; !ok {
			seen[key] = strings.TrimSpace(textOf(n))
		}
	}
	tx := texts[code]
	for key, want := range map[string]string{".code": strconv.Itoa(code), "h1": tx.Title, "h2": tx.TitleKo} {
		if seen[key] != want {
			t.Errorf("rendered %s = %q, want %q", key, seen[key], want)
		}
	}
}

func textOf(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

// checkScreenshot looks at the page background (the corners, outside the card) and at whether
// anything was drawn at all.
func checkScreenshot(t *testing.T, file string, dark bool) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", file, err)
	}
	b := img.Bounds()
	if b.Dx() < 300 || b.Dy() < 300 {
		t.Fatalf("%s is %dx%d", file, b.Dx(), b.Dy())
	}
	for _, p := range []image.Point{{b.Min.X + 4, b.Min.Y + 4}, {b.Max.X - 5, b.Max.Y - 5}} {
		l := luminance(img, p)
		if dark && l > 60 || !dark && l < 200 {
			t.Errorf("%s: background at %v has luminance %.0f, want %s", file, p, l, map[bool]string{true: "dark (< 60)", false: "light (> 200)"}[dark])
		}
	}
	colours := map[[3]uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
		}
	}
	if len(colours) < 20 {
		t.Errorf("%s has %d colours: nothing rendered?", file, len(colours))
	}
}

// luminance is the perceived brightness of the pixel at p, 0 to 255.
func luminance(img image.Image, p image.Point) float64 {
	r, g, b, _ := img.At(p.X, p.Y).RGBA()
	return (0.2126*float64(r) + 0.7152*float64(g) + 0.0722*float64(b)) / 257
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
