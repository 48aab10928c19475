// Package hoptest runs the real HopGate binaries for the end-to-end tests and the benchmark: child
// processes that write to log files, a debug-mode gateway on loopback with its admin API, agents, and
// self-signed certificates for test targets. It returns errors instead of taking a testing.T, so
// that bench (a program) can use it too.
package hoptest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Env is the environment of this process without its HOP_* variables, then extra: a child sees only
// the settings its caller gives it, whatever the machine has exported.
func Env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOP_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// Command describes a child process.
type Command struct {
	// Name is used in messages; the base name of Path when empty.
	Name string
	Path string
	Args []string
	// Env is added to Env(): the machine's HOP_* variables are never passed on.
	Env []string
	// Log receives stdout and stderr; it is created, or truncated.
	Log string
	// HoldStdin gives the child a pipe as stdin that stays open until Stop, for a child that exits
	// when its stdin ends.
	HoldStdin bool
}

// Process is a running child. Its output goes to a file, never to a pipe: a parent slowed down (by
// -race, by load) can then never block the child's logger and so change what is measured.
type Process struct {
	Name string
	Log  *Log

	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	code  int // written before done is closed
}

// Start starts c. The child is killed if this process dies, however it dies (Pdeathsig).
func Start(c Command) (*Process, error) {
	name := c.Name
	if name == "" {
		name = filepath.Base(c.Path)
	}
	out, err := os.Create(c.Log)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer out.Close() // the child holds its own descriptor
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = Env(c.Env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &Process{Name: name, Log: &Log{Path: c.Log}, cmd: cmd, done: make(chan struct{}), code: -1}
	if c.HoldStdin {
		if p.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
	}
	if err := cmd.Start(); err != nil {
		if p.stdin != nil {
			p.stdin.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	// Ends when the child does; Stop and Kill make sure it does.
	go func() {
		_ = cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	return p, nil
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the child's exit code: -1 while it runs, or if a signal ended it.
func (p *Process) ExitCode() int {
	select {
	case <-p.done:
		return p.code
	default:
		return -1
	}
}

// Signal sends sig to the child unless it has exited.
func (p *Process) Signal(sig os.Signal) {
	if !p.Exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Wait waits for the child to exit and returns its exit code, or an error when ctx ends first.
func (p *Process) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.code, nil
	case <-ctx.Done():
		return -1, fmt.Errorf("%s has not exited: %w", p.Name, ctx.Err())
	}
}

// Stop asks the child to end (stdin closed, SIGTERM) and kills it after grace.
func (p *Process) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	if p.stdin != nil {
		_ = p.stdin.Close()
	}
	p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Kill()
	}
}

// Kill kills the child and waits until it is gone.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// ExitedError is a child that ended before it was ready.
type ExitedError struct {
	Name string
	Code int
	// Log is the end of its output.
	Log string
}

func (e *ExitedError) Error() string {
	return fmt.Sprintf("%s exited with code %d before it was ready:\n%s", e.Name, e.Code, e.Log)
}

// exitedError describes p, which has exited.
func (p *Process) exitedError() *ExitedError {
	return &ExitedError{Name: p.Name, Code: p.ExitCode(), Log: p.Log.Tail(errorLogBytes)}
}

// errorLogBytes is how much of a log an error carries.
const errorLogBytes = 8 << 10

// Log is a child's output file. The child writes it directly; each call reads it again.
type Log struct {
	Path string
}

// String is the whole log ("" if it cannot be read).
func (l *Log) String() string {
	b, _ := os.ReadFile(l.Path)
	return string(b)
}

// Tail is the last n bytes of the log.
func (l *Log) Tail(n int) string {
	s := l.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// Lines are the lines of the log that contain substr, without their newline.
func (l *Log) Lines(substr string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, substr) {
			out = append(out, strings.TrimRight(line, "\r\n"))
		}
	}
	return out
}

// Field is the string field of the first JSON log line whose msg is one of msgs; "" if there is none
// yet.
func (l *Log) Field(field string, msgs ...string) string {
	v, _ := logEntry(l.String(), msgs...)[field].(string)
	return v
}

// logEntry decodes the first JSON line of text whose msg is one of msgs; nil if there is none. A
// line still being written does not decode, and so counts only once it is whole.
func logEntry(text string, msgs ...string) map[string]any {
	for line := range strings.Lines(text) {
		if !strings.HasPrefix(line, "{") || !slices.ContainsFunc(msgs, func(m string) bool { return strings.Contains(line, m) }) {
			continue // cheap filter: most lines are not the one wanted
		}
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		if msg, _ := e["msg"].(string); slices.Contains(msgs, msg) {
			return e
		}
	}
	return nil
}

// MemKiB reads a memory figure of process pid from /proc/<pid>/status, in KiB: VmRSS (resident now)
// or VmHWM (peak resident).
func MemKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}
