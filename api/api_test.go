package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// Every event kind is on the wire as its string and named in the interface
// description, so clients learn of each one.
func TestEventKinds(t *testing.T) {
	desc := Description[strings.Index(Description, "# One state change."):strings.Index(Description, "type Event (")]
	for _, tc := range []struct {
		kind EventKind
		wire string
	}{
		{EventCreated, "created"}, {EventStatus, "status"}, {EventUpdated, "updated"},
		{EventDeleted, "deleted"}, {EventHealth, "health"}, {EventAutoStopped, "auto-stopped"},
		{EventWorkspaceCreated, "workspace-created"}, {EventWorkspaceRemoved, "workspace-removed"},
	} {
		b, err := json.Marshal(Event{Kind: tc.kind})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `"kind":"`+tc.wire+`"`) {
			t.Errorf("%s marshals as %s", tc.wire, b)
		}
		if !strings.Contains(desc, tc.wire) {
			t.Errorf("the description of Event does not name %q:\n%s", tc.wire, desc)
		}
	}
	if len(EventKinds) != 8 {
		t.Errorf("EventKinds has %d kinds; the table above has 8", len(EventKinds))
	}
}
