package api

import (
	"fmt"
	"regexp"
)

// Placement pins a VM to one member, or one group of members, of the
// backend's cluster (the lxd backend on an LXD cluster: LXD's ?target=);
// without it the cluster's scheduler places the VM. Give one field.
type Placement struct {
	// Member is the name of a cluster member.
	Member string `json:"member,omitempty"`
	// Group is the name of a cluster group (LXD's "@group" target).
	Group string `json:"group,omitempty"`
}

// placementName is what LXD accepts as a member's or a group's name.
var placementName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Check reports, naming the field, why p is not a placement.
func (p Placement) Check() error {
	switch {
	case p.Member != "" && p.Group != "":
		return fmt.Errorf("placement: give member or group, not both")
	case p.Member == "" && p.Group == "":
		return fmt.Errorf("placement: give member or group")
	case p.Member != "" && !placementName.MatchString(p.Member):
		return fmt.Errorf("placement.member %q is not a cluster member name", p.Member)
	case p.Group != "" && !placementName.MatchString(p.Group):
		return fmt.Errorf("placement.group %q is not a cluster group name", p.Group)
	}
	return nil
}

// String is the placement as LXD's target names it: the member, or
// "@group".
func (p Placement) String() string {
	if p.Group != "" {
		return "@" + p.Group
	}
	return p.Member
}
