package sync

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// OperationOutcomes come from sources (status errors, error files): any
// bytes are read without panicking, and a message is one line.
func FuzzOutcome(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"busy"}]}`,
		`{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"informational"},{"severity":"fatal","code":"exception","details":{"text":"boom"}}]}`,
		`{"issue":[]}`, `not json`, ``, `{"issue":[{"diagnostics":"a\nb"}]}`, `{"issue":null}`, `[1,2,3]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		transient := transientOutcome(b)
		msg := outcomeMessage(b)
		if strings.Contains(msg, "\n") {
			t.Errorf("message has a newline: %q", msg)
		}
		if len(msg) > 310 && utf8.ValidString(msg) {
			t.Errorf("message of %d bytes", len(msg))
		}
		if transient && !strings.Contains(string(b), "transient") {
			t.Errorf("transient without the code: %s", b)
		}
	})
}

// Sync requests come from apps: normalize accepts or refuses them without
// panicking, and what it accepts is well formed.
func FuzzNormalize(f *testing.F) {
	f.Add("system", "", "Patient,Observation", "Observation?category=laboratory")
	f.Add("group", "cohort-1", "", "")
	f.Add("", "g.1", "Condition", "Condition?_sort=date")
	f.Add("patient", "x", "observation", "Observation")
	f.Fuzz(func(t *testing.T, level, group, types, filter string) {
		r := Request{Level: Level(level), GroupID: group, Types: []string{types}}
		if filter != "" {
			r.TypeFilters = []string{filter}
		}
		n, err := normalize(r)
		if err != nil {
			return
		}
		switch n.Level {
		case System, Patient:
			if n.GroupID != "" {
				t.Errorf("%s level with group %q", n.Level, n.GroupID)
			}
		case Group:
			if !validID(n.GroupID) {
				t.Errorf("group %q", n.GroupID)
			}
		default:
			t.Errorf("level %q accepted", n.Level)
		}
		for _, ty := range n.Types {
			if !validType(ty) {
				t.Errorf("type %q accepted", ty)
			}
		}
		for _, tf := range n.TypeFilters {
			if strings.Contains(tf, "_include") || strings.Contains(tf, "_sort=") && strings.HasPrefix(strings.SplitN(tf, "?", 2)[1], "_sort") {
				t.Errorf("filter %q accepted", tf)
			}
		}
		_ = n.scope()
	})
}
