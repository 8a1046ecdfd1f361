package server

import (
	"net/http"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/websocket"
)

// Unwrap lets http.ResponseController reach the connection (a WebSocket
// upgrade hijacks it).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// capacity answers GET /capacity.
func (s *Server) capacity(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.vms.Capacity())
}

// vnc answers GET /vms/{id}/vnc: a WebSocket that relays the running VM's
// VNC server (RFB) byte for byte, as noVNC and other web clients expect.
func (s *Server) vnc(w http.ResponseWriter, r *http.Request) {
	v, err := s.vms.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	vnc, ok := s.vms.Driver().(hypervisor.VNCer)
	if !ok {
		s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, api.CodeNotSupported, "the %s backend has no VNC console", s.vms.DriverName()))
		return
	}
	if v.Status != api.StatusRunning {
		s.writeError(w, errdefs.Newf(errdefs.ErrConflict, api.CodeVMNotRunning, "VM %s is %s, not running", v.ID, v.Status))
		return
	}
	if !websocket.IsUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		writeJSON(w, http.StatusUpgradeRequired, api.Error{Code: api.CodeInvalidRequest, Message: "GET /vms/{id}/vnc is a WebSocket: send Connection: Upgrade and Upgrade: websocket"})
		return
	}
	conn, err := vnc.DialVNC(r.Context(), s.vms.Spec(v.ID))
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
