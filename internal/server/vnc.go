package server

import (
	"net/http"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/websocket"
)

// capacity answers GET /capacity.
func (s *Server) capacity(w http.ResponseWriter, r *http.Request) {
	c := s.vms.Capacity()
	c.Backend = s.vms.BackendCapacity(r.Context())
	writeJSON(w, http.StatusOK, c)
}

// vnc answers GET /vms/{id}/vnc: a WebSocket that relays the running VM's
// VNC server (RFB) byte for byte, as noVNC and other web clients expect.
func (s *Server) vnc(w http.ResponseWriter, r *http.Request) {
	v, err := s.vms.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	if !websocket.IsUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		writeJSON(w, http.StatusUpgradeRequired, api.Error{Code: api.CodeInvalidRequest, Message: "GET /vms/{id}/vnc is a WebSocket: send Connection: Upgrade and Upgrade: websocket"})
		return
	}
	conn, err := s.vms.DialVNC(r.Context(), v.ID)
	if err != nil {
		s.writeError(w, err)
		return
	}
	ws, err := websocket.Upgrade(w, r, "binary")
	if err != nil {
		conn.Close()
		s.log.Info("vnc: upgrade failed", "vm", v.ID, "err", err)
		return
	}
	s.log.Info("vnc: relaying", "vm", v.ID, "remote", r.RemoteAddr)
	websocket.Relay(ws, conn)
	s.log.Info("vnc: closed", "vm", v.ID, "remote", r.RemoteAddr)
}
