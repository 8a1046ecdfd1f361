// Package client is a Go client for goldvm's HTTP API, used by the CLI and
// by tests.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goldvm/goldvm/api"
)

// Client talks to one goldvm daemon.
type Client struct {
	// BaseURL is the daemon's address, e.g. "http://127.0.0.1:12345".
	BaseURL string
	// Token is sent as a bearer token when set.
	Token string
	// HTTP is the client used; http.DefaultClient when nil.
	HTTP *http.Client
}

// New returns a Client for addr, which may be "host:port" or a URL.
func New(addr, token string) *Client {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return &Client{BaseURL: strings.TrimRight(addr, "/"), Token: token}
}

// CodeHTTPError is the Code of an APIError whose reply was not a JSON
// error body (a proxy's error page, say); its Message is the reply's text.
const CodeHTTPError = "http-error"

// APIError is an error reply from the daemon.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the stable error code (one of api.Codes, e.g.
	// api.CodeVMNotFound), or CodeHTTPError.
	Code string
	// Message explains the error.
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// apiError is the error of a reply with status and body data.
func apiError(status int, data []byte) *APIError {
	var body api.Error
	if json.Unmarshal(data, &body) != nil || body.Code == "" {
		body.Code, body.Message = CodeHTTPError, strings.TrimSpace(string(data))
	}
	return &APIError{Status: status, Code: body.Code, Message: body.Message}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return apiError(resp.StatusCode, data)
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode reply: %w", err)
		}
	}
	return nil
}

// send sends req with the token, by c.HTTP.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	return hc.Do(req)
}

// CreateVM asks for a new VM; the reply is the record in status "creating".
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	var v api.VM
	if err := c.do(ctx, http.MethodPost, "/vms", req, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, id string) (*api.VM, error) {
	var v api.VM
	if err := c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(id), nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// ListVMs returns all VMs, newest first.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	l, err := c.ListVMsPage(ctx, ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.VMs, nil
}

// ListOptions narrows GET /vms; the zero value lists every VM.
type ListOptions struct {
	// Status keeps only VMs in these statuses.
	Status []api.Status
	// Limit, when above 0, asks for at most this many VMs (up to
	// api.MaxPageSize); the reply's Next then continues the list.
	Limit int
	// After lists only VMs older than the one with this id (a reply's Next).
	After string
	// Tags keeps only VMs that carry all these tags.
	Tags map[string]string
}

// ListVMsPage returns the VMs opts selects, newest first.
func (c *Client) ListVMsPage(ctx context.Context, opts ListOptions) (*api.VMList, error) {
	q := url.Values{}
	if len(opts.Status) > 0 {
		s := make([]string, len(opts.Status))
		for i, st := range opts.Status {
			s[i] = string(st)
		}
		q.Set("status", strings.Join(s, ","))
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.After != "" {
		q.Set("after", opts.After)
	}
	for _, k := range slices.Sorted(maps.Keys(opts.Tags)) {
		q.Add("tag", k+"="+opts.Tags[k])
	}
	path := "/vms"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var l api.VMList
	if err := c.do(ctx, http.MethodGet, path, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// Console returns the last tail bytes (0: the daemon's default, 64 KiB) of
// a VM's serial console output, also after it stopped or failed.
func (c *Client) Console(ctx context.Context, id string, tail int) ([]byte, error) {
	path := "/vms/" + url.PathEscape(id) + "/console"
	if tail > 0 {
		path += "?tail=" + strconv.Itoa(tail)
	}
	var out []byte
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteVM destroys a VM and frees its disk.
func (c *Client) DeleteVM(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(id), nil, nil)
}

// WaitVM waits until a VM's creation has ended (running, stopped or error)
// or ctx ends. It follows the VM's events (GET /events), and polls instead
// when the stream cannot be opened or breaks (an older daemon, a proxy
// that buffers). each, when not nil, sees every state of the record.
func (c *Client) WaitVM(ctx context.Context, id string, each func(*api.VM)) (*api.VM, error) {
	v, err := c.waitVMEvents(ctx, id, each)
	var apiErr *APIError
	switch {
	case err == nil:
		return v, nil
	case ctx.Err() != nil:
		return v, ctx.Err()
	case errors.As(err, &apiErr) && apiErr.Code == api.CodeVMNotFound:
		return v, err
	}
	return poll(ctx, func() (*api.VM, error) { return c.GetVM(ctx, id) }, each, func(v *api.VM) bool { return v.Status.IsFinal() })
}

// poll calls get every 250ms until done holds for its answer (returned),
// get fails or ctx ends (the last answer and ctx's error). each, when not
// nil, sees every answer.
func poll[T any](ctx context.Context, get func() (T, error), each func(T), done func(T) bool) (T, error) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		v, err := get()
		if err != nil {
			return v, err
		}
		if each != nil {
			each(v)
		}
		if done(v) {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-t.C:
		}
	}
}

// ListImages returns the gold images on the host.
func (c *Client) ListImages(ctx context.Context) ([]api.ImageInfo, error) {
	var l api.ImageList
	if err := c.do(ctx, http.MethodGet, "/images", nil, &l); err != nil {
		return nil, err
	}
	return l.Images, nil
}

// PrefetchImage fetches an image into the store before any VM needs it.
func (c *Client) PrefetchImage(ctx context.Context, img api.Image) (*api.ImageInfo, error) {
	var info api.ImageInfo
	if err := c.do(ctx, http.MethodPost, "/images", img, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// GetImage returns one image: published, being pre-fetched or failed.
func (c *Client) GetImage(ctx context.Context, key string) (*api.ImageInfo, error) {
	var info api.ImageInfo
	if err := c.do(ctx, http.MethodGet, "/images/"+url.PathEscape(key), nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// WaitImage polls an image until it is no longer being fetched ("ready" or
// "error") or ctx ends. each, when not nil, sees every poll's answer.
func (c *Client) WaitImage(ctx context.Context, key string, each func(*api.ImageInfo)) (*api.ImageInfo, error) {
	return poll(ctx, func() (*api.ImageInfo, error) { return c.GetImage(ctx, key) }, each,
		func(i *api.ImageInfo) bool { return i.State != "fetching" })
}

// DeleteImage removes a gold image no VM uses.
func (c *Client) DeleteImage(ctx context.Context, key string) error {
	return c.do(ctx, http.MethodDelete, "/images/"+url.PathEscape(key), nil, nil)
}
