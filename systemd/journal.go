package systemd

import (
	"context"
	"encoding"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// SendFunc sends one native journal entry; journal.Send is the real one.
type SendFunc func(message string, priority journal.Priority, fields map[string]string) error

// wellKnown maps paddock's conventional attribute keys to journal fields.
// They keep their name inside slog groups, so `journalctl VM_NAME=web1`
// finds an entry whatever logger group it came through.
var wellKnown = map[string]string{
	"vm_id":        "VM_ID",
	"vm_name":      "VM_NAME",
	"actor":        "ACTOR",
	"op":           "OP",
	"image_digest": "IMAGE_DIGEST",
	"workspace":    "WORKSPACE",
	"workspace_id": "WORKSPACE_ID",
}

// reserved fields are written by the handler itself; an attribute mapping
// to one of them is renamed to ATTR_<NAME> instead of clobbering it.
var reserved = map[string]bool{
	"MESSAGE": true, "PRIORITY": true, "SYSLOG_IDENTIFIER": true,
	"CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
}

// maxFieldName is journald's limit on field name length.
const maxFieldName = 64

// JournalOptions configure a JournalHandler.
type JournalOptions struct {
	// Identifier is written as SYSLOG_IDENTIFIER (e.g. "paddockd").
	Identifier string
	// Level is the minimum level; a *slog.LevelVar changes it live.
	// nil means slog.LevelInfo.
	Level slog.Leveler
	// Send replaces journal.Send (tests).
	Send SendFunc
	// Fallback, if set, receives records journald refused (e.g. journald is
	// gone); it sees the same WithAttrs/WithGroup calls as the handler.
	Fallback slog.Handler
}

type field struct{ name, value string }

// JournalHandler is a slog.Handler writing native journal entries: MESSAGE,
// PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC and one field
// per attribute (see FieldName).
type JournalHandler struct {
	ident    string
	level    slog.Leveler
	send     SendFunc
	fallback slog.Handler
	fields   []field // from WithAttrs, already named
	prefix   string  // open groups, "A_B_"
}

// NewJournalHandler returns a handler sending to journald.
func NewJournalHandler(opts JournalOptions) *JournalHandler {
	h := &JournalHandler{ident: opts.Identifier, level: opts.Level, send: opts.Send, fallback: opts.Fallback}
	if h.level == nil {
		h.level = slog.LevelInfo
	}
	if h.send == nil {
		h.send = journal.Send
	}
	return h
}

// Enabled implements slog.Handler.
func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// Handle implements slog.Handler.
func (h *JournalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := make(map[string]string, 4+len(h.fields)+r.NumAttrs())
	if h.ident != "" {
		fields["SYSLOG_IDENTIFIER"] = h.ident
	}
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		if f.File != "" {
			fields["CODE_FILE"] = f.File
			fields["CODE_LINE"] = strconv.Itoa(f.Line)
		}
		if f.Function != "" {
			fields["CODE_FUNC"] = f.Function
		}
	}
	for _, f := range h.fields {
		fields[f.name] = f.value
	}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(fields, h.prefix, a)
		return true
	})
	err := h.send(r.Message, Priority(r.Level), fields)
	if err != nil && h.fallback != nil {
		return h.fallback.Handle(ctx, r)
	}
	return err
}

// WithAttrs implements slog.Handler.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	m := map[string]string{}
	var order []string
	for _, a := range attrs {
		addAttrOrdered(m, &order, h.prefix, a)
	}
	h2 := *h
	h2.fields = make([]field, 0, len(h.fields)+len(order))
	h2.fields = append(h2.fields, h.fields...)
	for _, k := range order {
		h2.fields = append(h2.fields, field{k, m[k]})
	}
	if h.fallback != nil {
		h2.fallback = h.fallback.WithAttrs(attrs)
	}
	return &h2
}

// WithGroup implements slog.Handler.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + FieldName(name) + "_"
	if h.fallback != nil {
		h2.fallback = h.fallback.WithGroup(name)
	}
	return &h2
}

// Priority maps a slog level to a syslog priority: Debug→7 (debug),
// Info→6 (info), Warn→4 (warning), Error→3 (err); levels of Error+4 and
// above→2 (crit). Levels between two named ones round down.
func Priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError+4:
		return journal.PriCrit
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}

// FieldName turns an attribute key into a valid journal field name:
// uppercase, every byte outside [A-Z0-9_] becomes '_', leading underscores
// (reserved for trusted fields) are dropped, a leading digit gets an "F"
// prefix, an empty result becomes "ATTR", and the name is cut to 64 bytes.
func FieldName(key string) string {
	b := make([]byte, 0, len(key)+1)
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		default:
			c = '_'
		}
		b = append(b, c)
	}
	s := strings.TrimLeft(string(b), "_")
	switch {
	case s == "":
		s = "ATTR"
	case s[0] >= '0' && s[0] <= '9':
		s = "F" + s
	}
	if len(s) > maxFieldName {
		s = s[:maxFieldName]
	}
	return s
}

func addAttr(m map[string]string, prefix string, a slog.Attr) {
	addAttrOrdered(m, nil, prefix, a)
}

// addAttrOrdered flattens a into m; order (if non-nil) records first sight.
func addAttrOrdered(m map[string]string, order *[]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		attrs := v.Group()
		if len(attrs) == 0 {
			return
		}
		p := prefix
		if a.Key != "" {
			p = prefix + FieldName(a.Key) + "_"
		}
		for _, ga := range attrs {
			addAttrOrdered(m, order, p, ga)
		}
		return
	}
	if a.Key == "" {
		return
	}
	name, ok := wellKnown[a.Key]
	if !ok {
		name = prefix + FieldName(a.Key)
		if len(name) > maxFieldName {
			name = name[:maxFieldName]
		}
		if reserved[name] {
			name = "ATTR_" + name
		}
	}
	if _, seen := m[name]; !seen && order != nil {
		*order = append(*order, name)
	}
	m[name] = valueString(v)
}

func valueString(v slog.Value) string {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return x.Error()
		case []byte:
			return string(x)
		case encoding.TextMarshaler:
			if b, err := x.MarshalText(); err == nil {
				return string(b)
			}
		case fmt.Stringer:
			return x.String()
		}
		return fmt.Sprintf("%+v", v.Any())
	default:
		return v.String()
	}
}

// StderrIsJournal reports whether stderr is connected to journald's stream
// socket (JOURNAL_STREAM matches stderr's device and inode), i.e. whether
// we run as a systemd service with StandardError=journal.
func StderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// LogOptions configure NewLogger.
type LogOptions struct {
	// Format is "" (auto: journal when stderr is the journal stream, text
	// otherwise), "text", "json" or "journal".
	Format string
	// Level is the minimum level; pass a *slog.LevelVar to change it live.
	// nil means slog.LevelInfo.
	Level slog.Leveler
	// Identifier is SYSLOG_IDENTIFIER for journal output; default
	// the executable's base name.
	Identifier string
	// Stderr replaces os.Stderr for text/json output (tests).
	Stderr io.Writer
}

// NewLogger builds the daemon's logger. With Format "" it sends native
// journal entries when stderr is the journal stream and writes slog text to
// stderr otherwise. Journal output falls back to text on stderr for an entry
// journald refuses. An unknown Format yields text output and one warning
// record saying so (validate config with ValidLogFormat first).
func NewLogger(opts LogOptions) *slog.Logger {
	h, err := newHandler(opts, StderrIsJournal())
	if err != nil {
		opts.Format = "text"
		h, _ = newHandler(opts, false)
		l := slog.New(h)
		l.Warn("falling back to text logs", "error", err)
		return l
	}
	return slog.New(h)
}

// ValidLogFormat returns an error unless format is "", "text", "json" or
// "journal".
func ValidLogFormat(format string) error {
	switch format {
	case "", "text", "json", "journal":
		return nil
	}
	return fmt.Errorf("unknown log format %q (want text, json or journal)", format)
}

func newHandler(opts LogOptions, stderrIsJournal bool) (slog.Handler, error) {
	if err := ValidLogFormat(opts.Format); err != nil {
		return nil, err
	}
	w := opts.Stderr
	if w == nil {
		w = os.Stderr
	}
	level := opts.Level
	if level == nil {
		level = slog.LevelInfo
	}
	ho := &slog.HandlerOptions{Level: level}
	format := opts.Format
	if format == "" {
		format = "text"
		if stderrIsJournal {
			format = "journal"
		}
	}
	switch format {
	case "json":
		return slog.NewJSONHandler(w, ho), nil
	case "journal":
		ident := opts.Identifier
		if ident == "" {
			ident = executableName()
		}
		return NewJournalHandler(JournalOptions{
			Identifier: ident,
			Level:      level,
			Fallback:   slog.NewTextHandler(w, ho),
		}), nil
	default:
		return slog.NewTextHandler(w, ho), nil
	}
}

func executableName() string {
	if len(os.Args) > 0 && os.Args[0] != "" {
		return filepath.Base(os.Args[0])
	}
	return "paddockd"
}
