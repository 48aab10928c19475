package acme

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	legolog "github.com/go-acme/lego/v4/log"
)

var legoLogOnce sync.Once

// setLegoLogger routes lego's package-level logger to slog.Default (chatty [INFO] lines at debug
// level, [WARN] at warn), so that JSON logs stay JSON. It is set once per process: lego has one.
func setLegoLogger() {
	legoLogOnce.Do(func() { legolog.Logger = slogBridge{} })
}

type slogBridge struct{}

func (slogBridge) emit(msg string) {
	msg = strings.TrimSpace(msg)
	level := slog.LevelDebug
	if rest, ok := strings.CutPrefix(msg, "[WARN] "); ok {
		level, msg = slog.LevelWarn, rest
	} else if rest, ok := strings.CutPrefix(msg, "[INFO] "); ok {
		msg = rest
	}
	slog.Default().Log(context.Background(), level, "lego: "+msg)
}

func (b slogBridge) Print(args ...any)                 { b.emit(fmt.Sprint(args...)) }
func (b slogBridge) Println(args ...any)               { b.emit(fmt.Sprintln(args...)) }
func (b slogBridge) Printf(format string, args ...any) { b.emit(fmt.Sprintf(format, args...)) }
func (b slogBridge) Fatal(args ...any)                 { b.emit(fmt.Sprint(args...)); os.Exit(1) }
func (b slogBridge) Fatalln(args ...any)               { b.emit(fmt.Sprintln(args...)); os.Exit(1) }
func (b slogBridge) Fatalf(format string, args ...any) {
	b.emit(fmt.Sprintf(format, args...))
	os.Exit(1)
}
