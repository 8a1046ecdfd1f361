package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/goldvm/goldvm/api"
)

// Capture writes a new gold image from VM id (POST /vms/{id}/capture) and
// returns it once published. stop stops a running VM first; without it a
// running VM is refused with vm-not-stopped.
func (c *Client) Capture(ctx context.Context, id string, stop bool) (*api.ImageInfo, error) {
	var out api.ImageInfo
	if err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(id)+"/capture", api.CaptureRequest{Stop: stop}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ImagePackage streams image key's package (GET /images/{key}/package,
// a tar.zst) to w, checks it against the sha256 the daemon sends and
// returns that sha256 (hex). A package whose bytes do not match is an
// error (what was written to w is then not the package).
func (c *Client) ImagePackage(ctx context.Context, key string, w io.Writer) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/images/"+url.PathEscape(key)+"/package", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.send(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return "", apiError(resp.StatusCode, data)
	}
	want := resp.Header.Get(api.PackageChecksumHeader)
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w, h), resp.Body); err != nil {
		return "", fmt.Errorf("image package: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return "", fmt.Errorf("image package: sha256 %s, the daemon said %q", got, want)
	}
	return want, nil
}
