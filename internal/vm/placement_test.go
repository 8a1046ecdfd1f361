package vm

import (
	"context"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// TestPlacementRefused: placement is checked with the request: malformed
// (both fields, neither, a name LXD cannot have) it is invalid-request;
// well-formed on a backend that is not a hypervisor.Placer (the fake
// driver here, as qemu and vmware) it is placement-not-supported naming
// the field and the backend. Nothing is stored either way.
func TestPlacementRefused(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		p        api.Placement
		code, in string
	}{
		{api.Placement{Member: "m1", Group: "g1"}, api.CodeInvalidRequest, "placement: give member or group, not both"},
		{api.Placement{}, api.CodeInvalidRequest, "placement: give member or group"},
		{api.Placement{Member: "m/1"}, api.CodeInvalidRequest, "placement.member"},
		{api.Placement{Group: "-g"}, api.CodeInvalidRequest, "placement.group"},
		{api.Placement{Member: "m1"}, api.CodePlacementUnsupported, "placement: the fake backend"},
		{api.Placement{Group: "g1"}, api.CodePlacementUnsupported, "placement: the fake backend"},
	} {
		req := e.request()
		req.Placement = &c.p
		_, err := e.m.Create(context.Background(), req)
		if code, _ := errdefs.CodeOf(err); code != c.code || !strings.Contains(err.Error(), c.in) {
			t.Errorf("placement %+v: %v, want %s with %q", c.p, err, c.code, c.in)
		}
	}
	if recs, _ := e.db.List(); len(recs) != 0 {
		t.Errorf("refused placements left %d records", len(recs))
	}
}
