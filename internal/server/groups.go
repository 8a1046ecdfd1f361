package server

import (
	"context"
	"net/http"
	"strconv"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// putGroup answers PUT /groups/{name}: create or change a group.
func (s *Server) putGroup(w http.ResponseWriter, r *http.Request) {
	var spec api.GroupSpec
	if err := decodeJSON(w, r, &spec); err != nil {
		s.writeError(w, err)
		return
	}
	g, err := s.groups.Put(r.Context(), r.PathValue("name"), spec)
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (s *Server) getGroup(w http.ResponseWriter, r *http.Request) {
	g, err := s.groups.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (s *Server) listGroups(w http.ResponseWriter, r *http.Request) {
	gs, err := s.groups.List(r.Context())
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.GroupList{Groups: gs})
}

// deleteGroup answers DELETE /groups/{name}[?keep_vms=true] once the
// group's VMs are destroyed (or detached) and the group is gone.
func (s *Server) deleteGroup(w http.ResponseWriter, r *http.Request) {
	keep := false
	if v := r.URL.Query().Get("keep_vms"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidQuery, "keep_vms %s: use true or false", quote(v)))
			return
		}
		keep = b
	}
	if err := s.groups.Delete(context.WithoutCancel(r.Context()), r.PathValue("name"), keep); err != nil {
		s.writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
