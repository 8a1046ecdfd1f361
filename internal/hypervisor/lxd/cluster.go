package lxd

import (
	"context"
	"net/http"
	"slices"
	"strings"
)

// member is the part of LXD's cluster member object the driver reads.
type member struct {
	Name    string `json:"server_name"`
	Status  string `json:"status"` // Online, Offline, Evacuated, Blocked
	Message string `json:"message"`
}

// members lists the cluster's members (GET /1.0/cluster/members), or the
// one server of a standalone LXD as an online member; clustered says
// which.
func (d *Driver) members(ctx context.Context) (ms []member, clustered bool, err error) {
	if err := d.readServer(ctx); err != nil {
		return nil, false, err
	}
	si := d.server.Load()
	if !si.Environment.ServerClustered {
		return []member{{Name: si.Environment.ServerName, Status: "Online"}}, false, nil
	}
	err = d.c.do(ctx, http.MethodGet, "/1.0/cluster/members?recursion=1", nil, &ms)
	return ms, true, err
}

// memberDown says why LXD cannot answer for the instance name when its
// cluster member is not online: "cluster member m2 is offline: No
// heartbeat for 30s" (LXD's status and message). It is "" on a standalone
// LXD, for an instance on an online member or unknown to LXD, and when LXD
// cannot be asked. LXD lists an instance on an offline member with its
// location and status "Error"; asking for the instance itself fails.
func (d *Driver) memberDown(ctx context.Context, name string) string {
	if si := d.server.Load(); si == nil || !si.Environment.ServerClustered {
		return ""
	}
	ins, err := d.instances(ctx)
	if err != nil {
		return ""
	}
	i := slices.IndexFunc(ins, func(in instance) bool { return in.Name == name })
	if i < 0 || ins[i].Location == "" {
		return ""
	}
	var ms []member
	if err := d.c.do(ctx, http.MethodGet, "/1.0/cluster/members?recursion=1", nil, &ms); err != nil {
		return ""
	}
	for _, m := range ms {
		if m.Name == ins[i].Location && m.Status != "Online" {
			reason := "cluster member " + m.Name + " is " + strings.ToLower(m.Status)
			if m.Message != "" {
				reason += ": " + m.Message
			}
			return reason
		}
	}
	return ""
}

// unreachable reports whether LXD listed in as an instance of a member it
// cannot reach: status "Error" and none of its settings (LXD 5.0 lists
// such an instance with its name, location and status only).
func unreachable(in instance) bool { return in.Status == "Error" && len(in.Config) == 0 }
