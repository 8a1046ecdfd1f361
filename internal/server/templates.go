package server

import (
	"context"
	"net/http"
	"time"

	"github.com/goldvm/goldvm/api"
)

// templateTimeout bounds the making of one template (a boot to the guest
// agent, then the save).
const templateTimeout = 5 * time.Minute

// makeTemplate answers POST /images/{key}/templates: it boots the image in
// the shape the body asks for, saves it and answers 201 with the template
// once it is published (200 when it existed already). A client that gives
// up does not stop it.
func (s *Server) makeTemplate(w http.ResponseWriter, r *http.Request) {
	var req api.TemplateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeError(w, err)
		return
	}
	key := r.PathValue("key")
	before, _ := s.vms.Templates(key)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), templateTimeout)
	defer cancel()
	t, err := s.vms.MakeTemplate(ctx, key, req)
	if err != nil {
		s.writeError(w, err)
		return
	}
	status := http.StatusCreated
	for _, b := range before {
		if b.Key == t.Key {
			status = http.StatusOK
		}
	}
	writeJSON(w, status, t)
}

// listTemplates answers GET /images/{key}/templates.
func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	ts, err := s.vms.Templates(r.PathValue("key"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.TemplateList{Templates: ts})
}
