package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"

	"github.com/hopgate/hopgate/internal/gateway/policy"
)

const policyPath = "/api/v1/admin/domains/policy"

// readDocument reads the policy document of --file: a file, or stdin for "-". Only its being one
// JSON object is checked here; the gateway validates the rest and names the field it refuses.
func readDocument(path string, stdin io.Reader) (json.RawMessage, error) {
	if path == "" {
		return nil, usagef("policy set needs --file FILE (- reads stdin): the policy as a JSON document")
	}
	name := path
	var r io.Reader
	if path == "-" {
		name = "stdin"
		r = stdin
		if r == nil {
			r = os.Stdin
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("--file: %v", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, policy.MaxBytes+1))
	if err != nil {
		return nil, usagef("--file: read %s: %v", name, err)
	}
	if len(data) > policy.MaxBytes {
		return nil, usagef("--file: %s is larger than %d bytes, the most a policy may be", name, policy.MaxBytes)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, usagef("--file: %s is not JSON: %v", name, err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, usagef(`--file: %s must hold a JSON object, e.g. {"ip_allow":["203.0.113.0/24"]} ({} removes the policy)`, name)
	}
	return data, nil
}

func policyShow(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodGet, policyPath, url.Values{"domain": {domain}}, nil)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	return printPolicy(out.Stdout, a.Policy)
}

func policySet(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	return putPolicy(ctx, c, domain, c.doc, s, out)
}

func policyClear(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	return putPolicy(ctx, c, domain, json.RawMessage(`{}`), s, out)
}

func putPolicy(ctx context.Context, c *client, domain string, doc json.RawMessage, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodPut, policyPath, url.Values{"domain": {domain}}, doc)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	name := a.Domain
	if name == "" {
		name = domain
	}
	if bytes.Equal(bytes.TrimSpace(a.Policy), []byte("{}")) {
		fmt.Fprintf(out.Stdout, "Access policy of %s removed: everyone may visit.\n", name)
		return nil
	}
	fmt.Fprintf(out.Stdout, "Access policy of %s set (secrets are not shown):\n", name)
	return printPolicy(out.Stdout, a.Policy)
}

// printPolicy writes the policy as the API showed it, indented for reading and editing.
func printPolicy(w io.Writer, p json.RawMessage) error {
	var b bytes.Buffer
	if err := json.Indent(&b, p, "", "  "); err != nil {
		return fmt.Errorf("the admin API answered a policy that is not JSON: %w", err)
	}
	fmt.Fprintln(w, b.String())
	return nil
}

func rotateSessionKey(ctx context.Context, c *client, _ string, s *settings, out IO) error {
	_, raw, err := c.call(ctx, http.MethodPost, "/api/v1/admin/sessions/rotate-key", nil, nil)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	fmt.Fprintln(out.Stdout, "Session key rotated: every single-sign-on session has ended; visitors of domains with single sign-on sign in again.")
	return nil
}
