package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/paddock-vm/paddock/systemd/systemdtest"
)

type sent struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

func recordingHandler(level slog.Leveler) (*JournalHandler, *[]sent) {
	var out []sent
	h := NewJournalHandler(JournalOptions{
		Identifier: "paddockd",
		Level:      level,
		Send: func(m string, p journal.Priority, f map[string]string) error {
			out = append(out, sent{m, p, f})
			return nil
		},
	})
	return h, &out
}

type textID struct{ s string }

func (x textID) MarshalText() ([]byte, error) { return []byte("id:" + x.s), nil }

func TestJournalFields(t *testing.T) {
	when := time.Date(2026, 11, 25, 10, 0, 0, 5, time.UTC)
	for _, tc := range []struct {
		name string
		log  func(l *slog.Logger)
		want map[string]string // besides SYSLOG_IDENTIFIER and CODE_*
	}{
		{"well-known", func(l *slog.Logger) {
			l.Info("started", "vm_id", "0123abcd", "vm_name", "web1", "actor", "vm/0123", "op", "start", "image_digest", "sha256:ab")
		}, map[string]string{"VM_ID": "0123abcd", "VM_NAME": "web1", "ACTOR": "vm/0123", "OP": "start", "IMAGE_DIGEST": "sha256:ab"}},
		{"key sanitising", func(l *slog.Logger) {
			l.Info("m", "tap.name", "pdk-1", "Mixed-Case key", 1, "_private", "x", "9lives", true, "üml", "u", "--", "dashes", "", "dropped")
		}, map[string]string{"TAP_NAME": "pdk-1", "MIXED_CASE_KEY": "1", "PRIVATE": "x", "F9LIVES": "true", "ML": "u", "ATTR": "dashes"}},
		{"long key cut to 64", func(l *slog.Logger) {
			l.Info("m", strings.Repeat("k", 80), "v")
		}, map[string]string{strings.Repeat("K", 64): "v"}},
		{"reserved names are not clobbered", func(l *slog.Logger) {
			l.Info("real", "message", "fake", "priority", "0", "code_line", "1", "syslog_identifier", "evil")
		}, map[string]string{"ATTR_MESSAGE": "fake", "ATTR_PRIORITY": "0", "ATTR_CODE_LINE": "1", "ATTR_SYSLOG_IDENTIFIER": "evil"}},
		{"value kinds", func(l *slog.Logger) {
			l.Info("m", "err", errors.New("boom"), "d", 1500*time.Millisecond, "t", when, "b", []byte("raw"),
				"f", 1.5, "u", uint64(7), "id", textID{"x"}, "multi", "line1\nline2", "s", []int{1, 2})
		}, map[string]string{"ERR": "boom", "D": "1.5s", "T": "2026-11-25T10:00:00.000000005Z", "B": "raw",
			"F": "1.5", "U": "7", "ID": "id:x", "MULTI": "line1\nline2", "S": "[1 2]"}},
		{"inline group", func(l *slog.Logger) {
			l.Info("m", slog.Group("net", "tap", "pdk-1", slog.Group("br", "name", "pdkbr0")), slog.Group("", "inline", "yes"), slog.Group("empty"))
		}, map[string]string{"NET_TAP": "pdk-1", "NET_BR_NAME": "pdkbr0", "INLINE": "yes"}},
		{"WithGroup prefixes later attrs, well-known keep their name", func(l *slog.Logger) {
			l.With("before", 1).WithGroup("req").With("method", "Start").WithGroup("").Info("m", "vm_name", "web1", "id", 3)
		}, map[string]string{"BEFORE": "1", "REQ_METHOD": "Start", "VM_NAME": "web1", "REQ_ID": "3"}},
		{"nested WithGroup", func(l *slog.Logger) {
			l.WithGroup("a").WithGroup("b").Info("m", "k", 1, slog.Group("c", "d", 2))
		}, map[string]string{"A_B_K": "1", "A_B_C_D": "2"}},
		{"record attr overrides With attr", func(l *slog.Logger) {
			l.With("vm_name", "old").Info("m", "vm_name", "new")
		}, map[string]string{"VM_NAME": "new"}},
		{"LogValuer resolved", func(l *slog.Logger) {
			l.Info("m", "vm", vmValuer{"abc", "web"})
		}, map[string]string{"VM_ID": "abc", "VM_NAME": "web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, out := recordingHandler(slog.LevelDebug)
			tc.log(slog.New(h))
			if len(*out) != 1 {
				t.Fatalf("sent %d entries, want 1", len(*out))
			}
			got := (*out)[0].fields
			if got["SYSLOG_IDENTIFIER"] != "paddockd" {
				t.Errorf("SYSLOG_IDENTIFIER = %q", got["SYSLOG_IDENTIFIER"])
			}
			if !strings.HasSuffix(got["CODE_FILE"], "journal_test.go") || got["CODE_LINE"] == "" ||
				!strings.Contains(got["CODE_FUNC"], "TestJournalFields") {
				t.Errorf("CODE_* = %q:%q %q", got["CODE_FILE"], got["CODE_LINE"], got["CODE_FUNC"])
			}
			rest := map[string]string{}
			for k, v := range got {
				switch k {
				case "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC":
				default:
					rest[k] = v
				}
			}
			if !reflect.DeepEqual(rest, tc.want) {
				t.Errorf("fields\n got %q\nwant %q", rest, tc.want)
			}
			for k := range got {
				if !validJournalName(k) {
					t.Errorf("invalid journal field name %q", k)
				}
			}
		})
	}
}

// vmValuer logs as a group whose keys are well-known.
type vmValuer struct{ id, name string }

func (v vmValuer) LogValue() slog.Value {
	return slog.GroupValue(slog.String("vm_id", v.id), slog.String("vm_name", v.name))
}

// validJournalName is journald's journal_field_valid for client fields.
func validJournalName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '_' || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func TestJournalCodeLocation(t *testing.T) {
	h, out := recordingHandler(nil)
	_, file, line, _ := runtime.Caller(0)
	slog.New(h).Info("here") // must be the line after runtime.Caller
	f := (*out)[0].fields
	if f["CODE_FILE"] != file || f["CODE_LINE"] != strconv.Itoa(line+1) {
		t.Errorf("CODE_FILE:CODE_LINE = %s:%s, want %s:%d", f["CODE_FILE"], f["CODE_LINE"], file, line+1)
	}
	if want := "github.com/paddock-vm/paddock/systemd.TestJournalCodeLocation"; f["CODE_FUNC"] != want {
		t.Errorf("CODE_FUNC = %q, want %q", f["CODE_FUNC"], want)
	}
}

func TestJournalPriority(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  journal.Priority
	}{
		{slog.LevelDebug - 4, 7}, {slog.LevelDebug, 7}, {slog.LevelInfo - 1, 7},
		{slog.LevelInfo, 6}, {slog.LevelInfo + 2, 6},
		{slog.LevelWarn, 4}, {slog.LevelWarn + 1, 4},
		{slog.LevelError, 3}, {slog.LevelError + 3, 3}, {slog.LevelError + 4, 2},
	} {
		h, out := recordingHandler(slog.Level(-100))
		slog.New(h).Log(context.Background(), tc.level, "m")
		if got := (*out)[0].pri; got != tc.want {
			t.Errorf("level %v: PRIORITY %d, want %d", tc.level, got, tc.want)
		}
		if got := (*out)[0].msg; got != "m" {
			t.Errorf("MESSAGE %q", got)
		}
	}
}

func TestJournalLevelLive(t *testing.T) {
	var lv slog.LevelVar
	lv.Set(slog.LevelWarn)
	h, out := recordingHandler(&lv)
	l := slog.New(h).With("a", 1).WithGroup("g")
	l.Info("dropped")
	l.Warn("kept1")
	lv.Set(slog.LevelDebug)
	l.Debug("kept2")
	var msgs []string
	for _, s := range *out {
		msgs = append(msgs, s.msg)
	}
	if want := []string{"kept1", "kept2"}; !reflect.DeepEqual(msgs, want) {
		t.Errorf("messages %q, want %q", msgs, want)
	}
}

func TestJournalWithAttrsDoesNotLeak(t *testing.T) {
	h, out := recordingHandler(nil)
	base := slog.New(h).With("vm_id", "a")
	a := base.With("op", "start")
	b := base.With("op", "stop")
	a.Info("1")
	b.Info("2")
	base.Info("3")
	for i, want := range []string{"start", "stop", ""} {
		if got := (*out)[i].fields["OP"]; got != want {
			t.Errorf("entry %d: OP=%q, want %q", i, got, want)
		}
		if got := (*out)[i].fields["VM_ID"]; got != "a" {
			t.Errorf("entry %d: VM_ID=%q", i, got)
		}
	}
}

func TestJournalFallback(t *testing.T) {
	var buf bytes.Buffer
	h := NewJournalHandler(JournalOptions{
		Send:     func(string, journal.Priority, map[string]string) error { return errors.New("journald gone") },
		Fallback: slog.NewTextHandler(&buf, nil),
	})
	slog.New(h).WithGroup("g").With("vm_name", "web1").Info("hello")
	if got := buf.String(); !strings.Contains(got, "msg=hello") || !strings.Contains(got, "g.vm_name=web1") {
		t.Errorf("fallback output %q", got)
	}
}

func TestNewHandlerChoice(t *testing.T) {
	for _, tc := range []struct {
		format    string
		isJournal bool
		want      string
	}{
		{"", false, "*slog.TextHandler"},
		{"", true, "*systemd.JournalHandler"},
		{"text", true, "*slog.TextHandler"},
		{"json", true, "*slog.JSONHandler"},
		{"journal", false, "*systemd.JournalHandler"},
	} {
		h, err := newHandler(LogOptions{Format: tc.format}, tc.isJournal)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%T", h); got != tc.want {
			t.Errorf("format %q, stderr is journal %v: %s, want %s", tc.format, tc.isJournal, got, tc.want)
		}
	}
	if _, err := newHandler(LogOptions{Format: "xml"}, false); err == nil {
		t.Error("format xml accepted")
	}
	var buf bytes.Buffer
	NewLogger(LogOptions{Format: "xml", Stderr: &buf}).Info("after")
	if !strings.Contains(buf.String(), "falling back to text") || !strings.Contains(buf.String(), "msg=after") {
		t.Errorf("unknown format output %q", buf.String())
	}
}

// TestJournalIntegration runs a standalone journald in a private mount
// namespace (research/systemd.md §2, via systemdtest.Journald), runs this
// test binary inside it with stderr on a journal stream, and finds the
// entry NewLogger's auto-selected journal handler wrote.
func TestJournalIntegration(t *testing.T) {
	j := systemdtest.Journald(t)
	name := fmt.Sprintf("it-%d-%d", os.Getpid(), time.Now().UnixNano())

	cmd := j.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(cmd.Env, childEnv+"=journal", "CHILD_VM_NAME="+name)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "stderr-is-journal=true" {
		t.Fatalf("child stdout %q, want stderr-is-journal=true", got)
	}

	entries := j.Query(t, "VM_NAME="+name)
	if len(entries) != 1 {
		t.Fatalf("got %d entries for VM_NAME=%s, want 1: %v", len(entries), name, entries)
	}
	e := entries[0]
	t.Logf("entry: %v", e)
	for k, want := range map[string]string{
		"MESSAGE":           "vm started",
		"PRIORITY":          "4",
		"SYSLOG_IDENTIFIER": "paddockd-it",
		"VM_NAME":           name,
		"VM_ID":             "0123abcd",
		"OP":                "start",
		"REQ_METHOD":        "io.paddock.v1.Start",
		"_TRANSPORT":        "journal",
		"CODE_FUNC":         "github.com/paddock-vm/paddock/systemd.journalChild",
	} {
		if got, _ := e[k].(string); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if f, _ := e["CODE_FILE"].(string); !strings.HasSuffix(f, "/journal_test.go") {
		t.Errorf("CODE_FILE = %q", f)
	}
	// The debug entry was below the level and must not be there.
	if got := j.Entries(t, "VM_NAME="+name, "PRIORITY=7"); len(got) != 0 {
		t.Errorf("debug entry logged at Info level: %v", got)
	}
}

// journalChild runs inside the journal namespace (see TestMain).
func journalChild() int {
	fmt.Printf("stderr-is-journal=%v\n", StderrIsJournal())
	l := NewLogger(LogOptions{Identifier: "paddockd-it"})
	name := os.Getenv("CHILD_VM_NAME")
	l.Debug("too verbose", "vm_name", name)
	l.With("vm_id", "0123abcd").WithGroup("req").Warn("vm started", "vm_name", name, "op", "start", "method", "io.paddock.v1.Start")
	return 0
}
