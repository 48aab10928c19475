// Package config loads the settings of hopgate-server and hopgate-client from
// flags, the environment, a .env file and defaults, and validates them.
//
// Every setting is an environment variable and a flag at the same time. A value
// is taken from the first source that gives a non-empty one, in this order:
// flag, environment, .env file, default. An empty value counts as unset (so
// `HOP_X=` in a compose file falls through to the default), except for the few
// settings where empty means something (HOP_SERVER_METRICS_LISTEN: disabled).
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/joho/godotenv"
)

// ErrHelp is returned by LoadServer and LoadClient when the arguments ask for
// help (-h, --help). It is flag.ErrHelp, so either can be tested with errors.Is.
// The caller prints ServerUsage or ClientUsage and exits 0.
var ErrHelp = flag.ErrHelp

// setting is one row of a binary's table: the names under which it is read,
// its default, its meaning, and how its text becomes a typed field.
type setting struct {
	env   string // environment variable, e.g. HOP_SERVER_HTTP_LISTEN
	flag  string // flag name without dashes, e.g. http-listen
	def   string // default, in the same text form an operator would write
	usage string // meaning, one sentence or two
	// shownDefault replaces def in the usage text when the default is not a
	// constant (derived from another setting, or required).
	shownDefault string
	secret       bool // never printed: usage says so, logs say redacted
	required     bool // an empty value is an error
	keepEmpty    bool // an explicitly empty value wins over later sources
	bind         binding
}

// binding ties a setting to one typed field of the config struct.
type binding struct {
	kind  string                 // placeholder in the usage text: "duration", "host:port", ...
	set   func(raw string) error // parse raw and store it in the field
	value func() slog.Value      // current field value, for logs
	bool  bool                   // the flag may be given without a value (--debug)
}

// bind returns the binding of a field of type T, parsed by parse.
func bind[T any](dst *T, kind string, parse func(string) (T, error)) binding {
	return binding{
		kind: kind,
		set: func(raw string) error {
			v, err := parse(raw)
			if err != nil {
				return err
			}
			*dst = v
			return nil
		},
		value: func() slog.Value { return logValueOf(*dst) },
	}
}

// bindBool is bind for a boolean field, whose flag needs no value.
func bindBool(dst *bool) binding {
	b := bind(dst, "", parseBool)
	b.bool = true
	return b
}

// flagValue records the raw text of a flag. Parsing happens later, together
// with the other sources, so that every bad value is reported at once.
type flagValue struct {
	raw    string
	set    bool
	isBool bool
}

func (f *flagValue) String() string { return f.raw }

func (f *flagValue) Set(s string) error {
	f.raw, f.set = s, true
	return nil
}

func (f *flagValue) IsBoolFlag() bool { return f.isBool }

// loaded is what load found besides the values: which settings got a non-empty
// value from flag, env or .env (for defaults that depend on whether the operator
// chose a value), and the retired settings that are set.
type loaded struct {
	set        map[string]bool
	deprecated []Notice
}

func (l loaded) explicit(env string) bool { return l.set[env] }

// load fills the fields bound in settings from args, lookupEnv and the .env
// file at dotenvPath ("" = no file; a missing file is fine). It returns every
// bad value in errs. Unknown flags, stray arguments and an unreadable .env file
// are fatal instead: nothing else could be trusted. bin selects the rows of the
// retired settings that apply.
func load(name string, bin binary, settings []setting, args []string, lookupEnv func(string) (string, bool), dotenvPath string) (got loaded, errs []error, fatal error) {
	fset := flag.NewFlagSet(name, flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	flags := make(map[string]*flagValue, len(settings))
	for _, s := range settings {
		v := &flagValue{isBool: s.bind.bool}
		flags[s.env] = v
		fset.Var(v, s.flag, s.usage)
	}
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return got, nil, ErrHelp
		}
		return got, nil, fmt.Errorf("command line: %w (see --help)", err)
	}
	if fset.NArg() > 0 {
		return got, nil, fmt.Errorf("command line: unexpected argument %q: every setting is a --flag (see --help)", fset.Arg(0))
	}

	dotenv, err := readDotenv(dotenvPath)
	if err != nil {
		return got, nil, err
	}
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}

	sources := []func(s setting) (string, bool){
		func(s setting) (string, bool) { f := flags[s.env]; return f.raw, f.set },
		func(s setting) (string, bool) { return lookupEnv(s.env) },
		func(s setting) (string, bool) { v, ok := dotenv[s.env]; return v, ok },
	}

	got.set = make(map[string]bool, len(settings))
	got.deprecated = retiredNotices(bin, lookupEnv, dotenv)
	for _, s := range settings {
		raw, explicit := s.def, false
		for _, src := range sources {
			v, ok := src(s)
			if !ok {
				continue
			}
			v = strings.TrimSpace(v)
			if v == "" && !s.keepEmpty {
				continue
			}
			raw, explicit = v, true
			break
		}
		got.set[s.env] = explicit && raw != ""
		if raw == "" {
			if s.required {
				errs = append(errs, s.errorf("required: %s", s.usage))
			}
			// The field keeps its zero value, which is what empty means.
			continue
		}
		if err := s.bind.set(raw); err != nil {
			errs = append(errs, s.wrap(err))
		}
	}
	return got, errs, nil
}

// readDotenv reads the .env file without touching the process environment.
func readDotenv(path string) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	m, err := godotenv.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return m, nil
}

// wrap names the setting in err, the form every configuration error takes:
// HOP_SERVER_SHUTDOWN_TIMEOUT (--shutdown-timeout): "abc" is not a duration like 30s
func (s setting) wrap(err error) error {
	return fmt.Errorf("%s (--%s): %w", s.env, s.flag, err)
}

func (s setting) errorf(format string, args ...any) error {
	return s.wrap(fmt.Errorf(format, args...))
}

// find returns the row of env in settings; the tables are fixed, so a missing
// row is a programming error.
func find(settings []setting, env string) setting {
	for _, s := range settings {
		if s.env == env {
			return s
		}
	}
	panic("config: no setting " + env)
}

// usage writes the help text of a binary from its table.
func usage(w io.Writer, name, intro string, settings []setting) {
	fmt.Fprintf(w, "Usage: %s [flags]\n\n%s\n\n", name, intro)
	fmt.Fprintf(w, "Every setting is a flag and an environment variable; the first non-empty value wins:\n")
	fmt.Fprintf(w, "flag > environment > .env file in the working directory > default.\n")
	fmt.Fprintf(w, "Booleans accept 1/0, true/false, yes/no, on/off.\n\nSettings:\n")
	for _, s := range settings {
		placeholder := ""
		if s.bind.kind != "" {
			placeholder = " " + s.bind.kind
		}
		fmt.Fprintf(w, "  --%s%s\n", s.flag, placeholder)
		fmt.Fprintf(w, "      env %s, default %s\n", s.env, s.defaultText())
		fmt.Fprintf(w, "      %s\n", s.usage)
		if s.secret {
			fmt.Fprintf(w, "      %s\n", secretNote)
		}
	}
}

// secretNote marks a secret in the help. The default column of a secret reads
// like any other's ("(empty)", "(required)"): a word like "(secret)" there read
// as if a built-in secret existed.
const secretNote = "secret: never printed or logged"

func (s setting) defaultText() string {
	switch {
	case s.shownDefault != "":
		return s.shownDefault
	case s.required:
		return "(required)"
	case s.def == "":
		return "(empty)"
	default:
		return fmt.Sprintf("%q", s.def)
	}
}

// redacted is what logs show instead of a secret that is set.
const redacted = "[redacted]"

// logAttrs returns the fields of a config as log attributes keyed by flag
// name, secrets redacted. show overrides the display of single settings.
func logAttrs(settings []setting, show map[string]func() slog.Value) []slog.Attr {
	attrs := make([]slog.Attr, 0, len(settings))
	for _, s := range settings {
		var v slog.Value
		switch {
		case show[s.env] != nil:
			v = show[s.env]()
		case s.secret:
			v = slog.StringValue("")
			if s.bind.value().String() != "" {
				v = slog.StringValue(redacted)
			}
		default:
			v = s.bind.value()
		}
		attrs = append(attrs, slog.Attr{Key: strings.ReplaceAll(s.flag, "-", "_"), Value: v})
	}
	return attrs
}

// logValueOf turns a field into a value that reads the same in text and JSON logs.
func logValueOf(v any) slog.Value {
	switch v := v.(type) {
	case string:
		return slog.StringValue(v)
	case bool:
		return slog.BoolValue(v)
	case int:
		return slog.IntValue(v)
	case time.Duration:
		return slog.StringValue(v.String())
	case slog.Level:
		return slog.StringValue(strings.ToLower(v.String()))
	case *url.URL:
		if v == nil {
			return slog.StringValue("")
		}
		return slog.StringValue(v.Redacted())
	case []net.IP:
		s := make([]string, len(v))
		for i, ip := range v {
			s[i] = ip.String()
		}
		return slog.StringValue(strings.Join(s, ","))
	case []string:
		return slog.StringValue(strings.Join(v, ","))
	default:
		return slog.AnyValue(v)
	}
}

// formatAttrs renders attributes as name{key=value ...} for String methods.
func formatAttrs(name string, attrs []slog.Attr) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, a := range attrs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%q", a.Key, a.Value.String())
	}
	b.WriteByte('}')
	return b.String()
}
