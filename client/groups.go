package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/goldvm/goldvm/api"
)

// PatchVM changes a VM's tags: each key is set to its value, or removed
// where the value is nil.
func (c *Client) PatchVM(ctx context.Context, id string, tags map[string]*string) (*api.VM, error) {
	var v api.VM
	if err := c.do(ctx, http.MethodPatch, "/vms/"+url.PathEscape(id), api.PatchVMRequest{Tags: tags}, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// VMAction runs a lifecycle action ("stop", "start", "restart", "suspend",
// "resume") and returns the VM's record after it.
func (c *Client) VMAction(ctx context.Context, id, action string) (*api.VM, error) {
	var v api.VM
	if err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(id)+"/"+url.PathEscape(action), struct{}{}, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// PutGroup creates or changes a group.
func (c *Client) PutGroup(ctx context.Context, name string, spec api.GroupSpec) (*api.Group, error) {
	var g api.Group
	if err := c.do(ctx, http.MethodPut, "/groups/"+url.PathEscape(name), spec, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// GetGroup returns a group with its VMs.
func (c *Client) GetGroup(ctx context.Context, name string) (*api.Group, error) {
	var g api.Group
	if err := c.do(ctx, http.MethodGet, "/groups/"+url.PathEscape(name), nil, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// ListGroups returns every group.
func (c *Client) ListGroups(ctx context.Context) ([]api.Group, error) {
	var l api.GroupList
	if err := c.do(ctx, http.MethodGet, "/groups", nil, &l); err != nil {
		return nil, err
	}
	return l.Groups, nil
}

// DeleteGroup destroys a group's VMs, then the group; with keepVMs the VMs
// stay, without their group tags.
func (c *Client) DeleteGroup(ctx context.Context, name string, keepVMs bool) error {
	path := "/groups/" + url.PathEscape(name)
	if keepVMs {
		path += "?keep_vms=true"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}
