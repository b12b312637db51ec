package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/varlink"
)

// cli is what every command shares: the global flags and where to print.
type cli struct {
	socket  string
	json    bool
	timeout time.Duration
	out     io.Writer
	errOut  io.Writer
}

// defaultSocket picks the socket: the flag, then PADDOCK_SOCKET, then the
// caller's own per-user daemon if one is running, then the system one.
func defaultSocket() string {
	if s := os.Getenv("PADDOCK_SOCKET"); s != "" {
		return s
	}
	if os.Geteuid() != 0 {
		if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
			p := filepath.Join(rt, "paddock", "io.paddock.v1")
			if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
				return p
			}
		}
	}
	return "/run/paddock/io.paddock.v1"
}

// atLeast and exactly check positional arguments, as usage errors.
func atLeast(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, a []string) error {
		if len(a) < n {
			return usageError{fmt.Errorf("missing %s", what)}
		}
		return nil
	}
}

func exactly(n int, what string) cobra.PositionalArgs {
	return rangeArgs(n, n, what)
}

func rangeArgs(lo, hi int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, a []string) error {
		if len(a) < lo || len(a) > hi {
			return usageError{fmt.Errorf("want %s, got %d arguments", what, len(a))}
		}
		return nil
	}
}

// sizeFlag parses a size flag the user gave; nil when not given.
func sizeFlag(cmd *cobra.Command, name, val string) (*int64, error) {
	if !cmd.Flags().Changed(name) {
		return nil, nil
	}
	n, err := config.ParseSize(val)
	if err != nil {
		return nil, usageError{fmt.Errorf("--%s: %v", name, err)}
	}
	return &n, nil
}

func (c *cli) dial(ctx context.Context) (*api.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := api.Dial(dctx, c.socket)
	if err != nil {
		return nil, fmt.Errorf("cannot reach paddockd at %s: %v (is paddock.socket running? use --socket or PADDOCK_SOCKET)", c.socket, errors.Unwrap(err))
	}
	return cl, nil
}

// call runs fn on a connection, bounded by --timeout.
func (c *cli) call(fn func(context.Context, *api.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	return c.with(ctx, fn)
}

// interruptible runs fn within the call timeout, cancelled by Ctrl-C; a
// call so ended says what was not done (notDone) and why.
func (c *cli) interruptible(notDone string, fn func(context.Context, *api.Client) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := c.with(ctx, fn)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%s: %w", notDone, context.Cause(ctx))
	}
	return err
}

// stream runs fn on a connection until it ends or the user interrupts it;
// an interruption is not an error.
func (c *cli) stream(fn func(context.Context, *api.Client) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := c.with(ctx, fn)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (c *cli) with(ctx context.Context, fn func(context.Context, *api.Client) error) error {
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	return c.explain(fn(ctx, cl))
}

// explain adds the varlink error name to the daemon's message.
func (c *cli) explain(err error) error {
	var ve *varlink.Error
	if errors.As(err, &ve) {
		_, short := varlink.SplitMethod(ve.Name)
		return fmt.Errorf("%s (%s)", ve.Error(), short)
	}
	return err
}

// each applies fn to every ref, reporting each failure and going on; it
// prints "REF done" per success, or with --json what fn returned.
func (c *cli) each(refs []string, done string, fn func(context.Context, *api.Client, string) (any, error)) error {
	return c.call(func(ctx context.Context, cl *api.Client) error {
		var failed []string
		out := []any{}
		for _, ref := range refs {
			v, err := fn(ctx, cl, ref)
			if err != nil {
				_ = say(c.errOut, "paddock: %s: %s", ref, c.explain(err))
				failed = append(failed, ref)
				continue
			}
			if v != nil {
				out = append(out, v)
			}
			if !c.json {
				_ = say(c.out, "%s %s", ref, done)
			}
		}
		if c.json && len(out) > 0 {
			if err := c.printJSON(out); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
		}
		return nil
	})
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// show prints v as JSON with --json, else runs human.
func (c *cli) show(v any, human func() error) error {
	if c.json {
		return c.printJSON(v)
	}
	return human()
}

// query gives cmd a RunE that fetches one value and shows it: JSON with
// --json, else human.
func query[T any](c *cli, cmd *cobra.Command, fetch func(context.Context, *api.Client, []string) (T, error), human func(T) error) *cobra.Command {
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.call(func(ctx context.Context, cl *api.Client) error {
			v, err := fetch(ctx, cl, a)
			if err != nil {
				return err
			}
			return c.show(v, func() error { return human(v) })
		})
	}
	return cmd
}

// eachCommand gives cmd a RunE that applies fn to each argument (see each).
func (c *cli) eachCommand(cmd *cobra.Command, done string, fn func(context.Context, *api.Client, string) (any, error)) *cobra.Command {
	cmd.RunE = func(_ *cobra.Command, a []string) error { return c.each(a, done, fn) }
	return cmd
}

func (c *cli) printVM(vm *api.VM, human string) error {
	return c.show(vm, func() error {
		return say(c.out, "%s", human)
	})
}

// table prints a header (tab-separated) and one row per item; row returns
// its cells, each printed through termField.
func table[T any](w io.Writer, header string, items []T, row func(T) []string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		cells := row(it)
		for i, c := range cells {
			cells[i] = termField(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// fields prints "Key: value" rows aligned, each value through termField.
func fields(w io.Writer, rows [][2]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], termField(r[1]))
	}
	_ = tw.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func shortDigest(d string) string {
	return short(strings.TrimPrefix(d, "sha256:"))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ago(ts string) string {
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// termSafe makes text from images, registries, guests and other users safe
// to print on a terminal: control characters (escape sequences among them)
// and invisible direction overrides are shown as Go escapes. Newlines and
// tabs stay: it is for messages. One value within a line or a table cell
// goes through termField.
func termSafe(s string) string { return escapeText(s, true) }

// termField is termSafe for one value within a line: a newline or tab in
// it is shown too, so it cannot forge a line or shift a column.
func termField(s string) string { return escapeText(s, false) }

// safef is fmt.Sprintf for human output: every string, error and Stringer
// argument goes through termField, whoever supplied it.
func safef(format string, args ...any) string {
	safe := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			safe[i] = termField(v)
		case error:
			safe[i] = termField(v.Error())
		case fmt.Stringer:
			safe[i] = termField(v.String())
		default:
			// Named string types (api.EventKind, api.Health, ...) too.
			if rv := reflect.ValueOf(a); rv.Kind() == reflect.String {
				safe[i] = termField(rv.String())
			} else {
				safe[i] = a
			}
		}
	}
	return fmt.Sprintf(format, safe...)
}

// say writes one line of human output built by safef.
func say(w io.Writer, format string, args ...any) error {
	_, err := fmt.Fprintln(w, safef(format, args...))
	return err
}

func escapeText(s string, layout bool) string {
	unsafe := func(r rune) bool { return unsafeRune(r, layout) }
	if !strings.ContainsFunc(s, unsafe) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafe(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func unsafeRune(r rune, layout bool) bool {
	if layout && (r == '\n' || r == '\t') {
		return false
	}
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == utf8.RuneError ||
		r == '\u2028' || r == '\u2029'
}

// isTTY reports whether w is a terminal.
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
