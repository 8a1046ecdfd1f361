package client

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/websocket"
)

// Screenshot returns a PNG of a running VM's display.
func (c *Client) Screenshot(ctx context.Context, id string) ([]byte, error) {
	var out []byte
	if err := c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(id)+"/screenshot", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Capacity returns the host's budget for VMs and how much is taken.
func (c *Client) Capacity(ctx context.Context) (*api.Capacity, error) {
	var out api.Capacity
	if err := c.do(ctx, http.MethodGet, "/capacity", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// VNC opens the WebSocket of GET /vms/{id}/vnc: reading and writing it
// speaks RFB with the VM's VNC server. A refused upgrade is an *APIError.
func (c *Client) VNC(ctx context.Context, id string) (*websocket.Conn, error) {
	u := c.BaseURL + "/vms/" + url.PathEscape(id) + "/vnc"
	if strings.HasPrefix(u, "https://") {
		return nil, &APIError{Code: CodeHTTPError, Message: "the VNC relay over https is not supported by this client"}
	}
	h := http.Header{}
	if c.Token != "" {
		h.Set("Authorization", "Bearer "+c.Token)
	}
	ws, err := websocket.Dial(ctx, u, h, "binary")
	if he, ok := err.(*websocket.HandshakeError); ok {
		return nil, apiError(he.Status, he.Body)
	}
	return ws, err
}
