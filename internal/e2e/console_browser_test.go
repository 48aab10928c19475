package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// TestBrowserConsole drives the web console in a real headless Chromium against the real binaries:
// sign-in (a wrong key first), registering a domain and copying its key, the agents table filling in
// live when hopgate-client connects, the inspector's live entries, an entry without its secret and
// its replay, rotating the key (the agent's row goes), the audit log, the Korean texts, and
// screenshots at 1280 px, 360 px and in dark mode. Any console error, exception or CSP violation in
// the browser fails it. It runs only with HOP_BROWSER_TESTS=1; on CI a missing Chromium is a failure.
func TestBrowserConsole(t *testing.T) {
	chrome := chromium(t)
	shots := os.Getenv("HOP_SCREENSHOT_DIR")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", shots)

	g := startGateway(t, gatewayOptions{})
	_, port, _ := net.SplitHostPort(g.addr)
	origin := "https://localhost:" + port
	const domain = "browser.example.test"
	const secret = "browser-secret-123"

	// The demo target the agent forwards to.
	targetAddr := hoptest.FreeAddr(t)
	demo := startProcess(t, "hopgate-demo-target", []string{"-listen", targetAddr}, nil)
	waitFor(t, 10*time.Second, "demo target listening", func() bool { return len(lines(demo, "demo target listening")) > 0 })

	// Chromium trusts exactly the keys of the gateway's development CA and of the certificate it
	// serves for localhost (pinned by SPKI), not every certificate; every name resolves to loopback.
	ctx := startBrowser(t, chrome, spkiPins(t, g), 150*time.Second, chromedp.Flag("lang", "en-US"))

	var mu sync.Mutex
	var problems, dialogs, origins []string
	// Errors the browser may log, each once: a page the test expects to be refused, by path and status.
	expected := map[string]int{}
	expect := func(path string, status int) {
		mu.Lock()
		defer mu.Unlock()
		expected[fmt.Sprintf("%s %d", path, status)]++
	}
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			problems = append(problems, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, msg))
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, a.Description+string(a.Value))
				}
				problems = append(problems, "console.error: "+strings.Join(parts, " "))
			}
		case *cdplog.EventEntryAdded:
			e := ev.Entry
			if e.Level != cdplog.EntryLevelError {
				return
			}
			if e.Source == "network" && strings.HasPrefix(e.URL, origin) {
				for k, n := range expected {
					path, status, _ := strings.Cut(k, " ")
					if n > 0 && strings.TrimPrefix(e.URL, origin) == path && strings.Contains(e.Text, "status of "+status) {
						expected[k]--
						return
					}
				}
			}
			problems = append(problems, fmt.Sprintf("log %s %s: %s (%s)", e.Source, e.Level, e.Text, e.URL))
		case *network.EventRequestWillBeSentExtraInfo:
			for k, v := range ev.Headers {
				if strings.EqualFold(k, "origin") {
					origins = append(origins, fmt.Sprint(v))
				}
			}
		case *page.EventJavascriptDialogOpening:
			// Accept every confirmation; in a goroutine, as the listener must not call the browser.
			dialogs = append(dialogs, ev.Message)
			go func() {
				if _, err := chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}); err != nil && ctx.Err() == nil {
					t.Errorf("accept dialog: %v", err)
				}
			}()
		}
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Errorf("browser: %s", p)
		}
	}()

	b := &tab{t: t, ctx: ctx, origin: origin}
	// The copy button writes to the clipboard.
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		if _, err := chromedp.CallBrowser(ctx, browser.SetPermission, browser.SetPermissionParams{
			Permission: &browser.PermissionDescriptor{Name: name}, Setting: browser.PermissionSettingGranted, Origin: origin}); err != nil {
			t.Fatalf("grant %s: %v", name, err)
		}
	}

	// 1. Sign in: a wrong key shows the error and opens no session; the admin key does.
	b.navigate("/console/overview")
	if loc := b.location(); !strings.HasSuffix(loc, "/console/sign-in") {
		t.Fatalf("not signed in, /console/overview went to %s", loc)
	}
	wrongKey := func() *network.Response {
		b.do(chromedp.SendKeys(chromedp.CSS(`input[name="key"]`), "not-the-admin-key-0000"))
		return b.submit(`form[action="/console/sign-in"] button[type="submit"]`)
	}
	expect("/console/sign-in", http.StatusUnauthorized)
	res := wrongKey()
	if res.Status != http.StatusUnauthorized {
		t.Fatalf("wrong key: status %d: %s (cookies %v)", res.Status, b.text("main"), b.cookieNames())
	}
	if txt := b.text(".problem"); !strings.Contains(txt, "That key is not the admin key.") {
		t.Fatalf("wrong key: problem %q", txt)
	}
	if cookies := b.cookieNames(); cookies["__Host-hopgate_console"] {
		t.Fatalf("a wrong key opened a session: %v", cookies)
	}
	b.navigate("/console/domains")
	if loc := b.location(); !strings.HasSuffix(loc, "/console/sign-in") {
		t.Fatalf("after a wrong key /console/domains went to %s", loc)
	}
	b.do(chromedp.SendKeys(chromedp.CSS(`input[name="key"]`), g.adminKey))
	if res := b.submit(`form[action="/console/sign-in"] button[type="submit"]`); res.Status != http.StatusOK || !strings.HasSuffix(res.URL, "/console/overview") {
		t.Fatalf("sign-in: status %d at %s", res.Status, res.URL)
	}
	if !b.cookieNames()["__Host-hopgate_console"] {
		t.Fatal("no session cookie after signing in")
	}
	mu.Lock()
	if !slices.Contains(origins, origin) {
		t.Errorf("the sign-in post did not carry Origin: %s (%q)", origin, origins)
	}
	mu.Unlock()

	// 2. Register a domain in the form; its key shows once; the copy button copies it.
	b.navigate("/console/domains")
	b.do(chromedp.SendKeys(chromedp.CSS(`form[action="/console/domains/register"] input[name="domain"]`), domain),
		chromedp.SendKeys(chromedp.CSS(`form[action="/console/domains/register"] input[name="memo"]`), "from the browser"))
	if res := b.submit(`form[action="/console/domains/register"] button[type="submit"]`); res.Status != http.StatusOK {
		t.Fatalf("register: status %d", res.Status)
	}
	key := strings.TrimSpace(b.text("#new-key"))
	if !strings.HasPrefix(key, "hopgate_") {
		t.Fatalf("#new-key = %q", key)
	}
	if loc := b.location(); strings.Contains(loc, key) {
		t.Fatalf("the key is in the URL %s", loc)
	}
	if n := b.eval(`document.querySelectorAll('#domains-table tr[data-domain="` + domain + `"]').length`); n != "1" {
		t.Fatalf("the registered domain's row: %s", n)
	}
	b.do(chromedp.Click(chromedp.CSS(`button[data-copy="new-key"]`)))
	b.poll(`document.querySelector('button[data-copy="new-key"]').textContent === document.querySelector('button[data-copy="new-key"]').dataset.copied`, "the copy button says copied")
	if clip := b.eval(`navigator.clipboard.readText()`); clip != key {
		t.Errorf("clipboard holds %q, want the key", clip)
	}

	// 3. The agents page, open before the agent connects, shows its row without a reload.
	b.navigate("/console/agents")
	b.markPage()
	if n := b.eval(`document.querySelectorAll('#agents-table tr[data-domain]').length`); n != "0" {
		t.Fatalf("agents before any agent: %s rows", n)
	}
	g.startAgent(domain, key, "http://"+targetAddr)
	b.poll(`document.querySelector('#agents-table tr[data-domain="`+domain+`"][data-session]') !== null`, "the agent's row on the open agents page")
	b.checkMarked("the agents page")

	// 4. The inspector: on with bodies, three requests appear live, the entry hides the secret, replay.
	b.navigate("/console/inspect?domain=" + domain)
	b.do(chromedp.Click(chromedp.CSS(`form[action="/console/inspect/toggle"] input[name="bodies"]`)))
	events := chromedp.Events(ctx, network.ResponseReceived)
	if res := b.submit(`form[action="/console/inspect/toggle"] button[type="submit"]`); res.Status != http.StatusOK {
		t.Fatalf("inspect on: status %d", res.Status)
	}
	if on := b.eval(`document.querySelector('[data-live]') !== null && document.querySelector('#entries') !== null`); on != "true" {
		t.Fatal("the inspector is not shown on after the toggle")
	}
	// The answer to the form shows the page's GET address: a reload or the live refresh must not
	// post again (or get 405 from the form's path).
	if loc := b.eval(`location.pathname + location.search`); loc != "/console/inspect?domain="+domain {
		t.Errorf("after the toggle the address is %s", loc)
	}
	b.markPage()
	waitEvent(t, ctx, events, "the live view's event stream", func(ev network.EventResponseReceived) bool {
		return strings.Contains(ev.Response.URL, "/console/inspect/events?domain="+domain) && ev.Response.Status == http.StatusOK
	})
	c := g.httpClient(false)
	for i, path := range []string{"/browser/one", "/browser/two?x=1", "/browser/secret"} {
		req, _ := http.NewRequest(http.MethodGet, g.url(domain, path), nil)
		if i == 2 {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "hello from the private host") {
			t.Fatalf("GET %s through the tunnel: %d %s", path, res.StatusCode, body)
		}
	}
	b.poll(`document.querySelectorAll('#entries tbody tr[data-id]').length === 3`, "three live entries")
	b.checkMarked("the inspect page")
	b.noSecret(secret, "the inspect page")
	href := b.eval(`Array.from(document.querySelectorAll('#entries tbody tr[data-id] a')).find(a => a.textContent === '/browser/secret').getAttribute('href')`)
	if !strings.HasPrefix(href, "/console/inspect/entry?domain="+domain+"&id=") {
		t.Fatalf("the entry's link: %q", href)
	}
	entryID := href[strings.LastIndex(href, "=")+1:]
	if res := b.submit(`#entries a[href="` + href + `"]`); res.Status != http.StatusOK {
		t.Fatalf("entry: status %d", res.Status)
	}
	if h := b.text("h1"); h != "GET /browser/secret" {
		t.Errorf("entry heading %q", h)
	}
	if txt := b.text(".exchange"); !strings.Contains(txt, "[redacted]") || !strings.Contains(txt, "hello from the private host") {
		t.Errorf("the entry shows no redacted Authorization or no response body:\n%s", txt)
	}
	b.noSecret(secret, "the entry page")
	if res := b.submit(`form[action="/console/inspect/replay"] button[type="submit"]`); res.Status != http.StatusOK {
		t.Fatalf("replay: status %d", res.Status)
	}
	if n := b.eval(`document.querySelectorAll('.pair > .exchange, .pair > div > .exchange').length`); n != "2" {
		t.Fatalf("after replay %s exchanges side by side, want 2", n)
	}
	if txt := b.text(".pair > div > .exchange"); !strings.Contains(txt, "↻ "+entryID) || !strings.Contains(txt, "hello from the private host") {
		t.Errorf("the new exchange is not the replay of %s:\n%s", entryID, txt)
	}
	b.noSecret(secret, "the replay page")

	// 7. Screenshots of every page, at 1280 px, at 360 px and in dark mode.
	pages := []struct{ name, path string }{
		{"overview", "/console/overview"},
		{"domains", "/console/domains"},
		{"agents", "/console/agents"},
		{"certificates", "/console/certificates"},
		{"inspect", "/console/inspect?domain=" + domain},
		{"entry", href},
		{"audit", "/console/audit"},
	}
	for _, p := range pages {
		b.screenshot(shots, p.name, p.path)
	}
	b.viewport(1280, false)

	// 5. Rotate the key (after the confirmation); the old key's agent is gone from the agents page.
	b.navigate("/console/domains")
	mu.Lock()
	seen := len(dialogs)
	mu.Unlock()
	if res := b.submit(`#domains-table tr[data-domain="` + domain + `"] form[action="/console/domains/rotate"] button[type="submit"]`); res.Status != http.StatusOK {
		t.Fatalf("rotate: status %d", res.Status)
	}
	mu.Lock()
	if len(dialogs) != seen+1 || dialogs[seen] != "Rotate the key? Agents using the old key are disconnected." {
		t.Errorf("dialogs: %q", dialogs)
	}
	mu.Unlock()
	if nk := strings.TrimSpace(b.text("#new-key")); !strings.HasPrefix(nk, "hopgate_") || nk == key {
		t.Fatalf("rotated key %q", nk)
	}
	if loc := b.eval(`location.pathname + location.search`); loc != "/console/domains" {
		t.Errorf("after the rotation the address is %s", loc)
	}
	b.navigate("/console/agents")
	b.markPage()
	b.poll(`document.querySelector('#agents-table tr[data-domain="`+domain+`"]') === null`, "the agent's row gone after the rotation")
	b.checkMarked("the agents page")

	// 6. The audit log shows the sign-ins, the register, the rotation and the inspector.
	b.navigate("/console/audit")
	actions := b.eval(`Array.from(document.querySelectorAll('table tbody tr')).map(tr => tr.cells[4].textContent + ' ' + tr.cells[6].textContent).join('\n')`)
	for _, want := range []string{"console/sign-in 401 Unauthorized", "console/sign-in 200 OK", "domains/register 201 Created",
		"domains/rotate-key 200 OK", "inspect 200 OK", "inspect/replay 200 OK"} {
		if !slices.Contains(strings.Split(actions, "\n"), want) {
			t.Errorf("the audit page lacks %q:\n%s", want, actions)
		}
	}
	b.noSecret(secret, "the audit page")

	// 9. Korean.
	if res := b.submit("a.lang"); res.Status != http.StatusOK {
		t.Fatalf("language switch: status %d", res.Status)
	}
	if lang := b.eval(`document.documentElement.lang`); lang != "ko" {
		t.Fatalf("html lang = %q after the switch", lang)
	}
	if h := b.text("h1"); !containsHangul(h) {
		t.Errorf("the audit page's heading in Korean: %q", h)
	}
	if nav := b.text("header nav"); !strings.Contains(nav, "개요") {
		t.Errorf("the navigation in Korean: %q", nav)
	}
	b.screenshotAt(shots, "audit-ko", "", 1280, false)
}

func containsHangul(s string) bool {
	for _, r := range s {
		if r >= 0xAC00 && r <= 0xD7A3 {
			return true
		}
	}
	return false
}

// chromium is the browser the test runs: HOP_CHROMIUM, or the first Chromium or Chrome on PATH. The
// browser tests run only with HOP_BROWSER_TESTS=1; then, on CI, a missing browser fails the test.
func chromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("HOP_BROWSER_TESTS") != "1" {
		t.Skip("set HOP_BROWSER_TESTS=1 to run the browser test")
	}
	chrome := findChromium()
	if chrome == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("HOP_BROWSER_TESTS=1 on CI but no chromium found (set HOP_CHROMIUM or install chromium)")
		}
		t.Skip("no chromium found (set HOP_CHROMIUM)")
	}
	return chrome
}

// startBrowser runs headless chrome, which trusts exactly the certificates whose keys are pinned (not
// every certificate) and resolves every name to loopback. Its context ends after timeout or with
// the test.
func startBrowser(t *testing.T, chrome string, pins []string, timeout time.Duration, opts ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), append(append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.NoSandbox,
		chromedp.Flag("host-resolver-rules", "MAP * 127.0.0.1"),
		chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(pins, ",")),
		chromedp.WindowSize(1280, 900),
	), opts...)...)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	ctx, cancel := context.WithTimeout(bctx, timeout)
	t.Cleanup(func() { cancel(); cancelBrowser(); cancelAlloc() })
	return ctx
}

// spkiPin is the base64 SHA-256 digest of c's public key, as Chromium's SPKI pin list takes it.
func spkiPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// findChromium is HOP_CHROMIUM, or the first Chromium or Chrome on PATH.
func findChromium() string {
	if p := os.Getenv("HOP_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// spkiPins are the base64 SHA-256 digests of the public keys of the development CA and of the
// certificate chain the gateway serves for localhost, verified against that CA first.
func spkiPins(t *testing.T, g *gateway) []string {
	t.Helper()
	var pins []string
	pin := func(c *x509.Certificate) { pins = append(pins, spkiPin(c)) }
	raw, err := os.ReadFile(g.caFile)
	if err != nil {
		t.Fatal(err)
	}
	for blk, rest := pem.Decode(raw); blk != nil; blk, rest = pem.Decode(rest) {
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			pin(c)
		}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr, g.hop.TLSConfig("localhost"))
	if err != nil {
		t.Fatalf("TLS to the gateway as localhost: %v", err)
	}
	defer conn.Close()
	for _, c := range conn.ConnectionState().PeerCertificates {
		pin(c)
	}
	return pins
}

func waitEvent[E any](t *testing.T, ctx context.Context, events func(func(E, error) bool), what string, match func(E) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := make(chan bool, 1)
	go func() {
		for ev, err := range events {
			if err != nil {
				done <- false
				return
			}
			if match(ev) {
				done <- true
				return
			}
		}
		done <- false
	}()
	select {
	case ok := <-done:
		if !ok {
			t.Fatalf("no %s", what)
		}
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
	}
}

// tab is the browser's one tab, its every step bounded by the test's context.
type tab struct {
	t      *testing.T
	ctx    context.Context
	origin string
}

func (b *tab) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatal(err)
	}
}

func (b *tab) navigate(path string) {
	b.t.Helper()
	b.do(chromedp.Navigate(b.origin+path), chromedp.WaitReady(chromedp.CSS("body")))
}

// submit clicks sel and returns the response of the page it leads to.
func (b *tab) submit(sel string) *network.Response {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	res, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("click %s: %v", sel, err)
	}
	if res == nil {
		b.t.Fatalf("click %s: no navigation", sel)
	}
	b.do(chromedp.WaitReady(chromedp.CSS("body")))
	return res
}

func (b *tab) location() string {
	b.t.Helper()
	return b.eval("location.href")
}

func (b *tab) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// eval evaluates expr (awaiting a promise) and returns its value as a string.
func (b *tab) eval(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`Promise.resolve(`+expr+`).then(v => String(v))`,
		chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("eval %s: %v", expr, err)
	}
	return s
}

func (b *tab) evalInt(expr string) int64 {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int64](expr))
	if err != nil {
		b.t.Fatalf("eval %s: %v", expr, err)
	}
	return n
}

// poll waits up to 15 s (three refreshes of a live table) until expr is true.
func (b *tab) poll(expr, what string) {
	b.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if b.eval(expr) == "true" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.t.Fatalf("timed out waiting for %s", what)
}

// markPage and checkMarked prove that the page was not loaded again in between.
func (b *tab) markPage() { b.t.Helper(); b.eval(`window.hopMark = "still-here"`) }

func (b *tab) checkMarked(what string) {
	b.t.Helper()
	if b.eval(`window.hopMark`) != "still-here" {
		b.t.Fatalf("%s was reloaded", what)
	}
}

func (b *tab) noSecret(secret, what string) {
	b.t.Helper()
	if html := b.eval(`document.documentElement.outerHTML`); strings.Contains(html, secret) {
		b.t.Errorf("%s shows the secret", what)
	}
}

func (b *tab) cookieNames() map[string]bool {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{b.origin + "/console/"}})
	if err != nil {
		b.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, c := range res.Cookies {
		out[c.Name] = true
	}
	return out
}

func (b *tab) viewport(width int64, dark bool) {
	b.t.Helper()
	scheme := "light"
	if dark {
		scheme = "dark"
	}
	b.do(chromedp.EmulateViewport(width, 900), func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}})
		return chromedp.Void{}, err
	})
}

// screenshot saves path at 1280 px, at 360 px and in dark mode as console-NAME-{1280,360,dark}.png.
func (b *tab) screenshot(dir, name, path string) {
	b.t.Helper()
	b.screenshotAt(dir, name+"-1280", path, 1280, false)
	b.screenshotAt(dir, name+"-360", path, 360, false)
	b.screenshotAt(dir, name+"-dark", path, 1280, true)
}

func (b *tab) screenshotAt(dir, name, path string, width int64, dark bool) {
	b.t.Helper()
	b.viewport(width, dark)
	if path != "" {
		b.navigate(path)
	}
	if width < 480 {
		// No horizontal scroll of the page: only the .scroll wrappers of wide tables may scroll.
		if w := b.evalInt(`document.documentElement.scrollWidth`); w > width+2 {
			wide := b.eval(`Array.from(document.querySelectorAll('body *')).filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > ` +
				fmt.Sprint(width+2) + `).map(e => e.tagName + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '')).slice(0, 10).join(', ')`)
			b.t.Errorf("%s at %d px: the page is %d px wide (%s)", name, width, w, wide)
		}
	}
	if dark {
		if bg := b.eval(`getComputedStyle(document.body).backgroundColor`); bg != "rgb(20, 20, 23)" {
			b.t.Errorf("%s: dark mode background %s", name, bg)
		}
	}
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(buf))
	if err != nil {
		b.t.Fatalf("screenshot %s is no PNG: %v", name, err)
	}
	if int64(cfg.Width) != width {
		b.t.Errorf("screenshot %s is %d px wide, want %d", name, cfg.Width, width)
	}
	if err := os.WriteFile(filepath.Join(dir, "console-"+name+".png"), buf, 0o644); err != nil {
		b.t.Fatal(err)
	}
}
