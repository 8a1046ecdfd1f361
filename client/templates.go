package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/goldvm/goldvm/api"
)

// MakeTemplate asks the daemon to make the template of image key in the
// shape req gives; it returns once the template is published.
func (c *Client) MakeTemplate(ctx context.Context, key string, req api.TemplateRequest) (*api.Template, error) {
	var t api.Template
	if err := c.do(ctx, http.MethodPost, "/images/"+url.PathEscape(key)+"/templates", req, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Templates lists the templates of image key.
func (c *Client) Templates(ctx context.Context, key string) ([]api.Template, error) {
	var l api.TemplateList
	if err := c.do(ctx, http.MethodGet, "/images/"+url.PathEscape(key)+"/templates", nil, &l); err != nil {
		return nil, err
	}
	return l.Templates, nil
}
