package server

import (
	"context"
	"net/http"

	"github.com/goldvm/goldvm/api"
)

// vmActions are the lifecycle actions POST /vms/{id}/{action} takes.
var vmActions = []string{"stop", "start", "restart", "suspend", "resume"}

// patchVM answers PATCH /vms/{id}: {"tags": {"k": "v", "gone": null}}.
func (s *Server) patchVM(w http.ResponseWriter, r *http.Request) {
	var req api.PatchVMRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeError(w, err)
		return
	}
	v, err := s.vms.SetTags(r.Context(), r.PathValue("id"), req.Tags)
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// vmAction answers POST /vms/{id}/{action} with the VM's record once the
// action is done (a start: once the guest is discovered again), or 409
// vm-invalid-state when the VM's status does not allow it.
func (s *Server) vmAction(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// An action, once begun, finishes even if the client goes away.
		ctx := context.WithoutCancel(r.Context())
		v, err := s.vms.Action(ctx, r.PathValue("id"), action)
		if err != nil {
			s.writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}
