package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

const auditUsageText = `Usage: hopgate-server audit <list|verify> [flags]

The audit log: every change made through the admin API, this command line and the console (who,
from where, what, when, and the result), kept in the domain store as a hash chain.

Commands:
  list           print the last 100 entries, newest first
  verify         check the whole chain: exit 0 if it is intact, 1 naming every row that was edited
                 or that follows a deleted row

Flags: --admin-url, --admin-api-key, --ca-file, --wait, --insecure and --json, with their
environment variables, as for hopgate-server domains (see hopgate-server domains --help).

Exit codes: 0 done (verify: intact), 1 the chain is broken, or the API refused or could not be
reached, 2 bad usage.
`

var auditProgram = &program{
	name:  "audit",
	usage: auditUsageText,
	commands: map[string]command{
		"list":   {args: 0, run: auditList},
		"verify": {args: 0, run: auditVerify},
	},
	names: "list or verify",
}

// Audit runs `hopgate-server audit <args>` and returns the exit code.
func Audit(ctx context.Context, args []string, env Env, out IO) int {
	return auditProgram.main(ctx, args, env, out)
}

func auditList(ctx context.Context, c *client, _ string, s *settings, out IO) error {
	_, raw, err := c.call(ctx, http.MethodGet, "/api/v1/admin/audit", nil, nil)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	var a struct {
		Entries []admin.AuditEntryJSON `json:"entries"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return fmt.Errorf("unexpected answer from the gateway: %w", err)
	}
	if len(a.Entries) == 0 {
		fmt.Fprintln(out.Stdout, "The audit log is empty.")
		return nil
	}
	tw := tabwriter.NewWriter(out.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWHEN\tWHO\tFROM\tACTION\tTARGET\tRESULT")
	for _, e := range a.Entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.At, oneLine(e.Actor), e.Remote, e.Action, oneLine(e.Target), e.Result)
	}
	return tw.Flush()
}

func auditVerify(ctx context.Context, c *client, _ string, s *settings, out IO) error {
	_, raw, err := c.call(ctx, http.MethodGet, "/api/v1/admin/audit/verify", nil, nil)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil {
		return err
	}
	var a struct {
		Intact   bool                    `json:"intact"`
		Rows     int                     `json:"rows"`
		Problems []registry.AuditProblem `json:"problems"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return fmt.Errorf("unexpected answer from the gateway: %w", err)
	}
	if a.Intact {
		if !s.json {
			fmt.Fprintf(out.Stdout, "The audit log is intact: %d entries, every hash and link checked.\n", a.Rows)
		}
		return nil
	}
	lines := make([]string, len(a.Problems))
	for i, p := range a.Problems {
		lines[i] = "  " + p.String()
	}
	return fmt.Errorf("the audit log is broken (%d entries read):\n%s", a.Rows, strings.Join(lines, "\n"))
}
